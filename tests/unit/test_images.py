"""The image store: layout files, reproducible layers, image configs and safe unpacking."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import shutil
import stat
import tarfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import zstandard
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT4

from compiler.envelope import canonical_json
from executor.images import (
    LAYER_MEDIA_TYPE,
    CopyStep,
    ImageConfig,
    ImageError,
    ImageStore,
    LinkStep,
    Step,
    digest_bytes,
    host_platform,
)

BUSYBOX = Path("/bin/busybox")
APPLETS = ("sh", "echo", "httpd", "cat", "sleep")
needs_busybox = pytest.mark.skipif(not BUSYBOX.is_file(), reason="needs busybox-static")


def busybox_steps() -> list[Step]:
    """The steps of the busybox image every build test starts from."""
    links = tuple(f"/bin/{applet}" for applet in APPLETS)
    return [CopyStep(dst="/bin/busybox", src="busybox", mode=0o755), LinkStep("busybox", links)]


def schema_validator(shared: Path, name: str) -> jsonschema.protocols.Validator:
    """A validator for one image-spec schema whose sibling $refs resolve to the shared files."""
    folder = shared / "schemas" / "image-spec"

    def retrieve(uri: str) -> Resource[Any]:
        # The schemas' ids point at opencontainers.org; the files beside them are the same.
        contents = json.loads((folder / uri.rsplit("/", 1)[-1]).read_text())
        return Resource.from_contents(contents, default_specification=DRAFT4)

    schema = json.loads((folder / name).read_text())
    validator_class = jsonschema.validators.validator_for(schema)
    # Registry is an attrs class; mypy without the attrs plugin does not see its fields.
    registry = Registry(retrieve=retrieve)  # type: ignore[call-arg]
    return validator_class(schema, registry=registry, format_checker=validator_class.FORMAT_CHECKER)


def blob(store_root: Path, digest: str) -> bytes:
    """The bytes of a blob in an OCI layout."""
    return (store_root / "blobs" / "sha256" / digest.removeprefix("sha256:")).read_bytes()


def layer_members(store_root: Path, descriptor: dict[str, Any]) -> list[tarfile.TarInfo]:
    """The tar members of a zstd layer blob."""
    data = zstandard.ZstdDecompressor().stream_reader(blob(store_root, descriptor["digest"])).read()
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        return tar.getmembers()


def make_tar(*members: tuple[tarfile.TarInfo, bytes]) -> bytes:
    """A tar archive of hand-made members, for layers no honest builder would produce."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in members:
            info.size = len(data) if info.isreg() else 0
            tar.addfile(info, io.BytesIO(data) if info.isreg() else None)
    return buffer.getvalue()


def member(name: str, kind: bytes = tarfile.REGTYPE, link: str = "", mode: int = 0o644) -> Any:
    """One (TarInfo, data) pair for make_tar; regular files hold their own name as content."""
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.mode = kind, link, mode
    return info, name.encode() if kind == tarfile.REGTYPE else b""


def put_blob(store_root: Path, data: bytes) -> str:
    """Write a blob straight into the layout, as another tool would, and return its digest."""
    digest = digest_bytes(data)
    (store_root / "blobs" / "sha256" / digest.removeprefix("sha256:")).write_bytes(data)
    return digest


COMPRESSORS: dict[str, tuple[str, Callable[[bytes], bytes]]] = {
    "zstd": (LAYER_MEDIA_TYPE, lambda data: zstandard.ZstdCompressor().compress(data)),
    "gzip": ("application/vnd.oci.image.layer.v1.tar+gzip", lambda d: gzip.compress(d, mtime=0)),
    "plain": ("application/vnd.oci.image.layer.v1.tar", lambda data: data),
}


def hand_made_image(store_root: Path, *layers: bytes, compression: str = "zstd") -> str:
    """Store a manifest over hand-made tar layers and return its digest."""
    media_type, compress = COMPRESSORS[compression]
    descriptors = []
    for layer in layers:
        data = compress(layer)
        descriptors.append(
            {"mediaType": media_type, "digest": put_blob(store_root, data), "size": len(data)}
        )
    config = canonical_json(
        {
            "architecture": "amd64",
            "os": "linux",
            "rootfs": {"type": "layers", "diff_ids": [digest_bytes(layer) for layer in layers]},
        }
    )
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": put_blob(store_root, config),
            "size": len(config),
        },
        "layers": descriptors,
    }
    return put_blob(store_root, canonical_json(manifest))


