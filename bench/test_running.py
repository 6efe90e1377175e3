"""The no-op plan of 1,000 running containers, for real: runc, the monitor, SQLite state.

Target (issue 5): `forge plan` of 1,000 services that all run, with nothing to change, under
2 s, as a whole process: reading state, refreshing every container (one question to the monitor
each), loading and checking the Forgefile, judging it with the baseline pack and planning.

The containers are busybox `sleep` with no network, so that creating and removing a thousand of
them takes minutes, not an hour of veths. Their apply, and the destroy after, are timed once and
compared with raw `runc run --detach` of the same bundle, per container, in the same run.

Needs root and runc; skipped otherwise. FORGE_BENCH_RUNNING sets how many (default 1,000).
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from pytest_benchmark.fixture import BenchmarkFixture

from executor.paths import ProjectPaths

from .conftest import BASELINE, Corpus, median, pedantic

RUNNING = int(os.environ.get("FORGE_BENCH_RUNNING", "1000"))
PEER_CONTAINERS = 20

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("runc") is None,
    reason="needs root and runc: it runs real containers",
)


IMAGE = """image "busybox" {
  context = "/bin"
  copy {
    src  = "busybox"
    dst  = "/bin/busybox"
    mode = "0755"
  }
  link {
    target = "busybox"
    links  = ["/bin/sleep"]
  }
}
"""


def forgefile(services: int, subnet: str | None = None) -> str:
    """`services` busybox sleeps, read-only, with limits; on one network if `subnet`."""
    parts = [IMAGE]
    if subnet:
        parts.append(f'network "net" {{\n  subnet = "{subnet}"\n}}\n')
    attach = "  networks          = [network.net]\n" if subnet else ""
    parts += [
        f'service "s{i:04d}" {{\n'
        "  image             = image.busybox\n"
        '  command           = ["sleep", "86400"]\n'
        '  user              = "65534:65534"\n'
        "  read_only         = true\n"
        "  stop_grace_period = 0s  # sleep as PID 1 ignores TERM\n"
        f"{attach}"
        "  resources {\n    memory = 16MiB\n    cpus   = 0.1\n    pids   = 16\n  }\n"
        "}\n"
        for i in range(services)
    ]
    return "\n".join(parts)


def forge(folder: Path, *args: str, timeout: float = 3600) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "forge", *args],
        cwd=folder,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def runc_ids(root: Path) -> list[str]:
    if not root.exists():
        return []
    listed = subprocess.run(
        ["runc", "--root", str(root), "list", "-q"], capture_output=True, text=True
    )
    return listed.stdout.split()


@pytest.fixture(scope="module")
def running(corpus: Corpus) -> Iterator[Path]:
    """A project with RUNNING services applied and running; destroyed afterwards."""
    folder = corpus.root / f"running-{RUNNING}"
    folder.mkdir(exist_ok=True)
    (folder / "Forgefile").write_text(forgefile(RUNNING))
    (folder / "policy").mkdir(exist_ok=True)
    (folder / "policy" / "project.policy").write_text('policy {\n  packs = ["baseline"]\n}\n')
    assert BASELINE.is_dir()
    paths = ProjectPaths.for_state_dir(folder / ".forge")
    assert forge(folder, "key", "generate").returncode == 0
    started = time.perf_counter()
    applied = forge(folder, "apply", "--auto-approve")
    took = time.perf_counter() - started
    try:
        assert applied.returncode == 0, applied.stderr[-2000:]
        per = took / RUNNING
        peer = _raw_runc_per_container(paths)
        corpus.note(
            f"apply, {RUNNING} containers created and started: {took:.1f} s, "
            f"{per * 1000:.0f} ms per container; raw `runc run --detach` of the same bundle: "
            f"{peer * 1000:.0f} ms per container (Forge {per / peer:.1f} times that)"
        )
        yield folder
    finally:
        started = time.perf_counter()
        destroyed = forge(folder, "destroy", "--auto-approve")
        corpus.note(
            f"destroy, {RUNNING} containers: {time.perf_counter() - started:.1f} s "
            f"(exit {destroyed.returncode})"
        )
        for cid in runc_ids(paths.runc_root):  # whatever a failed run left
            subprocess.run(["runc", "--root", str(paths.runc_root), "delete", "-f", cid])


def _raw_runc_per_container(paths: ProjectPaths) -> float:
    """Seconds per container for bare runc: the floor under what Forge's apply does."""
    template = next(paths.bundles.iterdir())
    state = paths.run_dir / "peer"
    root = state / "runc"
    times = []
    try:
        for i in range(PEER_CONTAINERS):
            bundle = state / "bundles" / f"c{i}"
            shutil.copytree(template, bundle, symlinks=True)
            # A fresh cgroup per container, as Forge gives each of its own.
            config = json.loads((bundle / "config.json").read_text())
            config["linux"].pop("cgroupsPath", None)
            (bundle / "config.json").write_text(json.dumps(config))
            started = time.perf_counter()
            subprocess.run(
                ["runc", "--root", str(root), "run", "--detach", "--bundle", str(bundle), f"p{i}"],
                check=True,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            times.append(time.perf_counter() - started)
    finally:
        for cid in runc_ids(root):
            subprocess.run(["runc", "--root", str(root), "delete", "-f", cid], check=False)
        shutil.rmtree(state, ignore_errors=True)
    return statistics.median(times)


def test_noop_plan_of_running_containers(
    benchmark: BenchmarkFixture, corpus: Corpus, running: Path
) -> None:
    """`forge plan --detailed-exitcode` as a process: nothing to change, under 2 s."""

    def plan() -> subprocess.CompletedProcess[str]:
        return forge(running, "plan", "--detailed-exitcode")

    done = pedantic(benchmark, plan, rounds=5, warmup_rounds=1, setup=None)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert len(runc_ids(ProjectPaths.for_state_dir(running / ".forge").runc_root)) == RUNNING
    took = median(benchmark)
    if took is None:
        return
    parts = _refresh_parts(running)
    corpus.note(
        f"plan, no-op, {RUNNING} running containers, whole process: {took:.2f} s "
        f"(target < 2 s: {'pass' if took < 2 else 'MISS'}), of which in process:"
    )
    for name, part in parts.items():
        corpus.note(f"  {name}: {part * 1000:.0f} ms")


def _refresh_parts(folder: Path) -> dict[str, float]:
    """State read and refresh, timed apart in this process (median of 5)."""
    from executor.apply import live_status
    from forge.project import Project

    project = Project.locate(folder, None, [], {})
    reads, refreshes = [], []
    for _ in range(5):
        started = time.perf_counter()
        state = project.state()
        try:
            records = state.records()
            reads.append(time.perf_counter() - started)
            started = time.perf_counter()
            live = live_status(project.host(), state)
            refreshes.append(time.perf_counter() - started)
        finally:
            state.close()
        assert len(records) == RUNNING + 1
        assert all(up for up, _ in live.values() if up is not None)
    return {
        "state read (SQLite, every record)": statistics.median(reads),
        "refresh (the monitor asked about every container)": statistics.median(refreshes),
    }
