"""Images in and out of the store: OCI layouts, OCI archives and docker archives.

Everything read is hostile. Nothing in an archive is extracted: each file is looked up by name
and read as a stream, only regular files are read (a docker archive's symlinked layer is followed
inside the archive, a few hops at most), and every blob is hashed on its way into the store and
refused unless it is exactly what its descriptor says. JSON documents are capped in size. What
the layers hold is checked later, when a container's rootfs is unpacked (`ImageStore.unpack`).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import posixpath
import tarfile
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from compiler.envelope import canonical_json

from .images import (
    CONFIG_MEDIA_TYPE,
    DIGEST_RE,
    INDEX_MEDIA_TYPE,
    INDEX_TYPES,
    LAYOUT_VERSION,
    MANIFEST_MEDIA_TYPE,
    MANIFEST_TYPES,
    REF_NAME,
    ImageError,
    ImageStore,
    host_platform,
)

MAX_JSON = 4 * 1024 * 1024  # a manifest, config or index larger than this is refused
_MAX_LINK_HOPS = 8
_MAX_INDEX_DEPTH = 4
_GZIP, _ZSTD = b"\x1f\x8b", b"\x28\xb5\x2f\xfd"
# The layer types `ImageStore.unpack` reads; a foreign or encrypted layer is refused on import.
_LAYER_SUFFIXES = (".tar", "+gzip", ".gzip", "+zstd", ".zstd")


@dataclass(frozen=True)
class Imported:
    tag: str  # "" for an image imported by digest only (a Forgefile's "oci:" or "archive:")
    digest: str


def import_image(
    store: ImageStore, source: Path, tag: str | None = None, need_tag: bool = True
) -> list[Imported]:
    """Import the images of an OCI layout folder, an OCI archive or a docker archive.

    With `tag`, only the image of that name is imported (or the only image there is, under that
    name); without, every named image under its own name. `need_tag` refuses images that would
    come in with no name at all (the CLI's case). Without `need_tag` (a Forgefile's source,
    named by its path), nothing is named in the store, and `tag` must be the image's own name.
    """
    if not (source.is_dir() or source.is_file()):
        what = "does not exist" if not source.exists() else "is not a file or a folder"
        raise ImageError(f"{source} {what}")
    with _open(source) as files:
        if files.has("manifest.json"):
            imported = _docker(store, files, tag, naming=need_tag)
        elif files.has("index.json"):
            imported = _oci(store, files, tag, naming=need_tag)
        else:
            raise ImageError(
                f"{source} is not an image: an OCI layout or archive has index.json, a docker "
                "archive (docker save) has manifest.json, and it has neither"
            )
    if need_tag and any(not i.tag for i in imported):
        raise ImageError(
            f"{source} names no image, so nothing would find it in the store",
            hint="give it a name: forge image import PATH --tag NAME",
        )
    return imported


def export_image(store: ImageStore, ref: str, out: Path) -> str:
    """Write the image `ref` names as an OCI archive (a tar of an OCI layout holding only it,
    tagged as `ref` when that is a tag), which skopeo reads as `oci-archive:OUT:TAG`."""
    digest = store.resolve(ref)
    manifest = store.manifest(digest)
    layers = [layer["digest"] for layer in manifest["layers"]]
    blobs = [digest, manifest["config"]["digest"], *layers]
    entry: dict[str, Any] = {
        "mediaType": manifest.get("mediaType", MANIFEST_MEDIA_TYPE),
        "digest": digest,
        "size": store.blob_path(digest).stat().st_size,
    }
    if not ref.startswith("sha256:"):
        entry["annotations"] = {REF_NAME: ref}
    index = {"schemaVersion": 2, "mediaType": INDEX_MEDIA_TYPE, "manifests": [entry]}
    fd, temporary = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.")
    try:
        with (
            os.fdopen(fd, "wb") as handle,
            tarfile.open(fileobj=handle, mode="w", format=tarfile.PAX_FORMAT) as tar,
        ):
            _add_dir(tar, "blobs")
            _add_dir(tar, "blobs/sha256")
            _add_bytes(tar, "oci-layout", canonical_json({"imageLayoutVersion": LAYOUT_VERSION}))
            _add_bytes(tar, "index.json", canonical_json(index))
            for blob in dict.fromkeys(blobs):  # a layer used twice is written once
                path = store.blob_path(blob)
                info = _info(f"blobs/sha256/{blob.removeprefix('sha256:')}", path.stat().st_size)
                with path.open("rb") as content:
                    tar.addfile(info, content)
        os.chmod(temporary, 0o644)
        os.replace(temporary, out)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise
    return digest


# -- reading sources --------------------------------------------------------------------------


class _Files:
    """Read-only access to the files of a folder or an archive, by relative name."""

    def has(self, name: str) -> bool:
        raise NotImplementedError

    def stream(self, name: str) -> contextlib.AbstractContextManager[IO[bytes]]:
        raise NotImplementedError

    def read(self, name: str, limit: int = MAX_JSON) -> bytes:
        with self.stream(name) as handle:
            data = handle.read(limit + 1)
        if len(data) > limit:
            raise ImageError(f"{name} is larger than {limit} bytes; it is not a manifest")
        return data

    def json(self, name: str) -> Any:
        try:
            return json.loads(self.read(name))
        except ValueError as exc:
            raise ImageError(f"{name} is not JSON: {exc}") from None


def _relative(name: str) -> str:
    """A member name as the archive's own relative path, or an error if it leaves it."""
    if not isinstance(name, str) or not name or "\0" in name:
        raise ImageError(f"{name!r} is not a file name")
    normal = posixpath.normpath(name.removeprefix("./"))
    if normal.startswith(("/", "../")) or normal in ("..", "."):
        raise ImageError(f"{name!r} points outside the image archive")
    return normal


