"""The container driver's pure half: an OCI runtime-spec `config.json` per container.

`config_json` turns a `ContainerSpec` into the document runc reads, hardened by default: a
small capability set, no-new-privileges, a seccomp denylist, masked and read-only /proc and
/sys paths, a device cgroup that denies everything runc does not add itself, and cgroup limits.
`privileged` lifts all of that at once, as `docker run --privileged` does. `write_bundle` puts
the document where runc looks for it; filling `rootfs/` is the image driver's business.
"""

from __future__ import annotations

import json
import os
import platform
import re
import resource
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from executor.errors import ExecutorError
from forgefile.schema import CAPABILITIES, ENV_NAME, ULIMITS

OCI_VERSION = "1.0.2"
DEFAULT_PATH = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

# Docker's default set minus NET_RAW: raw sockets let a container spoof packets on its network.
DEFAULT_CAPABILITIES = (
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
)

# Every capability of Linux 5.9 and later, in kernel order (CAP_CHOWN is 0).
ALL_CAPABILITIES = CAPABILITIES  # the one list, in forgefile/schema.py

# The same lists as `runc spec`, plus powercap, which Docker masks too (energy side channel).
MASKED_PATHS = (
    "/proc/acpi",
    "/proc/asound",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
)
READONLY_PATHS = ("/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger")

# Syscalls no container may make whatever it was granted: the kernel keyring is not
# namespaced, kexec replaces the host kernel, the rest are obsolete attack surface.
ALWAYS_DENIED = (
    "add_key",
    "create_module",
    "get_kernel_syms",
    "kexec_file_load",
    "kexec_load",
    "keyctl",
    "lookup_dcookie",
    "nfsservctl",
    "query_module",
    "request_key",
    "_sysctl",
    "sysfs",
    "uselib",
    "ustat",
    "vm86",
    "vm86old",
)

# Syscalls denied unless the capability that makes them meaningful was added with cap_add.
DENIED_UNLESS: dict[str, tuple[str, ...]] = {
    "CAP_SYS_MODULE": ("init_module", "finit_module", "delete_module"),
    "CAP_SYS_BOOT": ("reboot",),
    "CAP_SYS_TIME": ("settimeofday", "stime", "clock_settime", "clock_adjtime"),
    "CAP_SYS_PACCT": ("acct",),
    "CAP_SYS_RAWIO": ("iopl", "ioperm"),
    "CAP_SYS_PTRACE": ("ptrace", "process_vm_readv", "process_vm_writev", "kcmp", "userfaultfd"),
    "CAP_DAC_READ_SEARCH": ("open_by_handle_at",),
    "CAP_SYS_ADMIN": (
        "bpf",
        "fsconfig",
        "fsmount",
        "fsopen",
        "fspick",
        "mount",
        "mount_setattr",
        "move_mount",
        "open_tree",
        "perf_event_open",
        "pivot_root",
        "quotactl",
        "setns",
        "swapoff",
        "swapon",
        "umount",
        "umount2",
        "unshare",
    ),
}

# clone(2) flags that make namespaces; CLONE_NEWUSER needs no privilege at all, so without
# CAP_SYS_ADMIN each one is refused by its own rule (seccomp ANDs the args of one rule).
CLONE_NAMESPACE_FLAGS = (
    0x00000080,  # CLONE_NEWTIME
    0x00020000,  # CLONE_NEWNS
    0x02000000,  # CLONE_NEWCGROUP
    0x04000000,  # CLONE_NEWUTS
    0x08000000,  # CLONE_NEWIPC
    0x10000000,  # CLONE_NEWUSER
    0x20000000,  # CLONE_NEWPID
    0x40000000,  # CLONE_NEWNET
)
EPERM = 1
ENOSYS = 38

SECCOMP_ARCHES = {
    "x86_64": ("SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"),
    "aarch64": ("SCMP_ARCH_AARCH64", "SCMP_ARCH_ARM"),
}

CPU_PERIOD_US = 100_000
NOFILE_WANTED = 1_048_576
# Where `init = true` mounts tini: /dev is the container's own tmpfs, so the mount point can be
# made even in a read-only root filesystem.
INIT_PATH = "/dev/init"
INIT_BINARY = "/usr/bin/tini-static"  # Debian's tini package; static, so any rootfs runs it

# Forgefile ulimit names and the rlimits they set (names as in `ulimit` and Docker).
RLIMITS = {name: f"RLIMIT_{name.upper()}" for name in ULIMITS}


class ContainerError(ExecutorError):
    """A container specification that cannot become a valid runc bundle."""


