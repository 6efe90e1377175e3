"""Container root filesystems for real: an overlay over the image unpacked once, shared by the
containers of that image, each writing only to its own upper folder; a copy where asked."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from executor.paths import ProjectPaths
from tests.conftest import needs
from tests.integration.test_container_options import BUSYBOX
from tests.integration.test_example import force_cleanup, forge_in, leftovers, mounts_under

pytestmark = needs("runc")

TWO = """
service "a" {
  image             = image.busybox
  stop_grace_period = 0s
  command           = ["sh", "-c", "echo from-a > /mark; sleep 600"]
}

service "b" {
  image             = image.busybox
  stop_grace_period = 0s
  command           = ["sleep", "600"]
}
"""


def project(tmp_path: Path) -> tuple[Path, ProjectPaths]:
    (tmp_path / "Forgefile").write_text(BUSYBOX + TWO)
    assert forge_in(tmp_path, "key", "generate").returncode == 0
    return tmp_path, ProjectPaths.for_state_dir(tmp_path / ".forge")


def overlay_lowers(paths: ProjectPaths) -> dict[str, str]:
    """Each overlay mount below the project's run folder, with its lowerdir option."""
    lowers = {}
    prefix = str(paths.run_dir.resolve()) + "/"
    with open("/proc/self/mountinfo") as info:
        for line in info:
            fields = line.split()
            tail = fields[fields.index("-") + 1 :]
            if fields[4].startswith(prefix) and tail[0] == "overlay":
                options = dict(o.split("=", 1) for o in tail[2].split(",") if "=" in o)
                lowers[fields[4]] = options["lowerdir"]
    return lowers


def test_containers_of_one_image_share_one_read_only_lower(tmp_path: Path) -> None:
    folder, paths = project(tmp_path)
    try:
        applied = forge_in(folder, "apply", "--auto-approve")
        assert applied.returncode == 0, applied.stderr
        lowers = overlay_lowers(paths)
        # b does not see what a wrote; the shared lower does not hold it either.
        seen_by_b = forge_in(folder, "exec", "service.b", "--", "cat", "/mark")
        seen_by_a = forge_in(folder, "exec", "service.a", "--", "cat", "/mark")
        [cache] = [p for p in paths.rootfs_cache.iterdir() if p.suffix != ".lock"]
        in_lower = (cache / "mark").exists()
        runtimes = json.loads(forge_in(folder, "state", "export").stdout)["resources"]
    finally:
        forge_in(folder, "destroy", "--auto-approve")
        left = leftovers(paths)
        force_cleanup(paths)
    assert len(lowers) == 2 and set(lowers.values()) == {str(cache)}
    assert seen_by_a.stdout == "from-a\n"
    assert seen_by_b.returncode != 0 and not in_lower
    assert {r["runtime"].get("rootfs") for r in runtimes if r["kind"] == "service"} == {"overlay"}
    assert left == []
    # Nothing runs from it any more: the unpacked image is gone with the last container.
    assert not [p for p in paths.rootfs_cache.iterdir() if p.suffix != ".lock"]


def test_forge_rootfs_copy_unpacks_into_the_bundle(tmp_path: Path) -> None:
    folder, paths = project(tmp_path)
    try:
        applied = forge_in(folder, "apply", "--auto-approve", env={"FORGE_ROOTFS": "copy"})
        mounted = mounts_under(paths.run_dir)
        runtimes = json.loads(forge_in(folder, "state", "export").stdout)["resources"]
        marked = forge_in(folder, "exec", "service.a", "--", "cat", "/mark").stdout
    finally:
        forge_in(folder, "destroy", "--auto-approve")
        left = leftovers(paths)
        force_cleanup(paths)
    assert applied.returncode == 0, applied.stderr
    assert mounted == [] and marked == "from-a\n"
    assert {r["runtime"].get("rootfs") for r in runtimes if r["kind"] == "service"} == {"copy"}
    assert left == []


def test_destroy_unmounts_a_rootfs_whose_container_died(tmp_path: Path) -> None:
    """A container killed from outside leaves its overlay mounted; destroy still removes it."""
    folder, paths = project(tmp_path)
    try:
        assert forge_in(folder, "apply", "--auto-approve").returncode == 0
        for cid in subprocess.run(
            ["runc", "--root", str(paths.runc_root), "list", "-q"], capture_output=True, text=True
        ).stdout.split():
            subprocess.run(["runc", "--root", str(paths.runc_root), "kill", cid, "KILL"])
        destroyed = forge_in(folder, "destroy", "--auto-approve")
        left = leftovers(paths)
    finally:
        force_cleanup(paths)
    assert destroyed.returncode == 0, destroyed.stderr
    assert left == []


def test_an_unknown_forge_rootfs_is_refused_before_anything_changes(tmp_path: Path) -> None:
    folder, paths = project(tmp_path)
    try:
        refused = forge_in(folder, "apply", "--auto-approve", env={"FORGE_ROOTFS": "Copy"})
        state = json.loads(forge_in(folder, "state", "export").stdout)
    finally:
        forge_in(folder, "destroy", "--auto-approve")
        left = leftovers(paths)
        force_cleanup(paths)
    assert refused.returncode == 4
    assert "FORGE_ROOTFS='Copy' is neither overlay nor copy" in refused.stderr
    assert "Rolled back" not in refused.stderr  # refused before the image, not undone after
    assert state["resources"] == [] and left == []
