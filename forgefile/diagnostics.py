"""Diagnostics: what went wrong, where, and how to fix it, as data before it is text.

Every error a user can cause becomes a `Diagnostic` with a code, a message, the span it points
at and a hint. The stages collect them and raise one `DiagnosticError`; only `forge/` renders
them (with a code frame for people, as JSON for machines).
"""

from __future__ import annotations

import enum
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple


class Span(NamedTuple):
    """A region of a source file; lines and columns count from 1, the end is inclusive.

    A named tuple rather than a frozen dataclass: every syntax node has one, and a tuple is made
    in a third of the time (the parse of a big Forgefile makes tens of thousands).
    """

    file: str
    line: int
    column: int
    end_line: int
    end_column: int

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.column}"

    def to_json(self) -> dict[str, object]:
        return {
            "file": self.file,
            "line": self.line,
            "column": self.column,
            "end_line": self.end_line,
            "end_column": self.end_column,
        }


class Severity(enum.StrEnum):
    ERROR = "error"
    WARNING = "warning"
    NOTE = "note"


@dataclass(frozen=True)
class Related:
    """A second place that explains a diagnostic: the declaration, the other duplicate."""

    span: Span
    message: str


@dataclass(frozen=True)
class Diagnostic:
    code: str
    message: str
    span: Span | None
    hint: str = ""
    severity: Severity = Severity.ERROR
    related: tuple[Related, ...] = field(default=())
    # Where evaluation was when it failed: "while evaluating `command` of service.web".
    context: str = ""

    def to_json(self) -> dict[str, object]:
        return {
            "code": self.code,
            "severity": str(self.severity),
            "message": self.message,
            "span": self.span.to_json() if self.span else None,
            "hint": self.hint,
            "related": [{"span": r.span.to_json(), "message": r.message} for r in self.related],
            "context": self.context,
        }


class ForgeError(Exception):
    """The root of every error Forge reports to a user rather than as a bug.

    Subclasses set how the command line reports them: the exit code, a headline naming what
    failed, and a hint saying what to do.
    """

    exit_code: int = 1
    hint: str = ""

    def __init__(self, *args: object, hint: str = "") -> None:
        super().__init__(*args)
        if hint:
            self.hint = hint

    @property
    def headline(self) -> str:
        return "error"


class DiagnosticError(ForgeError):
    """One or more diagnostics stopped a stage."""

    def __init__(self, diagnostics: Iterable[Diagnostic]) -> None:
        self.diagnostics: tuple[Diagnostic, ...] = tuple(diagnostics)
        first = self.diagnostics[0] if self.diagnostics else None
        summary = f"{first.span}: {first.message}" if first and first.span else str(first)
        super().__init__(summary)


class Collector:
    """Gathers diagnostics across a pass, so a user sees every problem at once, not one."""

    def __init__(self) -> None:
        self.items: list[Diagnostic] = []

    def error(
        self,
        code: str,
        message: str,
        span: Span | None,
        hint: str = "",
        related: Sequence[Related] = (),
    ) -> None:
        self.items.append(Diagnostic(code, message, span, hint, Severity.ERROR, tuple(related)))

    def warning(self, code: str, message: str, span: Span | None, hint: str = "") -> None:
        self.items.append(Diagnostic(code, message, span, hint, Severity.WARNING))

    @property
    def has_errors(self) -> bool:
        return any(d.severity is Severity.ERROR for d in self.items)

    def raise_if_errors(self) -> None:
        if self.has_errors:
            raise DiagnosticError(capped(sorted(self.items, key=_order)))


MAX_DIAGNOSTICS = 50


def capped(diagnostics: list[Diagnostic], limit: int = MAX_DIAGNOSTICS) -> list[Diagnostic]:
    """At most `limit` diagnostics, and a note saying how many more there were."""
    if len(diagnostics) <= limit:
        return diagnostics
    rest = len(diagnostics) - limit
    note = Diagnostic(
        "F0010",
        f"{rest} more diagnostic(s) not shown",
        None,
        "fix these first; the rest are often consequences",
        Severity.NOTE,
    )
    return [*diagnostics[:limit], note]


def _order(d: Diagnostic) -> tuple[str, int, int]:
    return (d.span.file, d.span.line, d.span.column) if d.span else ("", 0, 0)


def suggest(name: str, candidates: Iterable[str]) -> str:
    """A "did you mean" hint, or an empty string when nothing is close."""
    import difflib

    close = difflib.get_close_matches(name, list(candidates), n=1, cutoff=0.6)
    return f"did you mean `{close[0]}`?" if close else ""


# Characters that would act on a terminal (or a report viewer) rather than print: C0 and C1
# controls (an ESC starts a colour or cursor sequence, a CR overwrites the line) and the
# bidirectional overrides that make text read differently from how it runs ("trojan source").
# A tab prints as is.
_UNPRINTABLE = re.compile("[\x00-\x08\x0a-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def visible(text: str) -> str:
    """`text` with every control character shown as an escape, such as \\x1b."""
    return _UNPRINTABLE.sub(_shown, text)


def _shown(match: re.Match[str]) -> str:
    char = match.group()
    return {"\n": "\\n", "\r": "\\r"}.get(char) or (
        f"\\x{ord(char):02x}" if ord(char) < 0x100 else f"\\u{ord(char):04x}"
    )
