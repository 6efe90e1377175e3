"""Where a project's state and run-time files live.

A project's durable state is in `.forge/` beside its Forgefile; what the kernel and runc need
while workloads run is under `/run/forge/<project id>/`, so two projects on one host never
share a bundle, a netns or a socket.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

RUN_ROOT = Path(os.environ.get("FORGE_RUN_ROOT", "/run/forge"))


@dataclass(frozen=True)
class ProjectPaths:
    """The folders of one project; nothing here touches the disk until `ensure` is called."""

    state_dir: Path
    project_id: str

    @classmethod
    def for_state_dir(cls, state_dir: Path) -> ProjectPaths:
        state_dir = state_dir.resolve()
        digest = hashlib.sha256(str(state_dir).encode()).hexdigest()
        return cls(state_dir=state_dir, project_id=digest[:8])

    @property
    def database(self) -> Path:
        return self.state_dir / "state.db"

    @property
    def images(self) -> Path:
        return self.state_dir / "images"

    @property
    def rootfs_cache(self) -> Path:
        """Images unpacked once, the shared lower layer of their containers' overlays."""
        return self.state_dir / "rootfs"

    @property
    def logs(self) -> Path:
        return self.state_dir / "logs"

    @property
    def volumes(self) -> Path:
        return self.state_dir / "volumes"

    @property
    def keys(self) -> Path:
        return self.state_dir / "keys"

    @property
    def run_dir(self) -> Path:
        return RUN_ROOT / self.project_id

    @property
    def bundles(self) -> Path:
        return self.run_dir / "bundles"

    @property
    def runc_root(self) -> Path:
        return self.run_dir / "runc"

    def runtime_root(self, runtime: str) -> Path:
        """The state root of an OCI runtime (runc or crun): each keeps its own, in its format."""
        return self.run_dir / runtime

    @property
    def runtime_roots(self) -> tuple[Path, ...]:
        return (self.runc_root, self.runtime_root("crun"))

    def ensure(self) -> None:
        """Make the state folders; commands that only read never call this."""
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.keys.mkdir(mode=0o700, parents=True, exist_ok=True)

    def ensure_run(self) -> None:
        """Make the run-time folders under /run/forge; only an apply needs them."""
        self.bundles.mkdir(parents=True, exist_ok=True)
