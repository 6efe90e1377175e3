"""The project lock: who holds it is on record, and force-unlock stops a hung holder."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from executor.state import StateError, StateLocked, force_unlock, lock_holder, locked
from forge.cli import app

HOLD = """
import sys, time
from pathlib import Path
from executor.state import locked
with locked(Path(sys.argv[1]), "apply"):
    print("held", flush=True)
    try:
        time.sleep(60)
    except KeyboardInterrupt:
        print("interrupted", flush=True)
"""


@pytest.fixture
def holder(tmp_path: Path) -> Iterator[subprocess.Popen[str]]:
    """A process holding the lock on tmp_path/.forge, killed whatever the test does."""
    # SIGTERM becomes KeyboardInterrupt, as forge's main() makes it.
    code = "import signal\nsignal.signal(signal.SIGTERM, signal.default_int_handler)\n" + HOLD
    process = subprocess.Popen(
        [sys.executable, "-c", code, str(tmp_path / ".forge")], stdout=subprocess.PIPE, text=True
    )
    try:
        assert process.stdout is not None and process.stdout.readline() == "held\n"
        yield process
    finally:
        process.kill()
        process.communicate()  # waits, and closes the pipe


def test_a_second_holder_is_told_who_holds_the_lock(
    tmp_path: Path, holder: subprocess.Popen[str]
) -> None:
    with pytest.raises(StateLocked) as caught, locked(tmp_path / ".forge"):
        pass
    found = lock_holder(tmp_path / ".forge")

    assert found is not None and found.pid == holder.pid and found.operation == "apply"
    assert f"(pid {holder.pid}) holds it for `apply`" in str(caught.value)
    assert f"forge force-unlock {found.id}" in caught.value.hint


def test_the_lock_is_free_when_its_holder_dies(
    tmp_path: Path, holder: subprocess.Popen[str]
) -> None:
    holder.kill()
    holder.wait()

    assert lock_holder(tmp_path / ".forge") is None
    with locked(tmp_path / ".forge", "destroy") as mine:
        assert lock_holder(tmp_path / ".forge") == mine


def test_force_unlock_needs_the_right_id_then_stops_the_holder(
    tmp_path: Path, holder: subprocess.Popen[str]
) -> None:
    with pytest.raises(StateError, match="is not the lock"):
        force_unlock(tmp_path / ".forge", "00000000")
    found = lock_holder(tmp_path / ".forge")
    assert found is not None

    stopped = force_unlock(tmp_path / ".forge", found.id)

    assert stopped == found
    assert lock_holder(tmp_path / ".forge") is None
    out, _ = holder.communicate(timeout=10)
    assert out == "interrupted\n"  # stopped as Ctrl-C stops it, through its own handlers


def test_force_unlock_of_a_free_lock_says_so(tmp_path: Path) -> None:
    with pytest.raises(StateError, match="not locked"):
        force_unlock(tmp_path / ".forge", "abcd1234")


def test_the_command_stops_the_holder(tmp_path: Path, holder: subprocess.Popen[str]) -> None:
    found = lock_holder(tmp_path / ".forge")
    assert found is not None
    args = ["force-unlock", found.id, "--auto-approve", "-f", str(tmp_path)]
    result = CliRunner().invoke(app, args)

    assert result.exit_code == 0, result.output
    assert f"process {holder.pid} (apply) stopped" in result.output
    started = time.monotonic()
    holder.wait(timeout=10)
    assert time.monotonic() - started < 10
