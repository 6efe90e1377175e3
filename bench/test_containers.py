"""Containers for real, against raw runc and podman (issue 6), each ratio measured in one run.

- **Per container**: applies of 10 and of 100 services; the cost of one more container is
  (T100 - T10) / 90 and the fixed start-up what is left of T10. Compared with raw `runc create`
  + `runc start` of the same bundles (the same config.json, the same unpacked image as a
  read-only root) one after another. Target: at most 1.2 times runc.
- **Single container**: a whole `forge apply` of one service, as a process, against
  `podman run -d` of the same image (exported from Forge's store). Target: under half.
- **Three services**: apply and destroy of three services on a network, against
  `podman-compose up -d` and `down -t 0` of the equivalent compose file. Target: a fifth.
- **A thousand services** on one /16 network: apply and destroy, against raw runc starting the
  same number of bundles one after another; the monitor's memory per container. Targets: 1.2
  times runc, under 1 MiB per container.

Needs root and runc; the podman comparisons need `bench/peers.sh` (podman, podman-compose) and
are skipped without it. FORGE_BENCH_THOUSAND sets the size of the last one (default 1,000).
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from pytest_benchmark.fixture import BenchmarkFixture

from executor.monitor import Monitor
from executor.paths import ProjectPaths

from .conftest import REPO, Corpus, median, pedantic
from .test_running import forge, forgefile, runc_ids

THOUSAND = int(os.environ.get("FORGE_BENCH_THOUSAND", "1000"))
PODMAN_COMPOSE = REPO / ".venv-peers" / "bin" / "podman-compose"
PEER_IMAGE = "localhost/forge-bench-busybox:latest"
WIDE = "10.214.0.0/16"
NARROW = "10.215.7.0/24"

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("runc") is None,
    reason="needs root and runc: it runs real containers",
)
needs_podman = pytest.mark.skipif(
    shutil.which("podman") is None, reason="needs podman: run bench/peers.sh"
)


def must(done: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert done.returncode == 0, (done.args, done.stdout[-2000:], done.stderr[-2000:])
    return done


def seconds(action: Callable[[], Any]) -> float:
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


def project(corpus: Corpus, name: str, text: str) -> Path:
    """A project folder with a key and its image built, so that no timed apply builds first."""
    folder = corpus.root / name
    folder.mkdir(exist_ok=True)
    (folder / "Forgefile").write_text(text)
    must(forge(folder, "key", "generate"))
    must(forge(folder, "build"))
    return folder


@pytest.fixture
def destroyed(corpus: Corpus) -> Iterator[list[Path]]:
    """Folders whose projects are destroyed after the test, pass or fail."""
    folders: list[Path] = []
    yield folders
    for folder in folders:
        forge(folder, "destroy", "--auto-approve")


# -- raw runc ---------------------------------------------------------------------------------


def runc_bundles(folder: Path, count: int, into: Path) -> list[Path]:
    """`count` bundles with the config.json Forge wrote for its first container, each a fresh
    cgroup and network namespace, all on the image as Forge unpacked it (read-only)."""
    paths = ProjectPaths.for_state_dir(folder / ".forge")
    template = json.loads(next(paths.bundles.iterdir()).joinpath("config.json").read_text())
    [lower] = [p for p in paths.rootfs_cache.iterdir() if p.suffix != ".lock"]
    into.mkdir(parents=True)
    image = into / "rootfs"  # Forge's copy goes with its last container
    shutil.copytree(lower, image, symlinks=True)
    template["root"] = {"path": str(image), "readonly": True}
    template["linux"].pop("cgroupsPath", None)
    for namespace in template["linux"]["namespaces"]:
        namespace.pop("path", None)
    bundles = []
    for i in range(count):
        bundle = into / f"b{i:04d}"
        bundle.mkdir()
        (bundle / "config.json").write_text(json.dumps(template))
        bundles.append(bundle)
    return bundles


def raw_runc(bundles: list[Path], root: Path) -> float:
    """Seconds to `runc create` and `runc start` every bundle, one after another."""
    quiet: dict[str, Any] = {
        "check": True,
        "stdin": subprocess.DEVNULL,
        "stdout": subprocess.DEVNULL,
        "stderr": subprocess.DEVNULL,
    }
    started = time.perf_counter()
    for i, bundle in enumerate(bundles):
        runc = ["runc", "--root", str(root)]
        subprocess.run([*runc, "create", "--bundle", str(bundle), f"raw{i:04d}"], **quiet)
        subprocess.run([*runc, "start", f"raw{i:04d}"], **quiet)
    return time.perf_counter() - started


def remove_raw(root: Path, folder: Path) -> None:
    for cid in runc_ids(root):
        subprocess.run(["runc", "--root", str(root), "delete", "-f", cid], check=False)
    shutil.rmtree(folder, ignore_errors=True)


# -- the benchmarks ---------------------------------------------------------------------------


def test_per_container_against_runc(
    benchmark: BenchmarkFixture, corpus: Corpus, destroyed: list[Path]
) -> None:
    small = project(corpus, "per-10", forgefile(10))
    large = project(corpus, "per-100", forgefile(100))
    destroyed += [small, large]
    t10 = seconds(lambda: must(forge(small, "apply", "--auto-approve")))
    must(forge(small, "destroy", "--auto-approve"))

    # One apply at --parallelism 1 first: the executor's own cost, one container at a time.
    t100_serial = seconds(lambda: must(forge(large, "apply", "--auto-approve", "--parallelism=1")))
    must(forge(large, "destroy", "--auto-approve"))
    done = pedantic(benchmark, forge, large, "apply", "--auto-approve", rounds=1, setup=None)
    must(done)
    t100 = median(benchmark) or 0.0

    scratch = corpus.root / "raw-per"
    try:
        bundles = runc_bundles(large, 100, scratch / "bundles")
        must(forge(large, "destroy", "--auto-approve"))  # runc alone on the host, as Forge was
        runc = raw_runc(bundles, scratch / "runc") / 100
    finally:
        remove_raw(scratch / "runc", scratch)

    per = (t100 - t10) / 90
    fixed = t10 - 10 * per
    serial = (t100_serial - fixed) / 100
    corpus.note(
        f"per container, 100 services: apply {t100:.2f} s, 10 services {t10:.2f} s: "
        f"{per * 1000:.1f} ms per container, fixed start-up {fixed:.2f} s; raw runc create+start "
        f"one after another {runc * 1000:.1f} ms: Forge {per / runc:.2f}x runc (target <= 1.2: "
        f"{'pass' if per <= 1.2 * runc else 'MISS'})"
    )
    corpus.note(
        f"  the same at --parallelism 1: {serial * 1000:.1f} ms per container, "
        f"{serial / runc:.2f}x runc"
    )


@needs_podman
def test_single_service_against_podman(
    benchmark: BenchmarkFixture, corpus: Corpus, destroyed: list[Path]
) -> None:
    folder = project(corpus, "single", forgefile(1))
    destroyed.append(folder)
    load_peer_image(folder)

    def reset() -> None:
        must(forge(folder, "destroy", "--auto-approve"))

    done = pedantic(benchmark, forge, folder, "apply", "--auto-approve", rounds=5, setup=reset)
    must(done)
    ours = median(benchmark) or 0.0

    times = []
    try:
        for i in range(5):
            run = [
                "podman", "run", "-d", "--network", "none", "--read-only", "--user", "65534:65534",
                "--memory", "16m", "--cpus", "0.1", "--pids-limit", "16",
                "--name", f"forge-bench-{i}", PEER_IMAGE, "sleep", "86400",
            ]  # fmt: skip
            started = time.perf_counter()
            subprocess.run(run, check=True, stdout=subprocess.DEVNULL)
            times.append(time.perf_counter() - started)
    finally:
        for i in range(5):
            remove = ["podman", "rm", "-f", "-t", "0", f"forge-bench-{i}"]
            subprocess.run(remove, capture_output=True)
    podman = statistics.median(times)
    corpus.note(
        f"one service, whole `forge apply` process: {ours * 1000:.0f} ms; `podman run -d`: "
        f"{podman * 1000:.0f} ms: Forge {ours / podman:.2f}x podman (target < 0.5: "
        f"{'pass' if ours < 0.5 * podman else 'MISS'})"
    )


COMPOSE = """services:
{services}
"""


@needs_podman
@pytest.mark.skipif(not PODMAN_COMPOSE.exists(), reason="needs podman-compose: bench/peers.sh")
def test_three_services_against_podman_compose(
    benchmark: BenchmarkFixture, corpus: Corpus, destroyed: list[Path]
) -> None:
    folder = project(corpus, "three", forgefile(3, NARROW))
    destroyed.append(folder)
    load_peer_image(folder)

    def up_and_down() -> None:
        must(forge(folder, "apply", "--auto-approve"))
        must(forge(folder, "destroy", "--auto-approve"))

    pedantic(benchmark, up_and_down, rounds=3, setup=None)
    ours = median(benchmark) or 0.0

    peer = corpus.root / "compose"
    peer.mkdir(exist_ok=True)
    services = "".join(
        f"  s{i}:\n    image: {PEER_IMAGE}\n    command: [sleep, '86400']\n"
        "    read_only: true\n    user: '65534:65534'\n    mem_limit: 16m\n    cpus: 0.1\n"
        "    pids_limit: 16\n"
        for i in range(3)
    )
    (peer / "compose.yaml").write_text(COMPOSE.format(services=services))
    compose = [str(PODMAN_COMPOSE), "-p", "forgebench", "-f", str(peer / "compose.yaml")]
    times = []
    try:
        for _ in range(3):

            def peer_up_and_down() -> None:
                subprocess.run([*compose, "up", "-d"], check=True, capture_output=True)
                subprocess.run([*compose, "down", "-t", "0"], check=True, capture_output=True)

            times.append(seconds(peer_up_and_down))
    finally:
        subprocess.run([*compose, "down", "-t", "0"], capture_output=True)
    theirs = statistics.median(times)
    corpus.note(
        f"three services on a network, up and down: Forge {ours:.2f} s, podman-compose "
        f"{theirs:.2f} s: Forge {ours / theirs:.2f}x (target <= 0.2: "
        f"{'pass' if ours <= 0.2 * theirs else 'MISS'})"
    )


def test_a_thousand_services_on_a_16(
    benchmark: BenchmarkFixture, corpus: Corpus, destroyed: list[Path]
) -> None:
    folder = project(corpus, f"wide-{THOUSAND}", forgefile(THOUSAND, WIDE))
    destroyed.append(folder)
    monitor = Monitor()
    monitor.ensure_running()
    idle = rss(monitor)

    done = pedantic(benchmark, forge, folder, "apply", "--auto-approve", rounds=1, setup=None)
    must(done)
    applied = median(benchmark) or 0.0
    busy = rss(monitor)
    threads = len(os.listdir(f"/proc/{monitor.ping()['pid']}/task"))
    destroy = seconds(lambda: must(forge(folder, "destroy", "--auto-approve")))

    scratch = corpus.root / "raw-wide"
    try:
        must(forge(folder, "apply", "--auto-approve", "--target", "service.s0000"))
        bundles = runc_bundles(folder, THOUSAND, scratch / "bundles")
        must(forge(folder, "destroy", "--auto-approve"))
        runc = raw_runc(bundles, scratch / "runc")
    finally:
        remove_raw(scratch / "runc", scratch)

    per_container = (busy - idle) / THOUSAND
    corpus.note(
        f"{THOUSAND} services on one /16: apply {applied:.1f} s, destroy {destroy:.1f} s; raw "
        f"runc create+start of {THOUSAND} bundles (no network) {runc:.1f} s: Forge "
        f"{applied / runc:.2f}x (target <= 1.2: {'pass' if applied <= 1.2 * runc else 'MISS'})"
    )
    corpus.note(
        f"  monitor memory: {idle / 2**20:.1f} MiB idle, {busy / 2**20:.1f} MiB with "
        f"{THOUSAND} containers: {per_container / 1024:.1f} KiB per container (target < 1 MiB: "
        f"{'pass' if per_container < 2**20 else 'MISS'}), {threads} threads"
    )


def rss(monitor: Monitor) -> int:
    """The monitor process's resident memory, in bytes."""
    status = Path(f"/proc/{monitor.ping()['pid']}/status").read_text()
    [line] = [x for x in status.splitlines() if x.startswith("VmRSS:")]
    return int(line.split()[1]) * 1024


def load_peer_image(folder: Path) -> None:
    """Forge's busybox image, exported and loaded into podman under PEER_IMAGE."""
    archive = folder / "busybox.tar"
    must(forge(folder, "image", "export", "busybox", "-o", str(archive)))
    loaded = subprocess.run(
        ["podman", "load", "-i", str(archive)], capture_output=True, text=True, check=True
    )
    name = loaded.stdout.strip().rsplit(" ", 1)[-1]
    subprocess.run(["podman", "tag", name, PEER_IMAGE], check=True, capture_output=True)
