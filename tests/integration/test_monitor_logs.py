"""Logs through the monitor's FIFOs (timestamps, streams, rotation, odd bytes) and a monitor
that is killed while its containers run: the next one adopts them, for real under runc.

Each test has its own runc root, bundles and monitor socket (the `host` fixture of
test_containers), which stops every container and monitor afterwards, pass or fail.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from executor import logfile
from executor.containers import ContainerSpec, Mount
from executor.monitor import Monitor, MonitorError, RestartPolicy
from tests.conftest import needs
from tests.integration.test_container_options import project
from tests.integration.test_containers import (
    Host,
    alive,
    dead,
    log_text,
    monitor_pid,
    private_host,
    wait_until,
)
from tests.integration.test_example import force_cleanup, forge_in, leftovers

pytestmark = needs("runc")


@pytest.fixture
def host(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Host]:
    """A private runc root and monitor, cleaned up and checked for leftovers afterwards."""
    yield from private_host(tmp_path, monkeypatch)


TICKS = "i=0; while [ $i -lt {n} ]; do echo tick $i; i=$((i+1)); sleep 0.1; done; exit {code}"


def kill_monitor(host: Host) -> int:
    """SIGKILL the test's monitor, as a crash would; its pid."""
    pid = monitor_pid(host.monitor)
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    # Its main thread is a zombie before the other threads have let go of its socket.
    assert wait_until(lambda: dead(pid) and refused(host.monitor.socket_path))
    return pid


