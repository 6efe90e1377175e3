"""The monitor's log pump: one thread that reads every container's output and writes its log.

A container's stdout and stderr are the write ends of two FIFOs in its bundle (`stdout.fifo`,
`stderr.fifo`), which `runc create` hands it opened read-write. The container thus holds a
reader of its own pipes: with no monitor reading (killed, restarting) a write never fails
with EPIPE or SIGPIPE, it only blocks once 64 KiB wait unread, until a monitor opens the FIFOs
again and drains them. The monitor reads with non-blocking fds under one selector, cuts the
bytes into timestamped records (`executor.logfile`) and appends them to the log, which it
rotates. A stream ends when nobody holds its write end any more, which is when the
container's last process is gone.
"""

from __future__ import annotations

import contextlib
import logging
import os
import selectors
import stat
import threading
import time
from collections.abc import Hashable
from dataclasses import dataclass, field
from pathlib import Path

from . import logfile

log = logging.getLogger(__name__)

FIFOS = {"stdout": "stdout.fifo", "stderr": "stderr.fifo"}
PARTIAL_AFTER = 1.0  # seconds an unfinished line waits for its end before it is written
READS_PER_TURN = 4  # 64 KiB reads from one stream before the others get a turn


@dataclass
class Pipes:
    """The read ends of one container's FIFOs, opened before it starts."""

    fifos: dict[str, Path]
    fds: dict[str, int] = field(default_factory=dict)

    def close(self) -> None:
        for fd in self.fds.values():
            with contextlib.suppress(OSError):
                os.close(fd)
        self.fds.clear()


def open_pipes(bundle: Path) -> Pipes:
    """Make the bundle's FIFOs if need be and open their read ends, without blocking. The
    read ends must be open before the container starts: a FIFO's unread bytes vanish when
    the last process holding it closes it, which a container that exits at once does."""
    pipes = Pipes({name: bundle / fifo for name, fifo in FIFOS.items()})
    try:
        for name, path in pipes.fifos.items():
            with contextlib.suppress(FileExistsError):
                os.mkfifo(path, 0o600)
            if not stat.S_ISFIFO(os.lstat(path).st_mode):
                raise OSError(f"{path} is not a FIFO")
            pipes.fds[name] = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except BaseException:
        pipes.close()
        raise
    return pipes


def open_writers(pipes: Pipes) -> dict[str, int]:
    """The write ends to give the container, read-write so that it is a reader too."""
    return {name: os.open(path, os.O_RDWR | os.O_CLOEXEC) for name, path in pipes.fifos.items()}


@dataclass
class _Stream:
    owner: Hashable
    name: str
    fd: int
    splitter: logfile.Splitter
    log: Path


