"""Container options from a Forgefile to a running container, for real under runc: tmpfs,
cap_drop, sysctls, ulimits, init and stop_signal."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from executor.containers import INIT_BINARY
from executor.paths import ProjectPaths
from tests.conftest import needs
from tests.integration.test_example import force_cleanup, forge_in, leftovers

pytestmark = needs("runc")

BUSYBOX = """
image "busybox" {
  context = "/bin"
  copy {
    src  = "busybox"
    dst  = "/bin/busybox"
    mode = "0755"
  }
  link {
    target = "busybox"
    links  = ["/bin/sh", "/bin/cat", "/bin/grep", "/bin/touch", "/bin/echo", "/bin/sleep",
              "/bin/seq", "/bin/test", "/bin/false"]
  }
}
"""

PROBE = r"""
job "probe" {
  image     = image.busybox
  read_only = true
  tmpfs     = ["/scratch"]
  cap_drop  = ["ALL"]
  sysctls   = { "net.ipv4.ip_unprivileged_port_start" = "0" }
  ulimits   = { nofile = 1000, nproc = 50 }
  init      = INIT
  command   = ["sh", "-c", <<-SH
    touch /scratch/ok && echo tmpfs-writable
    touch /rootfs-file 2>/dev/null || echo root-read-only
    grep CapEff /proc/self/status
    echo port-start=$(cat /proc/sys/net/ipv4/ip_unprivileged_port_start)
    echo nofile=$(ulimit -n) nproc=$(ulimit -u)
    echo pid1=$(cat /proc/1/cmdline | tr '\0' ' ')
    SH
  ]
}
"""

POLITE = """
variable "round" {
  default = "1"
}

