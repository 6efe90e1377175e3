"""The WASM driver against real wasmtime, with modules compiled from C by the host's clang."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from executor import wasm
from executor.wasm import Preopen, WasmError, WasmRun, compile_c, module_digest

REPO = Path(__file__).resolve().parents[2]
GREET = REPO / "examples" / "hello" / "wasm" / "greet.c"
MiB = 1024 * 1024

Build = Callable[[str, str], Path]

LOOP = "int main(void) { volatile unsigned n = 0; for (;;) { n++; } }\n"

# Allocates argv[1] blocks of 256 KiB, keeping each reachable so the compiler cannot drop them;
# on a failed malloc it says so and exits 1, or traps when argv[2] is "abort".
ALLOCATE = r"""
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
int main(int argc, char **argv) {
    int blocks = argc > 1 ? atoi(argv[1]) : 1000000;
    void *head = NULL;
    for (int i = 0; i < blocks; i++) {
        void **block = malloc(256 * 1024);
        if (block == NULL) {
            fprintf(stderr, "out of memory after %d blocks\n", i);
            if (argc > 2 && strcmp(argv[2], "abort") == 0) abort();
            return 1;
        }
        *block = head;
        head = block;
    }
    return head == NULL;
}
"""

# Tries to create a file in /data; exits 3 when the preopen refuses.
WRITE_DATA = r"""
#include <errno.h>
#include <stdio.h>
#include <string.h>
int main(void) {
    FILE *file = fopen("/data/written.txt", "w");
    if (file == NULL) {
        fprintf(stderr, "refused: %s\n", strerror(errno));
        return 3;
    }
    fputs("written\n", file);
    return fclose(file) == 0 ? 0 : 4;
}
"""

# Prints its argv and one env var, one per line.
ECHO = r"""
#include <stdio.h>
#include <stdlib.h>
int main(int argc, char **argv) {
    for (int i = 0; i < argc; i++) printf("argv[%d]=%s\n", i, argv[i]);
    const char *who = getenv("FORGE_WHO");
    printf("FORGE_WHO=%s\n", who ? who : "(unset)");
    fprintf(stderr, "to stderr\n");
    return 0;
}
"""


@pytest.fixture(scope="session")
def wasi_clang(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Skip the module when clang cannot build wasm32-wasi programs here."""
    folder = tmp_path_factory.mktemp("probe")
    source = folder / "probe.c"
    source.write_text("int main(void) { return 0; }\n")
    try:
        compile_c(source, folder / "probe.wasm")
    except WasmError as error:
        pytest.skip(f"clang cannot target wasm32-wasi: {error}")


@pytest.fixture
def build(wasi_clang: None, tmp_path: Path) -> Build:
    """Compile C source text into tmp_path/<name>.wasm and return the module's path."""

    def compile_source(name: str, source: str) -> Path:
        c_file = tmp_path / f"{name}.c"
        c_file.write_text(source)
        module = tmp_path / f"{name}.wasm"
        compile_c(c_file, module)
        return module

    return compile_source


@pytest.fixture
def greet(wasi_clang: None, tmp_path: Path) -> Path:
    """The hello example's greet.c, compiled."""
    module = tmp_path / "greet.wasm"
    compile_c(GREET, module)
    return module


@pytest.fixture
def data(tmp_path: Path) -> Path:
    """An empty host directory to mount at /data."""
    folder = tmp_path / "data"
    folder.mkdir()
    return folder


def test_greet_writes_greeting_to_stdout_and_volume(
    greet: Path, data: Path, tmp_path: Path
) -> None:
    """greet reads argv, FORGE_WHO and /data/name.txt and writes its line to stdout and /data."""
    (data / "name.txt").write_text("Ada\nLovelace\n")
    stdout = tmp_path / "stdout.log"

    result = wasm.run(
        WasmRun(
            module=str(greet),
            args=("Hello",),
            env=(("FORGE_WHO", "ci"),),
            preopens=(Preopen(str(data), "/data", writable=True),),
            stdout=str(stdout),
        )
    )

    assert (result.outcome, result.exit_code, result.detail) == ("exit", 0, "")
    assert result.duration > 0
    assert stdout.read_text() == "Hello, Ada (asked by ci)\n"
    assert (data / "result.txt").read_text() == "Hello, Ada (asked by ci)\n"