def snapshot(folder: Path) -> dict[str, tuple[int, bytes]]:
    """Every path under folder with its mode and (for files) content, to prove nothing changed."""
    found = {}
    for path in sorted(folder.rglob("*")):
        info = path.lstat()
        content = path.read_bytes() if stat.S_ISREG(info.st_mode) else b""
        found[str(path)] = (info.st_mode, content)
    return found


@pytest.fixture
def store(tmp_path: Path) -> ImageStore:
    """An empty image store in a temporary folder."""
    return ImageStore(tmp_path / "store")


# --- digests and layout -----------------------------------------------------------------------


def test_digest_bytes_is_sha256() -> None:
    """digest_bytes gives the OCI form of the sha256 of its input."""
    assert digest_bytes(b"") == "sha256:" + hashlib.sha256(b"").hexdigest()
    assert digest_bytes(b"forge") == "sha256:" + hashlib.sha256(b"forge").hexdigest()


def test_new_store_is_a_valid_oci_layout(tmp_path: Path, shared: Path) -> None:
    """A new store has oci-layout, an empty index.json and blobs/sha256, all schema-valid."""
    ImageStore(tmp_path / "store")
    root = tmp_path / "store"

    layout = json.loads((root / "oci-layout").read_text())
    index = json.loads((root / "index.json").read_text())
    schema_validator(shared, "image-layout-schema.json").validate(layout)
    schema_validator(shared, "image-index-schema.json").validate(index)
    assert layout == {"imageLayoutVersion": "1.0.0"}
    assert index["manifests"] == []
    assert (root / "blobs" / "sha256").is_dir()


def test_store_refuses_a_folder_that_is_not_a_layout(tmp_path: Path) -> None:
    """Pointing the store at a non-empty folder without oci-layout fails instead of mixing in."""
    (tmp_path / "notes.txt").write_text("mine")

    with pytest.raises(ImageError, match="no oci-layout"):
        ImageStore(tmp_path)


def test_reopening_a_store_keeps_its_tags(tmp_path: Path) -> None:
    """A second ImageStore over the same folder sees the tags the first one wrote."""
    first = ImageStore(tmp_path / "store")
    digest = first.build("note", tmp_path, [CopyStep(dst="/note", content="x")], ImageConfig())

    assert ImageStore(tmp_path / "store").list() == [("note", digest)]


# --- building -----------------------------------------------------------------------------------


@needs_busybox
def test_busybox_image_unpacks_with_files_modes_and_links(
    store: ImageStore, tmp_path: Path
) -> None:
    """The busybox image unpacks to /bin/busybox 0755 and relative applet links to it."""
    digest = store.build("busybox", Path("/bin"), busybox_steps(), ImageConfig(cmd=("sh",)))
    target = tmp_path / "rootfs"
    store.unpack(digest, target)

    binary = target / "bin" / "busybox"
    assert binary.read_bytes() == BUSYBOX.read_bytes()
    assert stat.S_IMODE(binary.stat().st_mode) == 0o755
    for applet in APPLETS:
        link = target / "bin" / applet
        assert link.is_symlink() and os.readlink(link) == "busybox"
    assert store.list() == [("busybox", digest)]
    assert store.resolve("busybox") == store.resolve(digest) == digest


@needs_busybox
def test_same_inputs_give_the_same_manifest_digest(tmp_path: Path) -> None:
    """Building twice, in two folders with fresh contexts, gives byte-identical images."""
    digests = []
    for run in ("one", "two"):
        context = tmp_path / run / "context"
        (context / "site" / "css").mkdir(parents=True)
        shutil.copy(BUSYBOX, context / "busybox")
        (context / "site" / "index.html").write_text("<h1>forge</h1>")
        (context / "site" / "css" / "a.css").write_text("h1 {}")
        os.symlink("index.html", context / "site" / "home.html")
        steps = [*busybox_steps(), CopyStep(dst="/srv/www", src="site")]
        config = ImageConfig(env=(("A", "1"),), cmd=("httpd", "-f"))
        store = ImageStore(tmp_path / run / "store")
        digests.append(store.build("web", context, steps, config, source_date_epoch=1_700_000_000))

    assert digests[0] == digests[1]
    assert blob(tmp_path / "one" / "store", digests[0]) == blob(
        tmp_path / "two" / "store", digests[1]
    )