class _Folder(_Files):
    def __init__(self, root: Path) -> None:
        self.root = root.resolve()

    def _path(self, name: str) -> Path:
        path = (self.root / _relative(name)).resolve()
        if not path.is_relative_to(self.root):
            raise ImageError(f"{name!r} resolves outside {self.root}")
        return path

    def has(self, name: str) -> bool:
        return self._path(name).is_file()

    @contextlib.contextmanager
    def stream(self, name: str) -> Iterator[IO[bytes]]:
        path = self._path(name)
        if not path.is_file():
            raise ImageError(f"{self.root} has no file {name}; the layout is incomplete")
        with path.open("rb") as handle:
            yield handle


class _Archive(_Files):
    def __init__(self, tar: tarfile.TarFile, path: Path) -> None:
        self.tar = tar
        self.path = path
        self.members: dict[str, tarfile.TarInfo] = {}
        for member in tar.getmembers():
            with contextlib.suppress(ImageError):
                self.members.setdefault(_relative(member.name), member)

    def _member(self, name: str) -> tarfile.TarInfo:
        wanted = _relative(name)
        for _ in range(_MAX_LINK_HOPS):
            member = self.members.get(wanted)
            if member is None:
                raise ImageError(f"{self.path} has no file {name}; the archive is incomplete")
            if member.isreg():
                return member
            if member.issym():
                wanted = _relative(posixpath.join(posixpath.dirname(wanted), member.linkname))
            elif member.islnk():
                wanted = _relative(member.linkname)
            else:
                raise ImageError(f"{name} in {self.path} is not a regular file")
        raise ImageError(f"{name} in {self.path} is a chain of more than {_MAX_LINK_HOPS} links")

    def has(self, name: str) -> bool:
        try:
            self._member(name)
        except ImageError:
            return False
        return True

    @contextlib.contextmanager
    def stream(self, name: str) -> Iterator[IO[bytes]]:
        handle = self.tar.extractfile(self._member(name))
        if handle is None:  # pragma: no cover - regular members always have content
            raise ImageError(f"{name} in {self.path} cannot be read")
        with handle:
            yield handle


@contextlib.contextmanager
def _open(source: Path) -> Iterator[_Files]:
    if source.is_dir():
        yield _Folder(source)
        return
    try:
        tar = tarfile.open(source, mode="r:*")  # noqa: SIM115 - closed by the with below
    except FileNotFoundError:
        raise ImageError(f"{source} does not exist") from None
    except (tarfile.TarError, OSError):
        raise ImageError(f"{source} is not a tar archive or an OCI layout folder") from None
    with tar:
        try:
            yield _Archive(tar, source)
        except (tarfile.TarError, EOFError) as exc:
            raise ImageError(f"{source} is damaged: {exc}") from None


