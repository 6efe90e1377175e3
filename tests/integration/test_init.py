"""`forge init` then `forge apply`: the starter runs for real as it is written."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from executor.paths import ProjectPaths
from tests.conftest import free_subnet, needs
from tests.integration.test_example import fetch, force_cleanup, leftovers

pytestmark = needs("runc")


def forge(folder: Path, *args: str) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [sys.executable, "-m", "forge", *args],
        cwd=folder,
        text=True,
        capture_output=True,
        timeout=120,
    )
    assert done.returncode == 0, f"forge {' '.join(args)}:\n{done.stdout}\n{done.stderr}"
    return done


def test_the_starter_applies_serves_and_destroys(tmp_path: Path) -> None:
    """The starter's service answers on its address, and destroy leaves nothing."""
    paths = ProjectPaths.for_state_dir(tmp_path / ".forge")
    forge(tmp_path, "init", "--subnet", free_subnet(range(100, 110)))
    try:
        forge(tmp_path, "key", "generate")
        forge(tmp_path, "apply", "--auto-approve")
        url = forge(tmp_path, "output", "url").stdout.strip()
        assert fetch(url) == "<h1>It works</h1>\n"
        forge(tmp_path, "destroy", "--auto-approve")
        assert leftovers(paths) == []
    finally:
        force_cleanup(paths)