service "polite" {
  image             = image.busybox
  stop_signal       = "INT"
  stop_grace_period = 30s
  command = [
    "sh", "-c",
    "trap 'echo got-int; exit 0' INT; echo ready ${var.round}; while true; do sleep 0.1; done",
  ]
}
"""


def project(tmp_path: Path, text: str) -> tuple[Path, ProjectPaths]:
    (tmp_path / "Forgefile").write_text(BUSYBOX + text)
    assert forge_in(tmp_path, "key", "generate").returncode == 0
    return tmp_path, ProjectPaths.for_state_dir(tmp_path / ".forge")


@pytest.mark.skipif(not Path(INIT_BINARY).is_file(), reason="needs tini (apt-get install tini)")
def test_tmpfs_cap_drop_sysctls_ulimits_and_init_hold_inside(tmp_path: Path) -> None:
    folder, paths = project(tmp_path, PROBE.replace("INIT", "true"))
    try:
        applied = forge_in(folder, "apply", "--auto-approve")
        assert applied.returncode == 0, applied.stdout + applied.stderr
        lines = forge_in(folder, "logs", "job.probe").stdout.splitlines()
    finally:
        forge_in(folder, "destroy", "--auto-approve")
        left = leftovers(paths)
        force_cleanup(paths)
    assert lines == [
        "tmpfs-writable",
        "root-read-only",
        "CapEff:\t0000000000000000",
        "port-start=0",
        "nofile=1000 nproc=50",
        "pid1=/dev/init -- sh -c " + lines[-1].split(" -c ", 1)[1],
    ]
    assert left == []


def test_a_ulimit_above_the_hosts_is_refused_before_anything_runs(tmp_path: Path) -> None:
    folder, paths = project(
        tmp_path, PROBE.replace("INIT", "false").replace("nofile = 1000", "nofile = 999999999")
    )
    try:
        refused = forge_in(folder, "apply", "--auto-approve")
        state = json.loads(forge_in(folder, "state", "export").stdout)
    finally:
        forge_in(folder, "destroy", "--auto-approve")
        force_cleanup(paths)
    assert refused.returncode == 4
    assert "above this host's hard limit" in refused.stderr
    assert state["resources"] == []


def test_stop_signal_asks_politely(tmp_path: Path) -> None:
    """A service that exits on INT is stopped with INT when it is replaced, not KILLed after
    its 30 s grace period: its log (which a replacement keeps) says it got the signal."""
    folder, paths = project(tmp_path, POLITE)
    try:
        assert forge_in(folder, "apply", "--auto-approve").returncode == 0
        started = time.monotonic()
        replaced = forge_in(folder, "apply", "--auto-approve", "--var", "round=2")
        took = time.monotonic() - started
        log = forge_in(folder, "logs", "service.polite").stdout
    finally:
        forge_in(folder, "destroy", "--auto-approve")
        left = leftovers(paths)
        force_cleanup(paths)
    assert replaced.returncode == 0, replaced.stderr
    assert took < 20, "the stop waited out the grace period: INT was not sent"
    assert "ready 1\ngot-int\n" in log and "ready 2" in log
    assert left == []


def test_a_job_with_restart_on_failure_runs_again_before_it_fails(tmp_path: Path) -> None:
    """restart = "on-failure:2": the job runs three times, then the apply fails on its code."""
    folder, paths = project(
        tmp_path,
        'job "flaky" {\n  image = image.busybox\n  restart = "on-failure:2"\n'
        '  command = ["sh", "-c", "echo try; exit 3"]\n}\n',
    )
    try:
        failed = forge_in(folder, "apply", "--auto-approve")
        log = forge_in(folder, "logs", "job.flaky").stdout
    finally:
        forge_in(folder, "destroy", "--auto-approve")
        left = leftovers(paths)
        force_cleanup(paths)
    assert failed.returncode == 4 and "exited with code 3" in failed.stderr
    assert log == "try\n" * 3
    assert left == []


def test_stop_start_restart_exec_and_inspect_one_service(tmp_path: Path) -> None:
    """stop leaves the record (plan shows the drift), start brings the same container back,
    exec runs inside with the command's exit code, inspect shows the config runc was given."""
    folder, paths = project(
        tmp_path,
        'service "web" {\n  image = image.busybox\n  hostname = "webhost"\n'
        '  stop_grace_period = 0s\n  command = ["sleep", "600"]\n}\n',
    )

    def ps() -> dict[str, object]:
        rows = json.loads(forge_in(folder, "ps", "--json").stdout)["workloads"]
        return {r["address"]: r for r in rows}["service.web"]  # type: ignore[no-any-return]

    try:
        assert forge_in(folder, "apply", "--auto-approve").returncode == 0
        first = ps()
        assert isinstance(first["uptime_seconds"], int) and first["uptime_seconds"] >= 0
        assert str(first["started_at"]).endswith("Z")
        assert forge_in(folder, "stop", "service.web").returncode == 0
        assert ps()["uptime_seconds"] is None
        assert ps()["status"] == "stopped"  # not a crash, whatever its exit code
        plan = json.loads(forge_in(folder, "plan", "--json").stdout)
        [web] = [a for a in plan["actions"] if a["address"] == "service.web"]
        assert web["action"] == "replace" and "stopped by `forge stop`" in web["reason"]
        assert "was not running" in forge_in(folder, "stop", "service.web").stdout

        assert forge_in(folder, "start", "service.web").returncode == 0
        assert ps()["status"] == "running" and ps()["id"] == first["id"]
        assert forge_in(folder, "plan", "--detailed-exitcode").returncode == 0

        inside = forge_in(folder, "exec", "service.web", "--", "cat", "/proc/sys/kernel/hostname")
        assert (inside.returncode, inside.stdout) == (0, "webhost\n")
        failing = forge_in(folder, "exec", "service.web", "--", "sh", "-c", "exit 5")
        assert failing.returncode == 5

        config = json.loads(forge_in(folder, "inspect", "service.web").stdout)["config"]
        assert config["process"]["args"] == ["sleep", "600"]
        assert config["hostname"] == "webhost"

        pid = ps()["detail"]
        assert forge_in(folder, "restart", "service.web").returncode == 0
        assert ps()["status"] == "running" and ps()["detail"] != pid
        assert ps()["started_at"] != first["started_at"]  # a new run, counted from its start
        missing = forge_in(folder, "stop", "service.wbe")
        assert missing.returncode == 1 and "service.web" in missing.stderr
    finally:
        forge_in(folder, "destroy", "--auto-approve")
        left = leftovers(paths)
        force_cleanup(paths)
    assert left == []


HEALTH = """
volume "shared" {}

service "db" {
  image             = image.busybox
  stop_grace_period = 0s
  volumes           = { "/data" = volume.shared }
  command           = ["sh", "-c", "sleep 1; touch /data/ready; exec sleep 600"]
  healthcheck {
    command  = ["test", "-f", "/data/ready"]
    interval = 200ms
    retries  = 3
    start_period = 5s
  }
}

service "app" {
  image             = image.busybox
  stop_grace_period = 0s
  volumes           = { "/data" = volume.shared }
  command = ["sh", "-c", "test -f /data/ready && echo saw-ready || echo too-early; exec sleep 600"]
  depends {
    on        = service.db
    condition = "healthy"
  }
}
"""


