"""The image store is a real OCI layout: skopeo and umoci read what Forge writes, and back."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from executor.images import CopyStep, ImageConfig, ImageStore, LinkStep, Step
from tests.conftest import needs

BUSYBOX = Path("/bin/busybox")
APPLETS = ("sh", "echo", "httpd", "cat", "sleep")
pytestmark = pytest.mark.skipif(not BUSYBOX.is_file(), reason="needs busybox-static")


def run(*command: str) -> str:
    """Run a tool, failing the test with its stderr if it fails."""
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, f"{' '.join(command)} failed: {done.stderr}"
    return done.stdout


def build_busybox(root: Path) -> tuple[ImageStore, str]:
    """A store at root holding the busybox image tagged 'busybox'."""
    links = tuple(f"/bin/{applet}" for applet in APPLETS)
    steps: list[Step] = [
        CopyStep(dst="/bin/busybox", src="busybox", mode=0o755),
        LinkStep("busybox", links),
        CopyStep(dst="/etc/motd", content="forge\n"),
    ]
    store = ImageStore(root)
    config = ImageConfig(env=(("PATH", "/bin"),), cmd=("sh",))
    return store, store.build("busybox", Path("/bin"), steps, config, source_date_epoch=1000)


def assert_busybox_rootfs(rootfs: Path) -> None:
    """rootfs holds the busybox binary, its applet links and the motd."""
    assert (rootfs / "bin" / "busybox").read_bytes() == BUSYBOX.read_bytes()
    assert os.stat(rootfs / "bin" / "busybox").st_mode & 0o777 == 0o755
    for applet in APPLETS:
        assert os.readlink(rootfs / "bin" / applet) == "busybox"
    assert (rootfs / "etc" / "motd").read_text() == "forge\n"


@needs("skopeo")
def test_skopeo_inspects_forge_images(tmp_path: Path) -> None:
    """skopeo sees the manifest digest, layers and config Forge wrote."""
    store, digest = build_busybox(tmp_path / "store")

    found = json.loads(run("skopeo", "inspect", f"oci:{store.root}:busybox"))
    assert found["Digest"] == digest
    assert found["Layers"] == [layer["digest"] for layer in store.manifest(digest)["layers"]]
    assert (found["Os"], found["Env"]) == ("linux", ["PATH=/bin"])


@needs("skopeo")
def test_skopeo_copy_preserves_the_manifest_digest(tmp_path: Path) -> None:
    """A plain skopeo copy to another layout keeps Forge's bytes, so the digest is unchanged."""
    _, digest = build_busybox(tmp_path / "store")

    run("skopeo", "copy", f"oci:{tmp_path / 'store'}:busybox", f"oci:{tmp_path / 'copy'}:busybox")
    assert ImageStore(tmp_path / "copy").resolve("busybox") == digest


@needs("skopeo")
def test_forge_unpacks_a_skopeo_recompressed_copy(tmp_path: Path) -> None:
    """A gzip layout written by skopeo from a Forge image unpacks to the same files."""
    build_busybox(tmp_path / "store")
    source, copy = f"oci:{tmp_path / 'store'}:busybox", f"oci:{tmp_path / 'gzip'}:busybox"
    run("skopeo", "copy", "--dest-compress-format", "gzip", source, copy)

    foreign = ImageStore(tmp_path / "gzip")
    layers = foreign.manifest("busybox")["layers"]
    assert {layer["mediaType"] for layer in layers} == {
        "application/vnd.oci.image.layer.v1.tar+gzip"
    }
    foreign.unpack("busybox", tmp_path / "rootfs")
    assert_busybox_rootfs(tmp_path / "rootfs")


@needs("skopeo", "umoci")
def test_umoci_reads_forge_images(tmp_path: Path) -> None:
    """umoci lists Forge's tags and history, and unpacks the image once it is gzip."""
    store, _ = build_busybox(tmp_path / "store")
    assert run("umoci", "ls", "--layout", str(store.root)).split() == ["busybox"]
    assert "forge build: COPY busybox" in run("umoci", "stat", "--image", f"{store.root}:busybox")

    # XXX: umoci 0.4.7 (Debian 12) cannot read zstd layers, so it unpacks a gzip copy.
    copy = tmp_path / "gzip"
    source = f"oci:{store.root}:busybox"
    run("skopeo", "copy", "--dest-compress-format", "gzip", source, f"oci:{copy}:busybox")
    run("umoci", "unpack", "--image", f"{copy}:busybox", str(tmp_path / "bundle"))
    assert_busybox_rootfs(tmp_path / "bundle" / "rootfs")
