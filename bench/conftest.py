"""Shared benchmark inputs: generated Forgefiles of any size, loaded once, and a notes section.

Nothing here comes from tests/: `pytest bench/` loads only this conftest. Each generated
Forgefile has one image, up to 200 networks (/24 subnets in 10.213.0.0/16), a volume per ten
services and services that refer to all of them, interpolate locals and variables in their
environment, and depend on the first service of their group of ten.
"""

from __future__ import annotations

import gc
import os
import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar, cast

import pytest
from pytest_benchmark.fixture import BenchmarkFixture

from compiler import checks, policy
from forgefile import ir, lower, syntax

REPO = Path(__file__).resolve().parent.parent
BASELINE = REPO / "stdlib" / "policy" / "baseline"
MAX_NETWORKS = 200

T = TypeVar("T")


@dataclass(frozen=True)
class Shape:
    """How many resources of each kind a generated Forgefile of `services` services holds."""

    services: int

    @property
    def networks(self) -> int:
        return max(1, min(MAX_NETWORKS, self.services // 10))

    @property
    def volumes(self) -> int:
        return max(1, self.services // 10)

    @property
    def resources(self) -> int:
        return 1 + self.networks + self.volumes + self.services


def forgefile_text(shape: Shape) -> str:
    """A valid Forgefile of `shape`, written the way `forge fmt` would lay it out."""
    parts = [
        'variable "domain" {\n  type    = string\n  default = "bench.internal"\n}\n',
        'locals {\n  prefix = "fg-bench"\n  port   = 8080\n}\n',
        'image "app" {\n  context = "."\n  command = ["serve"]\n  env     = { MODE = "bench" }\n'
        '  copy { dst = "/etc/app.conf"  content = "port=${local.port}\\n"  mode = "0644" }\n}\n',
    ]
    parts += [
        f'network "n{n:03d}" {{\n  subnet = "10.213.{n}.0/24"\n}}\n' for n in range(shape.networks)
    ]
    parts += [f'volume "v{v:04d}" {{}}\n' for v in range(shape.volumes)]
    parts += [_service(s, shape) for s in range(shape.services)]
    return "\n".join(parts)


def _service(index: int, shape: Shape) -> str:
    name, head = f"s{index:05d}", f"s{index - index % 10:05d}"
    depends = f"\n  depends_on = [service.{head}]" if index % 10 else ""
    # Every tenth service has no memory limit, so the baseline's advisory rule fires on it.
    limits = "" if index % 10 == 9 else "\n  resources {\n    memory = 64MiB\n    pids   = 64\n  }"
    return (
        f'service "{name}" {{\n'
        "  image    = image.app\n"
        '  command  = ["serve", "--port", "${local.port}"]\n'
        "  env = {\n"
        f'    SERVICE = "${{local.prefix}}-{name}"\n'
        f'    PEER    = "{head}.${{var.domain}}"\n'
        "  }\n"
        f"  networks = [network.n{index % shape.networks:03d}]\n"
        f'  volumes  = {{ "/data" = volume.v{index % shape.volumes:04d} }}'
        f"{depends}{limits}\n"
        "}\n"
    )


@contextmanager
def lifted_limits(lift: bool) -> Iterator[None]:
    """Lift the caps on file size and syntax nodes, for a Forgefile past them.

    `load` reads at most the cap, and `parse` checks it again, so both modules' copies go up.
    """
    patched = [
        (module, name, getattr(module, name))
        for module in (syntax, lower)
        for name in ("MAX_FILE_BYTES", "MAX_NODES")
        if lift and hasattr(module, name)
    ]
    for module, name, _ in patched:
        setattr(module, name, 1 << 30)
    try:
        yield
    finally:
        for module, name, before in patched:
            setattr(module, name, before)


def collect() -> None:
    """Before a timed round: free the previous round's garbage so it is not charged here."""
    gc.collect()


def pedantic(
    benchmark: BenchmarkFixture,
    target: Callable[..., T],
    *args: Any,
    rounds: int,
    warmup_rounds: int = 0,
    setup: Callable[[], None] | None = collect,
) -> T:
    """`benchmark.pedantic` with fixed rounds, typed, also noting the median CPU time per round.

    This host is shared: CPU time shows what the code costs when other work steals the cores.
    """
    cpu: list[float] = []

    def timed(*given: Any) -> T:
        start = time.process_time()
        try:
            return target(*given)
        finally:
            cpu.append(time.process_time() - start)

    run = cast(Callable[..., T], benchmark.pedantic)
    result = run(timed, args=args, setup=setup, rounds=rounds, warmup_rounds=warmup_rounds)
    benchmark.extra_info["cpu_median_s"] = statistics.median(cpu[warmup_rounds:] or cpu)
    return result


def median(benchmark: BenchmarkFixture) -> float | None:
    """The median wall time of the rounds just run, or None when benchmarks are disabled."""
    return None if benchmark.stats is None else float(benchmark.stats.stats.median)


def cpu_median(benchmark: BenchmarkFixture) -> float:
    """The median CPU time of the rounds just run, as `pedantic` noted it."""
    return float(benchmark.extra_info["cpu_median_s"])


@dataclass
class Corpus:
    """Generated Forgefiles under one folder, and their checked Documents, made once each."""

    root: Path
    documents: dict[int, ir.Document] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    medians: dict[str, float] = field(default_factory=dict)

    def folder(self, services: int) -> Path:
        """The folder holding the Forgefile of `services` services (written on first use)."""
        folder = self.root / f"services-{services}"
        if not folder.is_dir():
            folder.mkdir()
            (folder / "Forgefile").write_text(forgefile_text(Shape(services)))
        return folder

    def text(self, services: int) -> str:
        return (self.folder(services) / "Forgefile").read_text()

    def size(self, services: int) -> int:
        return (self.folder(services) / "Forgefile").stat().st_size

    def over_limits(self, services: int) -> bool:
        """Past the 1 MiB file cap, and so past the syntax-node cap too (about 35 per service)."""
        return self.size(services) > syntax.MAX_FILE_BYTES

    def load_and_check(self, services: int) -> ir.Document:
        """What `forge validate` does before policy: read, parse, lower, run the check passes."""
        folder = self.folder(services)
        with lifted_limits(self.over_limits(services)):
            doc = lower.load(folder, {}, {})
        checks.check(doc)
        return doc

    def document(self, services: int) -> ir.Document:
        if services not in self.documents:
            self.documents[services] = self.load_and_check(services)
        return self.documents[services]

    def note(self, line: str) -> None:
        self.notes.append(line)


@pytest.fixture(scope="session")
def corpus(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Corpus:
    """The session's generated inputs, with the parsers built before anything is timed."""
    found = Corpus(tmp_path_factory.mktemp("forge-bench"))
    found.load_and_check(10)
    policy.load_policy([BASELINE])
    request.config.stash[_CORPUS] = found
    return found


_CORPUS = pytest.StashKey[Corpus]()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Print the per-size figures and ratios the benchmark table does not show."""
    found = terminalreporter.config.stash.get(_CORPUS, None)
    if found is None or not found.notes:
        return
    terminalreporter.section("Forge benchmark notes")
    load_avg = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    terminalreporter.write_line(f"cpus: {os.cpu_count()}, load average: {load_avg}")
    for line in found.notes:
        terminalreporter.write_line(line)
