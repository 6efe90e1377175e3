"""The image store is a real OCI layout: skopeo and umoci read what Forge writes, and back."""

from __future__ import annotations

import json
import os
import subprocess
import sys
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


@needs("skopeo")
def test_archives_skopeo_writes_import_and_exports_skopeo_reads(tmp_path: Path) -> None:
    """`forge image import` of skopeo's OCI archive keeps the digest; of its docker archive
    (gzip layers, as docker wants) it gives an image that unpacks the same files; `forge image
    export` writes an OCI archive skopeo inspects, with the same digest."""
    source, digest = build_busybox(tmp_path / "source")
    gzipped = f"oci:{tmp_path / 'gz'}:busybox"
    run("skopeo", "copy", "--dest-compress-format", "gzip", "--dest-compress",
        f"oci:{source.root}:busybox", gzipped)  # fmt: skip
    run("skopeo", "copy", f"oci:{source.root}:busybox", f"oci-archive:{tmp_path / 'oci.tar'}:bb")
    run("skopeo", "copy", gzipped, f"docker-archive:{tmp_path / 'docker.tar'}:example/bb:1.0")
    project = tmp_path / "project"
    project.mkdir()
    (project / "Forgefile").write_text("")

    def forge(*args: str) -> str:
        return run(sys.executable, "-m", "forge", *args, "-f", str(project))

    forge("image", "import", str(tmp_path / "oci.tar"))
    forge("image", "import", str(tmp_path / "docker.tar"))
    listed = json.loads(forge("image", "list", "--json"))["images"]
    tags = {row["tag"]: row["digest"] for row in listed}
    assert tags["bb"] == digest
    store = ImageStore(project / ".forge" / "images")
    store.unpack("docker.io/example/bb:1.0", tmp_path / "rootfs")
    assert_busybox_rootfs(tmp_path / "rootfs")

    forge("image", "export", "bb", "-o", str(tmp_path / "out.tar"))
    inspected = json.loads(run("skopeo", "inspect", f"oci-archive:{tmp_path / 'out.tar'}:bb"))
    assert inspected["Digest"] == digest
    forge("image", "rm", "bb")
    assert "bb" not in {r["tag"] for r in json.loads(forge("image", "list", "--json"))["images"]}


@needs("skopeo", "runc")
def test_a_forgefile_runs_images_from_an_archive_and_a_layout(tmp_path: Path) -> None:
    """`image = "archive:..."` and `"oci:...:TAG"` run for real; the plan names them by digest."""
    from executor.paths import ProjectPaths
    from tests.integration.test_example import force_cleanup, forge_in, leftovers

    source, digest = build_busybox(tmp_path / "source")
    project = tmp_path / "project"
    project.mkdir()
    run("skopeo", "copy", f"oci:{source.root}:busybox", f"oci-archive:{project / 'bb.tar'}:bb")
    run("skopeo", "copy", f"oci:{source.root}:busybox", f"oci:{project / 'layout'}:bb")
    (project / "Forgefile").write_text(
        'service "web" {\n  image = "archive:bb.tar"\n  command = ["sleep", "600"]\n'
        "  stop_grace_period = 0s\n}\n\n"
        'job "hello" {\n  image = "oci:layout:bb"\n  command = ["cat", "/etc/motd"]\n}\n'
    )
    paths = ProjectPaths.for_state_dir(project / ".forge")
    try:
        assert forge_in(project, "key", "generate").returncode == 0
        planned = json.loads(forge_in(project, "plan", "--json").stdout)
        assert planned["inputs"]["images"] == {
            f"archive:{project}/bb.tar": digest,
            f"oci:{project}/layout:bb": digest,
        }
        applied = forge_in(project, "apply", "--auto-approve")
        assert applied.returncode == 0, applied.stderr
        assert forge_in(project, "logs", "job.hello").stdout == "forge\n"
        rows = json.loads(forge_in(project, "ps", "--json").stdout)["workloads"]
        assert {r["address"]: r["status"] for r in rows}["service.web"] == "running"
    finally:
        forge_in(project, "destroy", "--auto-approve")
        left = leftovers(paths)
        force_cleanup(paths)
    assert left == []
