"""Real runc containers under the real monitor: logs, exit codes, stop, failures, lifecycle.

Every test gets its own runc root, bundles and monitor socket under tmp_path; the `host`
fixture stops every container and the monitor afterwards, pass or fail, and then checks that
no container and no process is left.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import os
import secrets
import shutil
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import pytest

from executor import logfile
from executor import monitor as monitor_module
from executor.containers import ContainerSpec, Mount, write_bundle
from executor.monitor import ContainerStatus, Monitor, MonitorError, RestartPolicy
from tests.conftest import needs

APPLETS = (
    "sh", "echo", "true", "sleep", "cat", "grep", "httpd", "wget", "unshare", "mount", "insmod",
    "mkdir",
)  # fmt: skip
REPO = Path(__file__).resolve().parent.parent.parent


@dataclass
class Host:
    """One test's private runc root, bundle folder and monitor."""

    tmp: Path
    runc_root: Path
    monitor: Monitor

    def bundle(self, container_id: str) -> Path:
        return self.tmp / "bundles" / container_id

    def log(self, container_id: str) -> Path:
        return self.tmp / "logs" / f"{container_id}.log"

    def text(self, container_id: str) -> str:
        """What the container wrote, as `forge logs` prints it (without timestamps)."""
        return log_text(self.log(container_id))

    def prepare(self, spec: ContainerSpec, *, rootfs: bool = True) -> str:
        """Write a bundle with a busybox rootfs for `spec`; return a fresh container id."""
        container_id = f"forge-test-{secrets.token_hex(4)}"
        bundle = self.bundle(container_id)
        write_bundle(bundle, spec)
        if rootfs:
            make_busybox_rootfs(bundle / "rootfs")
        return container_id

    def start(self, container_id: str) -> int:
        return self.monitor.start(
            self.runc_root, container_id, self.bundle(container_id), self.log(container_id)
        )

    def wait(self, container_id: str, timeout: float = 10.0) -> ContainerStatus:
        return self.monitor.wait(self.runc_root, container_id, self.bundle(container_id), timeout)

    def status(self, container_id: str) -> ContainerStatus:
        return self.monitor.status(self.runc_root, container_id, self.bundle(container_id))

    def stop(self, container_id: str, grace: float = 10.0) -> ContainerStatus:
        return self.monitor.stop(self.runc_root, container_id, self.bundle(container_id), grace)

    def runc_list(self) -> list[str]:
        result = subprocess.run(
            ["runc", "--root", str(self.runc_root), "list", "-q"],
            capture_output=True,
            text=True,
            check=True,
        )
        return result.stdout.split()


def log_text(path: Path) -> str:
    """The text of a log's records, rotated files included, as `forge logs` prints it."""
    return b"".join(logfile.render(logfile.read(path), timestamps=False)).decode()


def make_busybox_rootfs(rootfs: Path) -> None:
    """A minimal rootfs: static busybox with relative applet links, and a page for httpd."""
    (rootfs / "bin").mkdir(parents=True)
    shutil.copy2("/bin/busybox", rootfs / "bin" / "busybox")
    for applet in APPLETS:
        (rootfs / "bin" / applet).symlink_to("busybox")
    (rootfs / "www").mkdir()
    (rootfs / "www" / "index.html").write_text("forge-httpd-page\n")


def processes_rooted_in(folder: Path) -> list[int]:
    """Pids whose root directory lies under `folder`: container processes we started."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if os.readlink(entry / "root").startswith(f"{folder}/"):
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def monitor_pid(monitor: Monitor) -> int | None:
    """The pid of the monitor answering on the socket, or None."""
    try:
        return int(monitor.ping()["pid"])
    except MonitorError:
        return None


def alive(pid: int) -> bool:
    """True while `pid` exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def dead(pid: int) -> bool:
    """True once `pid` is gone or a zombie."""
    return not alive(pid)