@dataclass(frozen=True)
class Mount:
    """A host folder bind-mounted into the container."""

    source: str
    destination: str
    readonly: bool = False
    # A host path the Forgefile named (a `bind` block) rather than one Forge manages: mounted
    # without what is mounted below it on the host, nosuid and nodev.
    host: bool = False


@dataclass(frozen=True)
class ContainerSpec:
    """Everything the driver needs to write one container's `config.json`."""

    command: tuple[str, ...]
    env: tuple[tuple[str, str], ...] = ()
    working_dir: str = "/"
    hostname: str = "forge"
    user: tuple[int, int] = (0, 0)
    netns_path: str | None = None
    mounts: tuple[Mount, ...] = ()
    read_only: bool = False
    privileged: bool = False
    cap_add: tuple[str, ...] = ()
    cap_drop: tuple[str, ...] = ()  # "ALL" drops the whole default set
    tmpfs: tuple[str, ...] = ()
    sysctls: tuple[tuple[str, str], ...] = ()
    ulimits: tuple[tuple[str, int], ...] = ()  # ("nofile", 1024): soft and hard alike
    # A host path of a static init (tini) to run as PID 1 in front of the command.
    init: str | None = None
    memory: int | None = None
    cpus: float | None = None
    pids: int | None = None


def config_json(
    spec: ContainerSpec,
    *,
    nofile_limit: int | None = None,
    host_capabilities: frozenset[str] | None = None,
) -> dict[str, Any]:
    """Return the OCI runtime-spec document for `spec`.

    `nofile_limit` and `host_capabilities` default to this process's hard RLIMIT_NOFILE and
    bounding set: runc cannot hand a container more than its caller holds.
    """
    _check(spec)
    held = held_capabilities() if host_capabilities is None else host_capabilities
    mounts = _standard_mounts(spec.privileged) + [_bind(m) for m in spec.mounts]
    mounts += [_tmpfs(path) for path in spec.tmpfs]
    if spec.init is not None:
        mounts.append(_bind(Mount(spec.init, INIT_PATH, readonly=True)))
    return {
        "ociVersion": OCI_VERSION,
        "process": _process(spec, nofile_limit, held),
        "root": {"path": "rootfs", "readonly": spec.read_only},
        "hostname": spec.hostname,
        "mounts": mounts,
        "linux": _linux(spec),
    }


def write_bundle(bundle: Path, spec: ContainerSpec) -> Path:
    """Write `bundle/config.json` for `spec` (the caller fills `bundle/rootfs`); return its path."""
    document = config_json(spec)
    bundle.mkdir(parents=True, exist_ok=True)
    path = bundle / "config.json"
    partial = bundle / ".config.json.partial"
    partial.write_text(json.dumps(document, indent=2) + "\n")
    os.replace(partial, path)
    return path


def capability_name(name: str) -> str:
    """Return the canonical `CAP_X` spelling of `name` (`net_raw`, `CAP_NET_RAW`, ...)."""
    canonical = name.strip().upper()
    if not canonical.startswith("CAP_"):
        canonical = "CAP_" + canonical
    if canonical not in ALL_CAPABILITIES:
        raise ContainerError(f"unknown capability {name!r}")
    return canonical


def _check(spec: ContainerSpec) -> None:
    if not spec.command or not spec.command[0]:
        raise ContainerError("a container needs a command")
    if not spec.working_dir.startswith("/"):
        raise ContainerError(f"working directory {spec.working_dir!r} must be an absolute path")
    if min(spec.user) < 0:
        raise ContainerError(f"uid and gid must not be negative, got {spec.user}")
    for key, _ in spec.env:
        if not ENV_NAME.fullmatch(key):
            raise ContainerError(f"invalid environment variable name {key!r}")
    for mount in spec.mounts:
        if not (mount.source.startswith("/") and mount.destination.startswith("/")):
            raise ContainerError(
                f"mount {mount.source!r} -> {mount.destination!r}: both ends must be absolute"
            )
    for field in ("memory", "cpus", "pids"):
        value = getattr(spec, field)
        if value is not None and value <= 0:
            raise ContainerError(f"{field} limit must be positive, got {value}")
    if spec.cpus is not None and spec.cpus < 0.01:
        raise ContainerError(f"cpus limit {spec.cpus} is below the smallest quota (0.01)")
    for name, value in spec.ulimits:
        if name not in RLIMITS:
            raise ContainerError(f"unknown ulimit {name!r}")
        if value < 0:
            raise ContainerError(f"ulimit {name} must not be negative, got {value}")
    for path in spec.tmpfs:
        if not path.startswith("/"):
            raise ContainerError(f"tmpfs {path!r} must be an absolute path")


