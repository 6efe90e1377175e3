"""The WASM worker: runs one module under wasmtime in its own process, for `executor.wasm.run`.

Protocol: a JSON request on stdin, one JSON reply on the original stdout, either a result
(`outcome`, `exit_code`, `detail`, `duration`) or `{"error": message}` when the module cannot be
loaded or linked. Before the module starts, fd 1 and fd 2 are pointed at the module's own output
files (opened for append) and wasmtime inherits them, so nothing the module writes can reach the
reply channel and appends are atomic in the kernel rather than emulated here.
"""

from __future__ import annotations

import faulthandler
import json
import os
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from executor.wasm import (
    EXIT,
    MEMORY_LIMIT,
    MEMORY_LIMIT_EXIT_CODE,
    OUT_OF_FUEL,
    OUT_OF_FUEL_EXIT_CODE,
    TIMED_OUT,
    TIMED_OUT_EXIT_CODE,
    TRAP,
    TRAP_EXIT_CODE,
)

_PAGE = 65536

# XXX: wasmtime-py exposes no hook on a failed memory.grow, so a failed run whose linear memory
# ended this close to the limit is blamed on the limit; pinned by test_memory_limit_* in
# tests/integration/test_wasm.py, both ways.
_NEAR_LIMIT = 0.75


class _LoadError(Exception):
    """The module cannot be read, compiled or linked: reported as `{"error": ...}`."""


def main() -> int:
    """Read one request on stdin, run it, write one reply; return the worker's exit status."""
    reply_channel = os.fdopen(os.dup(1), "w")
    # Tracebacks and faulthandler dumps must reach the caller even after fd 2 becomes the module's.
    sys.stderr = os.fdopen(os.dup(2), "w")
    faulthandler.enable(sys.stderr)
    _redirect(1, None)

    request = json.loads(sys.stdin.read())
    try:
        reply = execute(request)
    except _LoadError as error:
        reply = {"error": str(error)}

    json.dump(reply, reply_channel)
    reply_channel.close()
    return 0


def execute(request: dict[str, Any]) -> dict[str, Any]:
    """Compile, link and run the requested module; return the reply as a dict."""
    import wasmtime

    engine = wasmtime.Engine(_config(request))
    module = _compile(engine, request["module"])
    store = _store(engine, request)
    linker = wasmtime.Linker(engine)
    linker.define_wasi()

    started = time.monotonic()
    with _epoch_timer(engine, request["timeout"]):
        try:
            instance = linker.instantiate(store, module)
        except wasmtime.ExitTrap as exit_trap:
            return _reply(EXIT, exit_trap.code, "", started)
        except wasmtime.Trap as trap:
            return _reply(*_trap_outcome(trap), started)
        except wasmtime.WasmtimeError as error:
            return _instantiate_failure(request, module, error, started)
        ending = _call_start(store, instance, request["module"])

    outcome, exit_code, detail = ending
    if outcome in (EXIT, TRAP) and (outcome, exit_code) != (EXIT, 0):
        outcome, exit_code, detail = _blame_memory(request, store, instance, ending)
    return _reply(outcome, exit_code, detail, started)


def _config(request: dict[str, Any]) -> Any:
    import wasmtime

    config = wasmtime.Config()
    # Enabled only when asked for: either one, enabled and never set, traps on the first call.
    config.consume_fuel = request["fuel"] is not None
    config.epoch_interruption = request["timeout"] is not None
    return config


def _compile(engine: Any, path: str) -> Any:
    import wasmtime

    try:
        return wasmtime.Module.from_file(engine, path)
    except (OSError, wasmtime.WasmtimeError) as error:
        raise _LoadError(f"cannot compile WASM module {path}: {_first_line(error)}") from None


def _store(engine: Any, request: dict[str, Any]) -> Any:
    import wasmtime

    store = wasmtime.Store(engine)
    if request["memory"] is not None:
        store.set_limits(memory_size=request["memory"])
    if request["fuel"] is not None:
        store.set_fuel(request["fuel"])
    if request["timeout"] is not None:
        store.set_epoch_deadline(1)

    wasi = wasmtime.WasiConfig()
    wasi.argv = request["argv"]
    wasi.env = [tuple(pair) for pair in request["env"]]
    for preopen in request["preopens"]:
        try:
            wasi.preopen_dir(preopen["host"], preopen["guest"], preopen["writable"])
        except wasmtime.WasmtimeError:
            raise _LoadError(f"cannot mount {preopen['host']} at {preopen['guest']}") from None

    _redirect(1, request["stdout"])
    _redirect(2, request["stderr"])
    wasi.inherit_stdout()
    wasi.inherit_stderr()
    store.set_wasi(wasi)
    return store