def test_a_layer_the_store_holds_is_not_compressed_again(tmp_path: Path) -> None:
    """A rebuild finds its layer by diff_id and leaves the blob as it is; a changed input, or
    a blob that has gone, compresses again."""
    store = ImageStore(tmp_path / "store")
    context = tmp_path / "context"
    context.mkdir()
    (context / "page").write_text("one")
    steps = [CopyStep(dst="/page", src="page")]

    def layer(digest: str) -> Path:
        manifest = json.loads(blob(tmp_path / "store", digest))
        return tmp_path / "store" / "blobs" / "sha256" / str(manifest["layers"][0]["digest"])[7:]

    first = store.build("site", context, steps, ImageConfig())
    written = layer(first).stat().st_mtime_ns
    assert store.build("site", context, steps, ImageConfig()) == first
    assert layer(first).stat().st_mtime_ns == written

    layer(first).unlink()
    assert store.build("site", context, steps, ImageConfig()) == first
    assert layer(first).is_file()

    (context / "page").write_text("two")
    changed = store.build("site", context, steps, ImageConfig())
    assert changed != first and layer(changed) != layer(first)


def test_layer_is_sorted_owned_by_root_and_clamped(store: ImageStore, tmp_path: Path) -> None:
    """Layer entries are sorted PAX members, uid/gid 0 without names, mtimes at most the epoch."""
    context = tmp_path / "context"
    (context / "tree" / "b").mkdir(parents=True)
    (context / "tree" / "b" / "z.txt").write_text("z")
    (context / "tree" / "a.txt").write_text("a")
    steps = [CopyStep(dst="/opt/app", src="tree"), CopyStep(dst="/etc/motd", content="hi\n")]
    digest = store.build("tree", context, steps, ImageConfig(), source_date_epoch=1_000_000)

    layer = store.manifest(digest)["layers"][0]
    members = layer_members(store.root, layer)
    names = [info.name for info in members]
    assert layer["mediaType"] == LAYER_MEDIA_TYPE
    assert names == sorted(names)
    assert names == [
        "etc",
        "etc/motd",
        "opt",
        "opt/app",
        "opt/app/a.txt",
        "opt/app/b",
        "opt/app/b/z.txt",
    ]
    for info in members:
        assert (info.uid, info.gid, info.uname, info.gname) == (0, 0, "", "")
        assert info.mtime <= 1_000_000
    raw = zstandard.ZstdDecompressor().stream_reader(blob(store.root, layer["digest"])).read()
    assert raw[257:265] == b"ustar\x0000"  # POSIX (ustar/PAX) headers, not GNU


def test_config_records_runtime_settings(store: ImageStore, tmp_path: Path) -> None:
    """The config has Env as K=V, Entrypoint, Cmd, WorkingDir, User, platform and created time."""
    config = ImageConfig(
        env=(("PATH", "/bin"), ("MODE", "a=b")),
        entrypoint=("/bin/sh", "-c"),
        cmd=("echo hi",),
        working_dir="/srv",
        user="1000:1000",
    )
    digest = store.build("cfg", tmp_path, [CopyStep(dst="/x", content="")], config, None, 86400)

    document = store.config(digest)
    assert document["config"] == {
        "Env": ["PATH=/bin", "MODE=a=b"],
        "Entrypoint": ["/bin/sh", "-c"],
        "Cmd": ["echo hi"],
        "WorkingDir": "/srv",
        "User": "1000:1000",
    }
    assert (document["os"], document["architecture"]) == host_platform()
    assert document["created"] == "1970-01-02T00:00:00Z"
    layer = store.manifest(digest)["layers"][0]
    data = zstandard.ZstdDecompressor().stream_reader(blob(store.root, layer["digest"])).read()
    assert document["rootfs"] == {"type": "layers", "diff_ids": [digest_bytes(data)]}


@needs_busybox
def test_manifest_config_and_index_match_the_oci_schemas(
    store: ImageStore, tmp_path: Path, shared: Path
) -> None:
    """What the builder writes validates against the official image-spec schemas."""
    digest = store.build("busybox", Path("/bin"), busybox_steps(), ImageConfig(cmd=("sh",)))
    index = json.loads((store.root / "index.json").read_text())

    schema_validator(shared, "image-manifest-schema.json").validate(store.manifest(digest))
    schema_validator(shared, "config-schema.json").validate(store.config(digest))
    schema_validator(shared, "image-index-schema.json").validate(index)
    assert index["manifests"][0]["annotations"] == {"org.opencontainers.image.ref.name": "busybox"}


