"""Front-end benchmarks: load + check of generated Forgefiles, the baseline policy, start-up.

Targets (issues 3 and 4): 1,000 services load and check in under 1 s with growth no worse than
linear; the baseline pack, as a whole process, judges 1,000 services in under 0.5 s and 10,000
in under 1 s, with the same rules through the Rego adapter as the contrast; `forge version` and
`forge validate --help` start in under 0.15 s.
"""

from __future__ import annotations

import datetime
import importlib.util
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

import pytest
from pytest_benchmark.fixture import BenchmarkFixture

from compiler import policy

from .conftest import BASELINE, Corpus, Shape, collect, cpu_median, median, pedantic

SIZES = (100, 1_000, 10_000)
# One round of 10,000 services takes about half a minute here; the whole run stays under 3.
ROUNDS = {100: 5, 1_000: 3, 10_000: 1}
STARTUP_ROUNDS = 9


@pytest.mark.parametrize("services", SIZES)
def test_load_and_check(benchmark: BenchmarkFixture, corpus: Corpus, services: int) -> None:
    """Parse, lower and check a generated Forgefile: 1,000 services in under 1 s, linear growth."""
    shape, size = Shape(services), corpus.size(services)
    corpus.documents.pop(services, None)
    doc = pedantic(benchmark, corpus.load_and_check, services, rounds=ROUNDS[services])
    corpus.documents[services] = doc
    assert len(doc.resources) == shape.resources

    benchmark.extra_info.update(forgefile_bytes=size, resources=shape.resources)
    took = median(benchmark)
    if took is None:
        return
    cpu = cpu_median(benchmark)
    corpus.medians[f"load-{services}"], corpus.medians[f"load-{services}-cpu"] = took, cpu
    lifted = " (limits lifted)" if corpus.over_limits(services) else ""
    corpus.note(
        f"load+check {services:>6} services, {shape.networks:>3} networks, "
        f"{size / 1e6:.2f} MB{lifted}: {took:.3f} s wall, {cpu:.3f} s CPU, "
        f"{took / services * 1e6:.0f} us wall per service"
    )
    if services == 10_000 and "load-1000" in corpus.medians:
        ratio = took / corpus.medians["load-1000"]
        cpu_ratio = cpu / corpus.medians["load-1000-cpu"]
        benchmark.extra_info.update(ratio_to_1000=round(ratio, 2), cpu_ratio_to_1000=cpu_ratio)
        corpus.note(
            f"load+check 10000/1000 ratio: {ratio:.1f} wall, {cpu_ratio:.1f} CPU "
            "(linear would be 10)"
        )


def test_peer_hcl2_parse(benchmark: BenchmarkFixture, corpus: Corpus) -> None:
    """The named peer: python-hcl2, the Python parser of Terraform's language (also on Lark),
    parsing the same 1,000-service file written as HCL (sizes quoted, as HCL has none).

    It only parses; Forge's figure also lowers, types and checks. Both run here, in the same
    session, so their ratio holds however fast the machine is at the moment.
    """
    hcl2 = pytest.importorskip("hcl2", reason="python-hcl2 is in the test extra: pip install")
    text = re.sub(r"= ([0-9]+MiB)", r'= "\1"', corpus.text(1_000))
    hcl2.loads("warm = 1\n")
    parsed = pedantic(benchmark, hcl2.loads, text, rounds=1)
    assert len(parsed["service"]) == 1_000
    took = median(benchmark)
    ours = corpus.medians.get("load-1000")
    if took is None or ours is None:
        return
    benchmark.extra_info["ratio_to_forge"] = round(took / ours, 1)
    corpus.note(
        f"peer: python-hcl2 parses the same 1000 services in {took:.3f} s wall; Forge's "
        f"load+check takes {ours / took:.2f}x that ({took / ours:.1f}x faster)"
    )