def test_greet_without_forge_who_names_nobody(greet: Path, data: Path, tmp_path: Path) -> None:
    """An unset FORGE_WHO is reported as "nobody"."""
    (data / "name.txt").write_text("Grace")

    result = wasm.run(
        WasmRun(str(greet), ("Hi",), preopens=(Preopen(str(data), "/data", writable=True),))
    )

    assert result.exit_code == 0
    assert (data / "result.txt").read_text() == "Hi, Grace (asked by nobody)\n"


def test_greet_without_name_file_exits_2(greet: Path, data: Path, tmp_path: Path) -> None:
    """A missing /data/name.txt makes greet exit 2 with a message on stderr."""
    stderr = tmp_path / "stderr.log"

    result = wasm.run(
        WasmRun(str(greet), ("Hi",), preopens=(Preopen(str(data), "/data"),), stderr=str(stderr))
    )

    assert (result.outcome, result.exit_code) == ("exit", 2)
    assert "cannot read /data/name.txt" in stderr.read_text()
    assert not (data / "result.txt").exists()


def test_output_files_are_appended_to(build: Build, tmp_path: Path) -> None:
    """The module's stdout and stderr files are appended to, never truncated."""
    module = build("echo", ECHO)
    stdout, stderr = tmp_path / "out.log", tmp_path / "err.log"
    stdout.write_text("earlier\n")

    for _ in range(2):
        wasm.run(WasmRun(str(module), ("x",), stdout=str(stdout), stderr=str(stderr)))

    run_output = "argv[0]=echo.wasm\nargv[1]=x\nFORGE_WHO=(unset)\n"
    assert stdout.read_text() == "earlier\n" + run_output * 2
    assert stderr.read_text() == "to stderr\n" * 2


def test_argv_zero_is_the_module_file_name_and_env_is_passed(build: Build, tmp_path: Path) -> None:
    """argv[0] is the module's file name, the args follow, and only the given env is visible."""
    module = build("echo", ECHO)
    stdout = tmp_path / "out.log"

    wasm.run(WasmRun(str(module), ("a b", "c"), env=(("FORGE_WHO", "me"),), stdout=str(stdout)))

    assert stdout.read_text() == "argv[0]=echo.wasm\nargv[1]=a b\nargv[2]=c\nFORGE_WHO=me\n"


def test_discarded_output_does_not_fail_the_module(build: Build) -> None:
    """With no stdout or stderr file the module's output is dropped and it still exits 0."""
    result = wasm.run(WasmRun(str(build("echo", ECHO))))

    assert (result.outcome, result.exit_code) == ("exit", 0)


def test_exit_code_is_recorded(build: Build) -> None:
    """A module returning 7 from main ends with outcome "exit" and exit code 7."""
    module = build("seven", "int main(void) { return 7; }\n")

    result = wasm.run(WasmRun(str(module)))

    assert (result.outcome, result.exit_code, result.detail) == ("exit", 7, "")


def test_infinite_loop_runs_out_of_fuel(build: Build) -> None:
    """A module that outspends its fuel ends "out of fuel" with a non-zero exit code."""
    result = wasm.run(WasmRun(str(build("loop", LOOP)), fuel=1_000_000))

    assert result.outcome == "out of fuel"
    assert result.exit_code == wasm.OUT_OF_FUEL_EXIT_CODE != 0
    assert result.detail == ""


def test_fuel_enough_for_the_module_is_not_an_error(build: Build) -> None:
    """Setting fuel a module does not exhaust leaves its exit untouched."""
    module = build("seven", "int main(void) { return 7; }\n")

    result = wasm.run(WasmRun(str(module), fuel=10_000_000, timeout=30))

    assert (result.outcome, result.exit_code) == ("exit", 7)


def test_infinite_loop_times_out(build: Build) -> None:
    """A module still running at its timeout is interrupted and ends "timed out"."""
    started = time.monotonic()

    result = wasm.run(WasmRun(str(build("loop", LOOP)), timeout=0.5))

    assert result.outcome == "timed out"
    assert result.exit_code == wasm.TIMED_OUT_EXIT_CODE != 0
    assert 0.5 <= result.duration < 5
    assert time.monotonic() - started < 10


