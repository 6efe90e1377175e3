"""Shared fixtures: where the shared schemas live, and the skip rule for root-only tests."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT4

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


@pytest.fixture
def runtime_spec_validator(shared: Path) -> jsonschema.Draft4Validator:
    """A Draft 4 validator for OCI runtime-spec config.json, resolving sibling files offline."""
    folder = shared / "schemas" / "runtime-spec"
    registry: Registry[Any] = Registry().with_resources(
        (path.as_uri(), Resource.from_contents(json.loads(path.read_text()), DRAFT4))
        for path in folder.glob("*.json")
    )
    schema = json.loads((folder / "config-schema.json").read_text())
    schema["id"] = (folder / "config-schema.json").as_uri()
    return jsonschema.Draft4Validator(schema, registry=registry)


def free_subnet(third_octets: range, prefix: int = 28) -> str:
    """The first 10.213.X.0/prefix that nothing on this host routes yet.

    Tests that build networks pick their subnet at run time, so a bridge left by a killed run
    (or another checkout's test run) makes them move over instead of failing.
    """
    import ipaddress

    from executor.network import foreign_routes

    taken = [ipaddress.IPv4Network(cidr, strict=False) for cidr, _ in foreign_routes("tests")]
    for octet in third_octets:
        candidate = ipaddress.IPv4Network(f"10.213.{octet}.0/{prefix}")
        if not any(candidate.overlaps(t) for t in taken):
            return str(candidate)
    raise RuntimeError(f"no free subnet in 10.213.{third_octets}.0/{prefix}")
