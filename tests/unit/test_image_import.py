"""Import and export: OCI archives and layouts, docker archives, and archives made to attack."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path
from typing import Any

import pytest

from compiler.envelope import canonical_json
from executor.image_import import export_image, import_image
from executor.images import CopyStep, ImageConfig, ImageError, ImageStore, digest_bytes
from tests.unit.test_images import make_tar, member


def built(tmp_path: Path) -> tuple[ImageStore, str]:
    """A store holding one image, `app`, with one file."""
    store = ImageStore(tmp_path / "source-store")
    (tmp_path / "ctx").mkdir(exist_ok=True)
    digest = store.build(
        "app",
        tmp_path / "ctx",
        [CopyStep(dst="/etc/app.conf", content="port=80\n")],
        ImageConfig(cmd=("serve",)),
    )
    return store, digest


def archive(path: Path, files: dict[str, bytes | tuple[bytes, str]]) -> Path:
    """A tar of `files`: bytes are regular files, (type, target) pairs are links."""
    with tarfile.open(path, "w") as tar:
        for name, content in files.items():
            info = tarfile.TarInfo(name)
            if isinstance(content, tuple):
                info.type, info.linkname = content
                tar.addfile(info)
            else:
                info.size = len(content)
                tar.addfile(info, io.BytesIO(content))
    return path


def docker_archive(
    path: Path,
    layer: bytes,
    extra: dict[str, bytes | tuple[bytes, str]],
    layers: tuple[str, ...] = ("abc/layer.tar",),
) -> Path:
    """What `docker save` writes for one image of one uncompressed layer, tagged web:1.0; with
    `layers`, its manifest.json names those files as its layers instead."""
    config = canonical_json(
        {
            "architecture": "amd64",
            "os": "linux",
            "config": {"Cmd": ["serve"]},
            "rootfs": {"type": "layers", "diff_ids": [digest_bytes(layer)]},
        }
    )
    manifest = [{"Config": "config.json", "RepoTags": ["web:1.0"], "Layers": list(layers)}]
    files: dict[str, bytes | tuple[bytes, str]] = {
        "manifest.json": json.dumps(manifest).encode(),
        "config.json": config,
        "abc/layer.tar": layer,
    }
    return archive(path, {**files, **extra})


def test_an_exported_oci_archive_imports_with_the_same_digest(tmp_path: Path) -> None:
    source, digest = built(tmp_path)
    exported = tmp_path / "app.tar"
    assert export_image(source, "app", exported) == digest

    target = ImageStore(tmp_path / "store")
    assert [(i.tag, i.digest) for i in import_image(target, exported)] == [("app", digest)]
    assert target.list() == [("app", digest)]
    rootfs = tmp_path / "rootfs"
    target.unpack("app", rootfs)
    assert (rootfs / "etc" / "app.conf").read_text() == "port=80\n"
    # The same archive again: nothing new is written, and the tag can be chosen.
    assert import_image(target, exported, tag="app")[0].digest == digest


def test_an_oci_layout_folder_imports_its_only_image_under_a_new_name(tmp_path: Path) -> None:
    """--tag names the only image there; where there are several, it picks one by name."""
    source, digest = built(tmp_path)
    target = ImageStore(tmp_path / "store")
    [imported] = import_image(target, source.root, tag="renamed")
    assert (imported.tag, imported.digest) == ("renamed", digest)

    source.build("second", tmp_path / "ctx", [], ImageConfig(cmd=("other",)))
    with pytest.raises(ImageError, match=r"no image is tagged 'other' there \(it has: app, sec"):
        import_image(target, source.root, tag="other")
    assert import_image(target, source.root, tag="app")[0].digest == digest


def test_a_docker_archive_becomes_an_oci_image_that_unpacks(tmp_path: Path) -> None:
    layer = make_tar(member("bin", tarfile.DIRTYPE), member("bin/tool", mode=0o755))
    # The layer is also reachable by a symlink, as docker writes layers two images share.
    path = docker_archive(
        tmp_path / "docker.tar", layer, {"def/layer.tar": (tarfile.SYMTYPE, "../abc/layer.tar")}
    )
    store = ImageStore(tmp_path / "store")
    [imported] = import_image(store, path)
    assert imported.tag == "web:1.0"
    manifest = store.manifest("web:1.0")
    assert manifest["layers"][0]["mediaType"] == "application/vnd.oci.image.layer.v1.tar"
    assert store.config("web:1.0")["config"]["Cmd"] == ["serve"]
    rootfs = tmp_path / "rootfs"
    store.unpack("web:1.0", rootfs)
    assert (rootfs / "bin" / "tool").read_bytes() == b"bin/tool"


@pytest.mark.parametrize(
    ("extra", "layers", "says"),
    [
        ({}, ["../outside.tar"], "points outside the image archive"),
        ({}, ["/etc/passwd"], "points outside the image archive"),
        ({"evil.tar": (tarfile.SYMTYPE, "../../../etc/passwd")}, ["evil.tar"], "outside"),
        ({"loop.tar": (tarfile.SYMTYPE, "loop.tar")}, ["loop.tar"], "chain of more than"),
        ({"dev.tar": (tarfile.CHRTYPE, "")}, ["dev.tar"], "not a regular file"),
        ({}, ["missing.tar"], "has no file missing.tar"),
    ],
    ids=["dotdot", "absolute", "escaping-symlink", "symlink-loop", "device", "missing"],
)
def test_a_docker_archive_cannot_name_files_outside_itself(
    tmp_path: Path, extra: dict[str, bytes | tuple[bytes, str]], layers: list[str], says: str
) -> None:
    path = docker_archive(tmp_path / "docker.tar", make_tar(member("file")), extra, tuple(layers))
    store = ImageStore(tmp_path / "store")

    with pytest.raises(ImageError, match=says):
        import_image(store, path)
    assert store.list() == []


def test_a_blob_that_is_not_what_its_descriptor_says_is_refused_and_not_kept(
    tmp_path: Path,
) -> None:
    source, digest = built(tmp_path)
    layer = source.manifest(digest)["layers"][0]["digest"]
    blob = source.root / "blobs" / "sha256" / layer.removeprefix("sha256:")
    blob.write_bytes(blob.read_bytes()[:-1] + b"\0")
    store = ImageStore(tmp_path / "store")

    with pytest.raises(ImageError, match=f"blob {layer} is corrupt"):
        import_image(store, source.root, tag="app")
    assert store.list() == []
    assert not store.has_blob(layer)
    assert [p.name for p in store.blobs.iterdir() if p.name.startswith(".tmp")] == []


def test_unsupported_layers_malformed_digests_and_non_images_are_refused(tmp_path: Path) -> None:
    source, digest = built(tmp_path)
    manifest = source.manifest(digest)
    manifest["layers"][0]["mediaType"] = "application/vnd.oci.image.layer.nondistributable.v1.tar"
    index: dict[str, Any] = {
        "schemaVersion": 2,
        "manifests": [
            {
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": source.put_json_bytes(canonical_json(manifest), "m")["digest"],
                "size": len(canonical_json(manifest)),
                "annotations": {"org.opencontainers.image.ref.name": "foreign"},
            }
        ],
    }
    (source.root / "index.json").write_bytes(canonical_json(index))
    store = ImageStore(tmp_path / "store")
    with pytest.raises(ImageError, match="not one Forge unpacks"):
        import_image(store, source.root)

    index["manifests"][0]["digest"] = "sha256:../../../etc/passwd"
    (source.root / "index.json").write_bytes(canonical_json(index))
    with pytest.raises(ImageError, match="only sha256 digests are read"):
        import_image(store, source.root)

    not_an_image = archive(tmp_path / "x.tar", {"README": b"hello"})
    with pytest.raises(ImageError, match="has neither"):
        import_image(store, not_an_image)
    (tmp_path / "junk").write_bytes(b"not a tar")
    with pytest.raises(ImageError, match="not a tar archive"):
        import_image(store, tmp_path / "junk")


def test_an_image_without_a_name_needs_one_from_the_cli(tmp_path: Path) -> None:
    source, digest = built(tmp_path)
    index = json.loads((source.root / "index.json").read_bytes())
    del index["manifests"][0]["annotations"]
    (source.root / "index.json").write_bytes(canonical_json(index))
    store = ImageStore(tmp_path / "store")
    with pytest.raises(ImageError, match="names no image") as caught:
        import_image(store, source.root)
    assert "--tag" in caught.value.hint
    [unnamed] = import_image(store, source.root, need_tag=False)
    assert (unnamed.tag, unnamed.digest) == ("", digest)


def test_a_forgefile_source_names_nothing_and_its_tag_must_be_there(tmp_path: Path) -> None:
    """As a Forgefile's `oci:PATH:TAG`: a tag the source does not have is an error (not the
    only image under a new name), and nothing is named in the store."""
    source, digest = built(tmp_path)
    store = ImageStore(tmp_path / "store")
    with pytest.raises(ImageError, match="no image is tagged 'nope'"):
        import_image(store, source.root, tag="nope", need_tag=False)
    [found] = import_image(store, source.root, tag="app", need_tag=False)
    assert found.digest == digest and store.list() == []
    with pytest.raises(ImageError, match="is not a file or a folder"):
        import_image(store, Path("/dev/null"))