def test_module_blocked_in_a_host_call_is_killed_after_the_grace(
    build: Build, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Epochs cannot interrupt a WASI sleep, so the caller kills the worker after the grace."""
    module = build("sleep", "#include <unistd.h>\nint main(void) { sleep(60); return 0; }\n")
    monkeypatch.setattr(wasm, "KILL_GRACE", 1.0)

    result = wasm.run(WasmRun(str(module), timeout=0.5))

    assert (result.outcome, result.exit_code) == ("timed out", wasm.TIMED_OUT_EXIT_CODE)
    assert result.duration < 10


def test_memory_limit_stops_a_growing_module(build: Build, tmp_path: Path) -> None:
    """A module whose mallocs fail at a 2 MiB limit and which then exits 1 ends "memory limit"."""
    stderr = tmp_path / "err.log"

    result = wasm.run(WasmRun(str(build("alloc", ALLOCATE)), memory=2 * MiB, stderr=str(stderr)))

    assert result.outcome == "memory limit"
    assert result.exit_code == 1
    assert "of 2097152 bytes" in result.detail
    assert "out of memory" in stderr.read_text()


def test_memory_limit_trap_gets_the_memory_exit_code(build: Build) -> None:
    """A module that aborts when malloc fails at the limit ends "memory limit" with 137."""
    result = wasm.run(WasmRun(str(build("alloc", ALLOCATE)), ("100000", "abort"), memory=2 * MiB))

    assert (result.outcome, result.exit_code) == ("memory limit", wasm.MEMORY_LIMIT_EXIT_CODE)
    assert "unreachable" in result.detail


def test_memory_limit_allows_what_fits(build: Build) -> None:
    """The same program allocating 4 blocks (1 MiB) under a 2 MiB limit exits 0."""
    result = wasm.run(WasmRun(str(build("alloc", ALLOCATE)), ("4",), memory=2 * MiB))

    assert (result.outcome, result.exit_code) == ("exit", 0)


def test_memory_limit_is_not_blamed_for_failures_far_below_it(build: Build) -> None:
    """A module failing with little memory in use under a limit keeps its plain outcome."""
    module = build("seven", "int main(void) { return 7; }\n")

    result = wasm.run(WasmRun(str(module), memory=64 * MiB))

    assert (result.outcome, result.exit_code) == ("exit", 7)


def test_initial_memory_above_the_limit_is_a_memory_limit(build: Build) -> None:
    """A limit below the module's initial memory fails instantiation as "memory limit"."""
    module = build("seven", "int main(void) { return 7; }\n")

    result = wasm.run(WasmRun(str(module), memory=64 * 1024))

    assert (result.outcome, result.exit_code) == ("memory limit", wasm.MEMORY_LIMIT_EXIT_CODE)


def test_trap_is_reported_with_its_code_and_function(build: Build) -> None:
    """__builtin_trap ends the run as "trap" with the trap code and the function in detail."""
    source = "__attribute__((noinline)) void explode(void) { __builtin_trap(); }\n"
    module = build("trap", source + "int main(void) { explode(); return 0; }\n")

    result = wasm.run(WasmRun(str(module)))

    assert (result.outcome, result.exit_code) == ("trap", wasm.TRAP_EXIT_CODE)
    assert result.detail == "unreachable in explode"


def test_read_only_preopen_cannot_be_written(build: Build, data: Path, tmp_path: Path) -> None:
    """A preopen that is not writable refuses file creation: the module sees EPERM, exits 3."""
    stderr = tmp_path / "err.log"

    result = wasm.run(
        WasmRun(
            str(build("write", WRITE_DATA)),
            preopens=(Preopen(str(data), "/data"),),
            stderr=str(stderr),
        )
    )

    assert (result.outcome, result.exit_code) == ("exit", 3)
    assert stderr.read_text() == "refused: Operation not permitted\n"
    assert not (data / "written.txt").exists()


def test_writable_preopen_can_be_written(build: Build, data: Path) -> None:
    """The same module writes through a writable preopen."""
    result = wasm.run(
        WasmRun(str(build("write", WRITE_DATA)), preopens=(Preopen(str(data), "/data", True),))
    )

    assert result.exit_code == 0
    assert (data / "written.txt").read_text() == "written\n"


def test_caller_survives_a_killed_worker(build: Build) -> None:
    """A worker killed by a signal raises WasmError naming the signal; the caller carries on."""
    outcome: list[BaseException | wasm.WasmResult] = []
    module = build("loop", LOOP)

    def call() -> None:
        try:
            outcome.append(wasm.run(WasmRun(str(module), timeout=30)))
        except BaseException as error:
            outcome.append(error)

    caller = threading.Thread(target=call)
    caller.start()
    try:
        worker = _wait_for_worker()
        os.kill(worker, signal.SIGKILL)
    finally:
        caller.join(timeout=60)

    assert len(outcome) == 1
    error = outcome[0]
    assert isinstance(error, WasmError)
    assert "killed by SIGKILL" in str(error)


def test_missing_module_raises(tmp_path: Path) -> None:
    """A module path that does not exist raises WasmError before any worker starts."""
    with pytest.raises(WasmError, match="does not exist"):
        wasm.run(WasmRun(str(tmp_path / "absent.wasm")))


def test_invalid_module_raises(tmp_path: Path) -> None:
    """Bytes that are not WASM raise WasmError saying the module cannot be compiled."""
    module = tmp_path / "junk.wasm"
    module.write_bytes(b"\0asm-not-really")

    with pytest.raises(WasmError, match="cannot compile WASM module"):
        wasm.run(WasmRun(str(module)))


def test_module_without_start_raises(tmp_path: Path) -> None:
    """A module that is not a WASI command (no _start) raises WasmError."""
    module = tmp_path / "empty.wasm"
    module.write_bytes(b"\0asm\x01\0\0\0")

    with pytest.raises(WasmError, match="exports no _start"):
        wasm.run(WasmRun(str(module)))


def test_missing_preopen_directory_raises(greet: Path, tmp_path: Path) -> None:
    """A preopen whose host directory is missing raises WasmError naming it."""
    with pytest.raises(WasmError, match="absent"):
        wasm.run(WasmRun(str(greet), ("Hi",), preopens=(Preopen(str(tmp_path / "absent"), "/d"),)))


@pytest.mark.parametrize("limit", ["memory", "fuel", "timeout"])
def test_non_positive_limits_raise(greet: Path, limit: str) -> None:
    """A zero memory, fuel or timeout limit is refused with WasmError naming it."""
    with pytest.raises(WasmError, match=f"the {limit} limit must be positive"):
        wasm.run(WasmRun(str(greet), **{limit: 0}))  # type: ignore[arg-type]


def test_compile_c_reports_clangs_message(wasi_clang: None, tmp_path: Path) -> None:
    """A C file that does not compile raises WasmError carrying clang's diagnostic."""
    source = tmp_path / "broken.c"
    source.write_text("int main(void) { return missing; }\n")

    with pytest.raises(WasmError, match="use of undeclared identifier 'missing'"):
        compile_c(source, tmp_path / "broken.wasm")


def test_module_digest_is_sha256_of_the_bytes(tmp_path: Path) -> None:
    """module_digest is "sha256:" and the hex digest of the file's bytes."""
    module = tmp_path / "m.wasm"
    module.write_bytes(b"\0asm\x01\0\0\0")

    assert module_digest(module) == (
        "sha256:93a44bbb96c751218e4c00d479e4c14358122a389acca16205b1e4d0dc5f9476"
    )


def _wait_for_worker(timeout: float = 30.0) -> int:
    """Return the pid of this process's running wasm worker, once it has started."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit() and _is_our_worker(entry):
                return int(entry.name)
        time.sleep(0.05)
    raise AssertionError("no wasm worker appeared")


def _is_our_worker(proc: Path) -> bool:
    try:
        stat = (proc / "stat").read_text()
        cmdline = (proc / "cmdline").read_bytes()
    except OSError:
        return False
    parent = int(stat.rsplit(")", 1)[1].split()[1])
    return parent == os.getpid() and b"executor.wasm_worker" in cmdline