def test_a_healthcheck_gates_the_service_that_waits_for_it(tmp_path: Path) -> None:
    """service.app starts only once service.db's healthcheck passes (a second in), and ps shows
    db healthy; a check that never passes fails the apply, naming the dependency."""
    folder, paths = project(tmp_path, HEALTH)
    try:
        applied = forge_in(folder, "apply", "--auto-approve")
        assert applied.returncode == 0, applied.stdout + applied.stderr
        assert forge_in(folder, "logs", "service.app").stdout == "saw-ready\n"
        rows = json.loads(forge_in(folder, "ps", "--json").stdout)["workloads"]
        assert {r["address"]: r["health"] for r in rows}["service.db"] == "healthy"

        (folder / "Forgefile").write_text(
            (folder / "Forgefile").read_text().replace('"test", "-f", "/data/ready"', '"false"')
            .replace("start_period = 5s", "start_period = 0s")
            .replace("echo saw-ready", "echo saw-it")  # app is replaced, so it waits again
        )  # fmt: skip
        failed = forge_in(folder, "apply", "--auto-approve")
        assert failed.returncode == 4
        assert "service.db is unhealthy, and service.app waits for it" in failed.stderr
    finally:
        forge_in(folder, "destroy", "--auto-approve")
        left = leftovers(paths)
        force_cleanup(paths)
    assert left == []


EXITS = """
job "zero" {
  image   = image.busybox
  command = ["sh", "-c", "exit 0"]
}

job "seven" {
  image         = image.busybox
  command       = ["sh", "-c", "exit 7"]
  success_codes = [7]
}

service "killed" {
  image             = image.busybox
  command           = ["sleep", "600"]  # PID 1 without a handler: TERM is ignored, KILL ends it
  stop_grace_period = 0s
}

service "termed" {
  image   = image.busybox
  init    = true  # tini passes TERM on; sleep dies of it, and tini exits 128 + 15
  command = ["sleep", "600"]
}
"""


@pytest.mark.skipif(not Path(INIT_BINARY).is_file(), reason="needs tini (apt-get install tini)")
def test_exit_codes_0_7_137_and_143_are_recorded_and_a_stop_is_no_crash(tmp_path: Path) -> None:
    folder, paths = project(tmp_path, EXITS)

    def rows() -> dict[str, dict[str, object]]:
        listed = json.loads(forge_in(folder, "ps", "--json").stdout)["workloads"]
        return {r["address"]: r for r in listed}

    try:
        applied = forge_in(folder, "apply", "--auto-approve")
        assert applied.returncode == 0, applied.stdout + applied.stderr
        for address in ("service.killed", "service.termed"):
            assert forge_in(folder, "stop", address).returncode == 0
        found = rows()
    finally:
        forge_in(folder, "destroy", "--auto-approve")
        left = leftovers(paths)
        force_cleanup(paths)
    codes = {address: row["exit_code"] for address, row in found.items()}
    assert codes == {"job.zero": 0, "job.seven": 7, "service.killed": 137, "service.termed": 143}
    assert found["service.killed"]["status"] == found["service.termed"]["status"] == "stopped"
    assert left == []


def test_log_limits_from_the_forgefile_rotate_the_log(tmp_path: Path) -> None:
    """log_max_size = 4KiB and log_max_files = 1: the log and one old file, each at most
    4 KiB, and `forge logs` reads the newest lines of both in order."""
    folder, paths = project(
        tmp_path,
        'job "chatty" {\n  image         = image.busybox\n  log_max_size  = 4KiB\n'
        "  log_max_files = 1\n"
        '  command = ["sh", "-c", "for i in $(seq 300); do echo line-$i-padding-padding; done"]\n'
        "}\n",
    )
    try:
        applied = forge_in(folder, "apply", "--auto-approve")
        kept = sorted(p.name for p in paths.logs.iterdir() if p.name.startswith("job.chatty"))
        sizes = [p.stat().st_size for p in paths.logs.iterdir() if p.name.startswith("job.chatty")]
        lines = forge_in(folder, "logs", "job.chatty").stdout.splitlines()
        plan = json.loads(forge_in(folder, "plan", "--json").stdout)
    finally:
        forge_in(folder, "destroy", "--auto-approve")
        left = leftovers(paths)
        force_cleanup(paths)
    assert applied.returncode == 0, applied.stdout + applied.stderr
    assert kept == ["job.chatty.log", "job.chatty.log.1"]
    assert all(size <= 4096 for size in sizes)
    assert lines[-1] == "line-300-padding-padding"
    numbers = [int(line.split("-")[1]) for line in lines]
    assert numbers == list(range(numbers[0], 301)) and numbers[0] > 1  # the oldest are gone
    [job] = [a for a in plan["actions"] if a["address"] == "job.chatty"]
    assert (job["spec"]["log_max_size"], job["spec"]["log_max_files"]) == (4096, 1)
    assert left == []
