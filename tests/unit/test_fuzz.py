"""Untrusted input never crashes the front end: anything but a Forgefile is a diagnostic."""

from __future__ import annotations

import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from forgefile.diagnostics import DiagnosticError
from forgefile.lower import load

TOKENS = [
    'service "a"',
    'image "i"',
    'network "n"',
    'volume "v"',
    "{",
    "}",
    "[",
    "]",
    "(",
    ")",
    "=",
    ",",
    ":",
    "?",
    "x",
    "var.x",
    "local.y",
    "service.a",
    "image.i",
    "network.n[0]",
    '"s"',
    '"${var.x}"',
    '"${"',
    "1",
    "-2",
    "0.5",
    "1m30s",
    "64MiB",
    "true",
    "null",
    "+",
    "*",
    "==",
    "&&",
    "!",
    "for",
    "in",
    "if",
    "=>",
    "count",
    "for_each",
    "count.index",
    "each.key",
    "<<EOT\nx\nEOT",
    "#c\n",
    "/*",
    "*/",
    "\n",
    "upper(",
    "env(",
    'file("/etc/passwd")',
    "locals",
    "variable",
    "output",
    "depends_on",
    "\u00a0",
    "\ufeff",
]


def _front_end(data: bytes) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "Forgefile"
        path.write_bytes(data)
        try:
            load(path, environ={})
        except DiagnosticError as exc:
            assert exc.diagnostics, "a DiagnosticError must carry diagnostics"


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=400))
def test_arbitrary_bytes_give_a_diagnostic_or_a_document(data: bytes) -> None:
    """Random bytes load or fail with diagnostics; nothing else escapes."""
    _front_end(data)


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.sampled_from(TOKENS), max_size=60))
def test_token_soup_gives_a_diagnostic_or_a_document(tokens: list[str]) -> None:
    """Sequences of real tokens in any order load or fail with diagnostics only."""
    _front_end(" ".join(tokens).encode())


def test_deep_nesting_is_refused_not_a_recursion_error(tmp_path: Path) -> None:
    """Nesting far past the limit is a diagnostic, not a RecursionError."""
    (tmp_path / "Forgefile").write_text("locals { x = " + "(" * 5000 + "1" + ")" * 5000 + " }")
    try:
        load(tmp_path, environ={})
    except DiagnosticError as exc:
        assert exc.diagnostics[0].code == "F0002"
    else:
        raise AssertionError("deep nesting was accepted")