def refused(socket_path: Path) -> bool:
    """True once nothing accepts connections on the socket any more."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
        try:
            conn.connect(str(socket_path))
        except (ConnectionRefusedError, FileNotFoundError):
            return True
    return False


def records(host: Host, container_id: str) -> list[logfile.Record]:
    return list(logfile.read(host.log(container_id)))


def test_records_carry_time_and_stream_and_odd_output_survives(host: Host) -> None:
    """stdout and stderr both land, each line stamped between start and exit; a line of 40,000
    bytes, binary bytes and a last line without newline come back as written."""
    script = (
        "echo out-line; echo err-line >&2; "
        "i=0; while [ $i -lt 4000 ]; do printf xxxxxxxxxx; i=$((i+1)); done; echo; "
        r"printf '\001\377\r tab\t\n'; printf 'no-newline'"
    )
    container_id = host.prepare(ContainerSpec(command=("sh", "-c", script)))
    began = time.time_ns()

    host.start(container_id)
    assert host.wait(container_id, timeout=30).exit_code == 0
    ended = time.time_ns()

    found = records(host, container_id)
    # Two pipes: each stream keeps its order, but not its place among the other's lines.
    assert [r.text for r in found if r.stream == "stderr"] == [b"err-line"]
    assert next(r.text for r in found if r.stream == "stdout") == b"out-line"
    for record in found:
        assert record.time is not None and record.time.endswith("Z")
        assert began <= logfile.parse_time(record.time) <= ended
    stdout = [r for r in found if r.stream == "stdout"]
    rendered = b"".join(logfile.render(iter(stdout), timestamps=False))
    assert rendered.split(b"\n")[1:] == [b"x" * 40000, b"\x01\xff\r tab\t", b"no-newline", b""]
    assert any(r.partial for r in found), "a 40,000-byte line is stored as fragments"
    assert all(len(r.text) <= logfile.MAX_LINE for r in found)


def test_a_log_rotates_at_its_size_and_reads_back_in_order(host: Host) -> None:
    """300 lines into files of 4 KiB, three old files kept: four files, none over the size,
    and what is kept reads back as the last lines, in order."""
    script = "i=0; while [ $i -lt 300 ]; do echo line-$i-padding-padding-padding; i=$((i+1)); done"
    container_id = host.prepare(ContainerSpec(command=("sh", "-c", script)))

    host.monitor.start(
        host.runc_root,
        container_id,
        host.bundle(container_id),
        host.log(container_id),
        log_limits=logfile.Limits(max_size=4096, max_files=3),
    )
    assert host.wait(container_id, timeout=30).exit_code == 0

    files = logfile.files(host.log(container_id))
    assert [f.name for f in files] == [
        f"{container_id}.log.3",
        f"{container_id}.log.2",
        f"{container_id}.log.1",
        f"{container_id}.log",
    ]
    assert all(0 < f.stat().st_size <= 4096 for f in files)
    numbers = [int(line.split("-")[1]) for line in log_text(host.log(container_id)).split()]
    assert numbers == list(range(numbers[0], 300))
    assert numbers[0] > 0, "the oldest lines were rotated out"


def test_a_killed_monitor_is_followed_by_one_that_adopts_its_container(host: Host) -> None:
    """kill -9 of the monitor leaves the container running; the next client's monitor knows it
    (same pid), drains its output again without losing a line, and records its exit: the code
    when it can still be read, else none, with the reason."""
    container_id = host.prepare(ContainerSpec(command=("sh", "-c", TICKS.format(n=40, code=3))))
    pid = host.start(container_id)
    assert wait_until(lambda: "tick 5\n" in host.text(container_id))

    old = kill_monitor(host)
    time.sleep(0.5)  # ticks wait in the FIFO meanwhile
    assert alive(pid)
    status = host.status(container_id)  # a client: it starts a monitor, which adopts

    assert (status.state, status.pid) == ("running", pid)
    assert monitor_pid(host.monitor) not in (None, old)
    final = host.wait(container_id, timeout=30)
    assert final.state == "exited"
    assert final.exit_code == 3 or (final.exit_code is None and "unknown" in str(final.reason))
    assert host.text(container_id) == "".join(f"tick {i}\n" for i in range(40))
    record = json.loads((host.bundle(container_id) / "exit.json").read_text())
    assert record["exit_code"] == final.exit_code
    assert host.runc_list() == []
    assert not any(host.monitor.registry.iterdir()), "the registry forgets what finished"


def test_an_exit_while_no_monitor_ran_is_recorded_honestly(host: Host) -> None:
    """A container that ends while no monitor runs is found ended by the next one: its code if
    a zombie still tells it, else none, with the reason; and runc forgets it."""
    container_id = host.prepare(ContainerSpec(command=("sh", "-c", "sleep 0.5; exit 5")))
    pid = host.start(container_id)
    kill_monitor(host)
    assert wait_until(lambda: dead(pid), timeout=10)

    status = host.wait(container_id, timeout=10)

    assert status.state == "exited"
    if status.exit_code is None:
        assert "no monitor supervised it" in str(status.reason)
    else:
        assert status.exit_code == 5
    assert host.runc_list() == []


def test_an_adopted_container_can_be_stopped(host: Host) -> None:
    """stop reaches a container adopted from a killed monitor: KILL after the grace period."""
    container_id = host.prepare(ContainerSpec(command=("sleep", "1000")))
    pid = host.start(container_id)
    kill_monitor(host)

    stopped = host.stop(container_id, grace=0.2)

    assert stopped.state == "exited"
    assert stopped.exit_code == 137 or stopped.exit_code is None, stopped
    assert dead(pid)
    assert host.runc_list() == []


def test_restart_policy_and_healthcheck_go_on_after_adoption(host: Host, tmp_path: Path) -> None:
    """on-failure:2 counts on across the new monitor, which starts the container again after
    the run it adopted; the healthcheck goes on and sees the service turn unhealthy."""
    flaky = host.prepare(ContainerSpec(command=("sh", "-c", "echo run; sleep 1; exit 7")))
    host.monitor.start(
        host.runc_root,
        flaky,
        host.bundle(flaky),
        host.log(flaky),
        RestartPolicy.parse("on-failure:2"),
    )
    volume = tmp_path / "volume"
    volume.mkdir()
    checked = host.prepare(
        ContainerSpec(command=("sleep", "1000"), mounts=(Mount(str(volume), "/data"),))
    )
    check = {
        "command": ["sh", "-c", "test ! -e /data/bad"],
        "interval": 0.2,
        "timeout": 5,
        "retries": 1,
        "start_period": 0,
    }
    host.monitor.start(
        host.runc_root, checked, host.bundle(checked), host.log(checked), health=check
    )
    assert wait_until(lambda: host.status(checked).health == "healthy")

    kill_monitor(host)
    assert host.status(checked).health == "healthy"
    (volume / "bad").touch()

    assert wait_until(lambda: host.status(checked).health == "unhealthy", timeout=10)
    final = host.wait(flaky, timeout=30)
    assert (final.state, final.exit_code, final.restarts) == ("exited", 7, 2)
    assert host.text(flaky) == "run\n" * 3
    host.stop(checked, grace=0)


TICKER = """
service "ticker" {
  image             = image.busybox
  stop_grace_period = 1s
  command           = ["sh", "-c", "i=0; while true; do echo tick $i; i=$((i+1)); sleep 0.1; done"]
}
"""


def test_forge_ps_logs_and_stop_after_the_monitor_is_killed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """kill -9 of the monitor under a running service: `forge ps` still shows it running (a new
    monitor adopted it), its log goes on without a lost line, `--since` and `--timestamps`
    work, and `forge stop` and `destroy` stop it."""
    socket_path = tmp_path / "monitor.sock"
    monkeypatch.setenv("FORGE_MONITOR_SOCKET", str(socket_path))
    monitor = Monitor(socket_path)
    (tmp_path / "project").mkdir()
    folder, paths = project(tmp_path / "project", TICKER)
    monitors: set[int | None] = set()
    try:
        applied = forge_in(folder, "apply", "--auto-approve")
        assert applied.returncode == 0, applied.stderr
        monitors.add(monitor_pid(monitor))
        assert wait_until(lambda: "tick 3\n" in logs(folder), timeout=10)
        killed = kill_monitor(Host(tmp_path, paths.runc_root, monitor))

        row = ps_row(folder)
        restarted = monitor_pid(monitor)
        monitors.add(restarted)
        before = len(logs(folder).split("\n"))
        time.sleep(1.0)
        ticks = logs(folder).split("\n")
        recent = forge_in(folder, "logs", "--since", "0.5s", "-t", "service.ticker").stdout
        bad = forge_in(folder, "logs", "--since", "yesterday", "service.ticker")
        stopped = forge_in(folder, "stop", "service.ticker")
        after_stop = ps_row(folder)
    finally:
        forge_in(folder, "destroy", "--auto-approve")
        left = leftovers(paths)
        force_cleanup(paths)
        monitors.add(monitor_pid(monitor))
        with contextlib.suppress(MonitorError):
            monitor.shutdown_if_idle()
        for pid in monitors:
            if pid is not None and alive(pid):
                os.kill(pid, signal.SIGKILL)
    assert row["status"] == "running", row
    assert restarted not in (None, killed), "`forge ps` started a monitor, which adopted it"
    assert len(ticks) > before + 5, "the log goes on after the monitor's restart"
    numbers = [int(line.split()[1]) for line in ticks if line]
    assert numbers == list(range(len(numbers))), "no line lost or repeated across the kill"
    stamped = [line.split(" ", 1) for line in recent.splitlines()]
    assert 2 <= len(stamped) <= 10, recent
    for when, text in stamped:
        assert time.time_ns() - logfile.parse_time(when) < 10 * 10**9
        assert text.startswith("tick ")
    assert bad.returncode == 1
    assert "--since 'yesterday' is neither a duration nor a time" in bad.stderr
    assert "10m" in bad.stderr and "Traceback" not in bad.stderr
    assert stopped.returncode == 0, stopped.stderr
    assert after_stop["status"] == "stopped"
    assert left == []


def logs(folder: Path) -> str:
    return forge_in(folder, "logs", "service.ticker").stdout


def ps_row(folder: Path) -> dict[str, Any]:
    listed = forge_in(folder, "ps", "--json")
    assert listed.returncode == 0, listed.stderr
    rows = json.loads(listed.stdout)["workloads"]
    assert [r["address"] for r in rows] == ["service.ticker"]
    row: dict[str, Any] = rows[0]
    return row


def test_finished_containers_leave_no_fd_or_thread_in_the_monitor(host: Host) -> None:
    """Twenty containers run and exit under one monitor: its open fds and threads are as many
    as before, and a running one costs it its two FIFOs and its log, no thread."""
    warm = host.prepare(ContainerSpec(command=("true",)))
    host.start(warm)
    host.wait(warm)
    pid = monitor_pid(host.monitor)
    assert pid is not None
    time.sleep(0.5)  # the threads of the requests just answered end
    before = (fds(pid), threads(pid))

    for _ in range(20):
        container_id = host.prepare(ContainerSpec(command=("sh", "-c", "echo hi; echo ho >&2")))
        host.start(container_id)
        assert host.wait(container_id).exit_code == 0
        assert host.text(container_id) in ("hi\nho\n", "ho\nhi\n")
    sleeper = host.prepare(ContainerSpec(command=("sleep", "1000")))
    host.start(sleeper)
    running = wait_until(lambda: (fds(pid), threads(pid)) == (before[0] + 3, before[1]))
    host.stop(sleeper, grace=0)

    assert running, "a running container costs the monitor its two FIFOs and its log"
    assert wait_until(lambda: (fds(pid), threads(pid)) == before), (fds(pid), threads(pid))


def fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def threads(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/task"))
