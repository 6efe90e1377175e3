"""The Lark grammars, shipped as package data and loaded by the front end and the policy engine."""

from importlib import resources


def read(name: str) -> str:
    """The text of one grammar file, e.g. `forgefile.lark`."""
    return resources.files(__name__).joinpath(name).read_text(encoding="utf-8")
