"""What ships with the language: built-in functions and the templates of `forge init`."""

from importlib import resources
from importlib.resources.abc import Traversable


def template(name: str) -> Traversable:
    """A folder of templates shipped as package data, e.g. `init`."""
    return resources.files(__name__).joinpath("templates", name)
