"""Shared fixtures: where the shared schemas live, and the skip rule for root-only tests."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared"


def needs(*commands: str) -> pytest.MarkDecorator:
    """Skip unless running as root with every named command on PATH."""
    missing = [c for c in commands if shutil.which(c) is None]
    if os.geteuid() != 0:
        return pytest.mark.skip(reason="needs root: real runc, netns and nftables")
    if missing:
        return pytest.mark.skip(reason=f"needs {', '.join(missing)} on PATH")
    return pytest.mark.root


@pytest.fixture
def shared() -> Path:
    """The read-only shared/ folder beside the checkout (schemas, corpus)."""
    if not SHARED.is_dir():
        pytest.skip(f"{SHARED} is not present")
    return SHARED
