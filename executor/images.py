"""The image store: an OCI image layout on disk, a reproducible builder, and a safe unpacker.

The store is an OCI image layout (`oci-layout`, `index.json`, `blobs/sha256/<hex>`) so that
skopeo, umoci and podman read it as is. Tags are `org.opencontainers.image.ref.name`
annotations in `index.json`. Every file is written to a temporary name, fsynced and renamed,
so a crash leaves either the old store or the new one, never a torn blob or index.

A build adds exactly one layer (every step's files) on top of an optional parent image. The
layer is a PAX tar with sorted entries, owner 0:0 without names and mtimes clamped to
SOURCE_DATE_EPOCH, compressed with zstd at a fixed level, so the same inputs give the same
manifest digest on any machine.

Unpacking treats every layer as hostile: member names and link targets are checked before
tarfile extracts anything, parent directories are resolved inside the target the way a
container runtime would, and OCI whiteouts are honoured.
"""

from __future__ import annotations

import builtins
import contextlib
import fcntl
import gzip
import hashlib
import io
import json
import logging
import os
import platform
import posixpath
import re
import shutil
import stat
import tarfile
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import IO, Any, Literal, Protocol

import zstandard

from compiler.envelope import canonical_json  # one canonical form, shared with plans
from executor.errors import ExecutorError

logger = logging.getLogger(__name__)

LAYOUT_VERSION = "1.0.0"
INDEX_MEDIA_TYPE = "application/vnd.oci.image.index.v1+json"
MANIFEST_MEDIA_TYPE = "application/vnd.oci.image.manifest.v1+json"
CONFIG_MEDIA_TYPE = "application/vnd.oci.image.config.v1+json"
LAYER_MEDIA_TYPE = "application/vnd.oci.image.layer.v1.tar+zstd"
REF_NAME = "org.opencontainers.image.ref.name"

# Docker's media types appear in images imported from registries; their structure is the same.
MANIFEST_TYPES = {MANIFEST_MEDIA_TYPE, "application/vnd.docker.distribution.manifest.v2+json"}
INDEX_TYPES = {INDEX_MEDIA_TYPE, "application/vnd.docker.distribution.manifest.list.v2+json"}

# Part of the reproducibility contract: changing it changes every layer digest.
ZSTD_LEVEL = 10
DIGEST_RE = re.compile(r"sha256:[0-9a-f]{64}")
# The tag grammar of the OCI annotation `org.opencontainers.image.ref.name`.
_COMPONENT = r"[A-Za-z0-9]+(?:(?:[-._:@+]|--)[A-Za-z0-9]+)*"
_TAG_RE = re.compile(rf"{_COMPONENT}(?:/{_COMPONENT})*")
_WHITEOUT = ".wh."
_OPAQUE = ".wh..wh..opq"
_MAX_JSON_BLOB = 16 * 1024 * 1024
_MAX_SYMLINK_HOPS = 40
_CHUNK = 1024 * 1024
_MACHINES = {
    "x86_64": "amd64",
    "amd64": "amd64",
    "aarch64": "arm64",
    "arm64": "arm64",
    "i386": "386",
    "i686": "386",
    "armv7l": "arm",
    "ppc64le": "ppc64le",
    "s390x": "s390x",
    "riscv64": "riscv64",
}


class Readable(Protocol):
    def read(self, size: int = ..., /) -> bytes: ...


class ImageError(ExecutorError):
    """A build, lookup or unpack failed; the message names the step or path and the fix."""


@dataclass(frozen=True)
class CopyStep:
    """Copy a file or directory from the build context, or inline content, to `dst`."""

    dst: str
    src: str | None = None
    content: str | None = None
    mode: int | None = None


@dataclass(frozen=True)
class LinkStep:
    """Create symlinks at each of `links`, all pointing at `target`."""

    target: str
    links: tuple[str, ...]


Step = CopyStep | LinkStep


@dataclass(frozen=True)
class ImageConfig:
    """The run-time defaults recorded in the image config."""

    env: tuple[tuple[str, str], ...] = ()
    entrypoint: tuple[str, ...] = ()
    cmd: tuple[str, ...] = ()
    working_dir: str = ""
    user: str = ""


def digest_bytes(data: bytes) -> str:
    """The OCI digest (`sha256:<hex>`) of `data`."""
    return "sha256:" + hashlib.sha256(data).hexdigest()


def host_platform() -> tuple[str, str]:
    """The (os, architecture) pair of this host in OCI's GOARCH vocabulary."""
    machine = platform.machine().lower()
    return "linux", _MACHINES.get(machine, machine)