# -- OCI layouts and archives ----------------------------------------------------------------


def _oci(store: ImageStore, files: _Files, tag: str | None, naming: bool) -> list[Imported]:
    layout = files.json("oci-layout") if files.has("oci-layout") else {}
    version = str(layout.get("imageLayoutVersion", "")) if isinstance(layout, dict) else ""
    if not version.startswith("1."):
        raise ImageError(f"oci-layout says version {version!r}; only 1.x layouts are read")
    index = files.json("index.json")
    entries = index.get("manifests") if isinstance(index, dict) else None
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise ImageError("index.json lists no manifests")
    named = [(str((e.get("annotations") or {}).get(REF_NAME, "")), e) for e in entries]
    if tag is not None:
        chosen = [(tag, e) for name, e in named if name == tag]
        if not chosen and len(entries) == 1 and naming:
            chosen = [(tag, entries[0])]
        if not chosen:
            there = ", ".join(sorted(n for n, _ in named if n)) or "no named image"
            raise ImageError(f"no image is tagged {tag!r} there (it has: {there})")
    else:
        chosen = [(name, e) for name, e in named if name] or [("", e) for _, e in named]
    imported = []
    for name, entry in chosen:
        descriptor = _copy_manifest(store, files, entry, 0)
        if name and naming:
            store.tag(name, descriptor)
        imported.append(Imported(name, descriptor["digest"]))
    return imported


def _blob_name(descriptor: Any) -> str:
    digest = descriptor.get("digest") if isinstance(descriptor, dict) else None
    if not isinstance(digest, str) or not DIGEST_RE.fullmatch(digest):
        raise ImageError(f"a descriptor names {digest!r}: only sha256 digests are read")
    return "blobs/sha256/" + digest.removeprefix("sha256:")


def _copy_json(store: ImageStore, files: _Files, descriptor: dict[str, Any]) -> bytes:
    """A manifest, index or config blob, checked against its descriptor and kept as is."""
    data = files.read(_blob_name(descriptor))
    stored = store.put_json_bytes(data, str(descriptor.get("mediaType", "")))
    if stored["digest"] != descriptor["digest"] or stored["size"] != descriptor.get("size"):
        raise ImageError(
            f"blob {descriptor['digest']} is not what its descriptor says (it hashes to "
            f"{stored['digest']}, {stored['size']} bytes)"
        )
    return data


def _copy_manifest(
    store: ImageStore, files: _Files, descriptor: dict[str, Any], depth: int
) -> dict[str, Any]:
    """Copy the image manifest a descriptor names (this host's, from an index) with its config
    and layers; return the manifest's descriptor."""
    media_type = descriptor.get("mediaType")
    if media_type in INDEX_TYPES:
        if depth >= _MAX_INDEX_DEPTH:
            raise ImageError("the image index nests too deeply")
        index = json.loads(files.read(_blob_name(descriptor)))
        wanted_os, wanted_arch = host_platform()
        for entry in index.get("manifests", []) if isinstance(index, dict) else []:
            platform = entry.get("platform", {}) if isinstance(entry, dict) else {}
            if (platform.get("os"), platform.get("architecture")) == (wanted_os, wanted_arch):
                return _copy_manifest(store, files, entry, depth + 1)
        raise ImageError(f"the image has no manifest for this host ({wanted_os}/{wanted_arch})")
    if media_type not in MANIFEST_TYPES:
        raise ImageError(f"unsupported manifest media type {media_type!r}")
    data = files.read(_blob_name(descriptor))
    manifest = json.loads(data)
    config = manifest.get("config") if isinstance(manifest, dict) else None
    layers = manifest.get("layers") if isinstance(manifest, dict) else None
    if not isinstance(config, dict) or not isinstance(layers, list):
        raise ImageError(f"manifest {descriptor['digest']} has no config or no layers")
    diff_ids = json.loads(_copy_json(store, files, config)).get("rootfs", {}).get("diff_ids")
    if not isinstance(diff_ids, list) or len(diff_ids) != len(layers):
        raise ImageError(f"the config of {descriptor['digest']} does not list one diff_id a layer")
    for layer in layers:
        kind = str(layer.get("mediaType", "")) if isinstance(layer, dict) else ""
        if not kind.endswith(_LAYER_SUFFIXES) or "nondistributable" in kind or "foreign" in kind:
            raise ImageError(f"layer media type {kind!r} is not one Forge unpacks")
        if not store.has_blob(layer["digest"]):
            with files.stream(_blob_name(layer)) as stream:
                store.put_blob(stream, layer["digest"], layer.get("size"))
    stored = _copy_json(store, files, descriptor)
    return {"mediaType": media_type, "digest": descriptor["digest"], "size": len(stored)}