def _redirect(fd: int, path: str | None) -> None:
    """Point `fd` at `path` opened for append, or at /dev/null when there is no path."""
    target = os.devnull if path is None else path
    try:
        opened = os.open(target, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError as error:
        raise _LoadError(f"cannot open {target} for module output: {error.strerror}") from None
    os.dup2(opened, fd)
    os.close(opened)


@contextmanager
def _epoch_timer(engine: Any, timeout: float | None) -> Iterator[None]:
    """Advance the engine's epoch once after `timeout` seconds, which traps the running module."""
    if timeout is None:
        yield
        return

    timer = threading.Timer(timeout, engine.increment_epoch)
    timer.daemon = True
    timer.start()
    try:
        yield
    finally:
        timer.cancel()


def _call_start(store: Any, instance: Any, path: str) -> tuple[str, int, str]:
    import wasmtime

    start = instance.exports(store).get("_start")
    if not isinstance(start, wasmtime.Func):
        raise _LoadError(f"WASM module {path} exports no _start: it is not a WASI command")

    try:
        start(store)
    except wasmtime.ExitTrap as exit_trap:
        return EXIT, exit_trap.code, ""
    except wasmtime.Trap as trap:
        return _trap_outcome(trap)
    except wasmtime.WasmtimeError as error:
        # A host function failing (a WASI call refusing its arguments, say) ends the run too.
        return TRAP, TRAP_EXIT_CODE, _first_line(error)
    return EXIT, 0, ""


def _trap_outcome(trap: Any) -> tuple[str, int, str]:
    import wasmtime

    code = trap.trap_code
    if code is wasmtime.TrapCode.OUT_OF_FUEL:
        return OUT_OF_FUEL, OUT_OF_FUEL_EXIT_CODE, ""
    if code is wasmtime.TrapCode.INTERRUPT:
        return TIMED_OUT, TIMED_OUT_EXIT_CODE, ""

    what = code.name.lower().replace("_", " ") if code is not None else _first_line(trap)
    frames = trap.frames
    where = frames[0].func_name if frames else None
    return TRAP, TRAP_EXIT_CODE, f"{what} in {where}" if where else what


def _instantiate_failure(
    request: dict[str, Any], module: Any, error: Exception, started: float
) -> dict[str, Any]:
    """A module whose initial memory exceeds the limit hit it; any other failure is a link error."""
    limit = request["memory"]
    if limit is not None and _initial_memory(module) > limit:
        return _reply(MEMORY_LIMIT, MEMORY_LIMIT_EXIT_CODE, _first_line(error), started)
    raise _LoadError(f"cannot link WASM module {request['module']}: {_first_line(error)}")


def _initial_memory(module: Any) -> int:
    import wasmtime

    sizes = [
        item.type.limits.min * _PAGE
        for item in [*module.exports, *module.imports]
        if isinstance(item.type, wasmtime.MemoryType)
    ]
    return max(sizes, default=0)


def _blame_memory(
    request: dict[str, Any], store: Any, instance: Any, ending: tuple[str, int, str]
) -> tuple[str, int, str]:
    """Report a failed run as "memory limit" when its memory ended near the limit."""
    import wasmtime

    limit = request["memory"]
    memory = instance.exports(store).get("memory")
    if limit is None or not isinstance(memory, wasmtime.Memory):
        return ending

    used = memory.data_len(store)
    if used < limit * _NEAR_LIMIT:
        return ending
    outcome, exit_code, detail = ending
    why = f"linear memory at {used} of {limit} bytes"
    if outcome == EXIT:
        return MEMORY_LIMIT, exit_code, f"{why}; exited {exit_code}"
    return MEMORY_LIMIT, MEMORY_LIMIT_EXIT_CODE, f"{why}; {detail}"


def _reply(outcome: str, exit_code: int, detail: str, started: float) -> dict[str, Any]:
    return {
        "outcome": outcome,
        "exit_code": exit_code,
        "detail": detail,
        "duration": time.monotonic() - started,
    }


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


if __name__ == "__main__":
    sys.exit(main())
