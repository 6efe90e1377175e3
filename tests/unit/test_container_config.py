"""Pure tests of the OCI config.json the container driver writes: schema, hardening, limits."""

from __future__ import annotations

import json
import resource
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from executor.containers import (
    ALL_CAPABILITIES,
    NOFILE_WANTED,
    ContainerError,
    ContainerSpec,
    Mount,
    config_json,
    write_bundle,
)

EVERY_CAPABILITY = frozenset(ALL_CAPABILITIES)
LIMITED = ContainerSpec(
    command=("httpd", "-f", "-p", "8080"),
    env=(("APP_ENV", "prod"), ("PATH", "/bin")),
    working_dir="/srv",
    user=(1000, 1000),
    netns_path="/var/run/netns/fg-test",
    mounts=(Mount("/var/lib/fg/uploads", "/srv/uploads"), Mount("/etc/fg", "/etc/app", True)),
    read_only=True,
    cap_add=("net_raw", "CAP_SYS_PTRACE"),
    memory=64 * 1024 * 1024,
    cpus=0.5,
    pids=64,
)


@pytest.fixture
def validator(runtime_spec_validator: jsonschema.Draft4Validator) -> jsonschema.Draft4Validator:
    """The runtime-spec validator of tests/conftest.py."""
    return runtime_spec_validator


def denied_syscalls(config: dict[str, Any]) -> set[str]:
    """Every syscall name some rule of the config's seccomp profile refuses."""
    rules = config["linux"]["seccomp"]["syscalls"]
    return {name for rule in rules if rule["action"] == "SCMP_ACT_ERRNO" for name in rule["names"]}


TUNED = ContainerSpec(
    command=("nginx", "-g", "daemon off;"),
    read_only=True,
    cap_drop=("ALL",),
    cap_add=("NET_BIND_SERVICE",),
    tmpfs=("/tmp", "/run"),
    sysctls=(("net.ipv4.ip_unprivileged_port_start", "0"), ("kernel.shmmax", "65536")),
    ulimits=(("nofile", 1024), ("nproc", 64)),
    init="/usr/bin/tini-static",
)


@pytest.mark.parametrize(
    "spec",
    [
        ContainerSpec(command=("sh",)),
        ContainerSpec(command=("sh",), privileged=True),
        LIMITED,
        TUNED,
    ],
    ids=["default", "privileged", "mounts-and-limits", "tmpfs-sysctls-ulimits-init"],
)
def test_config_is_valid_against_the_runtime_spec_schema(
    spec: ContainerSpec, validator: jsonschema.Draft4Validator
) -> None:
    """Default, privileged and fully loaded configs all validate against the official schema."""
    config = config_json(spec, host_capabilities=EVERY_CAPABILITY)

    errors = [f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(config)]
    assert errors == []


def test_schema_validator_rejects_a_broken_config(validator: jsonschema.Draft4Validator) -> None:
    """The validator really checks, through the $refs too: three defects give three errors."""
    config = config_json(ContainerSpec(command=("sh",)))
    del config["ociVersion"]
    config["process"]["rlimits"][0]["type"] = "nofile"
    config["linux"]["seccomp"]["defaultAction"] = "SCMP_ACT_MAYBE"

    assert len(list(validator.iter_errors(config))) == 3


def test_defaults_are_hardened() -> None:
    """A plain container drops NET_RAW, sets no-new-privileges, seccomp and masked paths."""
    config = config_json(ContainerSpec(command=("sh",)))
    process, linux = config["process"], config["linux"]

    assert "CAP_NET_RAW" not in process["capabilities"]["bounding"]
    assert "CAP_SYS_ADMIN" not in process["capabilities"]["effective"]
    assert "ambient" not in process["capabilities"]
    assert process["noNewPrivileges"] is True
    assert process["terminal"] is False
    assert linux["seccomp"]["defaultAction"] == "SCMP_ACT_ALLOW"
    assert {"kexec_load", "init_module", "mount", "unshare", "keyctl"} <= denied_syscalls(config)
    assert "/proc/kcore" in linux["maskedPaths"]
    assert "/proc/sys" in linux["readonlyPaths"]
    assert linux["resources"]["devices"] == [{"allow": False, "access": "rwm"}]
    assert next(m for m in config["mounts"] if m["destination"] == "/sys")["options"][-1] == "ro"


def test_namespaces_make_a_new_network_unless_one_is_given() -> None:
    """Without netns_path the container gets a fresh network namespace; with it, joins it."""
    fresh = config_json(ContainerSpec(command=("sh",)))["linux"]["namespaces"]
    joined = config_json(LIMITED, host_capabilities=EVERY_CAPABILITY)["linux"]["namespaces"]

    assert {n["type"] for n in fresh} == {"pid", "ipc", "uts", "mount", "network"}
    assert {"type": "network"} in fresh
    assert {"type": "network", "path": "/var/run/netns/fg-test"} in joined