def rfc3339(epoch: int) -> str:
    """An RFC 3339 UTC timestamp for `epoch` seconds."""
    return datetime.fromtimestamp(epoch, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def link_escapes(parent_depth: int, target: str) -> bool:
    """Whether relative symlink `target`, placed `parent_depth` folders deep, climbs above /."""
    if target.startswith("/"):
        # An absolute target names a path in the image's own root, which is where a container
        # runtime resolves it; the unpacker never follows links on the host.
        return False
    depth = parent_depth
    for part in target.split("/"):
        if part == "..":
            depth -= 1
            if depth < 0:
                return True
        elif part not in ("", "."):
            depth += 1
    return False


# ---------------------------------------------------------------------------------------------
# Building one layer


@dataclass
class _Entry:
    kind: Literal["dir", "file", "symlink"]
    mode: int
    mtime: int
    source: Path | None = None
    data: bytes | None = None
    target: str = ""


def _image_path(dst: str, label: str) -> str:
    """An absolute image path as a tar member name (no leading slash; "" for the root)."""
    if not dst.startswith("/"):
        raise ImageError(f"{label}: dst {dst!r} must be an absolute path in the image, e.g. /{dst}")
    parts = [part for part in dst.split("/") if part not in ("", ".")]
    if ".." in parts:
        raise ImageError(f"{label}: dst {dst!r} must not contain '..'; write the path it means")
    return "/".join(parts)


def _describe(step: Step) -> str:
    """A short, stable description of a step for error messages and the image history."""
    if isinstance(step, LinkStep):
        return f"LINK {step.target} {' '.join(step.links)}"
    if step.src is not None:
        return f"COPY {step.src} {step.dst}"
    size = len((step.content or "").encode())
    return f"COPY <inline {size} bytes> {step.dst}"


class _LayerPlan:
    """The entries of one layer, keyed by member name, filled step by step."""

    def __init__(self, context: Path, epoch: int, implicit_dirs: bool) -> None:
        self.context = context
        self.epoch = epoch
        # With a parent image an implicit directory entry would replace whatever the parent has
        # at that path (a symlink such as /bin -> usr/bin, say), so it is only added on scratch.
        self.implicit_dirs = implicit_dirs
        self.entries: dict[str, _Entry] = {}
        self._context_real: Path | None = None

    def add_step(self, number: int, step: Step) -> None:
        """Add the files of one step; later steps replace earlier entries at the same path."""
        label = f"step {number} ({_describe(step)})"
        if isinstance(step, LinkStep):
            self._add_links(step, label)
        else:
            self._add_copy(step, label)

    def write(self, fileobj: Any) -> None:
        """Write the layer as a reproducible PAX tar stream."""
        with tarfile.open(fileobj=fileobj, mode="w|", format=tarfile.PAX_FORMAT) as tar:
            for name in sorted(self.entries):
                self._write_entry(tar, name, self.entries[name])

    def _write_entry(self, tar: tarfile.TarFile, name: str, entry: _Entry) -> None:
        info = tarfile.TarInfo(name)
        info.mode, info.mtime = entry.mode, entry.mtime
        info.uid = info.gid = 0
        info.uname = info.gname = ""
        if entry.kind == "dir":
            info.type = tarfile.DIRTYPE
            tar.addfile(info)
        elif entry.kind == "symlink":
            info.type, info.linkname = tarfile.SYMTYPE, entry.target
            tar.addfile(info)
        elif entry.data is not None:
            info.size = len(entry.data)
            tar.addfile(info, io.BytesIO(entry.data))
        else:
            assert entry.source is not None
            self._write_file(tar, info, entry.source)

    def _write_file(self, tar: tarfile.TarFile, info: tarfile.TarInfo, source: Path) -> None:
        # O_NOFOLLOW: a file swapped for a symlink after planning must not pull in its target.
        try:
            fd = os.open(source, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError as exc:
            raise ImageError(f"cannot read {source} for /{info.name}: {exc.strerror}") from exc
        with os.fdopen(fd, "rb") as handle:
            info.size = os.fstat(fd).st_size
            try:
                tar.addfile(info, handle)
            except OSError as exc:
                raise ImageError(
                    f"{source} changed while it was being added as /{info.name}; "
                    "build again once nothing is writing to the build context"
                ) from exc

    def _add(self, name: str, entry: _Entry, label: str) -> None:
        if not name:
            return  # the image root itself has no entry of its own
        parts = name.split("/")
        if parts[-1].startswith(_WHITEOUT):
            raise ImageError(
                f"{label}: /{name} starts with '{_WHITEOUT}', which marks a deletion in OCI "
                "layers; rename the file"
            )
        for depth in range(1, len(parts)):
            prefix = "/".join(parts[:depth])
            existing = self.entries.get(prefix)
            if existing is None and self.implicit_dirs:
                self.entries[prefix] = _Entry("dir", 0o755, self.epoch)
            elif existing is not None and existing.kind != "dir":
                raise ImageError(
                    f"{label}: /{prefix} is a {existing.kind} from an earlier step, so /{name} "
                    "cannot be created under it; copy to another path or remove that step"
                )
        existing = self.entries.get(name)
        replaces_dir = existing is not None and existing.kind == "dir" and entry.kind != "dir"
        if replaces_dir and any(other.startswith(name + "/") for other in self.entries):
            raise ImageError(
                f"{label}: /{name} is a directory with contents from an earlier step and "
                f"cannot become a {entry.kind}; use another path"
            )
        self.entries[name] = entry

    def _add_links(self, step: LinkStep, label: str) -> None:
        if not step.target or "\0" in step.target:
            raise ImageError(f"{label}: the symlink target must be a non-empty path")
        if not step.links:
            raise ImageError(f"{label}: name at least one link path, e.g. links=('/bin/sh',)")
        for link in step.links:
            name = _image_path(link, label)
            if not name:
                raise ImageError(f"{label}: the image root / cannot be a symlink")
            if link_escapes(name.count("/"), step.target):
                raise ImageError(
                    f"{label}: target {step.target!r} of {link} climbs above the image root; "
                    "use an absolute target or fewer '..'"
                )
            self._add(name, _Entry("symlink", 0o777, self.epoch, target=step.target), label)

    def _add_copy(self, step: CopyStep, label: str) -> None:
        if (step.src is None) == (step.content is None):
            raise ImageError(f"{label}: give exactly one of src (a context path) or content")
        if step.mode is not None and not 0 <= step.mode <= 0o7777:
            raise ImageError(f"{label}: mode {step.mode:#o} is not a file mode (0 to 0o7777)")
        name = _image_path(step.dst, label)
        if step.content is not None:
            if not name or step.dst.endswith("/"):
                raise ImageError(f"{label}: inline content needs a file path as dst, not a folder")
            mode = 0o644 if step.mode is None else step.mode
            data = step.content.encode()
            self._add(name, _Entry("file", mode, self.epoch, data=data), label)
            return

        assert step.src is not None
        source = self._source(step.src, label)
        info = source.stat()
        if stat.S_ISDIR(info.st_mode):
            self._add_tree(source, name, step.mode, label)
        elif stat.S_ISREG(info.st_mode):
            if step.dst.endswith("/") or not name:
                name = posixpath.join(name, PurePosixPath(step.src).name)
            mode = stat.S_IMODE(info.st_mode) if step.mode is None else step.mode
            self._add(name, self._file(source, mode, info), label)
        else:
            raise ImageError(f"{label}: src {step.src!r} is not a regular file or a directory")

    def _context(self, label: str) -> Path:
        if self._context_real is None:
            try:
                real = self.context.resolve(strict=True)
            except (OSError, RuntimeError) as exc:
                raise ImageError(f"{label}: build context {self.context} does not exist") from exc
            if not real.is_dir():
                raise ImageError(f"{label}: build context {self.context} is not a directory")
            self._context_real = real
        return self._context_real

    def _source(self, src: str, label: str) -> Path:
        """The real path of `src`, refusing anything that is not inside the build context."""
        context = self._context(label)
        relative = PurePosixPath(src)
        if not src or relative.is_absolute() or ".." in relative.parts:
            raise ImageError(
                f"{label}: src {src!r} must be a relative path inside the build context "
                f"{self.context}, without '..'"
            )
        candidate = context / relative
        if not os.path.lexists(candidate):
            raise ImageError(f"{label}: src {src!r} does not exist in the build context {context}")
        try:
            real = candidate.resolve(strict=True)
        except (OSError, RuntimeError) as exc:
            raise ImageError(f"{label}: src {src!r} is a broken or looping symlink") from exc
        if not real.is_relative_to(context):
            raise ImageError(
                f"{label}: src {src!r} resolves to {real}, outside the build context {context}; "
                "copy the file into the context instead of linking to it"
            )
        return real

    def _file(self, source: Path, mode: int, info: os.stat_result) -> _Entry:
        return _Entry("file", mode, min(int(info.st_mtime), self.epoch), source=source)

    def _add_tree(self, top: Path, name: str, mode: int | None, label: str) -> None:
        """Add a directory recursively; symlinks inside it are kept as symlinks."""
        info = top.stat()
        self._add(name, _Entry("dir", stat.S_IMODE(info.st_mode), self._clamp(info)), label)
        for folder, dirnames, filenames in os.walk(top):
            dirnames.sort()
            relative = Path(folder).relative_to(top).as_posix()
            for child in sorted(dirnames + filenames):
                path = Path(folder, child)
                member = posixpath.normpath(posixpath.join(name, relative, child)).lstrip("/")
                self._add(member, self._tree_entry(path, member, mode, label), label)

    def _tree_entry(self, path: Path, member: str, mode: int | None, label: str) -> _Entry:
        info = path.lstat()
        if stat.S_ISLNK(info.st_mode):
            target = os.readlink(path)
            if link_escapes(member.count("/"), target):
                raise ImageError(
                    f"{label}: symlink {path} -> {target} would climb above the image root at "
                    f"/{member}; make it point inside the copied tree"
                )
            return _Entry("symlink", 0o777, self._clamp(info), target=target)
        if stat.S_ISDIR(info.st_mode):
            return _Entry("dir", stat.S_IMODE(info.st_mode), self._clamp(info))
        if stat.S_ISREG(info.st_mode):
            return self._file(path, stat.S_IMODE(info.st_mode) if mode is None else mode, info)
        raise ImageError(
            f"{label}: {path} is a device, socket or pipe; only files, folders and symlinks "
            "can be copied into an image"
        )

    def _clamp(self, info: os.stat_result) -> int:
        return min(int(info.st_mtime), self.epoch)


class _Discard:
    def write(self, data: bytes) -> int:
        return len(data)


class _HashingWriter:
    """Counts and hashes what passes through on its way to `sink`."""

    def __init__(self, sink: Any) -> None:
        self.sink = sink
        self.hash = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> int:
        self.hash.update(data)
        self.size += len(data)
        self.sink.write(data)
        return len(data)

    @property
    def digest(self) -> str:
        return "sha256:" + self.hash.hexdigest()


class _HashingReader:
    """Hashes everything read from `source`, to check a layer's diff_id while extracting it."""

    def __init__(self, source: Any) -> None:
        self.source = source
        self.hash = hashlib.sha256()

    def read(self, size: int = -1) -> bytes:
        data: bytes = self.source.read(size)
        self.hash.update(data)
        return data

    def drain(self) -> str:
        while self.read(_CHUNK):
            pass
        return "sha256:" + self.hash.hexdigest()


# ---------------------------------------------------------------------------------------------
# Extracting one layer


class _LayerExtractor:
    """Extracts one layer's tar stream into `root`, checking every member before tarfile runs."""

    def __init__(self, root: str, layer: str) -> None:
        self.root = root
        self.layer = layer
        # Whiteouts hide only lower layers, so what this layer wrote must survive them.
        self.created: set[str] = set()
        self.ancestors: set[str] = set()
        self.directories: list[tuple[str, tarfile.TarInfo]] = []

    def run(self, tar: tarfile.TarFile) -> None:
        """Apply every member in order, then set directory attributes deepest first."""
        for member in tar:
            self._apply(tar, member)
        for name, info in sorted(self.directories, key=lambda pair: pair[0], reverse=True):
            path = os.path.join(self.root, name)
            try:
                mode = os.lstat(path).st_mode
            except FileNotFoundError:
                continue  # a later member of this layer replaced a folder above it
            if stat.S_ISDIR(mode):  # not replaced by a later member of this layer
                tar.chown(info, path, numeric_owner=True)
                tar.utime(info, path)
                tar.chmod(info, path)

    def _fail(self, name: str, why: str) -> ImageError:
        return ImageError(
            f"layer {self.layer}: member {name!r} {why}; the image is unsafe or corrupt, "
            "rebuild it or import it from a trusted source"
        )

    def _apply(self, tar: tarfile.TarFile, member: tarfile.TarInfo) -> None:
        parts = self._parts(member.name, member.name)
        if not parts:
            return  # "./": the target's own attributes stay as they are
        if parts[-1].startswith(_WHITEOUT):
            self._whiteout(parts, member.name)
            return

        checked = self._check(member, parts)
        self._clear(checked)
        # tarfile's "data" filter refuses absolute symlinks and clears setuid bits, both normal
        # in images, so _check applies image rules and tarfile extracts the checked member.
        tar.extract(
            checked,
            self.root,
            set_attrs=not checked.isdir(),
            numeric_owner=True,
            filter="fully_trusted",
        )
        self._record(checked.name)
        if checked.issym():
            # tarfile leaves symlink times alone; set them without following the link.
            path = os.path.join(self.root, checked.name)
            os.utime(path, (checked.mtime, checked.mtime), follow_symlinks=False)
        if checked.isdir():
            self.directories.append((checked.name, checked))

    def _parts(self, name: str, what: str) -> list[str]:
        if name.startswith("/"):
            raise self._fail(what, "has an absolute path")
        parts = [part for part in name.split("/") if part not in ("", ".")]
        if ".." in parts:
            raise self._fail(what, "contains a '..' component")
        return parts

    def _check(self, member: tarfile.TarInfo, parts: list[str]) -> tarfile.TarInfo:
        """The member renamed to its real place inside root, or an ImageError saying why not."""
        if member.ischr() or member.isblk() or member.isfifo():
            raise self._fail(member.name, "is a device node or pipe, which images may not carry")
        if not (member.isreg() or member.isdir() or member.issym() or member.islnk()):
            raise self._fail(member.name, f"has unsupported tar type {member.type!r}")
        parent = self._resolve(parts[:-1], member.name)
        name = "/".join([*parent, parts[-1]])
        linkname = member.linkname
        if member.issym():
            if not linkname or link_escapes(len(parent), linkname):
                raise self._fail(member.name, f"is a symlink to {linkname!r}, outside the image")
        elif member.islnk():
            linkname = self._hardlink_target(member)
        return member.replace(name=name, linkname=linkname, deep=False)

    def _hardlink_target(self, member: tarfile.TarInfo) -> str:
        parts = self._parts(member.linkname, member.name)
        if not parts:
            raise self._fail(member.name, "is a hard link to the image root")
        resolved = "/".join([*self._resolve(parts[:-1], member.name), parts[-1]])
        try:
            info = os.lstat(os.path.join(self.root, resolved))
        except FileNotFoundError:
            missing = f"is a hard link to {member.linkname!r}, which no earlier member created"
            raise self._fail(member.name, missing) from None
        # os.link follows symlinks, so linking to one could reach a file outside the root.
        if not stat.S_ISREG(info.st_mode):
            raise self._fail(member.name, f"is a hard link to non-file {member.linkname!r}")
        return resolved

    def _resolve(self, parts: list[str], what: str) -> list[str]:
        """Resolve folder `parts` inside root as a container would: symlinks never leave it."""
        resolved: list[str] = []
        pending = list(parts)
        hops = 0
        while pending:
            part = pending.pop(0)
            if part in ("", "."):
                continue
            if part == "..":
                if resolved:
                    resolved.pop()
                continue
            path = os.path.join(self.root, *resolved, part)
            try:
                mode = os.lstat(path).st_mode
            except FileNotFoundError:
                resolved.append(part)  # tarfile creates it as a real folder
                continue
            if stat.S_ISLNK(mode):
                hops += 1
                if hops > _MAX_SYMLINK_HOPS:
                    raise self._fail(what, "passes through too many symlinks")
                target = os.readlink(path)
                if target.startswith("/"):
                    resolved = []
                pending[:0] = target.split("/")
            elif stat.S_ISDIR(mode):
                resolved.append(part)
            else:
                raise self._fail(what, f"needs /{'/'.join([*resolved, part])} to be a folder")
        return resolved

    def _clear(self, member: tarfile.TarInfo) -> None:
        """Remove what a lower layer left at the member's path, unless both are folders."""
        path = os.path.join(self.root, member.name)
        try:
            mode = os.lstat(path).st_mode
        except FileNotFoundError:
            return
        if not (stat.S_ISDIR(mode) and member.isdir()):
            _remove(path)

    def _record(self, name: str) -> None:
        self.created.add(name)
        parts = name.split("/")
        self.ancestors.update("/".join(parts[:depth]) for depth in range(1, len(parts)))

    def _whiteout(self, parts: list[str], what: str) -> None:
        parent = self._resolve(parts[:-1], what)
        marker = parts[-1]
        if marker == _OPAQUE:
            self._make_opaque(parent)
            return
        if marker.startswith(_WHITEOUT + _WHITEOUT):
            return  # other aufs metadata (.wh..wh.plnk and the like) carries nothing to apply
        hidden = marker[len(_WHITEOUT) :]
        if hidden in ("", ".", ".."):
            raise self._fail(what, "is a whiteout of no valid name")
        name = "/".join([*parent, hidden])
        path = os.path.join(self.root, name)
        if not os.path.lexists(path):
            return
        if name in self.created or name in self.ancestors:
            if stat.S_ISDIR(os.lstat(path).st_mode):
                self._make_opaque([*parent, hidden])
            return
        _remove(path)

    def _make_opaque(self, folder: list[str]) -> None:
        """Remove what lower layers put in `folder`, keeping what this layer wrote."""
        path = os.path.join(self.root, *folder)
        if not os.path.isdir(path) or os.path.islink(path):
            return
        for child in sorted(os.listdir(path)):
            name = "/".join([*folder, child])
            child_path = os.path.join(path, child)
            if name in self.created or name in self.ancestors:
                if stat.S_ISDIR(os.lstat(child_path).st_mode):
                    self._make_opaque([*folder, child])
                continue
            _remove(child_path)


def _remove(path: str) -> None:
    """Delete a file, symlink or folder tree without following any symlink."""
    if stat.S_ISDIR(os.lstat(path).st_mode):
        shutil.rmtree(path)
    else:
        os.unlink(path)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def _atomic_file(final: Path) -> Iterator[IO[bytes]]:
    """A temporary file beside `final` that replaces it, fsynced, only if the block succeeds."""
    fd, temporary = tempfile.mkstemp(dir=final.parent, prefix=".tmp-")
    # mkstemp makes 0600 files; other tools (rootless podman, umoci) must be able to read them.
    os.fchmod(fd, 0o644)
    try:
        with os.fdopen(fd, "wb") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, final)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise
    _fsync_dir(final.parent)


# ---------------------------------------------------------------------------------------------
# The store


class ImageStore:
    """An OCI image layout at `root`, created on first use."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.blobs = self.root / "blobs" / "sha256"
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ImageError(f"cannot create the image store at {self.root}: {exc}") from exc
        with self._locked():
            self._initialise()

    def build(
        self,
        name: str,
        context: Path,
        steps: Sequence[Step],
        config: ImageConfig,
        parent: str | None = None,
        source_date_epoch: int = 0,
    ) -> str:
        """Build one layer from `steps` on top of `parent`, tag it `name`, return its digest."""
        started = time.monotonic()
        _check_tag(name)
        if source_date_epoch < 0:
            raise ImageError(f"source_date_epoch must be >= 0, got {source_date_epoch}")
        _check_config(config)
        base_manifest: dict[str, Any] = {"layers": []}
        base_config: dict[str, Any] = {}
        if parent is not None:
            base_manifest = self.manifest(parent)
            base_config = self.config(parent)
            parent_diff_ids = base_config.get("rootfs", {}).get("diff_ids", [])
            if len(parent_diff_ids) != len(base_manifest["layers"]):
                raise ImageError(
                    f"parent image {parent!r} lists {len(parent_diff_ids)} diff_ids for "
                    f"{len(base_manifest['layers'])} layers; rebuild or re-import the parent"
                )

        plan = _LayerPlan(Path(context), source_date_epoch, implicit_dirs=parent is None)
        for number, step in enumerate(steps, start=1):
            plan.add_step(number, step)
        layer, diff_id = self._write_layer(plan)

        history = " && ".join(_describe(step) for step in steps) or "(no steps)"
        document = _image_config(base_config, config, diff_id, source_date_epoch, history)
        config_descriptor = self._put_json(document, CONFIG_MEDIA_TYPE)
        manifest = {
            "schemaVersion": 2,
            "mediaType": MANIFEST_MEDIA_TYPE,
            "config": config_descriptor,
            "layers": [*base_manifest["layers"], layer],
        }
        descriptor = self._put_json(manifest, MANIFEST_MEDIA_TYPE)
        self._tag(name, descriptor)
        logger.info(
            "built image %s %s: layer %s (%d bytes) in %.2fs",
            name,
            descriptor["digest"],
            layer["digest"],
            layer["size"],
            time.monotonic() - started,
        )
        return str(descriptor["digest"])

    def resolve(self, ref: str) -> str:
        """The manifest digest a tag or digest names."""
        if ref.startswith("sha256:"):
            if not self._blob_path(ref).is_file():
                raise ImageError(f"image {ref} is not in the store at {self.root}")
            return ref
        for descriptor in self._read_index().get("manifests", []):
            if descriptor.get("annotations", {}).get(REF_NAME) == ref:
                return self._manifest_digest(descriptor, ref)
        raise ImageError(
            f"unknown image {ref!r}: no tag or digest by that name in {self.root}; "
            "`forge image list` shows what it holds"
        )

    def manifest(self, digest: str) -> dict[str, Any]:
        """The image manifest a tag or digest names."""
        resolved = self.resolve(digest)
        document = self._read_json(resolved)
        media_type = document.get("mediaType", MANIFEST_MEDIA_TYPE)
        valid = (
            document.get("schemaVersion") == 2
            and media_type in MANIFEST_TYPES
            and isinstance(document.get("config"), dict)
            and isinstance(document.get("layers"), builtins.list)
        )
        if not valid:
            raise ImageError(f"blob {resolved} is not an image manifest (media type {media_type})")
        return document

    def config(self, digest: str) -> dict[str, Any]:
        """The image config of the manifest a tag or digest names."""
        return self._read_json(self.manifest(digest)["config"]["digest"])

    def list(self) -> builtins.list[tuple[str, str]]:
        """Every (tag, manifest digest) pair in the store, sorted by tag."""
        pairs = []
        for descriptor in self._read_index().get("manifests", []):
            tag = descriptor.get("annotations", {}).get(REF_NAME)
            if tag is not None:
                pairs.append((tag, str(descriptor["digest"])))
        return sorted(pairs)

    def remove(self, tag: str) -> None:
        """Untag `tag`; its blobs stay in the store (there is no garbage collection yet)."""
        with self._locked():
            index = self._read_index()
            kept = [
                descriptor
                for descriptor in index.get("manifests", [])
                if descriptor.get("annotations", {}).get(REF_NAME) != tag
            ]
            if len(kept) == len(index.get("manifests", [])):
                raise ImageError(f"no image is tagged {tag!r} in {self.root}")
            index["manifests"] = kept
            self._write_index(index)
        logger.info("untagged image %s", tag)

    def tag(self, name: str, descriptor: dict[str, Any]) -> None:
        """Point `name` at a manifest already in the store (its descriptor: mediaType, digest
        and size), replacing what the name pointed at before."""
        _check_tag(name)
        self._blob_path(str(descriptor["digest"]))  # checks it is a digest
        self._tag(name, {k: descriptor[k] for k in ("mediaType", "digest", "size")})

    def has_blob(self, digest: str) -> bool:
        return self._blob_path(digest).is_file()

    def blob_path(self, digest: str) -> Path:
        """Where a blob of the store lies (for reading it out, e.g. to export it)."""
        path = self._blob_path(digest)
        if not path.is_file():
            raise ImageError(f"blob {digest} is missing from {self.root}; re-import the image")
        return path

    def put_blob(self, stream: Readable, digest: str | None = None, size: int | None = None) -> str:
        """Copy a blob from `stream` into the store and return its digest. With `digest` (and
        `size`), what arrives must be exactly that: anything else is refused and not kept."""
        if digest is not None:
            self._blob_path(digest)  # a malformed digest is refused before reading anything
        fd, temporary = tempfile.mkstemp(dir=self.blobs, prefix=".tmp-")
        os.fchmod(fd, 0o644)
        try:
            with os.fdopen(fd, "wb") as handle:
                sink = _HashingWriter(handle)
                while chunk := stream.read(_CHUNK):
                    sink.write(chunk)
                    if size is not None and sink.size > size:
                        raise ImageError(f"blob {digest} is larger than the {size} bytes declared")
                handle.flush()
                os.fsync(handle.fileno())
            if digest is not None and sink.digest != digest:
                raise ImageError(f"blob {digest} is corrupt: its content hashes to {sink.digest}")
            if size is not None and sink.size != size:
                raise ImageError(f"blob {digest} has {sink.size} bytes, not the {size} declared")
            os.replace(temporary, self._blob_path(sink.digest))
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temporary)
            raise
        _fsync_dir(self.blobs)
        return sink.digest

    def put_json_bytes(self, data: bytes, media_type: str) -> dict[str, Any]:
        """Store a manifest or config exactly as given (its digest is of these bytes)."""
        if len(data) > _MAX_JSON_BLOB:
            raise ImageError(f"a {media_type} of {len(data)} bytes is too large")
        digest = self.put_blob(io.BytesIO(data))
        return {"mediaType": media_type, "digest": digest, "size": len(data)}

    def read_json(self, digest: str) -> dict[str, Any]:
        """A manifest, index or config blob of the store, checked against its digest."""
        return self._read_json(digest)

    def unpack(self, digest: str, target: Path) -> None:
        """Extract every layer of an image, in order, into `target` (empty or missing)."""
        manifest = self.manifest(digest)
        rootfs = self._read_json(manifest["config"]["digest"]).get("rootfs", {})
        diff_ids = rootfs.get("diff_ids", [])
        layers = manifest["layers"]
        if len(diff_ids) != len(layers):
            raise ImageError(
                f"image {digest}: its config lists {len(diff_ids)} diff_ids for "
                f"{len(layers)} layers; the image is corrupt, rebuild or re-import it"
            )
        root = _prepare_target(Path(target))
        for layer, diff_id in zip(layers, diff_ids, strict=True):
            self._extract(layer, diff_id, root)
        logger.info("unpacked image %s into %s (%d layers)", digest, root, len(layers))

    # -- layout files ---------------------------------------------------------------------

    def _initialise(self) -> None:
        layout = self.root / "oci-layout"
        index = self.root / "index.json"
        if layout.exists():
            try:
                version = json.loads(layout.read_bytes()).get("imageLayoutVersion")
            except (ValueError, AttributeError) as exc:
                raise ImageError(f"{layout} is not valid JSON; restore the store") from exc
            if version != LAYOUT_VERSION:
                raise ImageError(f"{layout} has layout version {version!r}, not {LAYOUT_VERSION}")
        elif any(self.root.iterdir()):
            raise ImageError(
                f"{self.root} is not empty and has no oci-layout file; point the image store "
                "at an empty folder or an existing OCI image layout"
            )
        else:
            with _atomic_file(layout) as handle:
                handle.write(canonical_json({"imageLayoutVersion": LAYOUT_VERSION}))
        self.blobs.mkdir(parents=True, exist_ok=True)
        if not index.exists():
            self._write_index({"schemaVersion": 2, "mediaType": INDEX_MEDIA_TYPE, "manifests": []})

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        # The root folder itself is the lock: index.json is replaced by rename, so locking the
        # file would lock a stale inode, and the layout has no place for a lock file.
        fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def _read_index(self) -> dict[str, Any]:
        path = self.root / "index.json"
        try:
            index: dict[str, Any] = json.loads(path.read_bytes())
        except FileNotFoundError as exc:
            raise ImageError(f"{path} is missing; the image store is damaged") from exc
        except ValueError as exc:
            raise ImageError(f"{path} is not valid JSON ({exc}); restore it from a backup") from exc
        return index

    def _write_index(self, index: dict[str, Any]) -> None:
        with _atomic_file(self.root / "index.json") as handle:
            handle.write(canonical_json(index))

    def _tag(self, name: str, descriptor: dict[str, Any]) -> None:
        entry = {**descriptor, "annotations": {REF_NAME: name}}
        with self._locked():
            index = self._read_index()
            manifests = [
                existing
                for existing in index.get("manifests", [])
                if existing.get("annotations", {}).get(REF_NAME) != name
            ]
            index["manifests"] = [*manifests, entry]
            self._write_index(index)

    def _manifest_digest(self, descriptor: dict[str, Any], ref: str) -> str:
        """Follow a tagged descriptor to an image manifest, picking this host's platform."""
        media_type = descriptor.get("mediaType")
        if media_type in MANIFEST_TYPES:
            return str(descriptor["digest"])
        if media_type not in INDEX_TYPES:
            raise ImageError(f"image {ref!r} has unsupported media type {media_type!r}")
        wanted_os, wanted_arch = host_platform()
        for entry in self._read_json(descriptor["digest"]).get("manifests", []):
            found = entry.get("platform", {})
            if found.get("os") == wanted_os and found.get("architecture") == wanted_arch:
                return self._manifest_digest(entry, ref)
        raise ImageError(f"image {ref!r} has no manifest for {wanted_os}/{wanted_arch}")

    # -- blobs ----------------------------------------------------------------------------

    def _blob_path(self, digest: str) -> Path:
        if not DIGEST_RE.fullmatch(digest):
            raise ImageError(f"{digest!r} is not a sha256 digest (sha256: and 64 hex digits)")
        return self.blobs / digest.removeprefix("sha256:")

    def _read_json(self, digest: str) -> dict[str, Any]:
        path = self._blob_path(digest)
        try:
            with path.open("rb") as handle:
                data = handle.read(_MAX_JSON_BLOB + 1)
        except FileNotFoundError as exc:
            raise ImageError(f"blob {digest} is missing from {self.root}; re-import it") from exc
        if len(data) > _MAX_JSON_BLOB:
            raise ImageError(f"blob {digest} is too large for a manifest or config")
        if digest_bytes(data) != digest:
            raise ImageError(f"blob {digest} is corrupt (its content hashes differently)")
        try:
            document = json.loads(data)
        except ValueError as exc:
            raise ImageError(f"blob {digest} is not JSON: {exc}") from exc
        if not isinstance(document, dict):
            raise ImageError(f"blob {digest} is not a JSON object")
        return document

    def _put_json(self, document: dict[str, Any], media_type: str) -> dict[str, Any]:
        data = canonical_json(document)
        digest = digest_bytes(data)
        with _atomic_file(self._blob_path(digest)) as handle:
            handle.write(data)
        return {"mediaType": media_type, "digest": digest, "size": len(data)}

    def _write_layer(self, plan: _LayerPlan) -> tuple[dict[str, Any], str]:
        """Write the layer blob; return its descriptor and its diff_id.

        The tar is reproducible, so its diff_id names its content: a layer the store already
        compressed is found by it, and only hashing the tar is paid (a few ms for busybox, where
        compressing took 50)."""
        probe = _HashingWriter(_Discard())
        plan.write(probe)
        known = self._layer_cache / probe.digest.replace(":", "-")
        try:
            cached: dict[str, Any] = json.loads(known.read_bytes())
            if self._blob_path(cached["digest"]).is_file():
                return cached, probe.digest
        except (OSError, ValueError, KeyError, TypeError):
            pass  # not built before, or the record is damaged: compress again
        descriptor, diff_id = self._compress_layer(plan)
        self._layer_cache.mkdir(exist_ok=True)
        with _atomic_file(self._layer_cache / diff_id.replace(":", "-")) as handle:
            handle.write(canonical_json(descriptor))
        return descriptor, diff_id

    @property
    def _layer_cache(self) -> Path:
        # Beside the layout's own files, which readers of the layout (skopeo, umoci) ignore.
        return self.root / ".forge-layers"

    def _compress_layer(self, plan: _LayerPlan) -> tuple[dict[str, Any], str]:
        compressor = zstandard.ZstdCompressor(level=ZSTD_LEVEL, write_checksum=True, threads=0)
        fd, temporary = tempfile.mkstemp(dir=self.blobs, prefix=".tmp-")
        os.fchmod(fd, 0o644)
        try:
            with os.fdopen(fd, "wb") as handle:
                blob = _HashingWriter(handle)
                sink: Any = blob  # zstandard only calls write(); its stubs ask for a real file
                with compressor.stream_writer(sink, closefd=False) as zstd_stream:
                    tar_stream = _HashingWriter(zstd_stream)
                    plan.write(tar_stream)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temporary, self._blob_path(blob.digest))
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temporary)
            raise
        _fsync_dir(self.blobs)
        descriptor = {"mediaType": LAYER_MEDIA_TYPE, "digest": blob.digest, "size": blob.size}
        return descriptor, tar_stream.digest

    def _verify_blob(self, descriptor: dict[str, Any]) -> Path:
        digest = str(descriptor.get("digest"))
        path = self._blob_path(digest)
        hasher = hashlib.sha256()
        try:
            with path.open("rb") as handle:
                while chunk := handle.read(_CHUNK):
                    hasher.update(chunk)
        except FileNotFoundError as exc:
            raise ImageError(f"layer {digest} is missing from {self.root}; re-import it") from exc
        if "sha256:" + hasher.hexdigest() != digest:
            raise ImageError(f"layer {digest} is corrupt (its content hashes differently)")
        return path

    def _extract(self, descriptor: dict[str, Any], diff_id: str, root: str) -> None:
        # The whole blob is checked first so that a tampered layer writes nothing at all.
        path = self._verify_blob(descriptor)
        digest = str(descriptor["digest"])
        media_type = str(descriptor.get("mediaType", ""))
        with contextlib.ExitStack() as stack:
            raw = stack.enter_context(path.open("rb"))
            stream = _HashingReader(_decompressor(raw, media_type, digest, stack))
            try:
                with tarfile.open(fileobj=stream, mode="r|") as tar:  # type: ignore[call-overload]
                    _LayerExtractor(root, digest).run(tar)
                found = stream.drain()
            except (tarfile.TarError, OSError, EOFError, zstandard.ZstdError) as exc:
                raise ImageError(f"layer {digest} could not be extracted: {exc}") from exc
        if found != diff_id:
            raise ImageError(
                f"layer {digest} unpacks to {found}, but the image config says {diff_id}; "
                "the image is corrupt, rebuild or re-import it"
            )


