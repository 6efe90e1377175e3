"""Semantic checks over a lowered Document: each pass is one function, IR in, diagnostics out.

`PASSES` is the order they run in; `check()` runs them all and raises every diagnostic at once.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from pathlib import Path

from forgefile import ir
from forgefile.diagnostics import Collector, Diagnostic, Related


def dependency_cycles(doc: ir.Document, out: Collector) -> None:
    """Resources that depend on each other in a circle can never start: name every member."""
    graph = {r.address: [ref.address for ref in r.references()] for r in doc.resources}
    state: dict[str, int] = {}
    stack: list[str] = []
    reported: set[frozenset[str]] = set()

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in graph.get(node, []):
            if state.get(nxt) == 1:
                members = stack[stack.index(nxt) :]
                key = frozenset(members)
                if key not in reported:
                    reported.add(key)
                    first = doc.resource(members[0])
                    path = " -> ".join([*members, nxt])
                    out.error(
                        "E0301",
                        f"dependency cycle: {path}",
                        first.span if first else None,
                        "break the cycle by removing one of these references",
                        [
                            Related(r.span, f"{r.address} is part of the cycle")
                            for m in members[1:]
                            if (r := doc.resource(m))
                        ],
                    )
            elif state.get(nxt) is None:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for address in graph:
        if address not in state:
            visit(address)


def overlapping_subnets(doc: ir.Document, out: Collector) -> None:
    """Two networks with overlapping subnets would route to the wrong bridge.

    CIDR blocks overlap only by containment, so one sweep in address order finds every network
    that overlaps one before it: n log n, where comparing each pair was n squared.
    """
    networks = [r for r in doc.resources if isinstance(r, ir.Network)]
    order = {id(r): i for i, r in enumerate(networks)}
    parsed = sorted(
        ((ipaddress.IPv4Network(r.subnet), r) for r in networks),
        key=lambda pair: (pair[0].network_address, pair[0].prefixlen),
    )
    clashes: list[tuple[ir.Network, ir.Network]] = []
    widest: tuple[ipaddress.IPv4Network, ir.Network] | None = None
    for subnet, network in parsed:
        if widest is not None and subnet.network_address <= widest[0].broadcast_address:
            earlier, later = sorted((widest[1], network), key=lambda r: order[id(r)])
            clashes.append((earlier, later))
        if widest is None or subnet.broadcast_address > widest[0].broadcast_address:
            widest = (subnet, network)
    for a, b in sorted(clashes, key=lambda pair: (order[id(pair[1])], order[id(pair[0])])):
        out.error(
            "E0302",
            f"the subnets of {a.address} ({a.subnet}) and {b.address} ({b.subnet}) overlap",
            b.span_of("subnet"),
            "give each network its own subnet",
            [Related(a.span_of("subnet"), f"{a.address} is declared here")],
        )


def missing_inputs(doc: ir.Document, out: Collector) -> None:
    """Files that a resource reads must exist before anything is built or planned."""
    for r in doc.resources:
        if isinstance(r, ir.Wasm) and not Path(r.module).is_file():
            out.error(
                "E0303",
                f"the module of {r.address} does not exist: {r.module}",
                r.span_of("module"),
                "build it first, or fix the path (it is relative to the Forgefile's folder)",
            )
        elif isinstance(r, ir.Wasm) and not _is_wasm(Path(r.module)):
            out.error(
                "E0309",
                f"{r.module} is not a WebAssembly module",
                r.span_of("module"),
                "point `module` at a .wasm file (it starts with \\0asm), e.g. from "
                "clang --target=wasm32-wasi",
            )
        if isinstance(r, ir.Image) and not Path(r.context).is_dir():
            out.error(
                "E0304",
                f"the build context of {r.address} is not a folder: {r.context}",
                r.span_of("context"),
                "set `context` to an existing folder",
            )


def _is_wasm(path: Path) -> bool:
    try:
        with path.open("rb") as stream:
            return stream.read(8) == b"\0asm\x01\0\0\0"
    except OSError:
        return False


def unused_resources(doc: ir.Document, out: Collector) -> None:
    """A network nothing joins or a volume nothing mounts is usually a forgotten reference."""
    referenced = {ref.address for r in doc.resources for ref in r.references()}
    for r in doc.resources:
        if isinstance(r, ir.Network | ir.Volume) and r.address not in referenced:
            verb = "joins" if isinstance(r, ir.Network) else "mounts"
            out.warning(
                "W0301",
                f"{r.address} is declared but no workload {verb} it",
                r.span,
                "reference it from a workload, or remove it",
            )


def unsupported(doc: ir.Document, out: Collector) -> None:
    """Attributes the schema accepts but this executor cannot carry out yet."""
    for r in doc.resources:
        if isinstance(r, ir.Wasm) and r.mode == "service":
            # TODO(#7): long-running WASM services with restart policies.
            out.error(
                "E0305",
                f'{r.address}: mode = "service" is not supported yet',
                r.span_of("mode"),
                'use mode = "job"',
            )
        if isinstance(r, ir.Container) and len(r.networks) > 1:
            # TODO(#8): a container on several networks.
            out.error(
                "E0306",
                f"{r.address} joins {len(r.networks)} networks; one is supported for now",
                r.span_of("networks"),
                "keep one network",
            )


def waits_that_cannot_end(doc: ir.Document, out: Collector) -> None:
    """`condition = "healthy"` needs a service with a healthcheck, `"completed_successfully"` a
    job or WASM module; a job has no health to check."""
    by_address = {r.address: r for r in doc.resources}
    for r in doc.resources:
        if not isinstance(r, ir.Container):
            continue
        if isinstance(r, ir.Job) and r.healthcheck is not None:
            out.error(
                "E0313",
                f"{r.address} is a job: it runs to its end, and has no health to check",
                r.span_of("healthcheck"),
                "remove the healthcheck, or make it a service",
            )
        for address, condition in r.conditions:
            target = by_address.get(address)
            if condition == "healthy" and not (
                isinstance(target, ir.Service) and target.healthcheck is not None
            ):
                out.error(
                    "E0313",
                    f"{r.address} waits for {address} to be healthy, and {address} has no "
                    "healthcheck",
                    r.span,
                    f'give {address} a healthcheck block, or wait for condition = "started"',
                )
            elif condition == "completed_successfully" and not isinstance(target, ir.Job | ir.Wasm):
                out.error(
                    "E0313",
                    f"{r.address} waits for {address} to complete, and a service never does",
                    r.span,
                    'wait for condition = "started" or "healthy"',
                )


PASSES: tuple[Callable[[ir.Document, Collector], None], ...] = (
    dependency_cycles,
    overlapping_subnets,
    missing_inputs,
    unused_resources,
    unsupported,
    waits_that_cannot_end,
)


def check(doc: ir.Document) -> list[Diagnostic]:
    """Run every pass; raise `DiagnosticError` on errors, return the warnings otherwise."""
    out = Collector()
    out.items.extend(doc.warnings)
    for run in PASSES:
        run(doc, out)
    out.raise_if_errors()
    return list(out.items)
