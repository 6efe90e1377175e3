"""Workload logs on disk: the line format, rotation, `--since`, and reading them back.

Every line a workload writes becomes one record in the CRI log format, the one kubelet and
containerd write, so that people and tools read it without Forge:

    2026-12-04T10:00:00.123456789Z stdout F the text of the line

The time the line was read (RFC 3339, UTC, always nine fraction digits, so records sort as
text), the stream (stdout or stderr), a tag, and the bytes the workload wrote, without the
newline and otherwise as written (binary bytes and carriage returns included). The tag is F
when the line ends with the record and P for a fragment that the stream's next record
continues: a line longer than MAX_LINE, or one left unfinished for a while (a prompt, a
progress bar). Output that ends without a newline ends with an F record all the same.

A log is ADDRESS.log; when a write would take it past its maximum size it becomes ADDRESS.log.1,
the older ones move up one (ADDRESS.log.2, ...), and those beyond the number kept are removed.
"""

from __future__ import annotations

import calendar
import contextlib
import fcntl
import glob
import os
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

MAX_SIZE = 10 * 1024 * 1024  # bytes in ADDRESS.log before it is rotated
MAX_FILES = 5  # rotated files kept beside it: ADDRESS.log.1 (newest) to ADDRESS.log.5
MAX_LINE = 16 * 1024  # bytes in one record's text; a longer line is split into P records
STREAMS = ("stdout", "stderr")

_TIMESTAMP = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?(Z|z|[+-]\d{2}:\d{2})?"
)
_DURATION = re.compile(r"(?:\d+(?:\.\d+)?(?:ms|s|m|h|d))+")
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_UNIT_NS = {"ms": 10**6, "s": 10**9, "m": 60 * 10**9, "h": 3600 * 10**9, "d": 86400 * 10**9}


@dataclass(frozen=True)
class Limits:
    """How large a log grows before it is rotated, and how many rotated files are kept."""

    max_size: int = MAX_SIZE
    max_files: int = MAX_FILES


@dataclass(frozen=True)
class Record:
    """One record of a log; `time` is None for a line written before logs had timestamps."""

    time: str | None
    stream: str
    partial: bool
    text: bytes


def timestamp(ns: int) -> str:
    """Nanoseconds since the epoch as the RFC 3339 UTC time records carry."""
    seconds, fraction = divmod(ns, 10**9)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{fraction:09d}Z"


def parse_time(text: str) -> int:
    """An RFC 3339 time as nanoseconds since the epoch; ValueError when it is not one, or
    names no zone (a bare 10:00 could be any of 24 times)."""
    match = _TIMESTAMP.fullmatch(text.strip())
    if match is None:
        raise ValueError(f"{text!r} is not an RFC 3339 time")
    year, month, day, hour, minute, second = (int(g) for g in match.groups()[:6])
    fraction, zone = match.group(7) or "", match.group(8)
    if zone is None:
        raise ValueError(f"{text!r} names no time zone")
    seconds = calendar.timegm((year, month, day, hour, minute, second, 0, 0, 0))
    if zone not in ("Z", "z"):
        sign = 1 if zone[0] == "+" else -1
        seconds -= sign * (int(zone[1:3]) * 3600 + int(zone[4:6]) * 60)
    return seconds * 10**9 + int(fraction.ljust(9, "0"))


def parse_since(text: str, now_ns: int) -> int:
    """`--since`: a duration before now (10m, 1h30m, 45s, 2d) or an RFC 3339 time (a date alone
    means its midnight, UTC); nanoseconds since the epoch. ValueError says what to write."""
    value = text.strip()
    if _DURATION.fullmatch(value):
        ago = sum(float(n) * _UNIT_NS[unit] for n, unit in _DURATION_PART.findall(value))
        return max(0, now_ns - int(ago))  # before 1970 is no earlier than any record
    if re.fullmatch(r"\d{4}-\d{2}-\d{2}", value):
        value += "T00:00:00Z"
    try:
        return parse_time(value)
    except ValueError as error:
        if "names no time zone" in str(error):
            raise ValueError(
                f"{text!r} names no time zone: add Z for UTC or an offset such as +01:00"
            ) from None
    raise ValueError(
        f"{text!r} is neither a duration nor a time: write a duration such as 10m or 1h30m "
        "(units ms, s, m, h, d), or an RFC 3339 time such as 2026-12-04T10:00:00Z"
    )


def encode(time_text: str, stream: str, partial: bool, text: bytes) -> bytes:
    """One record as the bytes of its line."""
    return b"%s %s %s %s\n" % (time_text.encode(), stream.encode(), b"P" if partial else b"F", text)