def wait_until(condition: Callable[[], bool], timeout: float = 5.0) -> bool:
    """Poll `condition` until it is true or `timeout` passes."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


@pytest.fixture
def host(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Host]:
    """A private runc root and monitor; afterwards nothing of either may be left running."""
    yield from private_host(tmp_path, monkeypatch)


def private_host(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Host]:
    """The `host` fixture's body, for other test modules' fixtures."""
    socket_path = tmp_path / "monitor.sock"
    monkeypatch.setenv("FORGE_MONITOR_SOCKET", str(socket_path))
    host = Host(tmp_path, tmp_path / "runc", Monitor(socket_path))
    host.monitor.ensure_running()
    pids = {monitor_pid(host.monitor)}
    try:
        yield host
    finally:
        pids.add(monitor_pid(host.monitor))
        _clean_up(host, pids)
    assert host.runc_list() == [], "containers left in the runc root"
    assert processes_rooted_in(tmp_path) == [], "container processes left running"
    assert not any(alive(pid) for pid in pids if pid is not None), "monitor left running"


def _clean_up(host: Host, monitor_pids: set[int | None]) -> None:
    """Stop every container and the monitor, by force where asking does not work."""
    if host.runc_root.exists():
        for container_id in host.runc_list():
            try:
                host.stop(container_id, grace=0)
            except MonitorError:
                subprocess.run(
                    ["runc", "--root", str(host.runc_root), "delete", "--force", container_id],
                    check=False,
                )
    monitor_pids.add(monitor_pid(host.monitor))
    with contextlib.suppress(MonitorError):
        host.monitor.shutdown_if_idle()
    for pid in monitor_pids:
        if pid is not None and alive(pid):
            os.kill(pid, signal.SIGKILL)
            wait_until(functools.partial(dead, pid))
    for pid in processes_rooted_in(host.tmp):
        os.kill(pid, signal.SIGKILL)


@needs("runc")
def test_job_output_and_exit_code_are_recorded(host: Host, tmp_path: Path) -> None:
    """A job's output lands in its log and its exit code 3 and time in status and exit.json."""
    volume = tmp_path / "volume"
    volume.mkdir()
    spec = ContainerSpec(
        command=("sh", "-c", "echo forge-job-line; echo kept > /data/out; exit 3"),
        mounts=(Mount(str(volume), "/data"),),
        memory=64 * 1024 * 1024,
        cpus=0.5,
        pids=64,
    )
    container_id = host.prepare(spec)

    pid = host.start(container_id)
    status = host.wait(container_id)

    assert pid > 1
    assert status.state == "exited"
    assert status.exit_code == 3
    assert status.signal is None
    assert status.exited_at is not None and status.exited_at.endswith("Z")
    assert datetime.fromisoformat(status.exited_at).tzinfo is not None
    assert host.text(container_id) == "forge-job-line\n"
    assert (volume / "out").read_text() == "kept\n"
    record = json.loads((host.bundle(container_id) / "exit.json").read_text())
    assert record == {"exit_code": 3, "exited_at": status.exited_at, "signal": None}
    assert host.runc_list() == []


@needs("runc")
def test_fast_containers_still_have_their_exit_code_recorded(host: Host) -> None:
    """`true` exits at once, before anyone polls it, and its exit code 0 is still recorded."""
    for _ in range(5):
        container_id = host.prepare(ContainerSpec(command=("true",)))
        host.start(container_id)

        status = host.wait(container_id)

        assert (status.state, status.exit_code) == ("exited", 0)
        assert host.runc_list() == []


@needs("runc")
def test_log_is_appended_across_runs(host: Host) -> None:
    """Starting a container again under the same id appends to its log and resets its exit."""
    container_id = host.prepare(ContainerSpec(command=("sh", "-c", "echo run; exit 1")))
    host.start(container_id)
    assert host.wait(container_id).exit_code == 1
    write_bundle(host.bundle(container_id), ContainerSpec(command=("sh", "-c", "echo run")))

    host.start(container_id)

    assert host.wait(container_id).exit_code == 0
    assert host.text(container_id) == "run\nrun\n"