def test_schema_validator_is_not_vacuous(shared: Path) -> None:
    """The schema helper follows sibling $refs: a malformed config digest is caught."""
    broken = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "a/b", "digest": "not a digest", "size": 1},
        "layers": [{"mediaType": LAYER_MEDIA_TYPE, "digest": digest_bytes(b""), "size": 0}],
    }

    with pytest.raises(jsonschema.ValidationError, match="does not match"):
        schema_validator(shared, "image-manifest-schema.json").validate(broken)


@needs_busybox
def test_child_keeps_parent_layers_and_adds_one(store: ImageStore, tmp_path: Path) -> None:
    """A child built on a parent digest reuses its layers, adds one, and inherits its config."""
    parent = store.build("base", Path("/bin"), busybox_steps(), ImageConfig(env=(("A", "1"),)))
    steps = [CopyStep(dst="/srv/www/index.html", content="<h1>hi</h1>")]
    child = store.build("web", tmp_path, steps, ImageConfig(env=(("B", "2"),)), parent=parent)

    parent_manifest, child_manifest = store.manifest(parent), store.manifest(child)
    assert child_manifest["layers"][:-1] == parent_manifest["layers"]
    assert len(child_manifest["layers"]) == len(parent_manifest["layers"]) + 1
    parent_ids = store.config(parent)["rootfs"]["diff_ids"]
    assert store.config(child)["rootfs"]["diff_ids"][:-1] == parent_ids
    assert store.config(child)["config"]["Env"] == ["A=1", "B=2"]
    assert len(store.config(child)["history"]) == 2
    target = tmp_path / "rootfs"
    store.unpack("web", target)
    assert (target / "bin" / "busybox").is_file()
    assert (target / "srv" / "www" / "index.html").read_text() == "<h1>hi</h1>"


def test_new_entrypoint_drops_the_parents_cmd(store: ImageStore, tmp_path: Path) -> None:
    """As in Docker, a child's entrypoint discards the parent's cmd unless it sets its own."""
    parent = store.build("p", tmp_path, [], ImageConfig(cmd=("serve",), user="app"))
    child = store.build("c", tmp_path, [], ImageConfig(entrypoint=("/run",)), parent=parent)

    assert store.config(child)["config"] == {"Entrypoint": ["/run"], "User": "app"}


def test_copy_directory_keeps_modes_and_inner_symlinks(store: ImageStore, tmp_path: Path) -> None:
    """A directory src is copied recursively with its modes; symlinks inside stay symlinks."""
    context = tmp_path / "context"
    (context / "app" / "lib").mkdir(parents=True)
    (context / "app" / "run.sh").write_text("#!/bin/sh\n")
    (context / "app" / "run.sh").chmod(0o750)
    (context / "app" / "lib" / "data").write_text("d")
    os.symlink("lib/data", context / "app" / "current")
    digest = store.build("app", context, [CopyStep(dst="/opt/app", src="app")], ImageConfig())

    target = tmp_path / "rootfs"
    store.unpack(digest, target)
    assert stat.S_IMODE((target / "opt/app/run.sh").stat().st_mode) == 0o750
    assert os.readlink(target / "opt/app/current") == "lib/data"
    assert (target / "opt/app/current").read_text() == "d"


def test_inline_content_defaults_to_0644_and_dst_folder_takes_src_name(
    store: ImageStore, tmp_path: Path
) -> None:
    """Inline content is 0644 unless told; a dst ending in / keeps the source file's name."""
    (tmp_path / "tool").write_text("t")
    steps = [
        CopyStep(dst="/etc/motd", content="hi"),
        CopyStep(dst="/etc/secret", content="s", mode=0o600),
        CopyStep(dst="/usr/local/bin/", src="tool", mode=0o755),
    ]
    target = tmp_path / "rootfs"
    store.unpack(store.build("inline", tmp_path, steps, ImageConfig()), target)

    assert stat.S_IMODE((target / "etc/motd").stat().st_mode) == 0o644
    assert stat.S_IMODE((target / "etc/secret").stat().st_mode) == 0o600
    assert stat.S_IMODE((target / "usr/local/bin/tool").stat().st_mode) == 0o755