def _decompressor(raw: IO[bytes], media_type: str, digest: str, stack: Any) -> Any:
    """A reader of the uncompressed tar stream, chosen by the layer's media type."""
    if media_type.endswith(("+zstd", ".zstd")):
        reader = zstandard.ZstdDecompressor().stream_reader(raw, read_across_frames=True)
        return stack.enter_context(reader)
    if media_type.endswith(("+gzip", ".gzip")):
        return stack.enter_context(gzip.GzipFile(fileobj=raw, mode="rb"))
    if media_type.endswith((".tar", ".rootfs.diff.tar")):
        return raw
    raise ImageError(f"layer {digest} has unsupported media type {media_type!r}")


def _prepare_target(target: Path) -> str:
    """The real path of an empty unpack target, created if missing."""
    if target.exists():
        real = target.resolve()
        if not real.is_dir():
            raise ImageError(f"unpack target {target} is not a folder")
        if any(real.iterdir()):
            raise ImageError(f"unpack target {target} is not empty; give an empty or new folder")
        return str(real)
    try:
        target.mkdir(parents=True)
    except OSError as exc:
        raise ImageError(f"cannot create unpack target {target}: {exc}") from exc
    return str(target.resolve())


def _check_tag(name: str) -> None:
    if not _TAG_RE.fullmatch(name) or DIGEST_RE.fullmatch(name) or name.startswith("sha256:"):
        raise ImageError(
            f"image name {name!r} is not a valid tag: use letters, digits and '-._:@+/' "
            "between them (e.g. 'web' or 'web:1.0'), and not a digest"
        )