@needs("runc")
def test_stop_kills_a_container_that_ignores_term(host: Host) -> None:
    """`sleep` as PID 1 ignores TERM: stop waits the grace period, KILLs and deletes it."""
    container_id = host.prepare(ContainerSpec(command=("sleep", "1000")))
    pid = host.start(container_id)
    running = host.status(container_id)
    assert (running.state, running.pid) == ("running", pid)
    assert alive(pid)
    assert host.wait(container_id, timeout=0.2).state == "running"

    began = time.monotonic()
    stopped = host.stop(container_id, grace=0.5)
    took = time.monotonic() - began

    assert (stopped.state, stopped.exit_code, stopped.signal) == ("exited", 137, "SIGKILL")
    assert 0.5 <= took < 5
    assert container_id not in host.runc_list()
    assert not alive(pid)
    assert host.stop(container_id, grace=0.5) == stopped


@needs("runc")
def test_stop_with_a_term_handler_is_quick(host: Host) -> None:
    """A container that handles TERM exits with its own code well inside the grace period."""
    script = "trap 'echo bye; exit 7' TERM; echo ready; while true; do sleep 0.1; done"
    container_id = host.prepare(ContainerSpec(command=("sh", "-c", script)))
    host.start(container_id)
    assert wait_until(lambda: "ready" in host.text(container_id))

    began = time.monotonic()
    stopped = host.stop(container_id, grace=10)

    assert (stopped.state, stopped.exit_code) == ("exited", 7)
    assert time.monotonic() - began < 5
    assert host.text(container_id) == "ready\nbye\n"


@needs("runc")
def test_ids_that_could_escape_the_runc_root_are_refused(host: Host) -> None:
    """An id like `..` is refused before runc or the file system sees it."""
    with pytest.raises(MonitorError, match=r"invalid container id '\.\.'"):
        host.start("..")


@needs("runc")
def test_stop_of_an_unknown_container_is_a_no_op(host: Host) -> None:
    """Stopping a container that never ran succeeds and reports it as unknown."""
    status = host.stop("forge-test-never-started", grace=0)

    assert status == ContainerStatus("unknown", None, None, None)


@needs("runc")
def test_missing_rootfs_fails_with_runc_reason_and_leaves_nothing(host: Host) -> None:
    """A bundle without rootfs raises MonitorError naming the rootfs; no container remains."""
    container_id = host.prepare(ContainerSpec(command=("true",)), rootfs=False)

    with pytest.raises(MonitorError, match=r"rootfs.*no such file or directory"):
        host.start(container_id)

    assert host.runc_list() == []
    assert host.status(container_id).state == "unknown"


@needs("runc")
def test_bad_command_fails_with_runc_reason_and_leaves_nothing(host: Host) -> None:
    """A command missing from the image raises MonitorError naming it; no container remains."""
    container_id = host.prepare(ContainerSpec(command=("forge-no-such-command",)))

    with pytest.raises(MonitorError, match='"forge-no-such-command": executable file not found'):
        host.start(container_id)

    assert host.runc_list() == []
    assert processes_rooted_in(host.tmp) == []


@needs("runc")
def test_a_running_id_cannot_be_started_twice(host: Host) -> None:
    """Starting an id that is already running is refused and leaves the first one running."""
    container_id = host.prepare(ContainerSpec(command=("sleep", "1000")))
    pid = host.start(container_id)

    with pytest.raises(MonitorError, match="already running"):
        host.start(container_id)

    assert host.status(container_id).pid == pid
    assert alive(pid)
    host.stop(container_id, grace=0)


@needs("runc")
def test_hardened_defaults_hold_and_busybox_still_works(host: Host) -> None:
    """Seccomp, no-new-privileges and no userns inside; sh, httpd and wget all still work."""
    script = (
        "grep -E '^(Seccomp|NoNewPrivs):' /proc/self/status; "
        "unshare -U true 2>/dev/null || echo unshare-refused; "
        "httpd -p 127.0.0.1:8080 -h /www && sleep 0.3 && "
        "wget -q -O- http://127.0.0.1:8080/index.html"
    )
    container_id = host.prepare(ContainerSpec(command=("sh", "-c", script), pids=64))
    host.start(container_id)

    status = host.wait(container_id)

    assert status.exit_code == 0, host.text(container_id)
    lines = host.text(container_id).split("\n")
    assert lines[:4] == ["NoNewPrivs:\t1", "Seccomp:\t2", "unshare-refused", "forge-httpd-page"]


