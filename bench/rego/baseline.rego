# The baseline pack (stdlib/policy/baseline), rule for rule, in conftest-style Rego v1: the
# contrast the policy benchmark runs through the Rego adapter. Rules the pack holds at `hard`
# are `deny_*`, those at `advisory` are `warn_*`; each set holds one message per resource that
# breaks the rule, as Forge reports one finding per resource. Messages are abridged.
package main

import rego.v1

kinds(wanted) := [r | some r in input.resources; r.kind in wanted]

workloads := kinds({"service", "job"})

images := kinds({"image"})

root(user) if replace(split(user, ":")[0], "0", "") == ""

default_caps := {
	"AUDIT_WRITE", "CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID", "KILL", "MKNOD",
	"NET_BIND_SERVICE", "SETFCAP", "SETGID", "SETPCAP", "SETUID", "SYS_CHROOT",
}

credential := concat("", [
	`PRIVATE KEY-----|(^|[ \t\n=:"'@])(`,
	concat("|", [
		`A[KS]IA[^ \t\n=:"'@]{16}`, `gh[pousr]_[^ \t\n=:"'@]{36}`,
		`github_pat_[^ \t\n=:"'@]{71}`, `glpat-[^ \t\n=:"'@]{20}`,
		`xox[bpar]-[^ \t\n=:"'@]{19}`, `[sr]k_live_[^ \t\n=:"'@]{16}`,
		`AIza[^ \t\n=:"'@]{35}`, `npm_[^ \t\n=:"'@]{36}`, `pypi-[^ \t\n=:"'@]{75}`,
	]),
	")",
])

credential_file := `(^|/)(id_rsa|id_dsa|id_ecdsa|id_ed25519|\.netrc|\.git-credentials|\.pypirc|\.npmrc|\.env|\.htpasswd|credentials)$`

secret_name := `(^|_)pass(_|$)|(^|_)pwd(_|$)|passw|passphrase|secret|token|api[_-]?key|private[_-]?key|credential|access_key`

deny_frg_c001 contains sprintf("%s runs privileged", [r.address]) if {
	some r in workloads
	r.privileged
}

deny_frg_c002 contains sprintf("%s adds capabilities beyond the default set", [r.address]) if {
	some r in workloads
	some c in r.cap_add
	not replace(upper(trim_space(c)), "CAP_", "") in default_caps
}

image_user := {r.address: r.user | some r in images}

runs_as_root(r) if {
	r.user != ""
	root(r.user)
}

runs_as_root(r) if {
	r.user == ""
	root(image_user[r.image])
}

warn_frg_c014 contains sprintf("%s runs as root", [r.address]) if {
	some r in workloads
	runs_as_root(r)
}

warn_frg_c017 contains sprintf("%s can write to its root filesystem", [r.address]) if {
	some r in workloads
	not r.read_only
}

deny_frg_c018 contains sprintf("%s has no memory limit", [r.address]) if {
	some r in workloads
	r.resources.memory == null
}

warn_frg_c019 contains sprintf("%s has no CPU quota", [r.address]) if {
	some r in workloads
	r.resources.cpus == null
}

deny_frg_c020 contains sprintf("%s has no process limit", [r.address]) if {
	some r in workloads
	r.resources.pids == null
}

warn_frg_c031 contains sprintf("%s starts sshd", [r.address]) if {
	some r in kinds({"service", "job", "image"})
	regex.match(`(^|[ /])sshd( |$)`, concat(" ", array.concat(r.command, r.entrypoint)))
}

warn_frg_i006 contains sprintf("%s names no non-root user", [r.address]) if {
	some r in images
	root(r.user)
}

warn_frg_i009 contains sprintf("%s copies files with a setuid or setgid bit", [r.address]) if {
	some r in images
	some s in r.steps
	s.copy.mode != null
	s.copy.mode % 4096 >= 1024
}

leaks(c) if {
	c.content != null
	regex.match(credential, c.content)
}

leaks(c) if regex.match(credential_file, c.dst)

leaks(c) if {
	c.src != null
	regex.match(credential_file, c.src)
}

deny_frg_i011 contains sprintf("%s copies a private key, a token or a credentials file", [r.address]) if {
	some r in images
	some s in r.steps
	leaks(s.copy)
}

tools := {"ssh", "sshd", "scp", "sftp", "telnet", "ftp", "nc", "netcat", "curl", "wget"}

installed(s) := [s.copy.dst] if s.copy

installed(s) := s.link.links if s.link

warn_frg_i013 contains sprintf("%s installs a remote-access or download tool", [r.address]) if {
	some r in images
	some s in r.steps
	some path in installed(s)
	parts := split(path, "/")
	parts[count(parts) - 1] in tools
}

deny_frg_s001 contains sprintf("%s sets secret-named environment variables", [r.address]) if {
	some r in kinds({"service", "job", "wasm", "image"})
	some k, v in r.env
	v != ""
	lower(k) != "pwd"
	not regex.match(`(^|_)(file|path|dir)$`, lower(k))
	regex.match(secret_name, lower(k))
}

deny_frg_s002 contains sprintf("%s has a credential in env", [r.address]) if {
	some r in kinds({"service", "job", "wasm", "image"})
	some v in r.env
	regex.match(credential, v)
}

deny_frg_w003 contains sprintf("%s may take all 4GiB a wasm32 module can address", [r.address]) if {
	some r in kinds({"wasm"})
	r.limits.memory >= 4294967296
}

warn_frg_w004 contains sprintf("%s has no fuel budget", [r.address]) if {
	some r in kinds({"wasm"})
	r.limits.fuel == null
}
