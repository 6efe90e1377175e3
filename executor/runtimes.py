"""The OCI runtimes a container may run under (`runtime = "runc"` or `"crun"`), and how each
is invoked on this host.

runc is run as it is. Debian's crun 1.8.1 refuses a hybrid cgroup layout (cgroup v1 with a
cgroup2 mount at /sys/fs/cgroup/unified): "cgroups in hybrid mode not supported". It works
in a private mount namespace with that cgroup2 mount unmounted, so where a plain probe fails
and a wrapped one works, every crun call (create, start, state, kill, delete, exec) goes
through `unshare`. Which way works is found by starting a tiny container once, and kept for
the boot (a file under the run root) and for the process.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from executor.errors import ExecutorError
from executor.paths import RUN_ROOT

log = logging.getLogger(__name__)

RUNTIMES = ("runc", "crun")
UNIFIED = Path("/sys/fs/cgroup/unified")
# `sh -c SCRIPT crun ARGS...`: $0 is crun and "$@" its arguments, so nothing is re-quoted. The
# umount fails harmlessly where no cgroup2 mount is there.
_WRAPPER_SCRIPT = f'umount {UNIFIED} 2>/dev/null; exec "$0" "$@"'
# Static binaries a probe container can run with nothing else in its root filesystem: the path,
# its name there (busybox runs the applet its name says), and its arguments.
_PROBE_BINARIES = (
    ("/bin/busybox", "true", ()),
    ("/usr/bin/tini-static", "tini", ("--version",)),
)
PROBE_TIMEOUT = 20.0
PROBE_CACHE = "runtime-probe.json"
INSTALL_HINT = {
    "runc": "install it (apt-get install runc; scripts/setup.sh does)",
    "crun": 'install it (apt-get install crun; scripts/setup.sh does), or set runtime = "runc"',
}


class RuntimeUnavailable(ExecutorError):
    """The runtime a container asks for is not installed, or cannot start containers here."""


@dataclass(frozen=True)
class Runtime:
    """How to invoke one OCI runtime: `argv` comes before `--root ROOT COMMAND ...`."""

    name: str
    argv: tuple[str, ...]
    wrapped: bool = False  # in a private mount namespace without the cgroup2 mount

    def command(self, root: Path, *args: str) -> list[str]:
        """The full command line for one call, e.g. `state ID` under the state root `root`."""
        return [*self.argv, "--root", str(root), *args]


def wrapped(binary: str) -> tuple[str, ...]:
    """The argv prefix that runs `binary` in a private mount namespace without cgroup2."""
    unshare = shutil.which("unshare") or "/usr/bin/unshare"
    return (unshare, "-m", "--propagation", "private", "sh", "-c", _WRAPPER_SCRIPT, binary)


Probe = Callable[[tuple[str, ...]], str | None]  # argv prefix -> None when it works, else why


def choose(name: str, binary: str | None, probe: Probe, hybrid: bool) -> Runtime:
    """The way to run `name` (found at `binary`) here: plain when the probe says it works,
    else (crun, on a hybrid cgroup layout) wrapped; else RuntimeUnavailable saying why."""
    if name not in RUNTIMES:
        raise RuntimeUnavailable(f"unknown OCI runtime {name!r}", hint="use runc or crun")
    if binary is None:
        raise RuntimeUnavailable(f"{name} is not installed on this host", hint=INSTALL_HINT[name])
    if name == "runc":
        return Runtime(name, (binary,))  # Forge's own default: its tests are the probe
    plain = probe((binary,))
    if plain is None:
        return Runtime(name, (binary,))
    if hybrid:
        around = wrapped(binary)
        inside = probe(around)
        if inside is None:
            return Runtime(name, around, wrapped=True)
        plain = f"{plain}; in a private mount namespace without {UNIFIED}: {inside}"
    raise RuntimeUnavailable(
        f"{name} cannot start containers on this host: {plain}",
        hint='set runtime = "runc", or see "crun" in docs/operations.md',
    )


# Runs one command to its end: (exit code, what it wrote). The monitor passes its own, since
# only its reaper thread may wait for its children.
Runner = Callable[[list[str]], tuple[int, str]]
_FOUND: dict[str, Runtime] = {}


def runtime(name: str, run: Runner | None = None) -> Runtime:
    """How `name` runs here, probed once per boot and process; RuntimeUnavailable if it cannot."""
    if name in _FOUND:
        return _FOUND[name]
    binary = shutil.which(name)
    if name != "crun" or binary is None:
        found = choose(name, binary, _no_probe, False)
    else:
        key = _cache_key(binary)
        cached = _read_cache(key)
        found = cached or choose(
            name, binary, functools.partial(run_probe, run=run or _run), UNIFIED.is_mount()
        )
        if cached is None:
            _write_cache(key, found)
    _FOUND[name] = found
    return found


def _no_probe(argv: tuple[str, ...]) -> str | None:
    return None


def _run(command: list[str]) -> tuple[int, str]:
    try:
        ran = subprocess.run(
            command,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=PROBE_TIMEOUT,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return -1, str(exc)
    return ran.returncode, ran.stderr or ran.stdout


def run_probe(argv: tuple[str, ...], run: Runner = _run) -> str | None:
    """Start and reap one tiny container with the runtime `argv`; None if it ran, else why."""
    binary = next((b for b in _PROBE_BINARIES if os.path.isfile(b[0])), None)
    if binary is None:
        paths = " or ".join(path for path, _, _ in _PROBE_BINARIES)
        return f"no static binary ({paths}) to probe it with; apt-get install busybox-static"
    try:
        RUN_ROOT.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix="runtime-probe-", dir=RUN_ROOT) as folder:
            bundle, root = Path(folder) / "bundle", Path(folder) / "state"
            for folder_in_root in ("proc", "dev"):
                (bundle / "rootfs" / folder_in_root).mkdir(parents=True)
            path, name, args = binary
            shutil.copy2(path, bundle / "rootfs" / name)
            (bundle / "config.json").write_text(json.dumps(_probe_config([f"/{name}", *args])))
            cid = f"forge-probe-{os.getpid()}"
            probe = Runtime("probe", argv)
            try:
                code, said = run(probe.command(root, "run", "--bundle", str(bundle), cid))
            finally:
                run(probe.command(root, "delete", "--force", cid))
    except OSError as exc:
        return f"cannot make a probe bundle under {RUN_ROOT}: {exc.strerror or exc}"
    if code == 0:
        return None
    lines = said.strip().splitlines()
    return lines[-1] if lines else f"exit code {code}"


def _probe_config(args: list[str]) -> dict[str, object]:
    """The smallest config.json that starts a process in every namespace Forge uses."""
    return {
        "ociVersion": "1.0.2",
        "process": {
            "terminal": False,
            "user": {"uid": 0, "gid": 0},
            "args": args,
            "env": ["PATH=/"],
            "cwd": "/",
            "noNewPrivileges": True,
        },
        "root": {"path": "rootfs", "readonly": True},
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid"]},
        ],
        "linux": {
            "namespaces": [{"type": kind} for kind in ("pid", "ipc", "uts", "mount", "network")],
            "resources": {"pids": {"limit": 16}, "memory": {"limit": 16 << 20}},
        },
    }


def _cache_key(binary: str) -> str:
    """What the probe's answer depends on: the binary, and this boot (cgroup mounts)."""
    stat = os.stat(binary)
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        boot = ""
    return f"{binary}:{stat.st_ino}:{stat.st_mtime_ns}:{stat.st_size}:{boot}"


def _read_cache(key: str) -> Runtime | None:
    try:
        entry = json.loads((RUN_ROOT / PROBE_CACHE).read_text()).get(key)
    except (OSError, ValueError, AttributeError):
        return None
    if not isinstance(entry, dict) or not isinstance(entry.get("argv"), list):
        return None  # only what worked is kept: a failure is probed again, once fixed
    return Runtime(str(entry["name"]), tuple(entry["argv"]), bool(entry.get("wrapped")))


def _write_cache(key: str, found: Runtime) -> None:
    entry = {"name": found.name, "argv": list(found.argv), "wrapped": found.wrapped}
    path = RUN_ROOT / PROBE_CACHE
    try:
        RUN_ROOT.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f".{path.name}.{os.getpid()}")
        partial.write_text(json.dumps({key: entry}) + "\n")
        os.replace(partial, path)
    except OSError as exc:
        log.info("cannot cache the runtime probe in %s: %s", path, exc)