@needs("runc")
def test_a_default_container_cannot_mount_load_modules_or_write_proc_sys(host: Host) -> None:
    """Root inside a default container: mount(2), init_module(2) and /proc/sys writes fail.
    The module is junk: were loading allowed, insmod would say "Invalid module format"."""
    script = (
        "mkdir -p /mnt; mount -t tmpfs none /mnt 2>&1 || echo mount-refused; "
        "echo junk > /junk.ko; insmod /junk.ko 2>&1 || echo insmod-refused; "
        "echo 1 > /proc/sys/kernel/sysrq 2>/dev/null || echo proc-sys-refused"
    )
    container_id = host.prepare(ContainerSpec(command=("sh", "-c", script)))
    host.start(container_id)

    status = host.wait(container_id)

    assert status.exit_code == 0, host.text(container_id)
    lines = host.text(container_id).splitlines()
    assert "mount-refused" in lines and "insmod-refused" in lines and "proc-sys-refused" in lines
    assert not any("Invalid module format" in line for line in lines)
    assert [line for line in lines if line.startswith(("mount:", "insmod:"))] == [
        "mount: permission denied (are you root?)",  # busybox words EPERM so
        "insmod: can't insert '/junk.ko': Operation not permitted",
    ]


@needs("runc")
def test_many_clients_at_once_are_all_answered(host: Host) -> None:
    """An apply's workers ask at the same moment: none is turned away by a full backlog."""
    container_id = host.prepare(ContainerSpec(command=("sleep", "1000")))
    host.start(container_id)
    barrier = threading.Barrier(48)
    answers: list[str] = []

    def ask() -> None:
        barrier.wait()
        try:
            answers.append(host.status(container_id).state)
        except MonitorError as error:
            answers.append(str(error))

    threads = [threading.Thread(target=ask) for _ in range(48)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    host.stop(container_id, grace=0)
    assert answers == ["running"] * 48


@needs("runc")
def test_monitor_survives_clients_that_disconnect(host: Host) -> None:
    """Clients that hang up mid-request or send garbage do not disturb the monitor."""
    container_id = host.prepare(ContainerSpec(command=("sleep", "1000")))
    pid = host.start(container_id)
    before = monitor_pid(host.monitor)
    request = {
        "op": "wait",
        "runc_root": str(host.runc_root),
        "id": container_id,
        "bundle": str(host.bundle(container_id)),
        "timeout": 1,
    }
    for payload in [b"", b'{"op": "wa', b"not json\n", json.dumps(request).encode() + b"\n"]:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
            conn.connect(str(host.monitor.socket_path))
            conn.sendall(payload)

    assert monitor_pid(host.monitor) == before
    assert stat.S_IMODE(host.monitor.socket_path.stat().st_mode) == 0o600
    running = host.status(container_id)
    assert running.started_at is not None and running.started_at.endswith("Z")
    assert dataclasses.replace(running, started_at=None) == ContainerStatus(
        "running", pid, None, None
    )
    assert host.stop(container_id, grace=0).exit_code == 137


@needs("runc")
def test_shutdown_if_idle_only_stops_an_idle_monitor(host: Host) -> None:
    """shutdown_if_idle refuses while a container runs, then stops the monitor process."""
    container_id = host.prepare(ContainerSpec(command=("sleep", "1000")))
    host.start(container_id)
    pid = monitor_pid(host.monitor)
    assert pid is not None

    assert host.monitor.shutdown_if_idle() is False
    host.stop(container_id, grace=0)
    assert host.monitor.shutdown_if_idle() is True

    assert not alive(pid)
    assert not host.monitor.socket_path.exists()
    assert host.status(container_id).exit_code == 137, "read from exit.json without a monitor"
    assert monitor_pid(host.monitor) is None, "status must not start a monitor"
    assert host.monitor.shutdown_if_idle() is True


@needs("runc")
def test_concurrent_clients_start_one_monitor(host: Host) -> None:
    """Clients racing to start the monitor end up sharing a single monitor process."""
    assert host.monitor.shutdown_if_idle()
    clients = [Monitor(host.monitor.socket_path) for _ in range(4)]
    threads = [threading.Thread(target=client.ensure_running) for client in clients]

    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert len({monitor_pid(client) for client in clients}) == 1
    marker = str(host.monitor.socket_path).encode()
    monitors = [p for p in Path("/proc").iterdir() if p.name.isdigit() and _cmdline_has(p, marker)]
    assert len(monitors) == 1


def _cmdline_has(process: Path, marker: bytes) -> bool:
    try:
        return marker in (process / "cmdline").read_bytes()
    except OSError:
        return False


def test_monitor_exits_by_itself_when_idle(tmp_path: Path) -> None:
    """A monitor with no container and no request exits after its idle period."""
    socket_path = tmp_path / "idle.sock"
    env = dict(os.environ, PYTHONPATH=str(REPO))
    command = [sys.executable, "-m", "executor.monitor", "--socket", str(socket_path)]

    began = time.monotonic()
    result = subprocess.run(
        [*command, "--idle", "0.5"], env=env, capture_output=True, text=True, timeout=30
    )

    assert result.returncode == 0, result.stderr
    assert time.monotonic() - began >= 0.5
    assert "idle: shutting down" in result.stderr
    assert not socket_path.exists()


@needs("runc")
def test_statuses_answers_for_many_containers_in_one_request(
    host: Host, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A running, an exited and an unknown container, asked in batches of two: each answer is
    the one `status` gives, in the order asked."""
    monkeypatch.setattr(monitor_module, "STATUS_BATCH", 2)
    running = host.prepare(ContainerSpec(command=("sleep", "1000")))
    host.start(running)
    done = host.prepare(ContainerSpec(command=("sh", "-c", "exit 7")))
    host.start(done)
    host.wait(done)
    asked = [running, done, "forge-test-never"]

    answers = host.monitor.statuses(host.runc_root, [(c, host.bundle(c)) for c in asked])

    assert [(s.state, s.exit_code) for s in answers] == [
        ("running", None),
        ("exited", 7),
        ("unknown", None),
    ]
    assert answers == [host.status(c) for c in asked]
    host.stop(running, grace=0)


@needs("runc")
def test_on_failure_3_restarts_exactly_three_times(host: Host) -> None:
    """A command that always fails runs four times in all, then stays exited with its code."""
    container_id = host.prepare(ContainerSpec(command=("sh", "-c", "echo run; exit 7")))
    host.monitor.start(
        host.runc_root,
        container_id,
        host.bundle(container_id),
        host.log(container_id),
        RestartPolicy.parse("on-failure:3"),
    )

    status = host.wait(container_id, timeout=30)

    assert (status.state, status.exit_code, status.restarts) == ("exited", 7, 3)
    assert host.text(container_id) == "run\n" * 4
    assert host.runc_list() == []


@needs("runc")
def test_on_failure_leaves_a_success_alone_and_always_restarts_until_stopped(host: Host) -> None:
    ok = host.prepare(ContainerSpec(command=("true",)))
    host.monitor.start(
        host.runc_root, ok, host.bundle(ok), host.log(ok), RestartPolicy.parse("on-failure")
    )
    assert (host.wait(ok).exit_code, host.wait(ok).restarts) == (0, 0)

    flapping = host.prepare(ContainerSpec(command=("sh", "-c", "echo up; exit 0")))
    host.monitor.start(
        host.runc_root,
        flapping,
        host.bundle(flapping),
        host.log(flapping),
        RestartPolicy.parse("always"),
    )
    assert wait_until(lambda: host.status(flapping).restarts >= 2, timeout=10)
    # A stop is not a crash: it is not restarted, and stays exited.
    stopped = host.stop(flapping, grace=1)
    assert stopped.state == "exited"
    restarts = stopped.restarts
    time.sleep(0.5)
    assert host.status(flapping).restarts == restarts
    assert host.runc_list() == []


def test_restart_policies_parse_as_compose_writes_them() -> None:
    assert RestartPolicy.parse("on-failure:3") == RestartPolicy("on-failure", 3)
    assert RestartPolicy.parse("unless-stopped").restarts_after(0, 99)
    assert not RestartPolicy.parse("on-failure:2").restarts_after(1, 2)
    assert not RestartPolicy.parse("no").restarts_after(1, 0)
    for bad in ("sometimes", "always:3", "on-failure:x"):
        with pytest.raises(ValueError):
            RestartPolicy.parse(bad)