def parse_line(line: bytes) -> Record:
    """A log line (without its newline) as a Record; a line that is no record is the text of
    one, as logs written before records had timestamps hold."""
    parts = line.split(b" ", 3)
    if (
        len(parts) == 4
        and parts[1] in (b"stdout", b"stderr")
        and parts[2] in (b"F", b"P")
        and _TIMESTAMP.fullmatch(parts[0].decode("ascii", "replace"))
    ):
        return Record(parts[0].decode(), parts[1].decode(), parts[2] == b"P", parts[3])
    return Record(None, "stdout", False, line)


class Splitter:
    """Cuts one stream's bytes into records: at newlines, at MAX_LINE, and on `flush`."""

    def __init__(self, stream: str) -> None:
        self.stream = stream
        self.pending = b""
        self.pending_since = 0.0  # monotonic time the pending fragment began

    def feed(self, data: bytes, now: str) -> list[bytes]:
        """Records for the whole lines in what has been read so far; keeps the rest."""
        if not self.pending:
            self.pending_since = time.monotonic()
        lines = (self.pending + data).split(b"\n")
        self.pending = lines.pop()
        records = []
        for line in lines:
            records += self._cut(line, now, ends=True)
        if len(self.pending) >= MAX_LINE:
            head_size = len(self.pending) - len(self.pending) % MAX_LINE
            head, self.pending = self.pending[:head_size], self.pending[head_size:]
            records += self._cut(head, now, ends=False)
            self.pending_since = time.monotonic()
        return records

    def flush(self, now: str, ends: bool) -> list[bytes]:
        """The pending fragment as a record: P while the line may go on, F at the stream's end."""
        if not self.pending:
            return []
        text, self.pending = self.pending, b""
        return self._cut(text, now, ends)

    def _cut(self, line: bytes, now: str, ends: bool) -> list[bytes]:
        pieces = [line[i : i + MAX_LINE] for i in range(0, len(line), MAX_LINE)] or [b""]
        last = len(pieces) - 1
        return [
            encode(now, self.stream, not (ends and i == last), piece)
            for i, piece in enumerate(pieces)
        ]


def rotated(path: Path, number: int) -> Path:
    """The name of the `number`th rotated file of a log: ADDRESS.log.1 is the newest."""
    return path.with_name(f"{path.name}.{number}")


def files(path: Path) -> list[Path]:
    """A log's files that exist, oldest first: ADDRESS.log.N ... ADDRESS.log.1, ADDRESS.log.
    All numbered files, not those up to the first missing number: while a rotation renames
    them one by one, there is a gap."""
    numbered = []
    for each in path.parent.glob(f"{glob.escape(path.name)}.*"):
        suffix = each.name[len(path.name) + 1 :]
        if suffix.isdigit():
            numbered.append((int(suffix), each))
    older = [each for _, each in sorted(numbered, reverse=True)]
    return [*older, *([path] if path.exists() else [])]


def remove(path: Path) -> None:
    """Remove a log and its rotated files."""
    for each in files(path):
        each.unlink(missing_ok=True)


class LogFile:
    """A log the monitor appends records to, rotating it at its size limit."""

    def __init__(self, path: Path, limits: Limits = Limits()) -> None:
        self.path = path
        self.limits = limits
        path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = self._open()
        self._size = os.fstat(self._fd).st_size

    def _open(self) -> int:
        return os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)

    def write(self, records: list[bytes]) -> None:
        """Append records, rotating first whenever the next one would pass the limit."""
        batch = bytearray()
        for record in records:
            if self._size + len(batch) + len(record) > self.limits.max_size and (
                self._size + len(batch) > 0
            ):
                self._append(bytes(batch))
                batch.clear()
                self.rotate()
            batch += record
        self._append(bytes(batch))

    def _append(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            written = os.write(self._fd, view)
            self._size += written
            view = view[written:]

    def rotate(self) -> None:
        """ADDRESS.log becomes ADDRESS.log.1, each older file moves up one, and a new
        ADDRESS.log is begun; files beyond the number kept are removed."""
        os.close(self._fd)
        keep = self.limits.max_files
        with _renaming(self.path.parent, exclusive=True):
            number = 1
            while rotated(self.path, number).exists():
                number += 1
            for older in range(number - 1, 0, -1):
                if older >= keep:
                    rotated(self.path, older).unlink(missing_ok=True)
                else:
                    os.replace(rotated(self.path, older), rotated(self.path, older + 1))
            if keep > 0:
                os.replace(self.path, rotated(self.path, 1))
            else:
                self.path.unlink(missing_ok=True)
            self._fd = self._open()
        self._size = 0

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self._fd)


