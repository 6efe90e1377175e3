"""The WASM driver: run a WASI command module under wasmtime, isolated in a worker process.

Each run spawns `python -m executor.wasm_worker`, hands it a `WasmRun` as JSON on stdin and reads
a `WasmResult` as JSON from its stdout. A trap, a wasmtime panic or a runaway module can only take
the worker down; the caller sees a `WasmResult` or a `WasmError`, never a crash of its own.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from executor.errors import ExecutorError

log = logging.getLogger(__name__)

# Outcomes a run can end with; `WasmResult.outcome` is one of these.
EXIT = "exit"
OUT_OF_FUEL = "out of fuel"
TIMED_OUT = "timed out"
MEMORY_LIMIT = "memory limit"
TRAP = "trap"

# Exit codes for runs that did not end in proc_exit, after the shell's 128+signal habit so that a
# caller mapping them to a process status reads them the way it would read a killed process.
TRAP_EXIT_CODE = 128 + signal.SIGABRT
OUT_OF_FUEL_EXIT_CODE = 128 + signal.SIGXCPU
TIMED_OUT_EXIT_CODE = 128 + signal.SIGALRM
MEMORY_LIMIT_EXIT_CODE = 128 + signal.SIGKILL

# Epoch interruption cannot stop a module blocked inside a host call (a WASI sleep, say), so the
# caller kills a worker that outlives its timeout by this many seconds; compiling counts too.
KILL_GRACE = 10.0

_STDERR_TAIL = 2000
_PACKAGE_ROOT = Path(__file__).resolve().parent.parent


class WasmError(ExecutorError):
    """A module could not be loaded, compiled or linked, or its worker process died."""


@dataclass(frozen=True)
class Preopen:
    """A host directory the module sees at `guest`, read-only unless `writable`."""

    host: str
    guest: str
    writable: bool = False


@dataclass(frozen=True)
class WasmRun:
    """One run of a WASI command module, with everything it may see and every limit on it."""

    module: str
    args: tuple[str, ...] = ()
    env: tuple[tuple[str, str], ...] = ()
    preopens: tuple[Preopen, ...] = ()
    stdout: str | None = None
    stderr: str | None = None
    memory: int | None = None
    fuel: int | None = None
    timeout: float | None = None


@dataclass(frozen=True)
class WasmResult:
    """How a run ended: its outcome, exit code, trap detail and wall-clock duration in seconds."""

    outcome: str
    exit_code: int
    detail: str = ""
    duration: float = 0.0


def run(spec: WasmRun) -> WasmResult:
    """Run `spec` in a fresh worker process and wait for it; raise WasmError if it cannot run."""
    _check(spec)
    request = json.dumps(_request(spec))
    deadline = None if spec.timeout is None else spec.timeout + KILL_GRACE
    worker = subprocess.Popen(
        [sys.executable, "-m", "executor.wasm_worker"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=_worker_env(),
    )
    started = time.monotonic()
    log.debug("wasm worker %d started for %s", worker.pid, spec.module)

    try:
        stdout, stderr = worker.communicate(request.encode(), timeout=deadline)
    except subprocess.TimeoutExpired:
        worker.kill()
        worker.communicate()
        log.warning("wasm worker %d outlived its timeout; killed", worker.pid)
        elapsed = time.monotonic() - started
        return WasmResult(TIMED_OUT, TIMED_OUT_EXIT_CODE, "killed while blocked", elapsed)
    finally:
        # An interrupted wait (KeyboardInterrupt) must not leave the worker running.
        if worker.poll() is None:
            worker.kill()
            worker.wait()

    result = _parse_reply(spec, worker.returncode, stdout, stderr)
    log.info(
        "wasm %s: %s, exit %d in %.3fs",
        spec.module,
        result.outcome,
        result.exit_code,
        result.duration,
    )
    return result


def compile_c(source: Path, output: Path) -> None:
    """Compile a C file to a WASI command module with clang; raise WasmError with its message."""
    clang = shutil.which("clang")
    if clang is None:
        raise WasmError("cannot compile C to WASM: clang is not on PATH")

    command = [clang, "--target=wasm32-wasi", "-O2", str(source), "-o", str(output)]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        message = (done.stderr or done.stdout).strip() or f"clang exited {done.returncode}"
        raise WasmError(f"cannot compile {source} to WASM:\n{message}")


def module_digest(path: Path) -> str:
    """Return "sha256:<hex>" of the module's bytes."""
    digest = hashlib.sha256()
    with path.open("rb") as module:
        for block in iter(lambda: module.read(1 << 20), b""):
            digest.update(block)
    return f"sha256:{digest.hexdigest()}"


def _check(spec: WasmRun) -> None:
    """Refuse early what the worker would fail on anyway, with a message naming the path."""
    if not Path(spec.module).is_file():
        raise WasmError(f"WASM module {spec.module} does not exist or is not a file")
    for preopen in spec.preopens:
        if not Path(preopen.host).is_dir():
            raise WasmError(f"directory {preopen.host} to mount at {preopen.guest} does not exist")
        if not preopen.guest.startswith("/"):
            raise WasmError(f"mount point {preopen.guest!r} must be an absolute guest path")
    limits = {"memory": spec.memory, "fuel": spec.fuel, "timeout": spec.timeout}
    for name, value in limits.items():
        if value is not None and value <= 0:
            raise WasmError(f"the {name} limit must be positive, not {value}")


def _request(spec: WasmRun) -> dict[str, Any]:
    # The request travels on stdin, never argv, because env values may be secrets.
    module = Path(spec.module).resolve()
    return {
        "module": str(module),
        "argv": [module.name, *spec.args],
        "env": [list(pair) for pair in spec.env],
        "preopens": [
            {"host": str(Path(p.host).resolve()), "guest": p.guest, "writable": p.writable}
            for p in spec.preopens
        ],
        "stdout": None if spec.stdout is None else str(Path(spec.stdout).resolve()),
        "stderr": None if spec.stderr is None else str(Path(spec.stderr).resolve()),
        "memory": spec.memory,
        "fuel": spec.fuel,
        "timeout": spec.timeout,
    }


def _worker_env() -> dict[str, str]:
    # `-m executor.wasm_worker` must resolve to this checkout even when run from elsewhere.
    env = dict(os.environ)
    paths = [str(_PACKAGE_ROOT), *filter(None, env.get("PYTHONPATH", "").split(os.pathsep))]
    env["PYTHONPATH"] = os.pathsep.join(paths)
    return env


def _parse_reply(spec: WasmRun, returncode: int, stdout: bytes, stderr: bytes) -> WasmResult:
    tail = stderr.decode(errors="replace")[-_STDERR_TAIL:].strip()
    if returncode < 0:
        name = signal.Signals(-returncode).name
        raise WasmError(f"WASM worker for {spec.module} was killed by {name}{_tail(tail)}")

    try:
        reply = json.loads(stdout)
    except ValueError:
        raise WasmError(
            f"WASM worker for {spec.module} exited {returncode} without a result{_tail(tail)}"
        ) from None

    if "error" in reply:
        raise WasmError(reply["error"])
    return WasmResult(
        outcome=reply["outcome"],
        exit_code=reply["exit_code"],
        detail=reply["detail"],
        duration=reply["duration"],
    )


def _tail(stderr_tail: str) -> str:
    return f"; its stderr ends with:\n{stderr_tail}" if stderr_tail else ""