class LogPump:
    """Reads the FIFOs of every container the monitor supervises and writes their logs."""

    def __init__(self) -> None:
        self._selector = selectors.DefaultSelector()
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._requests: list[tuple[str, Hashable, Pipes | None, Path | None, logfile.Limits]] = []
        self._wake_read, self._wake_write = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._selector.register(self._wake_read, selectors.EVENT_READ, None)
        self._streams: dict[int, _Stream] = {}
        self._open: dict[Hashable, int] = {}  # streams still open, by owner
        self._logs: dict[Path, tuple[logfile.LogFile, int]] = {}  # a log and its streams

    def start(self) -> None:
        threading.Thread(target=self._run, name="log-pump", daemon=True).start()

    def attach(self, owner: Hashable, pipes: Pipes, log_path: Path, limits: logfile.Limits) -> None:
        """Pump the container's pipes (the pump owns their fds from here) into `log_path`."""
        with self._lock:
            self._open[owner] = self._open.get(owner, 0) + len(pipes.fds)
            self._requests.append(("attach", owner, pipes, log_path, limits))
        self._wake()

    def detach(self, owner: Hashable, timeout: float) -> None:
        """Wait up to `timeout` seconds for the owner's streams to end (all written to the
        log), then close whatever is still open, writing what it holds."""
        with self._lock:
            if self._changed.wait_for(lambda: not self._open.get(owner), timeout):
                self._open.pop(owner, None)
                return
            self._requests.append(("close", owner, None, None, logfile.Limits()))
        self._wake()
        with self._lock:
            self._changed.wait_for(lambda: not self._open.get(owner), 5.0)
            self._open.pop(owner, None)

    def _wake(self) -> None:
        with contextlib.suppress(BlockingIOError):
            os.write(self._wake_write, b"x")

    # ----- the pump's thread

    def _run(self) -> None:
        while True:
            try:
                self._turn()
            except Exception:
                log.exception("the log pump failed a turn")
                time.sleep(0.1)

    def _turn(self) -> None:
        timeout = self._next_flush()
        for key, _ in self._selector.select(timeout):
            if key.data is None:
                with contextlib.suppress(BlockingIOError):
                    os.read(self._wake_read, 4096)
                self._serve_requests()
            elif key.fd in self._streams:
                self._read(self._streams[key.fd])
        self._flush_waiting()

    def _next_flush(self) -> float | None:
        waiting = [s.splitter.pending_since for s in self._streams.values() if s.splitter.pending]
        if not waiting:
            return None
        return max(0.0, min(waiting) + PARTIAL_AFTER - time.monotonic())

    def _serve_requests(self) -> None:
        with self._lock:
            requests, self._requests = self._requests, []
        for op, owner, pipes, log_path, limits in requests:
            if op == "attach":
                assert pipes is not None and log_path is not None
                self._attach(owner, pipes, log_path, limits)
            else:
                for stream in [s for s in self._streams.values() if s.owner == owner]:
                    self._read(stream)
                    if stream.fd in self._streams:
                        self._end(stream)

    def _attach(self, owner: Hashable, pipes: Pipes, path: Path, limits: logfile.Limits) -> None:
        try:
            known = self._logs.get(path)
            log_file = known[0] if known else logfile.LogFile(path, limits)
        except OSError as error:
            log.error("cannot open the log %s: %s", path, error)
            pipes.close()
            with self._lock:
                self._open[owner] = 0
                self._changed.notify_all()
            return
        self._logs[path] = (log_file, (known[1] if known else 0) + len(pipes.fds))
        for name, fd in pipes.fds.items():
            stream = _Stream(owner, name, fd, logfile.Splitter(name), path)
            self._streams[fd] = stream
            self._selector.register(fd, selectors.EVENT_READ, stream)
        pipes.fds.clear()
        # A container that exited already left its bytes and its end behind: read them now.
        for stream in [s for s in self._streams.values() if s.owner == owner]:
            self._read(stream)

    def _read(self, stream: _Stream) -> None:
        records: list[bytes] = []
        ended = False
        for _ in range(READS_PER_TURN):
            try:
                data = os.read(stream.fd, 65536)
            except BlockingIOError:
                break
            except OSError as error:
                log.warning("reading %s of %s: %s", stream.name, stream.owner, error)
                ended = True
                break
            now = logfile.timestamp(time.time_ns())
            if not data:
                records += stream.splitter.flush(now, ends=True)
                ended = True
                break
            records += stream.splitter.feed(data, now)
        self._write(stream.log, records)
        if ended:
            self._end(stream)

    def _flush_waiting(self) -> None:
        cutoff = time.monotonic() - PARTIAL_AFTER
        for stream in list(self._streams.values()):
            if stream.splitter.pending and stream.splitter.pending_since <= cutoff:
                now = logfile.timestamp(time.time_ns())
                self._write(stream.log, stream.splitter.flush(now, ends=False))

    def _write(self, path: Path, records: list[bytes]) -> None:
        if not records:
            return
        try:
            self._logs[path][0].write(records)
        except OSError as error:
            # A full disk loses lines, not the container: it must never block on its log.
            log.error("writing the log %s: %s", path, error)

    def _end(self, stream: _Stream) -> None:
        now = logfile.timestamp(time.time_ns())
        self._write(stream.log, stream.splitter.flush(now, ends=True))
        self._selector.unregister(stream.fd)
        os.close(stream.fd)
        del self._streams[stream.fd]
        log_file, users = self._logs[stream.log]
        if users <= 1:
            log_file.close()
            del self._logs[stream.log]
        else:
            self._logs[stream.log] = (log_file, users - 1)
        with self._lock:
            if self._open.get(stream.owner):
                self._open[stream.owner] -= 1
            self._changed.notify_all()