def test_privileged_gives_every_held_capability_and_no_seccomp() -> None:
    """privileged = all capabilities, no seccomp, no masked paths, new privileges allowed."""
    config = config_json(
        ContainerSpec(command=("sh",), privileged=True), host_capabilities=EVERY_CAPABILITY
    )

    assert config["process"]["capabilities"]["bounding"] == list(ALL_CAPABILITIES)
    assert config["process"]["noNewPrivileges"] is False
    assert "seccomp" not in config["linux"]
    assert "maskedPaths" not in config["linux"]
    assert config["linux"]["resources"]["devices"] == [{"allow": True, "access": "rwm"}]


def test_privileged_never_asks_for_a_capability_the_host_lacks() -> None:
    """runc cannot grant what its caller lacks, so privileged takes the host's bounding set."""
    host = EVERY_CAPABILITY - {"CAP_SYS_RESOURCE"}
    config = config_json(ContainerSpec(command=("sh",), privileged=True), host_capabilities=host)

    assert set(config["process"]["capabilities"]["effective"]) == host


def test_cap_add_is_normalised_and_lifts_the_matching_seccomp_rules() -> None:
    """cap_add accepts `net_raw` or `CAP_NET_RAW`; SYS_ADMIN re-allows mount, unshare, clone."""
    config = config_json(
        ContainerSpec(command=("sh",), cap_add=("net_raw", "SYS_ADMIN", "CAP_NET_RAW")),
        host_capabilities=EVERY_CAPABILITY,
    )
    bounding = config["process"]["capabilities"]["bounding"]

    assert bounding.count("CAP_NET_RAW") == 1
    assert "CAP_SYS_ADMIN" in bounding
    assert not {"mount", "unshare", "clone", "clone3"} & denied_syscalls(config)
    assert "kexec_load" in denied_syscalls(config)


def test_unknown_or_unavailable_capabilities_are_refused() -> None:
    """A misspelt capability, or one the host lacks, is a ContainerError, not a runc failure."""
    with pytest.raises(ContainerError, match="unknown capability 'NET_RAWW'"):
        config_json(ContainerSpec(command=("sh",), cap_add=("NET_RAWW",)))
    with pytest.raises(ContainerError, match="CAP_SYS_RESOURCE is not available"):
        config_json(
            ContainerSpec(command=("sh",), cap_add=("SYS_RESOURCE",)),
            host_capabilities=EVERY_CAPABILITY - {"CAP_SYS_RESOURCE"},
        )


def test_nofile_rlimit_never_exceeds_the_callers_hard_limit() -> None:
    """RLIMIT_NOFILE is capped by our hard limit, since runc cannot raise it past that."""
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    (rlimit,) = config_json(ContainerSpec(command=("sh",)))["process"]["rlimits"]

    assert rlimit["type"] == "RLIMIT_NOFILE"
    assert rlimit["soft"] == rlimit["hard"]
    if hard != resource.RLIM_INFINITY:
        assert rlimit["hard"] <= hard
    for given, expected in [(1024, 1024), (resource.RLIM_INFINITY, NOFILE_WANTED)]:
        config = config_json(ContainerSpec(command=("sh",)), nofile_limit=given)
        assert config["process"]["rlimits"][0]["hard"] == expected


def test_limits_map_to_linux_resources() -> None:
    """memory, cpus and pids become memory.limit, a CFS quota over a 100 ms period, pids.limit."""
    resources = config_json(LIMITED, host_capabilities=EVERY_CAPABILITY)["linux"]["resources"]

    assert resources["memory"] == {"limit": 64 * 1024 * 1024}
    assert resources["cpu"] == {"period": 100_000, "quota": 50_000}
    assert resources["pids"] == {"limit": 64}
    assert "memory" not in config_json(ContainerSpec(command=("sh",)))["linux"]["resources"]


def test_process_mounts_and_root_follow_the_spec() -> None:
    """Command, env, cwd, user, read-only root and rbind volumes land where runc reads them."""
    config = config_json(LIMITED, host_capabilities=EVERY_CAPABILITY)

    assert config["process"]["args"] == ["httpd", "-f", "-p", "8080"]
    assert config["process"]["env"] == ["APP_ENV=prod", "PATH=/bin"]
    assert config["process"]["cwd"] == "/srv"
    assert config["process"]["user"] == {"uid": 1000, "gid": 1000}
    assert config["root"] == {"path": "rootfs", "readonly": True}
    assert config["hostname"] == "forge"
    volumes = [m for m in config["mounts"] if m["type"] == "bind"]
    assert volumes == [
        {
            "destination": "/srv/uploads",
            "type": "bind",
            "source": "/var/lib/fg/uploads",
            "options": ["rbind", "rprivate", "rw"],
        },
        {
            "destination": "/etc/app",
            "type": "bind",
            "source": "/etc/fg",
            "options": ["rbind", "rprivate", "ro"],
        },
    ]


