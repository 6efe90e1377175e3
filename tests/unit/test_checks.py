"""Semantic checks over the lowered IR: dependency cycles and overlapping subnets."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from compiler import checks
from forgefile import ir
from forgefile.diagnostics import Diagnostic, DiagnosticError, Severity
from forgefile.lower import load

CYCLE = """\
image "base" {
  context = "ctx"
}

service "a" {
  image      = image.base
  command    = ["a"]
  depends_on = [service.b]
}

service "b" {
  image      = image.base
  command    = ["b"]
  depends_on = [service.a]
}

job "after" {
  image      = image.base
  command    = ["after"]
  depends_on = [service.b, service.a]
}
"""


def lower(tmp_path: Path, text: str) -> ir.Document:
    """Write `text` as tmp_path/Forgefile and lower it."""
    (tmp_path / "ctx").mkdir(exist_ok=True)
    (tmp_path / "Forgefile").write_text(textwrap.dedent(text))
    return load(tmp_path / "Forgefile", {}, environ={})


def errors(doc: ir.Document) -> list[Diagnostic]:
    """Run every check on `doc` and return the diagnostics they must fail with."""
    with pytest.raises(DiagnosticError) as caught:
        checks.check(doc)
    return [d for d in caught.value.diagnostics if d.severity is Severity.ERROR]


def networks(first: str, second: str) -> str:
    """A Forgefile with two networks of the given subnets."""
    return f"""\
        network "front" {{
          subnet = "{first}"
        }}

        network "back" {{
          subnet = "{second}"
        }}
        """


def test_a_two_service_cycle_is_diagnosed_once_naming_both(tmp_path: Path) -> None:
    """Two services that depend on each other give one E0301 that names both of them."""
    [diagnostic] = errors(lower(tmp_path, CYCLE))

    assert diagnostic.code == "E0301"
    assert "service.a" in diagnostic.message and "service.b" in diagnostic.message
    assert "job.after" not in diagnostic.message
    path = diagnostic.message.removeprefix("dependency cycle: ").split(" -> ")
    assert set(path) == {"service.a", "service.b"} and path[0] == path[-1]
    [related] = diagnostic.related
    assert related.message == f"{path[1]} is part of the cycle"
    lines = (tmp_path / "Forgefile").read_text().splitlines()
    assert diagnostic.span is not None
    assert lines[diagnostic.span.line - 1] in ('service "a" {', 'service "b" {')


def test_no_cycle_means_no_diagnostic(tmp_path: Path) -> None:
    """The control: the same services depending one way only pass the checks."""
    acyclic = CYCLE.replace("  depends_on = [service.a]\n", "", 1)
    assert acyclic != CYCLE

    assert checks.check(lower(tmp_path, acyclic)) == []


def test_overlapping_subnets_are_diagnosed(tmp_path: Path) -> None:
    """A subnet inside another network's subnet is E0302, pointing at both declarations."""
    [diagnostic] = errors(lower(tmp_path, networks("10.213.62.0/24", "10.213.62.128/25")))

    assert diagnostic.code == "E0302"
    assert "network.front" in diagnostic.message and "network.back" in diagnostic.message
    lines = (tmp_path / "Forgefile").read_text().splitlines()
    assert diagnostic.span is not None
    assert lines[diagnostic.span.line - 1].strip() == 'subnet = "10.213.62.128/25"'
    [related] = diagnostic.related
    assert lines[related.span.line - 1].strip() == 'subnet = "10.213.62.0/24"'


def test_adjacent_subnets_do_not_overlap(tmp_path: Path) -> None:
    """Two halves of a /24, which touch but share no address, pass the checks."""
    found = checks.check(lower(tmp_path, networks("10.213.62.0/25", "10.213.62.128/25")))
    assert [d for d in found if d.severity is Severity.ERROR] == []


def test_unused_declarations_are_warnings(tmp_path: Path) -> None:
    """A variable, a local, a network and a volume that nothing uses each get a warning."""
    text = (
        'variable "spare" { default = 1 }\nlocals { idle = 2 }\n'
        'network "lonely" { subnet = "10.213.70.0/28" }\nvolume "unmounted" {}\n'
    )
    found = checks.check(lower(tmp_path, text))
    assert sorted(d.code for d in found) == ["W0101", "W0102", "W0301", "W0301"]
    assert all(d.severity is Severity.WARNING and d.span is not None for d in found)


def test_a_module_that_is_not_webassembly_is_refused(tmp_path: Path) -> None:
    """A `module` file without the WebAssembly header is E0309 before anything is planned."""
    (tmp_path / "m.wasm").write_bytes(b"#!/bin/sh\necho not wasm\n")
    [diagnostic] = errors(lower(tmp_path, 'wasm "w" {\n  module = "m.wasm"\n}\n'))
    assert diagnostic.code == "E0309"
    (tmp_path / "m.wasm").write_bytes(b"\0asm\x01\0\0\0")
    assert not [
        d
        for d in checks.check(lower(tmp_path, 'wasm "w" {\n  module = "m.wasm"\n}\n'))
        if d.severity is Severity.ERROR
    ]