@pytest.mark.parametrize("services", (1_000, 10_000))
def test_policy_baseline(benchmark: BenchmarkFixture, corpus: Corpus, services: int) -> None:
    """The baseline pack judges every resource, in process: 10,000 services in under 1 s."""
    doc = corpus.document(services)
    today = datetime.date(2026, 12, 3)

    def judge() -> policy.Verdict:
        return policy.judge(policy.load_policy([BASELINE]), doc, today)

    verdict = pedantic(benchmark, judge, rounds=3)
    expected = sum(1 for rule in verdict.rules for r in doc.resources if r.kind in rule.kinds)
    assert verdict.evaluated == expected
    # Every tenth service has no memory limit: FRG-C018 (hard) fires on each of them.
    assert sum(1 for f in verdict.findings if f.rule.id == "FRG-C018") == services // 10
    assert not any(f.error for f in verdict.findings)

    # The evaluation's own allocations, measured apart: tracemalloc slows what it watches.
    collect()
    tracemalloc.start()
    try:
        judge()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    benchmark.extra_info["peak_alloc_mib"] = round(peak / (1 << 20), 1)
    took = median(benchmark)
    if took is not None:
        corpus.note(
            f"policy baseline over {services:>6} services: {took:.3f} s wall, "
            f"{cpu_median(benchmark):.3f} s CPU, "
            f"{took / services * 1e6:.0f} us per service, "
            f"peak allocation {peak / (1 << 20):.1f} MiB"
        )


# What `forge policy check` does once the IR is in hand, as a process of its own: start Python,
# import the engine, read the IR, load the pack, judge. Conftest's figure has the same shape
# (it reads the JSON input); the IR is handed over pickled, so parsing is not counted twice.
_JUDGE = """
import datetime, gc, json, pickle, sys
from pathlib import Path
from compiler import policy
gc.disable()  # unpickling makes only live objects: nothing for the collector to find
doc = pickle.loads(Path(sys.argv[1]).read_bytes())
gc.freeze()  # as forge/project.py:check does once the IR is loaded
gc.enable()
verdict = policy.judge(policy.load_policy([Path(sys.argv[2])]), doc, datetime.date(2026, 12, 3))
# VmHWM, not ru_maxrss: Linux carries ru_maxrss over from the forking parent (pytest).
status = Path("/proc/self/status").read_text()
peak = int(status.split("VmHWM:")[1].split()[0])
print(json.dumps({"evaluated": verdict.evaluated, "peak_kib": peak}))
"""


@pytest.mark.parametrize("services", (1_000, 10_000))
def test_policy_process(
    benchmark: BenchmarkFixture, corpus: Corpus, tmp_path: Path, services: int
) -> None:
    """The baseline pack as a whole process: under 0.5 s for 1,000 services, 1 s for 10,000."""
    import pickle

    ir_file = tmp_path / "ir.pickle"
    ir_file.write_bytes(pickle.dumps(corpus.document(services)))
    argv = [sys.executable, "-c", _JUDGE, str(ir_file), str(BASELINE)]
    env = _environment(corpus.root / "pycache")
    reports: list[dict[str, int]] = []

    def run() -> None:
        done = subprocess.run(argv, env=env, check=True, capture_output=True, text=True)
        reports.append(json.loads(done.stdout))

    pedantic(benchmark, run, rounds=3, warmup_rounds=1, setup=None)
    assert reports[-1]["evaluated"] > services
    took = median(benchmark)
    if took is None:
        return
    peak = max(r["peak_kib"] for r in reports) / 1024
    benchmark.extra_info["peak_rss_mib"] = round(peak, 1)
    floor = corpus.medians.get("floor") or _wall(
        [sys.executable, "-c", "pass"], env, tmp_path, STARTUP_ROUNDS
    )
    corpus.medians[f"policy-process-{services}"] = took
    corpus.note(
        f"policy process over {services:>6} services: {took:.3f} s wall "
        f"({took / floor:.1f}x python -c pass), peak RSS {peak:.0f} MiB"
    )


REGO_BASELINE = Path(__file__).parent / "rego"