def append_output(path: Path, stream: str, data: bytes, limits: Limits = Limits()) -> None:
    """Append what a workload wrote to one stream, all read now, as records."""
    if not data:
        return
    now = timestamp(time.time_ns())
    splitter = Splitter(stream)
    log = LogFile(path, limits)
    try:
        log.write(splitter.feed(data, now) + splitter.flush(now, ends=True))
    finally:
        log.close()


# -- reading ----------------------------------------------------------------------------------


def read(path: Path, since: str | None = None, follow: bool = False) -> Iterator[Record]:
    """The records of a log and its rotated files in order, from `since` (a `timestamp`) on
    when it is given; with `follow`, then every record written after, across rotations.
    Without `follow`, what the log holds when reading begins, however fast it grows meanwhile."""
    for record in _follow(path) if follow else _snapshot(path):
        if since is None or (record.time is not None and record.time >= since):
            yield record


def _snapshot(path: Path) -> Iterator[Record]:
    """What the log holds now, each file read up to the size it had, oldest first, however
    fast it grows meanwhile. A record the monitor was still writing is left out."""
    opened = _open_all(path)
    try:
        for stream, size in opened:
            lines = stream.read(size).split(b"\n")
            last = lines.pop()
            records = [parse_line(line) for line in lines]
            # Records end with a newline: an unended tail of a file of records is one in the
            # making. A log from before records (plain lines) may end without one.
            if last and not (records and records[-1].time is not None):
                records.append(parse_line(last))
            yield from records
    finally:
        for stream, _ in opened:
            stream.close()


def _open_all(path: Path) -> list[tuple[BinaryIO, int]]:
    """Each file of the log, oldest first, open with its size: listed and opened while no
    rotation renames them (a busy log rotates every few milliseconds)."""
    opened: list[tuple[BinaryIO, int]] = []
    with _renaming(path.parent, exclusive=False):
        for each in files(path):
            with contextlib.suppress(FileNotFoundError):
                handle: BinaryIO = each.open("rb")
                opened.append((handle, os.fstat(handle.fileno()).st_size))
    return opened


@contextlib.contextmanager
def _renaming(folder: Path, exclusive: bool) -> Iterator[None]:
    """The logs folder's lock: a rotation renames under it alone, readers open files under it
    together. Without the folder (no log yet) there is nothing to rotate."""
    try:
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except FileNotFoundError:
        yield
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        yield
    finally:
        os.close(fd)


def _follow(path: Path, poll: float = 0.2) -> Iterator[Record]:
    """Every record of the log, then each one written after, across rotations, for ever."""
    current: tuple[int, int] | None = None  # (device, inode) of the file being read
    stream: BinaryIO | None = None
    tail = b""
    try:
        while True:
            if stream is None:
                stream = _open_first(_following(path, current))
                if stream is None:
                    time.sleep(poll)
                    continue
                stat = os.fstat(stream.fileno())
                current, tail = (stat.st_dev, stat.st_ino), b""
            chunk = stream.read(65536)
            if chunk:
                lines = (tail + chunk).split(b"\n")
                tail = lines.pop()
                yield from (parse_line(line) for line in lines)
                continue
            if _following(path, current):
                # Rotated away with a newer file begun: this file is finished, once what was
                # written to it just before the rotation is read too.
                lines = (tail + stream.read()).split(b"\n")
                last = lines.pop()
                yield from (parse_line(line) for line in [*lines, *([last] if last else [])])
                stream.close()
                stream = None
            else:
                time.sleep(poll)
    finally:
        if stream is not None:
            stream.close()


def _following(path: Path, current: tuple[int, int] | None) -> list[Path]:
    """The files of a log after the one whose identity is `current`, oldest first: all of them
    when `current` is None or was removed (then every file left is newer than it)."""
    chain = []
    for each in files(path):
        with contextlib.suppress(FileNotFoundError):
            stat = each.stat()
            chain.append(((stat.st_dev, stat.st_ino), each))
    identities = [identity for identity, _ in chain]
    if current is None or current not in identities:
        return [each for _, each in chain]
    return [each for _, each in chain[identities.index(current) + 1 :]]


def _open_first(paths: list[Path]) -> BinaryIO | None:
    for each in paths:
        with contextlib.suppress(FileNotFoundError):
            return each.open("rb")
    return None


def render(records: Iterator[Record], timestamps: bool) -> Iterator[bytes]:
    """What `forge logs` prints for records: their text, a line each, with the time in front
    when asked; the fragments of a long line joined back."""
    open_lines: set[str] = set()  # streams whose last record was a fragment
    for record in records:
        prefix = b""
        if timestamps and record.stream not in open_lines:
            prefix = (record.time or "-").encode() + b" "
        if record.partial:
            open_lines.add(record.stream)
            yield prefix + record.text
        else:
            open_lines.discard(record.stream)
            yield prefix + record.text + b"\n"