@pytest.mark.parametrize(
    ("src", "message"),
    [
        ("../outside.txt", "without '..'"),
        ("/etc/passwd", "without '..'"),
        ("escape", "outside the build context"),
        ("missing.txt", "'missing.txt' does not exist"),
    ],
)
def test_src_must_exist_inside_the_context(tmp_path: Path, src: str, message: str) -> None:
    """A src outside the context (.., absolute, escaping symlink) or missing is refused by name."""
    context = tmp_path / "context"
    context.mkdir()
    (tmp_path / "outside.txt").write_text("secret")
    os.symlink(tmp_path / "outside.txt", context / "escape")
    store = ImageStore(tmp_path / "store")

    with pytest.raises(ImageError, match=message) as caught:
        store.build("bad", context, [CopyStep(dst="/x", src=src)], ImageConfig())
    assert "step 1" in str(caught.value)
    assert store.list() == []


@pytest.mark.parametrize(
    ("step", "message"),
    [
        (CopyStep(dst="/x", src="a", content="b"), "exactly one of src"),
        (CopyStep(dst="/x"), "exactly one of src"),
        (CopyStep(dst="relative", content="x"), "must be an absolute path"),
        (CopyStep(dst="/a/../b", content="x"), "must not contain '..'"),
        (CopyStep(dst="/x", content="x", mode=0o10000), "is not a file mode"),
        (LinkStep("../../../etc/passwd", ("/bin/sh",)), "climbs above the image root"),
        (LinkStep("busybox", ()), "at least one link"),
    ],
)
def test_malformed_steps_are_refused(
    store: ImageStore, tmp_path: Path, step: Step, message: str
) -> None:
    """Each malformed step fails with a message naming the step and the fix."""
    with pytest.raises(ImageError, match=message) as caught:
        store.build("bad", tmp_path, [CopyStep(dst="/ok", content=""), step], ImageConfig())
    assert "step 2" in str(caught.value)


def test_file_under_a_file_is_a_conflict(store: ImageStore, tmp_path: Path) -> None:
    """A step that writes under a path an earlier step made a file is refused."""
    steps = [CopyStep(dst="/etc", content="file"), CopyStep(dst="/etc/motd", content="x")]

    with pytest.raises(ImageError, match="/etc is a file from an earlier step"):
        store.build("bad", tmp_path, steps, ImageConfig())


@pytest.mark.parametrize("name", ["", "UPPER/../x", "sha256:" + "0" * 64, "a b", "-lead"])
def test_invalid_tags_are_refused(store: ImageStore, tmp_path: Path, name: str) -> None:
    """Tags follow the OCI ref.name grammar and may not look like digests."""
    with pytest.raises(ImageError, match="not a valid tag"):
        store.build(name, tmp_path, [], ImageConfig())


def test_no_temporary_files_are_left_behind(store: ImageStore, tmp_path: Path) -> None:
    """Blobs and the index are written through temporary files that are all renamed away."""
    store.build("a", tmp_path, [CopyStep(dst="/a", content="a")], ImageConfig())
    store.build("a", tmp_path, [CopyStep(dst="/a", content="b")], ImageConfig())

    leftovers = [path.name for path in store.root.rglob(".tmp-*")]
    assert leftovers == []


# --- tags -------------------------------------------------------------------------------------


def test_retag_replaces_and_remove_untags(store: ImageStore, tmp_path: Path) -> None:
    """Building a tag again moves it; remove drops it; unknown refs are ImageErrors."""
    first = store.build("app", tmp_path, [CopyStep(dst="/v", content="1")], ImageConfig())
    second = store.build("app", tmp_path, [CopyStep(dst="/v", content="2")], ImageConfig())
    assert first != second
    assert store.list() == [("app", second)]

    store.remove("app")
    assert store.list() == []
    assert store.resolve(first) == first  # blobs stay until garbage collection exists
    with pytest.raises(ImageError, match="no image is tagged 'app'"):
        store.remove("app")
    with pytest.raises(ImageError, match="unknown image 'app'"):
        store.resolve("app")
    with pytest.raises(ImageError, match="not in the store"):
        store.resolve("sha256:" + "1" * 64)
    with pytest.raises(ImageError, match="not a sha256 digest"):
        store.resolve("sha256:../../etc/passwd")


# --- unpacking --------------------------------------------------------------------------------