def held_capabilities() -> frozenset[str]:
    """Return the capabilities in this process's bounding set, read from /proc/self/status."""
    match = re.search(r"^CapBnd:\s*([0-9a-f]+)$", Path("/proc/self/status").read_text(), re.M)
    mask = int(match.group(1), 16) if match else 0
    return frozenset(name for bit, name in enumerate(ALL_CAPABILITIES) if mask >> bit & 1)


def _process(spec: ContainerSpec, nofile_limit: int | None, held: frozenset[str]) -> dict[str, Any]:
    if spec.privileged:
        # "All" means all we hold: root here may lack some (CAP_SYS_RESOURCE), and runc
        # fails with "unable to apply caps" when asked for one its caller does not have.
        names = tuple(c for c in ALL_CAPABILITIES if c in held)
    else:
        names = _capabilities(spec.cap_add, spec.cap_drop)
        missing = [c for c in names if c not in held]
        if missing:
            raise ContainerError(f"capability {', '.join(missing)} is not available on this host")
    capabilities = {kind: list(names) for kind in ("bounding", "effective", "permitted")}
    args = list(spec.command)
    if spec.init is not None:
        # tini as PID 1: it forwards signals to the command and reaps what the command leaves.
        args = [INIT_PATH, "--", *args]
    return {
        "terminal": False,
        "user": {"uid": spec.user[0], "gid": spec.user[1]},
        "args": args,
        "env": _env(spec.env),
        "cwd": spec.working_dir,
        # No inheritable or ambient set: a non-root user then keeps no capability across execve.
        "capabilities": capabilities,
        "rlimits": _rlimits(spec.ulimits, nofile_limit),
        "noNewPrivileges": not spec.privileged,
    }


def _capabilities(cap_add: tuple[str, ...], cap_drop: tuple[str, ...] = ()) -> tuple[str, ...]:
    """The default set without what cap_drop names ("ALL": all of it), then what cap_add adds."""
    dropped = {capability_name(name) for name in cap_drop if name.strip().upper() != "ALL"}
    everything = any(name.strip().upper() == "ALL" for name in cap_drop)
    kept = () if everything else tuple(c for c in DEFAULT_CAPABILITIES if c not in dropped)
    added = [capability_name(name) for name in cap_add]
    return kept + tuple(c for c in dict.fromkeys(added) if c not in kept)


def _rlimits(
    ulimits: tuple[tuple[str, int], ...], nofile_limit: int | None
) -> list[dict[str, Any]]:
    """RLIMIT_NOFILE as high as this host allows unless the workload sets it; then its own."""
    wanted = dict(ulimits)
    if "nofile" not in wanted:
        wanted["nofile"] = _nofile(nofile_limit)
    return [
        {"type": RLIMITS[name], "soft": value, "hard": value}
        for name, value in sorted(wanted.items())
    ]


def ulimit_problems(ulimits: tuple[tuple[str, int], ...]) -> list[str]:
    """The ulimits above this process's own hard limits: runc cannot raise them (the caller
    lacks CAP_SYS_RESOURCE here), and its failure ("error setting rlimit") names none."""
    problems = []
    for name, value in ulimits:
        which = getattr(resource, RLIMITS.get(name, ""), None)
        if which is None:
            continue
        hard = resource.getrlimit(which)[1]
        if hard != resource.RLIM_INFINITY and value > hard:
            problems.append(f"ulimit {name} = {value} is above this host's hard limit, {hard}")
    return problems


def _nofile(nofile_limit: int | None) -> int:
    # Root here lacks CAP_SYS_RESOURCE: asking runc for more than our own hard limit fails.
    if nofile_limit is None:
        nofile_limit = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if nofile_limit == resource.RLIM_INFINITY or nofile_limit < 0:
        return NOFILE_WANTED
    return min(NOFILE_WANTED, nofile_limit)


def _env(env: tuple[tuple[str, str], ...]) -> list[str]:
    entries = [f"{key}={value}" for key, value in env]
    if not any(key == "PATH" for key, _ in env):
        entries.insert(0, DEFAULT_PATH)
    return entries


