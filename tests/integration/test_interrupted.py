"""An apply killed with SIGKILL at a random point: the next apply finishes, nothing is orphaned.

The kill points are drawn from a seeded generator, so a failing run names its seed and the same
points come back. Each round changes the services' command, so kills land in teardowns and
replacements (stop-first, and start-first for service.b) as well as in creates.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from compiler.plan import spec_digest
from executor import network
from executor.apply import _will_make
from executor.drivers import Host, create_service
from executor.monitor import Monitor
from executor.paths import ProjectPaths
from executor.state import State
from tests.conftest import free_subnet, needs
from tests.integration.test_example import (
    force_cleanup,
    forge_in,
    leftovers,
    runc_containers,
)

pytestmark = needs("runc")

ROUNDS = 5
SEED = int(os.environ.get("FORGE_KILL_SEED", "20261204"))

FORGEFILE = """
variable "word" {
  type    = string
  default = "zero"
}

image "busybox" {
  context = "/bin"
  copy { src = "busybox"  dst = "/bin/busybox"  mode = "0755" }
  link {
    target = "busybox"
    links  = ["/bin/sh", "/bin/sleep"]
  }
}

network "net" {
  subnet = "SUBNET"
}

volume "data" {}

service "a" {
  stop_grace_period = 1s  # sleep as PID 1 ignores TERM: do not wait 10 s for it
  image    = image.busybox
  command  = ["sh", "-c", "echo ${var.word}; exec sleep 600"]
  networks = [network.net]
  volumes  = { "/data" = volume.data }
}

service "b" {
  stop_grace_period = 1s
  image    = image.busybox
  command  = ["sh", "-c", "echo ${var.word} b; exec sleep 600"]
  networks = [network.net]
  lifecycle {
    create_before_destroy = true  # kills also land between its start and the old one's stop
  }
}

service "c" {
  stop_grace_period = 1s
  image   = image.busybox
  command = ["sh", "-c", "echo ${var.word} c; exec sleep 600"]
}