@pytest.mark.parametrize("compression", sorted(COMPRESSORS))
def test_unpack_reads_zstd_gzip_and_plain_layers(tmp_path: Path, compression: str) -> None:
    """Layers are decompressed according to their media type."""
    store = ImageStore(tmp_path / "store")
    layer = make_tar(member("etc", tarfile.DIRTYPE, mode=0o755), member("etc/hostname"))
    digest = hand_made_image(store.root, layer, compression=compression)

    store.unpack(digest, tmp_path / "rootfs")
    assert (tmp_path / "rootfs" / "etc" / "hostname").read_text() == "etc/hostname"


def test_hardlinks_and_relative_symlinks_inside_the_image_are_extracted(
    store: ImageStore, tmp_path: Path
) -> None:
    """Legitimate links (relative, absolute-in-image, hard) come out as links."""
    layer = make_tar(
        member("bin/busybox", mode=0o755),
        member("bin/sh", tarfile.SYMTYPE, "busybox"),
        member("usr/bin/env", tarfile.SYMTYPE, "/bin/busybox"),
        member("bin/ash", tarfile.LNKTYPE, "bin/busybox"),
    )
    target = tmp_path / "rootfs"
    store.unpack(hand_made_image(store.root, layer), target)

    assert os.readlink(target / "bin/sh") == "busybox"
    assert os.readlink(target / "usr/bin/env") == "/bin/busybox"
    assert (target / "bin/ash").stat().st_ino == (target / "bin/busybox").stat().st_ino


MALICIOUS = {
    "dotdot": (member("../evil"),),
    "nested-dotdot": (member("etc/../../evil"),),
    "absolute": (member("/tmp/fg-evil"),),
    "escaping-symlink": (member("etc", tarfile.SYMTYPE, "../../../.."), member("etc/evil")),
    "escaping-hardlink": (member("evil", tarfile.LNKTYPE, "../outside/secret"),),
    "char-device": (member("dev/null", tarfile.CHRTYPE),),
    "block-device": (member("dev/sda", tarfile.BLKTYPE),),
    "fifo": (member("run/pipe", tarfile.FIFOTYPE),),
    "dotdot-whiteout": (member("etc/.wh..."),),
}


@pytest.mark.parametrize("case", sorted(MALICIOUS))
def test_malicious_layers_are_refused_and_write_nothing_outside(tmp_path: Path, case: str) -> None:
    """Escaping names, escaping links and device nodes raise ImageError; outside stays intact."""
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "secret").write_text("keep")
    store = ImageStore(tmp_path / "store")
    digest = hand_made_image(store.root, make_tar(*MALICIOUS[case]))
    target = tmp_path / "deep" / "rootfs"
    target.mkdir(parents=True)
    before = snapshot(tmp_path)

    with pytest.raises(ImageError, match="unsafe or corrupt"):
        store.unpack(digest, target)
    after = {path: found for path, found in snapshot(tmp_path).items() if str(target) not in path}
    assert after == {path: found for path, found in before.items() if str(target) not in path}
    assert not Path("/tmp/fg-evil").exists()


def test_writes_through_an_absolute_symlink_stay_inside(store: ImageStore, tmp_path: Path) -> None:
    """A later member under an absolute symlink lands inside the target, as in a container."""
    outside = tmp_path / "outside"
    outside.mkdir()
    lower = make_tar(member("escape", tarfile.SYMTYPE, str(outside)))
    upper = make_tar(member("escape/pwned"))
    target = tmp_path / "rootfs"

    store.unpack(hand_made_image(store.root, lower, upper), target)
    assert list(outside.iterdir()) == []
    inside = target / str(outside).lstrip("/") / "pwned"
    assert inside.read_text() == "escape/pwned"


def test_file_replaces_a_lower_symlink_instead_of_writing_through_it(
    store: ImageStore, tmp_path: Path
) -> None:
    """A regular file over a lower layer's symlink replaces the link; the link's target is kept."""
    secret = tmp_path / "secret"
    secret.write_text("keep")
    lower = make_tar(member("etc/passwd", tarfile.SYMTYPE, str(secret)))
    upper = make_tar(member("etc/passwd"))
    target = tmp_path / "rootfs"

    store.unpack(hand_made_image(store.root, lower, upper), target)
    assert secret.read_text() == "keep"
    assert not (target / "etc/passwd").is_symlink()
    assert (target / "etc/passwd").read_text() == "etc/passwd"


