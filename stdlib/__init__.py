"""What ships with the language: built-in functions, policy packs, the templates of `forge init`."""

from importlib import resources
from importlib.resources.abc import Traversable


def template(name: str) -> Traversable:
    """A folder of templates shipped as package data, e.g. `init`."""
    return resources.files(__name__).joinpath("templates", name)


def policy_pack(name: str) -> Traversable:
    """The folder of a policy pack shipped with Forge, e.g. `baseline`."""
    return resources.files(__name__).joinpath("policy", name)


def policy_packs() -> list[str]:
    """The names of the policy packs shipped with Forge."""
    folder = resources.files(__name__).joinpath("policy")
    return sorted(p.name for p in folder.iterdir() if p.is_dir()) if folder.is_dir() else []
