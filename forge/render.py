"""Rendering for people: diagnostics with code frames, plans, findings and tables (rich)."""

from __future__ import annotations

import functools
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # rich and the front end load when something is printed, not at start
    from rich.console import Console

    from compiler.policy import Verdict
    from forgefile.diagnostics import Diagnostic, Span

_SOURCES: dict[str, list[str]] = {}


def escape(text: str) -> str:
    """User text inside rich markup: `[/]` in a name must print, not close a style, and a
    control character must print as an escape, not drive the terminal."""
    from rich.markup import escape as markup_escape

    from forgefile.diagnostics import visible

    return markup_escape(visible(text))


_STYLE = {"error": "bold red", "warning": "bold yellow", "note": "bold cyan"}
_SYMBOL = {
    "create": ("+", "green"),
    "update": ("~", "yellow"),
    "replace": ("-/+", "magenta"),
    "delete": ("-", "red"),
    "no-op": ("=", "dim"),
}


def _lines(file: str) -> list[str]:
    if file not in _SOURCES:
        try:
            _SOURCES[file] = Path(file).read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError):
            _SOURCES[file] = []
    return _SOURCES[file]


FRAME_WIDTH = 120


def code_frame(span: Span, context: int = 1) -> list[str]:
    """The lines around a span with a caret under it, as rich markup.

    Long lines are cut to a window around the caret, so a 1 MiB line prints as one screen line.
    """
    lines = _lines(span.file)
    if not lines or span.line > len(lines):
        return []
    first = max(1, span.line - context)
    width = len(str(span.line + context))
    start = max(0, span.column - 1 - FRAME_WIDTH // 2)
    out = []
    for number in range(first, min(len(lines), span.line) + 1):
        marker = ">" if number == span.line else " "
        shown = _window(lines[number - 1], start)
        out.append(f"[dim]{marker} {number:>{width}} |[/] {escape(shown)}")
    end = span.end_column if span.end_line == span.line else len(lines[span.line - 1])
    end = min(end, start + FRAME_WIDTH)
    carets = "^" * max(1, end - span.column + 1)
    pad = span.column - 1 - start + (1 if start else 0)
    out.append(f"[dim]  {' ' * width} |[/] {' ' * pad}[bold red]{carets}[/]")
    return out


def source_lines(span: Span) -> list[str]:
    """The lines of a file that a span covers, as written."""
    lines = _lines(span.file)
    return lines[span.line - 1 : span.end_line]


def _window(line: str, start: int) -> str:
    shown = line[start : start + FRAME_WIDTH]
    return ("…" if start else "") + shown + ("…" if len(line) > start + FRAME_WIDTH else "")


def shown(span: Span) -> str:
    """`file:line:column`, the file relative to the working folder when it lies under it:
    spans hold absolute paths (so plans do not depend on where forge ran), people read less."""
    try:
        file = str(Path(span.file).relative_to(Path.cwd()))
    except ValueError:
        file = span.file
    return f"{file}:{span.line}:{span.column}"


def diagnostic(console: Console, d: Diagnostic) -> None:
    where = f"{shown(d.span)}: " if d.span else ""
    style = _STYLE.get(str(d.severity), "bold")
    console.print(
        f"[bold]{escape(where)}[/][{style}]{d.severity}[/][dim]{escape(f'[{d.code}]')}[/] "
        f"{escape(d.message)}"
    )
    if d.span:
        for line in code_frame(d.span):
            console.print(line)
    if d.context:
        console.print(f"  [dim]{escape(d.context)}[/]")
    for related in d.related:
        console.print(f"  [cyan]note:[/] {escape(shown(related.span))}: {escape(related.message)}")
    if d.hint:
        console.print(f"  [green]hint:[/] {escape(d.hint)}")


_STATUS = {
    "blocking": ("error", "bold red"),
    "warning": ("warning", "bold yellow"),
    "info": ("info", "bold cyan"),
    "waived": ("waived", "dim"),
    "overridden": ("overridden", "bold magenta"),
}


def findings(console: Console, verdict: Verdict) -> None:
    for f in verdict.findings:
        word, style = _STATUS[f.status]
        console.print(
            f"[bold]{escape(str(f.span))}:[/] [{style}]policy {word}[/] "
            f"[dim]{escape(f'[{f.rule.id} {f.rule.severity}/{f.level}]')}[/] "
            f"{escape(f.message)}"
        )
        if f.waiver:
            console.print(
                f"  [dim]waived by `{escape(f.waiver.name)}` ({escape(str(f.waiver.span))}) until "
                f"{escape(f.waiver.expires)}, owner {escape(f.waiver.owner)}: "
                f"{escape(f.waiver.reason)}[/]"
            )
            continue
        if f.override:
            console.print(
                f"  [magenta]overridden by {escape(f.override.identity)}:[/] "
                f"{escape(f.override.reason)}"
            )
        if f.rollout:
            console.print(f"  [dim]rollout: {escape(f.rollout)}[/]")
        for line in code_frame(f.span, context=0):
            console.print(line)
        console.print(
            f"  [dim]rule at {escape(str(f.rule.span))}"
            + (f"; controls {escape(', '.join(f.rule.controls))}" if f.rule.controls else "")
            + "[/]"
        )
        if f.rule.remediation:
            console.print(f"  [green]fix:[/] {escape(f.rule.remediation)}")
    for p in verdict.problems:
        word, style = ("error", "bold red") if p.severity == "error" else ("warning", "bold yellow")
        where = f"{escape(str(p.span))}: " if p.span else ""
        console.print(f"[bold]{where}[/][{style}]policy {word}[/] {escape(p.message)}")
    counts = {s: verdict.count(s) for s in ("blocking", "warning", "info", "waived", "overridden")}
    # Problems count as what they are: an expired waiver blocks though no finding does.
    counts["policy error"] = sum(1 for p in verdict.problems if p.severity == "error")
    counts["warning"] += sum(1 for p in verdict.problems if p.severity == "warning")
    console.print(
        f"[dim]policy: {verdict.evaluated} evaluation(s); "
        + ", ".join(f"{n} {s}" for s, n in counts.items())
        + "[/]"
    )


def plan(console: Console, document: dict[str, Any]) -> None:
    selection = document.get("selection") or {}
    if selection.get("targets") or selection.get("excludes"):
        parts = [f"--target {t}" for t in selection.get("targets", [])]
        parts += [f"--exclude {x}" for x in selection.get("excludes", [])]
        console.print(
            f"[yellow]Partial plan[/] ({escape(' '.join(parts))}): other resources are left as "
            "they are, and outputs are not updated."
        )
    changes = [a for a in document["actions"] if a["action"] != "no-op"]
    if not changes:
        if document.get("destroy"):
            console.print("[green]Nothing to destroy.[/] State holds no resources.")
        elif document.get("rollback"):
            serial = document["rollback"]["serial"]
            console.print(f"[green]No changes.[/] The host is as it was at serial {serial}.")
        else:
            console.print("[green]No changes.[/] The host matches the Forgefile.")
        return
    for action in document["actions"]:
        symbol, style = _SYMBOL[action["action"]]
        if action["action"] == "no-op":
            continue
        if action.get("create_before_destroy"):
            symbol = "+/-"  # the replacement starts before the old one stops
        console.print(
            f"[{style}]{symbol:>3} {escape(action['address'])}[/] "
            f"[dim]({escape(action['reason'])})[/]"
        )
        for key, change in action["diff"].items():
            console.print(
                f"      [dim]{escape(key)}:[/] {escape(_short(change['before']))} "
                f"[dim]->[/] {escape(_short(change['after']))}"
            )
    counts = {k: sum(1 for a in changes if a["action"] == k) for k in _SYMBOL}
    summary = ", ".join(f"{n} to {k}" for k, n in counts.items() if n)
    console.print(f"[bold]Plan:[/] {summary}.")


def _short(value: Any) -> str:
    text = repr(value) if not isinstance(value, str) else value
    return text if len(text) <= 60 else text[:57] + "..."


def outputs(console: Console, values: dict[str, Any]) -> None:
    if not values:
        return
    console.print("[bold]Outputs:[/]")
    for name, entry in values.items():
        console.print(f"  {escape(name)} = {escape(str(entry['value']))}")


def table(console: Console, title: str, columns: list[str], rows: list[list[str]]) -> None:
    from rich.table import Table

    t = Table(title=title, title_justify="left", show_edge=False, header_style="bold")
    for column in columns:
        t.add_column(column)
    for row in rows:
        t.add_row(*(escape(str(c)) for c in row))
    console.print(t)


JSON_VERSION = 1


def diagnostics_json(diagnostics: Iterable[Diagnostic]) -> list[dict[str, Any]]:
    """Diagnostics in the versioned JSON form: severity, code, summary, detail and range."""
    return [_diagnostic_json(d) for d in diagnostics]


def _diagnostic_json(d: Diagnostic) -> dict[str, Any]:
    return {
        "severity": str(d.severity),
        "code": d.code,
        "summary": d.message,
        "detail": d.hint,
        "context": d.context,
        "range": _range(d.span) if d.span else None,
        "related": [{"message": r.message, "range": _range(r.span)} for r in d.related],
    }


def _range(span: Span) -> dict[str, Any]:
    return {
        "file": span.file,
        "start": {
            "line": span.line,
            "column": span.column,
            "byte": _byte(span.file, span.line, span.column),
        },
        "end": {
            "line": span.end_line,
            "column": span.end_column,
            "byte": _byte(span.file, span.end_line, span.end_column + 1),
        },
    }


@functools.cache
def _file_lines(file: str) -> list[bytes] | None:
    try:
        return Path(file).read_bytes().split(b"\n")
    except OSError:
        return None


def _byte(file: str, line: int, column: int) -> int | None:
    """The UTF-8 byte offset of line:column in the file as it is on disk (BOM and CRs counted)."""
    lines = _file_lines(file)
    if lines is None:
        return None
    if line > len(lines):
        return None
    start = sum(len(ln) + 1 for ln in lines[: line - 1])
    text = lines[line - 1].decode("utf-8", errors="replace")
    if line == 1 and text.startswith("\ufeff"):
        text, start = text[1:], start + 3
    return start + len(text[: column - 1].encode())


_PROGRESS_MARK = {
    "done": "[green]✓[/]",
    "delete": "[red]-[/]",
    "deleted": "[red]✓[/]",
    "failed": "[bold red]✗[/]",
    "rolled back": "[yellow]↩[/]",
}


class ApplyProgress:
    """How an apply goes, told as it goes. On a terminal, a live table: what is being worked on
    now, with its step and how long it has taken, above a count of what is done; it ends as one
    line per resource. Elsewhere (a pipe, a file, CI), one line per step as it happens, so that
    a log of the apply reads in order. Called from the apply's workers, one call at a time."""

    LIVE_DONE_SHOWN = 5  # finished rows kept in view under those still at work

    def __init__(self, console: Console) -> None:
        self.console = console
        self.rows: dict[str, list[Any]] = {}  # address: [phase, message, started, ended]
        self.finished: dict[str, None] = {}  # in the order they ended; a set that keeps it
        self.live: Any = None

    def __enter__(self) -> ApplyProgress:
        if self.console.is_terminal:
            from rich.live import Live

            self.live = Live(
                self._view(), console=self.console, refresh_per_second=8, transient=True
            )
            self.live.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.live is None:
            return
        self.live.stop()
        for address in [*self.finished, *(a for a in self.rows if a not in self.finished)]:
            self.console.print(self._line(address))

    FINAL = ("done", "deleted", "failed", "rolled back")

    def __call__(self, phase: str, address: str, message: str) -> None:
        import time

        if phase == "recover":
            (self.live.console if self.live else self.console).print(
                f"  [yellow]↺[/] {escape(message)}"
            )
            return
        now = time.monotonic()
        row = self.rows.get(address)
        if row is None or (row[0] in self.FINAL and phase not in self.FINAL):
            row = self.rows[address] = [phase, message, now, None]  # a replacement's second half
        row[0], row[1] = phase, message
        self.finished.pop(address, None)
        if phase in self.FINAL:
            row[3] = now
            self.finished[address] = None
        if self.live is None:
            self.console.print(self._line(address))
        else:
            self.live.update(self._view())

    def _line(self, address: str) -> str:
        phase, message, _, _ = self.rows[address]
        return f"  {_PROGRESS_MARK.get(phase, '[cyan]…[/]')} {escape(address)}: {escape(message)}"

    def _view(self) -> Any:
        import time

        from rich.table import Table

        view = Table.grid(padding=(0, 1))
        now = time.monotonic()
        working = [a for a in self.rows if a not in self.finished]
        for address in [*list(self.finished)[-self.LIVE_DONE_SHOWN :], *working]:
            phase, message, started, ended = self.rows[address]
            took = (ended or now) - started
            view.add_row(
                _PROGRESS_MARK.get(phase, "[cyan]⠿[/]"),
                escape(address),
                f"[dim]{took:4.1f}s[/]",
                escape(message),
            )
        view.add_row("", f"[bold]{len(self.finished)} done, {len(working)} at work[/]", "", "")
        return view
