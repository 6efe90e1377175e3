"""The grammars' parsers, their analysis cached in the user's cache folder."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import grammar


def test_a_parser_is_cached_and_parses_the_same(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    built = grammar.parser("expressions.lark", start="expr")
    (cached,) = (tmp_path / "forge" / "grammar").glob("expressions.lark.*.cache")
    loaded = grammar.parser("expressions.lark", start="expr")

    assert (tmp_path / "forge" / "grammar").stat().st_mode & 0o777 == 0o700
    assert cached.stat().st_size > 0
    assert loaded.parse("a + b * 2") == built.parse("a + b * 2")


def test_other_options_get_a_file_of_their_own(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Lark leaves options such as positions out of its key: the file name must not."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    grammar.parser("expressions.lark", start="expr")
    grammar.parser("expressions.lark", start="expr", propagate_positions=True)

    assert len(list((tmp_path / "forge" / "grammar").glob("expressions.lark.*.cache"))) == 2


def test_a_folder_others_can_write_is_not_used(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The cache is a pickle: one that another user could have planted is never read."""
    folder = tmp_path / "forge" / "grammar"
    folder.mkdir(parents=True)
    os.chmod(folder, 0o777)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))

    assert grammar._cache_file("policy.lark", {}) is None
    assert grammar.parser("expressions.lark", start="expr").parse("1")
    assert list(folder.iterdir()) == []


def test_without_a_cache_folder_the_parser_is_built(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("XDG_CACHE_HOME", str(blocker))

    assert grammar._cache_file("policy.lark", {}) is None
    assert grammar.parser("expressions.lark", start="expr").parse("1")