def _standard_mounts(privileged: bool) -> list[dict[str, Any]]:
    ro = [] if privileged else ["ro"]
    return [
        {"destination": "/proc", "type": "proc", "source": "proc"},
        {
            "destination": "/dev",
            "type": "tmpfs",
            "source": "tmpfs",
            "options": ["nosuid", "strictatime", "mode=755", "size=65536k"],
        },
        {
            "destination": "/dev/pts",
            "type": "devpts",
            "source": "devpts",
            "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"],
        },
        {
            "destination": "/dev/shm",
            "type": "tmpfs",
            "source": "shm",
            "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"],
        },
        {
            "destination": "/dev/mqueue",
            "type": "mqueue",
            "source": "mqueue",
            "options": ["nosuid", "noexec", "nodev"],
        },
        {
            "destination": "/sys",
            "type": "sysfs",
            "source": "sysfs",
            "options": ["nosuid", "noexec", "nodev", *ro],
        },
        {
            "destination": "/sys/fs/cgroup",
            "type": "cgroup",
            "source": "cgroup",
            "options": ["nosuid", "noexec", "nodev", "relatime", *ro],
        },
    ]


def _tmpfs(path: str) -> dict[str, Any]:
    return {
        "destination": path,
        "type": "tmpfs",
        "source": "tmpfs",
        "options": ["nosuid", "nodev", "mode=1777"],
    }


def _bind(mount: Mount) -> dict[str, Any]:
    # rprivate: a mount made later under a volume on the host must not leak into the container.
    options = ["rbind", "rprivate"]
    if mount.host:
        # `bind`, not `rbind`: a file system mounted below the source on the host stays out (it
        # would not be read-only, and policy judged the source, not what lies under it).
        options = ["bind", "rprivate", "nosuid", "nodev"]
    return {
        "destination": mount.destination,
        "type": "bind",
        "source": mount.source,
        "options": [*options, "ro" if mount.readonly else "rw"],
    }


def _linux(spec: ContainerSpec) -> dict[str, Any]:
    network: dict[str, str] = {"type": "network"}
    if spec.netns_path is not None:
        network["path"] = spec.netns_path
    linux: dict[str, Any] = {
        "namespaces": [{"type": kind} for kind in ("pid", "ipc", "uts", "mount")] + [network],
        "resources": _resources(spec),
    }
    if spec.sysctls:
        linux["sysctl"] = dict(spec.sysctls)
    if not spec.privileged:
        linux["seccomp"] = seccomp_profile(_capabilities(spec.cap_add, spec.cap_drop))
        linux["maskedPaths"] = list(MASKED_PATHS)
        linux["readonlyPaths"] = list(READONLY_PATHS)
    return linux


def _resources(spec: ContainerSpec) -> dict[str, Any]:
    # runc adds the handful of safe devices (null, zero, random, tty, ...) after this deny-all.
    resources: dict[str, Any] = {"devices": [{"allow": spec.privileged, "access": "rwm"}]}
    if spec.memory is not None:
        resources["memory"] = {"limit": spec.memory}
    if spec.cpus is not None:
        resources["cpu"] = {"period": CPU_PERIOD_US, "quota": round(spec.cpus * CPU_PERIOD_US)}
    if spec.pids is not None:
        resources["pids"] = {"limit": spec.pids}
    return resources


def seccomp_profile(capabilities: tuple[str, ...]) -> dict[str, Any]:
    """Return the default seccomp denylist for a container holding `capabilities`."""
    denied = list(ALWAYS_DENIED)
    for capability, syscalls in DENIED_UNLESS.items():
        if capability not in capabilities:
            denied.extend(syscalls)
    rules: list[dict[str, Any]] = [
        {"names": sorted(denied), "action": "SCMP_ACT_ERRNO", "errnoRet": EPERM}
    ]
    if "CAP_SYS_ADMIN" not in capabilities:
        rules.extend(_clone_rules())
    profile: dict[str, Any] = {"defaultAction": "SCMP_ACT_ALLOW", "syscalls": rules}
    arches = SECCOMP_ARCHES.get(platform.machine())
    if arches is not None:
        profile["architectures"] = list(arches)
    return profile


def _clone_rules() -> list[dict[str, Any]]:
    # clone3 passes its flags in memory seccomp cannot read; ENOSYS makes libc fall back to
    # clone, whose flags the rules below can inspect.
    rules: list[dict[str, Any]] = [
        {"names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": ENOSYS}
    ]
    for flag in CLONE_NAMESPACE_FLAGS:
        masked = {"index": 0, "value": flag, "valueTwo": flag, "op": "SCMP_CMP_MASKED_EQ"}
        rules.append(
            {"names": ["clone"], "action": "SCMP_ACT_ERRNO", "errnoRet": EPERM, "args": [masked]}
        )
    return rules
