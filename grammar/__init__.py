"""The Lark grammars, shipped as package data and loaded by the front end and the policy engine."""

from __future__ import annotations

import hashlib
import os
import stat
from importlib import resources
from pathlib import Path
from typing import Any

import lark


def read(name: str) -> str:
    """The text of one grammar file, e.g. `forgefile.lark`."""
    return resources.files(__name__).joinpath(name).read_text(encoding="utf-8")


def parser(name: str, **options: Any) -> lark.Lark:
    """An LALR parser for one grammar file, its analysis cached in the user's cache folder.

    Building a parser from a grammar costs 50-70 ms, paid by every `forge` process; loading
    Lark's cache of the analysis costs 5. Lark keys the cache on the grammar's text and the
    options, so an edited grammar is analysed again; without a usable cache folder, nothing is
    cached and the parser is built as before.
    """
    options = {"parser": "lalr", "maybe_placeholders": True, **options}
    cached = _cache_file(name, options)
    return lark.Lark.open_from_package(__name__, name, cache=cached or False, **options)


def _cache_file(name: str, options: dict[str, Any]) -> str | None:
    """Where to keep one grammar's analysis: a file per grammar and options, in a private folder.

    The cache is a pickle, so it is only read from a folder that this user owns and that nobody
    else can write to.
    """
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    folder = Path(base) / "forge" / "grammar"
    try:
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        info = folder.stat()
    except OSError:
        return None
    if info.st_uid != os.getuid() or info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        return None
    if not os.access(folder, os.W_OK):
        return None
    # Lark leaves some options (callbacks, positions) out of its key; the file name has them all.
    key = repr(sorted((k, getattr(v, "__qualname__", v)) for k, v in options.items()))
    digest = hashlib.sha256(f"{lark.__version__} {key}".encode()).hexdigest()[:16]
    return str(folder / f"{name}.{digest}.cache")