def test_hardlink_to_a_symlink_is_refused(store: ImageStore, tmp_path: Path) -> None:
    """A hard link to a symlink (which os.link would follow out of the root) is refused."""
    secret = tmp_path / "secret"
    secret.write_text("keep")
    layer = make_tar(member("s", tarfile.SYMTYPE, str(secret)), member("h", tarfile.LNKTYPE, "s"))

    with pytest.raises(ImageError, match="hard link to non-file"):
        store.unpack(hand_made_image(store.root, layer), tmp_path / "rootfs")
    assert secret.read_text() == "keep"
    assert secret.stat().st_nlink == 1


def test_whiteouts_hide_lower_layers_only(store: ImageStore, tmp_path: Path) -> None:
    """.wh.NAME deletes NAME and .wh..wh..opq empties a folder, sparing the same layer's files."""
    lower = make_tar(
        member("a/keep"),
        member("a/gone"),
        member("b/tree/deep"),
        member("c/old"),
        member("d/old"),
    )
    upper = make_tar(
        member("a/.wh.gone"),
        member("b/.wh.tree"),
        member("c/.wh..wh..opq"),
        member("c/new"),
        member("d/new"),
        member("d/.wh..wh..opq"),  # after the layer's own file: that file must survive
        member("e/.wh.never-existed"),
    )
    target = tmp_path / "rootfs"

    store.unpack(hand_made_image(store.root, lower, upper), target)
    remaining = sorted(str(path.relative_to(target)) for path in target.rglob("*"))
    assert remaining == ["a", "a/keep", "b", "c", "c/new", "d", "d/new"]


def test_tampered_layer_is_refused_before_writing(store: ImageStore, tmp_path: Path) -> None:
    """A layer blob whose bytes no longer match its digest is refused and nothing is extracted."""
    digest = store.build("t", tmp_path, [CopyStep(dst="/f", content="x")], ImageConfig())
    layer = store.manifest(digest)["layers"][0]["digest"]
    path = store.root / "blobs" / "sha256" / layer.removeprefix("sha256:")
    path.write_bytes(path.read_bytes() + b"\0")

    target = tmp_path / "rootfs"
    with pytest.raises(ImageError, match="is corrupt"):
        store.unpack(digest, target)
    assert list(target.iterdir()) == []


def test_wrong_diff_id_is_reported(store: ImageStore, tmp_path: Path) -> None:
    """A config whose diff_id disagrees with the layer's content is reported as corrupt."""
    layer = make_tar(member("f"))
    data = zstandard.ZstdCompressor().compress(layer)
    config = canonical_json({"rootfs": {"type": "layers", "diff_ids": [digest_bytes(b"other")]}})
    manifest = {
        "schemaVersion": 2,
        "config": {"mediaType": "x/y", "digest": put_blob(store.root, config), "size": 1},
        "layers": [{"mediaType": LAYER_MEDIA_TYPE, "digest": put_blob(store.root, data)}],
    }

    with pytest.raises(ImageError, match="but the image config says"):
        store.unpack(put_blob(store.root, canonical_json(manifest)), tmp_path / "rootfs")


def test_unpack_target_must_be_empty(store: ImageStore, tmp_path: Path) -> None:
    """Unpacking into a folder that already holds files is refused."""
    digest = store.build("t", tmp_path, [CopyStep(dst="/f", content="x")], ImageConfig())
    (tmp_path / "rootfs").mkdir()
    (tmp_path / "rootfs" / "old").write_text("old")

    with pytest.raises(ImageError, match="not empty"):
        store.unpack(digest, tmp_path / "rootfs")


def test_whiteout_names_cannot_be_built(store: ImageStore, tmp_path: Path) -> None:
    """A file named .wh.* would read as a deletion when unpacked, so the builder refuses it."""
    with pytest.raises(ImageError, match="marks a deletion"):
        store.build("bad", tmp_path, [CopyStep(dst="/etc/.wh.motd", content="")], ImageConfig())


def test_directory_attributes_apply_after_its_contents(store: ImageStore, tmp_path: Path) -> None:
    """A read-only folder still receives its files, then gets its own mode and mtime."""
    layer = make_tar(member("ro", tarfile.DIRTYPE, mode=0o555), member("ro/file"))
    target = tmp_path / "rootfs"

    store.unpack(hand_made_image(store.root, layer), target)
    assert (target / "ro" / "file").read_text() == "ro/file"
    assert stat.S_IMODE((target / "ro").stat().st_mode) == 0o555