@pytest.mark.skipif(
    importlib.util.find_spec("regopy") is None, reason="the Rego contrast needs regopy"
)
@pytest.mark.parametrize("services", (1_000, 10_000))
def test_policy_rego(benchmark: BenchmarkFixture, corpus: Corpus, services: int) -> None:
    """The contrast: the same rules in Rego (bench/rego), judged through the Rego adapter.

    The adapter hands `forge show --json` to regopy in a child process, as `forge plan` would
    with a `rego` block; the time covers the JSON, the process and the engine.
    """
    from compiler import rego

    doc = corpus.document(services)
    document = {"version": 1, **doc.to_document()}
    forge = policy.judge(policy.load_policy([BASELINE]), doc, datetime.date(2026, 12, 3))
    if services == max(SIZES):
        # A live 10,000-service IR makes every later garbage collection slower: drop it.
        corpus.documents.pop(services)

    def judge() -> rego.RegoResult:
        return rego.evaluate_rego(
            REGO_BASELINE, document, engine="regopy", timeout=1800, memory_mb=8192
        )

    result = pedantic(benchmark, judge, rounds=1)
    assert result.errors == ()
    # Both find the same rules broken on the same resources (each Rego message starts with it).
    theirs = {
        (f["rule"].removeprefix("rego:main.").split("_", 1)[1], f["message"].split()[0])
        for f in result.findings
    }
    assert theirs == {(f.rule.id.lower().replace("-", "_"), f.address) for f in forge.findings}
    took = median(benchmark)
    if took is None:
        return
    ours = corpus.medians.get(f"policy-process-{services}")
    versus = f" ({took / ours:.0f}x Forge's whole process)" if ours else ""
    corpus.note(
        f"policy via Rego (regopy {result.version}) over {services:>6} services: "
        f"{took:.2f} s wall{versus}"
    )


def _commands() -> dict[str, list[str]]:
    python = sys.executable
    forge = shutil.which("forge", path=str(Path(python).parent)) or shutil.which("forge")
    validate = [forge] if forge else [python, "-m", "forge"]
    return {
        "python -c pass": [python, "-c", "pass"],
        "python -m forge version": [python, "-m", "forge", "version"],
        "forge validate --help": [*validate, "validate", "--help"],
    }


def _environment(cache: Path) -> dict[str, str]:
    """The caller's environment with a bytecode cache, as a user's installed toolchain has."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env["PYTHONPYCACHEPREFIX"] = str(cache)
    return env


def _run(argv: list[str], env: dict[str, str], cwd: Path) -> None:
    subprocess.run(argv, env=env, cwd=cwd, check=True, stdout=subprocess.DEVNULL)


def _wall(argv: list[str], env: dict[str, str], cwd: Path, rounds: int) -> float:
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        _run(argv, env, cwd)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


@pytest.mark.parametrize("command", list(_commands()))
def test_startup(benchmark: BenchmarkFixture, corpus: Corpus, tmp_path: Path, command: str) -> None:
    """`forge version` and `forge validate --help` start in under 0.15 s; `python -c pass` is
    the floor."""
    argv = _commands()[command]
    env = _environment(corpus.root / "pycache")
    pedantic(
        benchmark, _run, argv, env, tmp_path, rounds=STARTUP_ROUNDS, warmup_rounds=1, setup=None
    )

    took = median(benchmark)
    if took is None:
        return
    if command == "python -c pass":
        corpus.medians["floor"] = took
        corpus.note(f"startup {command}: {took * 1000:.0f} ms (the floor)")
        return
    floor = corpus.medians.get("floor")
    if floor is None:
        floor = _wall(_commands()["python -c pass"], env, tmp_path, STARTUP_ROUNDS)
    benchmark.extra_info["ratio_to_floor"] = round(took / floor, 1)
    corpus.note(
        f"startup {command}: {took * 1000:.0f} ms, {took / floor:.1f}x the floor "
        f"({floor * 1000:.0f} ms), {(took - floor) * 1000:.0f} ms above it"
    )