def _check_config(config: ImageConfig) -> None:
    for key, _ in config.env:
        if not key or "=" in key or "\0" in key:
            raise ImageError(f"env name {key!r} is not valid: it must be non-empty without '='")
    if config.working_dir and not config.working_dir.startswith("/"):
        raise ImageError(f"working_dir {config.working_dir!r} must be an absolute path")


def _image_config(
    base: dict[str, Any], config: ImageConfig, diff_id: str, epoch: int, created_by: str
) -> dict[str, Any]:
    """The OCI image config of a child of `base` (an empty dict for scratch)."""
    created = rfc3339(epoch)
    host_os, host_arch = host_platform()
    document: dict[str, Any] = {"architecture": host_arch, "os": host_os}
    # A child runs wherever its parent runs, so it keeps the parent's platform.
    for key in ("architecture", "os", "os.version", "os.features", "variant"):
        if key in base:
            document[key] = base[key]

    runtime = dict(base.get("config") or {})
    env = dict(item.split("=", 1) for item in runtime.get("Env", []) if "=" in item)
    env.update(dict(config.env))
    if env:
        runtime["Env"] = [f"{key}={value}" for key, value in env.items()]
    if config.entrypoint:
        runtime["Entrypoint"] = list(config.entrypoint)
        # As in Docker, a new entrypoint discards the parent's arguments for the old one.
        runtime.pop("Cmd", None)
    if config.cmd:
        runtime["Cmd"] = list(config.cmd)
    if config.working_dir:
        runtime["WorkingDir"] = config.working_dir
    if config.user:
        runtime["User"] = config.user

    diff_ids = list(base.get("rootfs", {}).get("diff_ids", []))
    history = list(base.get("history", []))
    document.update(
        created=created,
        config=runtime,
        rootfs={"type": "layers", "diff_ids": [*diff_ids, diff_id]},
        history=[*history, {"created": created, "created_by": f"forge build: {created_by}"}],
    )
    return document
