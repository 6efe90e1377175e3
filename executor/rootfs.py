"""Container root filesystems: an overlay over the image, shared read-only between containers.

Each image is unpacked once per project, all its layers applied in order (whiteouts included),
into `STATE/rootfs/<digest>`: the lower layer of every container of that image. A container's
rootfs is an overlay of that lower, with its own upper and work folders in its bundle, so
starting a container costs a mount, not a copy, and a container's writes never reach the image
or its neighbours. Where overlayfs is not available (an upper on a filesystem it refuses, a
kernel without it, FORGE_ROOTFS=copy) the image is copied into the bundle instead, as before.

One flattened lower per image rather than one per layer: layers would have to be stored in
overlayfs's own whiteout format (character devices), which the extractor rightly refuses to
create from a tar; a flattened tree needs none.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import logging
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

from .errors import ExecutorError
from .images import ImageStore

log = logging.getLogger(__name__)

MODE_ENV = "FORGE_ROOTFS"  # "copy" turns the overlay off; "overlay", the default, tries it
MNT_DETACH = 2
_TEMPORARY = ".unpacking-"


class RootfsError(ExecutorError):
    """A root filesystem could not be mounted or unmounted."""


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def prepare(store: ImageStore, digest: str, cache: Path, bundle: Path) -> str:
    """Make `bundle/rootfs` the image `digest`'s root filesystem; returns "overlay" or "copy".

    The bundle must not exist yet or be empty of a rootfs."""
    target = bundle / "rootfs"
    if chosen_mode() == "overlay":
        lower = lower_dir(store, digest, cache)
        upper, work = bundle / "upper", bundle / "work"
        for folder in (target, upper, work):
            folder.mkdir(parents=True, exist_ok=True)
        options = f"lowerdir={lower},upperdir={upper},workdir={work}"
        if _mountable(options):
            try:
                _mount("overlay", target, "overlay", options)
                return "overlay"
            except RootfsError as exc:
                log.info("overlay for %s unavailable (%s): copying the image", bundle, exc)
        for folder in (upper, work):
            shutil.rmtree(folder, ignore_errors=True)
    store.unpack(digest, target)
    return "copy"


def chosen_mode() -> str:
    """overlay (the default) or copy, as FORGE_ROOTFS says; RootfsError for anything else."""
    mode = os.environ.get(MODE_ENV) or "overlay"
    if mode not in ("overlay", "copy"):
        raise RootfsError(f"{MODE_ENV}={mode!r} is neither overlay nor copy; unset it or fix it")
    return mode


def release(bundle: Path) -> None:
    """Unmount a bundle's overlay, if it has one; idempotent."""
    _unmount(bundle / "rootfs")


def release_under(folder: Path) -> None:
    """Unmount every mount below `folder` (deepest first), before it is removed: a tree with a
    mounted overlay cannot be removed, and removing through one only hides the files."""
    prefix = str(folder.resolve()).rstrip("/") + "/"
    for point in sorted((p for p in _mount_points() if p.startswith(prefix)), reverse=True):
        _unmount(Path(point))


def lower_dir(store: ImageStore, digest: str, cache: Path) -> Path:
    """The image unpacked once, read-only in use: made under a lock, then renamed into place,
    so a half-unpacked tree never has the final name."""
    final = cache / digest.replace(":", "-")
    if final.is_dir():
        return final
    cache.mkdir(mode=0o700, parents=True, exist_ok=True)
    with _locked(cache / f"{final.name}.lock"):
        if final.is_dir():
            return final
        temporary = cache / f"{_TEMPORARY}{final.name}-{os.getpid()}"
        shutil.rmtree(temporary, ignore_errors=True)
        try:
            store.unpack(digest, temporary)
            os.rename(temporary, final)
        finally:
            shutil.rmtree(temporary, ignore_errors=True)
    return final


def prune(cache: Path, keep: set[str] | None = None) -> list[str]:
    """Remove the unpacked images no mounted overlay uses and `keep` does not name (digests);
    returns the digests removed. Callers hold the project's lock, so no create races this."""
    if not cache.is_dir():
        return []
    in_use = _lowers_in_use()
    kept = {d.replace(":", "-") for d in keep or set()}
    removed = []
    for entry in cache.iterdir():
        if entry.suffix == ".lock" or entry.name.startswith(_TEMPORARY):
            continue
        if entry.name in kept or str(entry.resolve()) in in_use:
            continue
        shutil.rmtree(entry, ignore_errors=True)
        (cache / f"{entry.name}.lock").unlink(missing_ok=True)
        removed.append(entry.name.replace("-", ":", 1))
    return removed


# -- mounts ---------------------------------------------------------------------------------


def _mountable(options: str) -> bool:
    # The kernel reads the options as a comma-separated list with colon-separated lowers: a
    # path holding either would be misread. The copy serves such a path.
    paths = [part.split("=", 1)[1] for part in options.split(",")]
    return all("," not in p and ":" not in p and "\\" not in p for p in paths) and len(
        options
    ) < os.sysconf("SC_PAGE_SIZE")


def _mount(source: str, target: Path, fstype: str, options: str) -> None:
    libc = _libc()
    if libc.mount(source.encode(), str(target).encode(), fstype.encode(), 0, options.encode()):
        code = ctypes.get_errno()
        raise RootfsError(f"mount {fstype} on {target}: {os.strerror(code)}")


def _unmount(target: Path) -> None:
    if _libc().umount2(str(target).encode(), MNT_DETACH) != 0:
        code = ctypes.get_errno()
        if code in (errno.EINVAL, errno.ENOENT):
            return  # not a mount point (a copied rootfs), or already gone
        raise RootfsError(f"unmount {target}: {os.strerror(code)}")


def _mount_points() -> list[str]:
    points = []
    with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as info:
        for line in info:
            points.append(_unescape(line.split()[4]))
    return points


def _lowers_in_use() -> set[str]:
    """The lower folders of this namespace's overlay mounts."""
    lowers: set[str] = set()
    with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as info:
        for line in info:
            fields = line.split()
            tail = fields[fields.index("-") + 1 :]
            if tail[0] != "overlay" or len(tail) < 3:
                continue
            for option in tail[2].split(","):
                if option.startswith("lowerdir="):
                    lowers.update(_unescape(p) for p in option[len("lowerdir=") :].split(":"))
    return lowers


def _unescape(field: str) -> str:
    # mountinfo writes space, tab, newline and backslash as octal escapes.
    for code in ("\\040", "\\011", "\\012", "\\134"):
        field = field.replace(code, chr(int(code[1:], 8)))
    return field


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    # flock is per open file, so it also keeps two threads of one apply apart.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)