# -- docker archives ----------------------------------------------------------------------------


def _docker(store: ImageStore, files: _Files, tag: str | None, naming: bool) -> list[Imported]:
    """`docker save` output: manifest.json lists each image's config and layer files."""
    items = files.json("manifest.json")
    if not isinstance(items, list) or not items or not all(isinstance(i, dict) for i in items):
        raise ImageError("manifest.json lists no images")
    if tag is not None and (len(items) > 1 or not naming):
        items = [i for i in items if tag in (i.get("RepoTags") or [])]
        if not items:
            raise ImageError(f"no image is tagged {tag!r} in this docker archive")
    imported = []
    for item in items:
        config_name, layer_names = item.get("Config"), item.get("Layers")
        if not isinstance(config_name, str) or not isinstance(layer_names, list):
            raise ImageError("manifest.json: an image has no Config or no Layers")
        config_bytes = files.read(config_name)
        config_descriptor = store.put_json_bytes(config_bytes, CONFIG_MEDIA_TYPE)
        try:
            diff_ids = json.loads(config_bytes)["rootfs"]["diff_ids"]
        except (ValueError, KeyError, TypeError):
            raise ImageError(f"{config_name} is not an image config with rootfs.diff_ids") from None
        if not isinstance(diff_ids, list) or len(diff_ids) != len(layer_names):
            raise ImageError(f"{config_name} does not list one diff_id for each layer")
        pairs = zip(layer_names, diff_ids, strict=True)
        layers = [_docker_layer(store, files, name, diff_id) for name, diff_id in pairs]
        manifest = {
            "schemaVersion": 2,
            "mediaType": MANIFEST_MEDIA_TYPE,
            "config": config_descriptor,
            "layers": layers,
        }
        descriptor = store.put_json_bytes(canonical_json(manifest), MANIFEST_MEDIA_TYPE)
        names = [tag] if tag is not None else [str(t) for t in item.get("RepoTags") or []]
        for name in names if naming else []:
            store.tag(name, descriptor)
        imported += [Imported(name, descriptor["digest"]) for name in names or [""]]
    return imported


def _docker_layer(store: ImageStore, files: _Files, name: str, diff_id: Any) -> dict[str, Any]:
    if not isinstance(name, str):
        raise ImageError(f"manifest.json names the layer {name!r}")
    with files.stream(name) as stream:
        head = stream.read(4)
        digest = store.put_blob(_Prefixed(head, stream))
    if head.startswith(_GZIP):
        media_type = "application/vnd.oci.image.layer.v1.tar+gzip"
    elif head.startswith(_ZSTD):
        media_type = "application/vnd.oci.image.layer.v1.tar+zstd"
    else:
        media_type = "application/vnd.oci.image.layer.v1.tar"
        if digest != diff_id:
            raise ImageError(f"layer {name} hashes to {digest}, but the config says {diff_id}")
    size = store.blob_path(digest).stat().st_size
    return {"mediaType": media_type, "digest": digest, "size": size}


class _Prefixed(io.RawIOBase):
    """`head`, then the rest of `stream`: a stream whose first bytes were read to sniff it."""

    def __init__(self, head: bytes, stream: IO[bytes]) -> None:
        self.head = head
        self.rest = stream

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        if self.head:
            out, self.head = self.head, b""
            return out
        return self.rest.read(size)


# -- writing archives -----------------------------------------------------------------------


def _info(name: str, size: int, kind: bytes = tarfile.REGTYPE) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size, info.type, info.mtime, info.uid, info.gid = size, kind, 0, 0, 0
    info.mode = 0o755 if kind == tarfile.DIRTYPE else 0o644
    return info


def _add_dir(tar: tarfile.TarFile, name: str) -> None:
    tar.addfile(_info(name, 0, tarfile.DIRTYPE))


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    tar.addfile(_info(name, len(data)), io.BytesIO(data))
