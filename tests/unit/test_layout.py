"""The shape of the codebase: stages import only what lies below them (DESIGN.md §2)."""

from __future__ import annotations

import ast
import tomllib
from pathlib import Path

import pytest

from compiler.version import VERSION

REPO = Path(__file__).resolve().parents[2]

# What each package may import from the project: forge -> executor -> compiler -> forgefile,
# with grammar and stdlib as data and functions for the lower stages.
ALLOWED = {
    "forge": {"forge", "executor", "compiler", "forgefile", "stdlib", "grammar"},
    "executor": {"executor", "compiler", "forgefile", "stdlib", "grammar"},
    "compiler": {"compiler", "forgefile", "stdlib", "grammar"},
    "forgefile": {"forgefile", "stdlib", "grammar"},
    "stdlib": {"stdlib"},
    "grammar": {"grammar"},
}
PROJECT = set(ALLOWED)


def imported_packages(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), str(path))
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return found & PROJECT


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_imports_flow_downward(package: str) -> None:
    """No module imports a stage above its own: the compiler never reaches the executor."""
    offenders = {
        str(path.relative_to(REPO)): sorted(imported_packages(path) - ALLOWED[package])
        for path in (REPO / package).rglob("*.py")
    }
    assert {k: v for k, v in offenders.items() if v} == {}


def test_only_forge_prints() -> None:
    """Library stages return data; only the command prints."""
    for package in PROJECT - {"forge"}:
        for path in (REPO / package).rglob("*.py"):
            calls = [
                node
                for node in ast.walk(ast.parse(path.read_text()))
                if isinstance(node, ast.Call) and getattr(node.func, "id", "") == "print"
            ]
            assert not calls, f"{path.relative_to(REPO)} calls print()"


def test_version_is_declared_once() -> None:
    """The package metadata and the toolchain version that plans record agree."""
    meta = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert meta["project"]["version"] == VERSION


def test_every_diagnostic_code_is_documented() -> None:
    """docs/errors.md lists exactly the codes the code can emit."""
    import re

    pattern = re.compile(r'"([EFPRWB][0-9]{4})"')
    used = {
        code
        for package in ("forgefile", "compiler", "executor", "forge")
        for path in (REPO / package).rglob("*.py")
        for code in pattern.findall(path.read_text())
    }
    documented = set(
        re.findall(r"^\| ([EFPRWB][0-9]{4}) \|", (REPO / "docs" / "errors.md").read_text(), re.M)
    )
    assert used == documented