def test_default_path_is_added_when_env_has_none() -> None:
    """A container without PATH in its env still finds /bin/sh: the usual PATH is added."""
    env = config_json(ContainerSpec(command=("sh",), env=(("A", "1"),)))["process"]["env"]

    assert env[0].startswith("PATH=/usr/local/sbin:")
    assert env[1] == "A=1"


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (ContainerSpec(command=()), "needs a command"),
        (ContainerSpec(command=("sh",), working_dir="srv"), "must be an absolute path"),
        (ContainerSpec(command=("sh",), env=(("A=B", "1"),)), "invalid environment variable"),
        (ContainerSpec(command=("sh",), mounts=(Mount("data", "/data"),)), "must be absolute"),
        (ContainerSpec(command=("sh",), memory=0), "memory limit must be positive"),
        (ContainerSpec(command=("sh",), cpus=0.001), "below the smallest quota"),
        (ContainerSpec(command=("sh",), user=(-1, 0)), "must not be negative"),
    ],
)
def test_invalid_specs_raise_container_error(spec: ContainerSpec, message: str) -> None:
    """Specs runc would reject, or misread, fail early with a message naming the field."""
    with pytest.raises(ContainerError, match=message):
        config_json(spec)


def test_write_bundle_writes_config_json_beside_rootfs(tmp_path: Path) -> None:
    """write_bundle creates the bundle folder and a config.json whose root is `rootfs`."""
    path = write_bundle(tmp_path / "bundle", ContainerSpec(command=("true",)))

    assert path == tmp_path / "bundle" / "config.json"
    assert json.loads(path.read_text())["root"]["path"] == "rootfs"
    assert sorted(p.name for p in path.parent.iterdir()) == ["config.json"]


def test_tmpfs_sysctls_ulimits_cap_drop_and_init_reach_the_config() -> None:
    config = config_json(TUNED, host_capabilities=EVERY_CAPABILITY)
    process, linux = config["process"], config["linux"]

    assert process["args"] == ["/dev/init", "--", "nginx", "-g", "daemon off;"]
    assert {"destination": "/dev/init", "type": "bind", "source": "/usr/bin/tini-static",
            "options": ["rbind", "rprivate", "ro"]} in config["mounts"]  # fmt: skip
    tmpfs = [m for m in config["mounts"] if m["destination"] in ("/tmp", "/run")]
    assert [m["type"] for m in tmpfs] == ["tmpfs", "tmpfs"]
    assert all({"nosuid", "nodev"} <= set(m["options"]) for m in tmpfs)
    assert linux["sysctl"] == {"net.ipv4.ip_unprivileged_port_start": "0", "kernel.shmmax": "65536"}
    # The workload's nofile replaces the host-wide default; soft and hard alike.
    assert process["rlimits"] == [
        {"type": "RLIMIT_NOFILE", "soft": 1024, "hard": 1024},
        {"type": "RLIMIT_NPROC", "soft": 64, "hard": 64},
    ]
    # ALL drops the default set: only what cap_add names is left, and seccomp follows.
    assert process["capabilities"]["bounding"] == ["CAP_NET_BIND_SERVICE"]
    assert "ptrace" in denied_syscalls(config)


def test_cap_drop_takes_single_capabilities_out_of_the_default_set() -> None:
    config = config_json(
        ContainerSpec(command=("sh",), cap_drop=("chown", "CAP_KILL")),
        host_capabilities=EVERY_CAPABILITY,
    )
    bounding = config["process"]["capabilities"]["bounding"]
    assert "CAP_CHOWN" not in bounding and "CAP_KILL" not in bounding
    assert "CAP_SETUID" in bounding
    assert "sysctl" not in config["linux"]  # none asked for: none written


def test_a_ulimit_above_the_hosts_hard_limit_is_named() -> None:
    from executor.containers import ulimit_problems

    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if hard == resource.RLIM_INFINITY:
        pytest.skip("this host has no hard limit on open files")
    assert ulimit_problems((("nofile", hard),)) == []
    assert ulimit_problems((("nofile", hard + 1),)) == [
        f"ulimit nofile = {hard + 1} is above this host's hard limit, {hard}"
    ]
