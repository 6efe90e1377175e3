"""Golden tests: malformed Forgefiles in, the diagnostics a user sees out.

Each `tests/golden/diagnostics/NAME.forge` has a `NAME.txt` beside it holding what `forge validate`
prints, code frames and hints included; a person read each one. Regenerate after a deliberate
change with FORGE_UPDATE_GOLDEN=1 and read the diff before committing it.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import pytest
from rich.console import Console

from forge import render
from forgefile.diagnostics import DiagnosticError
from forgefile.lower import load

GOLDEN = Path(__file__).resolve().parent.parent / "golden" / "diagnostics"
CASES = sorted(p.stem for p in GOLDEN.glob("*.forge"))


def rendered(name: str) -> str:
    with pytest.raises(DiagnosticError) as caught:
        load(Path(f"{name}.forge"))
    buffer = io.StringIO()
    console = Console(file=buffer, width=100, color_system=None, highlight=False, soft_wrap=True)
    for diagnostic in caught.value.diagnostics:
        render.diagnostic(console, diagnostic)
    return buffer.getvalue()


@pytest.mark.parametrize("name", CASES)
def test_golden(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A malformed Forgefile gets exactly the reviewed diagnostics, with file:line:col and frame."""
    monkeypatch.chdir(GOLDEN)
    text = rendered(name)
    expected = GOLDEN / f"{name}.txt"
    if os.environ.get("FORGE_UPDATE_GOLDEN"):
        expected.write_text(text)
    assert text == expected.read_text()


def test_there_are_golden_cases() -> None:
    """The golden folder is not empty, so the parametrised test cannot pass vacuously."""
    assert len(CASES) >= 3


def test_every_diagnostic_has_a_location_and_hint(monkeypatch: pytest.MonkeyPatch) -> None:
    """No golden diagnostic is missing its span or its hint: each says where and how to fix."""
    monkeypatch.chdir(GOLDEN)
    for name in CASES:
        with pytest.raises(DiagnosticError) as caught:
            load(Path(f"{name}.forge"))
        for d in caught.value.diagnostics:
            assert d.span is not None and d.span.file == str(GOLDEN / f"{name}.forge"), d
            assert d.hint, d


def test_errors_are_capped_with_a_note(tmp_path: Path) -> None:
    """Hundreds of errors stop at the cap, with a note counting the rest."""
    from forgefile.diagnostics import MAX_DIAGNOSTICS

    blocks = "\n".join(f'network "n{i}" {{ subnet = {i} }}' for i in range(MAX_DIAGNOSTICS + 7))
    (tmp_path / "Forgefile").write_text(blocks)
    with pytest.raises(DiagnosticError) as caught:
        load(tmp_path)
    shown = caught.value.diagnostics
    assert len(shown) == MAX_DIAGNOSTICS + 1
    assert shown[-1].message == "7 more diagnostic(s) not shown"


def test_json_ranges_count_bytes_on_disk(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The JSON range's byte offsets index the file as stored: BOM, CRLF and UTF-8 included."""
    raw = '\ufeffvariable "é" {}\r\nnetwork "n" {\r\n  subnet = 7\r\n}\r\n'.encode()
    (tmp_path / "Forgefile").write_bytes(raw)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DiagnosticError) as caught:
        load(Path("Forgefile"))
    [entry] = [d for d in render.diagnostics_json(caught.value.diagnostics) if d["code"] == "E0123"]
    start, end = entry["range"]["start"], entry["range"]["end"]
    assert (start["line"], start["column"]) == (3, 12)
    assert raw[start["byte"] : end["byte"]] == b"7"


def test_control_characters_in_user_text_print_as_escapes(tmp_path: Path) -> None:
    """An ESC or a bidi override in a message or source line must not drive the terminal."""
    from forgefile.diagnostics import Diagnostic, Span

    source = tmp_path / "Forgefile"
    source.write_text('name = "a\x1b[2Jb\u202ec"\n')
    diagnostic = Diagnostic(
        "E0001", "bad \x1b]0;title\x07 value\r\nforged: line", Span(str(source), 1, 1, 1, 4), ""
    )
    buffer = io.StringIO()
    console = Console(file=buffer, width=100, color_system=None, highlight=False, soft_wrap=True)
    render.diagnostic(console, diagnostic)
    text = buffer.getvalue()

    assert not any(ch in text for ch in "\x1b\x07\r\u202e")
    assert "bad \\x1b]0;title\\x07 value\\r\\nforged: line" in text
    assert 'name = "a\\x1b[2Jb\\u202ec"' in text
    assert len(text.splitlines()) == 3  # message, source line, carets: nothing forged