job "once" {
  image   = image.busybox
  command = ["sh", "-c", "echo ${var.word} once"]
}
"""


def killed_apply(folder: Path, word: str, after: float) -> None:
    """Start an apply and SIGKILL it `after` seconds in (if it is still running)."""
    process = subprocess.Popen(
        [sys.executable, "-m", "forge", "apply", "--auto-approve", "--var", f"word={word}"],
        cwd=folder,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        process.wait(timeout=after)
    except subprocess.TimeoutExpired:
        process.send_signal(signal.SIGKILL)
        process.wait()


def state(folder: Path) -> dict[str, Any]:
    exported = forge_in(folder, "state", "export")
    assert exported.returncode == 0, exported.stderr
    body: dict[str, Any] = json.loads(exported.stdout)
    return body


def host_matches_state(folder: Path, paths: ProjectPaths) -> None:
    """Every container, namespace and bridge of the project is one that state records."""
    resources = {r["address"]: r for r in state(folder)["resources"]}
    services = [r for r in resources.values() if r["kind"] == "service"]
    running = runc_containers(paths)
    owned = network.list_owned(paths.project_id)

    assert sorted(running) == sorted(r["runtime"]["container_id"] for r in services)
    assert len(owned["netns"]) == sum(1 for r in services if r["runtime"].get("netns"))
    assert len(owned["bridges"]) == sum(1 for r in resources.values() if r["kind"] == "network")
    assert sorted(p.name for p in paths.bundles.iterdir()) == sorted(
        r["runtime"]["container_id"] for r in services
    )


def test_an_apply_killed_anywhere_is_finished_by_the_next(tmp_path: Path) -> None:
    subnet = free_subnet(range(160, 190))
    (tmp_path / "Forgefile").write_text(FORGEFILE.replace("SUBNET", subnet))
    paths = ProjectPaths.for_state_dir(tmp_path / ".forge")
    draw = random.Random(SEED)
    try:
        assert forge_in(tmp_path, "key", "generate").returncode == 0
        first = forge_in(tmp_path, "apply", "--auto-approve")
        assert first.returncode == 0, first.stderr
        # How long an apply that replaces everything takes: the kills land within it.
        started = time.monotonic()
        timed = forge_in(tmp_path, "apply", "--auto-approve", "--var", "word=timed")
        assert timed.returncode == 0, timed.stderr
        full = time.monotonic() - started

        for round_ in range(ROUNDS):
            word = f"round{round_}"
            after = draw.uniform(0.2, full)
            killed_apply(tmp_path, word, after)

            finished = forge_in(tmp_path, "apply", "--auto-approve", "--var", f"word={word}")
            context = f"seed {SEED}, round {round_}, killed after {after:.2f}s"
            assert finished.returncode == 0, f"{context}: {finished.stderr}"
            # Shown with -s: what each round's apply found to roll back or finish.
            print(context, [line for line in finished.stdout.splitlines() if "↺" in line])
            host_matches_state(tmp_path, paths)
            settled = forge_in(tmp_path, "plan", "--detailed-exitcode", "--var", f"word={word}")
            assert settled.returncode == 0, f"{context}: {settled.stdout}{settled.stderr}"
            assert forge_in(tmp_path, "audit", "verify").returncode == 0, context
    finally:
        forge_in(tmp_path, "destroy", "--auto-approve")
        left = leftovers(paths)
        force_cleanup(paths)
    assert left == []


def test_a_create_the_journal_left_open_is_rolled_back(tmp_path: Path) -> None:
    """The deterministic half of the above: a container started, its apply dead before state
    recorded it; the next apply removes it and starts the one its plan wants."""
    subnet = free_subnet(range(190, 220))
    (tmp_path / "Forgefile").write_text(FORGEFILE.replace("SUBNET", subnet))
    paths = ProjectPaths.for_state_dir(tmp_path / ".forge")
    try:
        assert forge_in(tmp_path, "key", "generate").returncode == 0
        assert forge_in(tmp_path, "build").returncode == 0
        plan = json.loads(forge_in(tmp_path, "plan", "--json").stdout)
        action = next(a for a in plan["actions"] if a["address"] == "service.c")
        # What a killed apply leaves: a journal entry, the container running, no state record.
        host = Host(paths, Monitor())
        paths.ensure_run()
        digest = spec_digest(action["spec"])
        opened = State.open(paths.database)
        try:
            opened.intend("service.c", "service", "create", _will_make(host, action, digest))
        finally:
            opened.close()
        create_service(host, "service.c", action["spec"], digest)
        orphan = host.container_id("service.c", digest)

        resumed = forge_in(tmp_path, "apply", "--resume")
        assert resumed.returncode == 0, resumed.stderr
        assert "rolled back the create of service.c" in resumed.stdout
        assert orphan not in runc_containers(paths)
        assert "Nothing to resume" in forge_in(tmp_path, "apply", "--resume").stdout

        applied = forge_in(tmp_path, "apply", "--auto-approve", "--var", "word=other")
        assert applied.returncode == 0, applied.stderr
        host_matches_state(tmp_path, paths)
    finally:
        forge_in(tmp_path, "destroy", "--auto-approve")
        left = leftovers(paths)
        force_cleanup(paths)
    assert left == []


def test_create_before_destroy_starts_the_new_container_before_stopping_the_old(
    tmp_path: Path,
) -> None:
    """service.b's replacement runs (on a new address) before the old one is stopped: the
    audit log has its start before the old one's removal; service.a's order is the reverse."""
    subnet = free_subnet(range(220, 250))
    (tmp_path / "Forgefile").write_text(FORGEFILE.replace("SUBNET", subnet))
    paths = ProjectPaths.for_state_dir(tmp_path / ".forge")
    try:
        assert forge_in(tmp_path, "key", "generate").returncode == 0
        assert forge_in(tmp_path, "apply", "--auto-approve").returncode == 0
        before = {r["address"]: r for r in state(tmp_path)["resources"]}
        planned = forge_in(tmp_path, "plan", "--var", "word=next")
        assert "+/- service.b" in planned.stdout and "-/+ service.a" in planned.stdout
        applied = forge_in(tmp_path, "apply", "--auto-approve", "--var", "word=next")
        assert applied.returncode == 0, applied.stderr
        after = {r["address"]: r for r in state(tmp_path)["resources"]}

        old_b, new_b = before["service.b"]["spec"], after["service.b"]["spec"]
        assert old_b["networks"][0]["address"] != new_b["networks"][0]["address"]
        log = json.loads(forge_in(tmp_path, "audit", "log", "--json", "--limit", "100").stdout)
        last = [
            (e["kind"], e["address"])
            for e in log["entries"]
            if e["address"] in ("service.a", "service.b") and e["kind"] in ("replace", "deleted")
        ][-4:]
        assert last.index(("replace", "service.b")) < last.index(("deleted", "service.b"))
        assert last.index(("deleted", "service.a")) < last.index(("replace", "service.a"))
        host_matches_state(tmp_path, paths)
        assert "next b" in forge_in(tmp_path, "logs", "service.b").stdout
    finally:
        forge_in(tmp_path, "destroy", "--auto-approve")
        left = leftovers(paths)
        force_cleanup(paths)
    assert left == []


def test_a_replacement_that_dies_at_once_leaves_the_old_one_running(tmp_path: Path) -> None:
    """create_before_destroy: a new command that exits at once fails the apply, and the old
    container of service.b keeps running, still the one state records."""
    subnet = free_subnet(range(100, 130))
    only_b = FORGEFILE.split('service "a"')[0] + 'service "b"' + FORGEFILE.split('service "b"')[1]
    only_b = only_b.split('service "c"')[0]
    (tmp_path / "Forgefile").write_text(only_b.replace("SUBNET", subnet))
    paths = ProjectPaths.for_state_dir(tmp_path / ".forge")
    try:
        assert forge_in(tmp_path, "key", "generate").returncode == 0
        assert forge_in(tmp_path, "apply", "--auto-approve").returncode == 0
        old = {r["address"]: r for r in state(tmp_path)["resources"]}["service.b"]
        # The word ends the command early: `echo x; exit 7 # b; exec sleep 600`.
        failed = forge_in(tmp_path, "apply", "--auto-approve", "--var", "word=x; exit 7 #")
        assert failed.returncode == 4, failed.stdout + failed.stderr
        assert "the replacement exited with code 7" in failed.stderr
        now = {r["address"]: r for r in state(tmp_path)["resources"]}["service.b"]
        assert now["runtime"]["container_id"] == old["runtime"]["container_id"]
        assert old["runtime"]["container_id"] in runc_containers(paths)
    finally:
        forge_in(tmp_path, "destroy", "--auto-approve")
        left = leftovers(paths)
        force_cleanup(paths)
    assert left == []
