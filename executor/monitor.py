"""One supervisor per host for every runc container Forge starts, and the client that talks to it.

`runc run -d` hands a container's init to PID 1 and its exit status is lost. So one small
daemon makes itself a child subreaper, creates each container with `runc create` (stdout and
stderr the write ends of FIFOs in its bundle, which the log pump drains into the container's
log, see `executor.logpipe`), reads its pid from `runc state`, starts it, and reaps that pid
with waitid/waitpid. On exit it writes `BUNDLE/exit.json` and deletes the container from runc.
It is not one Python process per container: a reaper thread, a finisher thread, the log pump
and a thread per open request serve all of them (and a thread per healthcheck).

The monitor keeps a registry of what it supervises (a JSON file per container in the folder
beside its socket, `monitor-PROTOCOL.containers/`): its runc root, bundle, log, init's pid and
start time, restart policy and healthcheck. A monitor killed or gone leaves its containers
running; the next one (which a client starts on demand) reads the registry and adopts those
still running: it answers for them, drains their logs again, keeps their restart policy and
healthcheck, and learns of their end through a pidfd. An adopted init is no child of the new
monitor, so its exit code is read from /proc while it is a zombie if it still is one, and is
otherwise recorded as unknown, with the reason, not made up.

Clients speak one JSON request and one JSON reply per connection on a unix socket (mode 0600,
`/run/forge/monitor-PROTOCOL.sock` unless FORGE_MONITOR_SOCKET says otherwise).
`Monitor.ensure_running` starts the daemon on demand, under a lock file so two clients never
start two; it exits by itself after a minute with no container and no request, or on a
`shutdown` request when idle.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import fcntl
import hashlib
import json
import logging
import os
import queue
import re
import select
import signal
import socket
import socketserver
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from executor import logfile, logpipe, runtimes
from executor.errors import ExecutorError
from executor.paths import RUN_ROOT

log = logging.getLogger(__name__)

SOCKET_ENV = "FORGE_MONITOR_SOCKET"
EXIT_FILE = "exit.json"
RUNC_LOG = "runc.log"
PID_FILE = "init.pid"  # runc create writes the container's init pid here: no `runc state` call
IDLE_SECONDS = 60.0
READY_TIMEOUT = 5.0
RUNC_TIMEOUT = 30.0
KILL_TIMEOUT = 10.0
KEEP_EXITED = 600.0
# What requests the monitor answers. 2: `statuses`, and `stop` takes the signal to send.
# 3: `start` takes a restart policy, and statuses tell restarts.
# 4: `start` takes a healthcheck, and statuses tell health.
# 5: `start` takes log_max_size and log_max_files; logs are timestamped records through FIFOs;
#    a monitor adopts what the one before it left running; an exit may have no code (reason).
# 6: container requests and `statuses` take the OCI runtime (`runtime`: runc or crun).
PROTOCOL = 6
MAX_REQUEST = 1 << 20
STOP_SIGNALS = frozenset(s.name for s in signal.Signals)
STATUS_BATCH = 500  # containers per `statuses` request: ~100 kB asked, ~60 kB answered
PR_SET_CHILD_SUBREAPER = 36
DRAIN_TIMEOUT = 5.0  # seconds an exited container's output may take to reach its log
UNSUPERVISED_EXIT = "it exited while no monitor supervised it: its exit code and time are unknown"
ADOPTED_EXIT = (
    "it was adopted from a monitor that is gone, so it is no child of this one: "
    "its exit code is unknown"
)
# runc's own id syntax, minus a leading dot: "." and ".." would name folders outside the root.
CONTAINER_ID = re.compile(r"[A-Za-z0-9_][\w+.-]*", re.ASCII)


class MonitorError(ExecutorError):
    """The monitor could not be reached, or refused or failed a request."""


class MonitorUnreachable(MonitorError):
    """No monitor listens on the socket."""


@dataclass(frozen=True)
class ContainerStatus:
    """What is known about one container: running with a pid, exited with a code, or unknown."""

    state: str  # running, restarting (waiting out a restart's backoff), exited or unknown
    pid: int | None
    exit_code: int | None  # of the last exit, also while running again after a restart
    exited_at: str | None
    signal: str | None = None
    restarts: int = 0  # how often the restart policy has started it again
    health: str | None = None  # starting, healthy or unhealthy; None without a healthcheck
    reason: str | None = None  # why exit_code is None after an exit: it could not be known
    started_at: str | None = None  # when the current run started (RFC 3339), while running

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ContainerStatus:
        """Read the status from a reply or an exit.json record."""
        return cls(
            state=data.get("state", "exited"),
            pid=data.get("pid"),
            exit_code=data.get("exit_code"),
            exited_at=data.get("exited_at"),
            signal=data.get("signal"),
            restarts=int(data.get("restarts") or 0),
            health=data.get("health"),
            reason=data.get("reason"),
            started_at=data.get("started_at"),
        )

    def to_json(self) -> dict[str, Any]:
        """Return the status as the JSON object the protocol carries."""
        return {
            "state": self.state,
            "pid": self.pid,
            "exit_code": self.exit_code,
            "exited_at": self.exited_at,
            "signal": self.signal,
            "restarts": self.restarts,
            "health": self.health,
            "reason": self.reason,
            "started_at": self.started_at,
        }


UNKNOWN = ContainerStatus("unknown", None, None, None)

# Restart backoff: the first restart after BACKOFF_FIRST, doubling to at most BACKOFF_MAX; a run
# that lasted BACKOFF_RESET seconds starts the doubling over.
BACKOFF_FIRST, BACKOFF_MAX, BACKOFF_RESET = 0.1, 30.0, 10.0


@dataclass(frozen=True)
class RestartPolicy:
    """`restart`: no, on-failure[:N], always or unless-stopped (the same as always here: the
    monitor does not outlive a reboot, so there is no daemon start to tell them apart)."""

    policy: str = "no"
    max_restarts: int | None = None  # on-failure's N; None for no bound

    @classmethod
    def parse(cls, text: str) -> RestartPolicy:
        policy, _, count = text.partition(":")
        if policy not in ("no", "on-failure", "always", "unless-stopped"):
            raise ValueError(f"unknown restart policy {text!r}")
        if count and (policy != "on-failure" or not count.isdigit()):
            raise ValueError(f"only on-failure takes a count, as on-failure:3 (got {text!r})")
        return cls(policy, int(count) if count else None)

    @classmethod
    def from_json(cls, data: Any) -> RestartPolicy:
        if not isinstance(data, dict):
            return cls()
        bound = data.get("max_restarts")
        return (
            cls.parse(str(data.get("policy", "no")))
            if bound is None
            else cls(str(data.get("policy", "no")), int(bound))
        )

    def to_json(self) -> dict[str, Any]:
        return {"policy": self.policy, "max_restarts": self.max_restarts}

    def restarts_after(self, exit_code: int | None, restarts: int) -> bool:
        """Whether an exit with `exit_code`, after `restarts` restarts, is started again. An
        unknown code (None) counts as a failure: nothing says the run succeeded."""
        if self.policy in ("always", "unless-stopped"):
            return True
        if self.policy == "on-failure" and exit_code != 0:
            return self.max_restarts is None or restarts < self.max_restarts
        return False


def registry_folder(socket_path: Path) -> Path:
    """Where the monitor on `socket_path` keeps its registry: monitor-6.containers/ for
    monitor-6.sock."""
    return socket_path.with_name(socket_path.name.removesuffix(".sock") + ".containers")


def default_socket() -> Path:
    """Return the monitor's socket: FORGE_MONITOR_SOCKET, else one per protocol version under
    the run root, so that a Forge which speaks a newer protocol never asks an older monitor
    (one another checkout started, still supervising its containers) for what it cannot do."""
    configured = os.environ.get(SOCKET_ENV)
    return Path(configured) if configured else RUN_ROOT / f"monitor-{PROTOCOL}.sock"


def status_from_exit_file(bundle: Path) -> ContainerStatus | None:
    """Return the exit recorded in `bundle/exit.json`, or None when there is none."""
    try:
        record = json.loads((bundle / EXIT_FILE).read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as error:
        log.warning("unreadable exit record in %s: %s", bundle, error)
        return None
    return ContainerStatus(
        "exited",
        None,
        record.get("exit_code"),
        record.get("exited_at"),
        record.get("signal"),
        reason=record.get("reason"),
    )


# --------------------------------------------------------------------------------------------
# The client


class Monitor:
    """A handle on the host's monitor; each call is one connection."""

    def __init__(self, socket_path: Path | None = None) -> None:
        self.socket_path = (socket_path or default_socket()).absolute()

    @property
    def log_path(self) -> Path:
        """Where the daemon's own stdout and stderr go."""
        return self.socket_path.parent / "monitor.log"

    @property
    def registry(self) -> Path:
        """The folder where the monitor on this socket records what it supervises."""
        return registry_folder(self.socket_path)

    def orphans(self) -> bool:
        """Whether a monitor that is gone left containers behind for the next one to adopt."""
        try:
            return any(self.registry.glob("*.json"))
        except OSError:
            return False

    def ensure_running(self) -> None:
        """Start the monitor unless it answers already, and wait until it does."""
        if self._answers():
            return
        self.socket_path.parent.mkdir(parents=True, exist_ok=True)
        with _locked(self.socket_path.with_name(self.socket_path.name + ".lock")):
            if self._answers():
                return
            self._spawn()
            deadline = time.monotonic() + READY_TIMEOUT
            while not self._answers():
                if time.monotonic() > deadline:
                    raise MonitorError(
                        f"the monitor did not answer on {self.socket_path} within "
                        f"{READY_TIMEOUT:g} s; see {self.log_path}"
                    )
                time.sleep(0.02)

    def ping(self) -> dict[str, Any]:
        """Return the monitor's pid and the number of containers it supervises."""
        return self._request({"op": "ping"}, timeout=5.0)

    def start(
        self,
        runc_root: Path,
        container_id: str,
        bundle: Path,
        log: Path,
        restart: RestartPolicy | None = None,
        health: dict[str, Any] | None = None,
        runtime: str = "runc",
        log_limits: logfile.Limits | None = None,
    ) -> int:
        """Create and start a container supervised by the monitor; return its init's pid. With
        `restart`, the monitor starts it again when it exits, as the policy says; with `health`
        (command, interval, timeout, retries, start_period), it runs that check inside.
        `runtime` (runc or crun) runs it, and every later call about it; its log is rotated at
        `log_limits` (logfile.MAX_SIZE and MAX_FILES unless given)."""
        self.ensure_running()
        request = _container_request("start", runc_root, container_id, bundle, runtime)
        request["log"] = str(log.absolute())
        if log_limits is not None:
            request["log_max_size"] = log_limits.max_size
            request["log_max_files"] = log_limits.max_files
        if restart is not None:
            request["restart"] = restart.to_json()
        if health is not None:
            request["health"] = health
        reply = self._request(request, timeout=4 * RUNC_TIMEOUT + KILL_TIMEOUT)
        return int(reply["pid"])

    def status(
        self, runc_root: Path, container_id: str, bundle: Path, runtime: str = "runc"
    ) -> ContainerStatus:
        """Return the container's status from the monitor, else from its exit.json."""
        request = _container_request("status", runc_root, container_id, bundle, runtime)
        reply = self._ask(request, timeout=RUNC_TIMEOUT + 5)
        if reply is None:
            # No monitor means nothing is supervised: what is left is the exit record, if any.
            return status_from_exit_file(bundle) or UNKNOWN
        return ContainerStatus.from_json(reply)

    def _ask(self, request: dict[str, Any], timeout: float) -> dict[str, Any] | None:
        """A question that needs no monitor: None when none runs and none needs to. A monitor
        that died and left containers is followed by a new one, which adopts them."""
        try:
            return self._request(request, timeout=timeout)
        except MonitorUnreachable:
            if not self.orphans():
                return None
        self.ensure_running()
        return self._request(request, timeout=timeout)

    def statuses(
        self, runc_root: Path, containers: Sequence[tuple[str, Path]], runtime: str = "runc"
    ) -> list[ContainerStatus]:
        """`status` of many containers (id, bundle), a few hundred to a request: a refresh of a
        thousand containers is a handful of round trips, not a thousand."""
        found: list[ContainerStatus] = []
        for start in range(0, len(containers), STATUS_BATCH):
            batch = containers[start : start + STATUS_BATCH]
            request = {
                "op": "statuses",
                "runc_root": str(runc_root.absolute()),
                "containers": [{"id": cid, "bundle": str(b.absolute())} for cid, b in batch],
                "runtime": runtime,
            }
            try:
                # A container the monitor does not supervise costs it a `runc state`.
                answer = self._ask(request, timeout=RUNC_TIMEOUT + 0.5 * len(batch))
            except MonitorUnreachable:
                answer = None
            except MonitorError as exc:
                if "unknown request" not in str(exc):
                    raise
                # A monitor from an older Forge, still serving this host: one at a time.
                found += [self.status(runc_root, cid, b, runtime) for cid, b in batch]
                continue
            if answer is None:
                found += [status_from_exit_file(bundle) or UNKNOWN for _, bundle in batch]
                continue
            found += [ContainerStatus.from_json(status) for status in answer["statuses"]]
        return found

    def wait(
        self,
        runc_root: Path,
        container_id: str,
        bundle: Path,
        timeout: float,
        runtime: str = "runc",
    ) -> ContainerStatus:
        """Wait up to `timeout` seconds for the container to exit; return its status."""
        self.ensure_running()
        request = _container_request("wait", runc_root, container_id, bundle, runtime)
        request["timeout"] = timeout
        reply = self._request(request, timeout=timeout + RUNC_TIMEOUT + 5)
        return ContainerStatus.from_json(reply)

    def stop(
        self,
        runc_root: Path,
        container_id: str,
        bundle: Path,
        grace: float = 10.0,
        signal: str = "SIGTERM",
        runtime: str = "runc",
    ) -> ContainerStatus:
        """Send `signal`, then KILL after `grace` seconds, and delete the container; idempotent."""
        self.ensure_running()
        request = _container_request("stop", runc_root, container_id, bundle, runtime)
        request["grace"] = grace
        request["signal"] = signal
        reply = self._request(request, timeout=grace + KILL_TIMEOUT + 4 * RUNC_TIMEOUT)
        return ContainerStatus.from_json(reply)

    def shutdown_if_idle(self) -> bool:
        """Stop the monitor if it supervises nothing; True when no monitor runs afterwards."""
        try:
            reply = self._request({"op": "shutdown"}, timeout=10.0)
        except MonitorUnreachable:
            return True
        if not reply["stopped"]:
            return False
        deadline = time.monotonic() + READY_TIMEOUT
        while _alive(int(reply["pid"])) and time.monotonic() < deadline:
            time.sleep(0.02)
        return not _alive(int(reply["pid"]))

    def _answers(self) -> bool:
        # A monitor that is closing answers "retry": for a new client it is already gone.
        try:
            reply = self._exchange({"op": "ping"}, timeout=2.0)
        except MonitorError:
            return False
        if reply.get("ok") and reply.get("protocol", 1) < PROTOCOL:
            raise MonitorError(
                f"the monitor on {self.socket_path} (pid {reply.get('pid')}) is from an older "
                f"Forge (protocol {reply.get('protocol', 1)}, this one needs {PROTOCOL})",
                hint="let it finish (it exits when it supervises nothing), or point "
                "FORGE_MONITOR_SOCKET at another socket",
            )
        return bool(reply.get("ok"))

    def _spawn(self) -> None:
        # The launcher forks the daemon and exits at once, so the daemon is nobody's child
        # here and leaves no zombie in a long-running client.
        env = dict(os.environ, **{SOCKET_ENV: str(self.socket_path)})
        package_root = str(Path(__file__).resolve().parent.parent)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_root, env.get("PYTHONPATH")]))
        command = [sys.executable, "-m", "executor.monitor", "--socket", str(self.socket_path)]
        log.info("starting the container monitor on %s", self.socket_path)
        with open(self.log_path, "ab") as out:
            launcher = subprocess.Popen(
                [*command, "--daemon"],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=out,
                env=env,
                cwd="/",
                start_new_session=True,
            )
            code = launcher.wait(timeout=30)
        if code != 0:
            raise MonitorError(f"the monitor failed to start (exit {code}); see {self.log_path}")

    def _request(self, request: dict[str, Any], timeout: float) -> dict[str, Any]:
        for _ in range(3):
            reply = self._exchange(request, timeout)
            if reply.get("retry"):
                # The monitor was closing and did nothing: start a new one and ask again.
                time.sleep(0.1)
                self.ensure_running()
                continue
            if not reply.get("ok"):
                raise MonitorError(str(reply.get("error", "the monitor gave no reason")))
            return reply
        raise MonitorError(f"the monitor on {self.socket_path} kept closing; try again")

    def _exchange(self, request: dict[str, Any], timeout: float) -> dict[str, Any]:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
            conn.settimeout(timeout)
            try:
                _connect(conn, self.socket_path, timeout)
            except (FileNotFoundError, ConnectionRefusedError) as error:
                raise MonitorUnreachable(f"no monitor listens on {self.socket_path}") from error
            except OSError as error:
                raise MonitorError(
                    f"cannot reach the monitor on {self.socket_path}: {error}"
                ) from error
            try:
                conn.sendall(json.dumps(request).encode() + b"\n")
                data = _read_line(conn)
            except OSError as error:
                raise MonitorError(f"lost the monitor on {self.socket_path}: {error}") from error
        try:
            reply: dict[str, Any] = json.loads(data)
        except ValueError as error:
            raise MonitorError(f"the monitor sent an unreadable reply: {data[:200]!r}") from error
        return reply


def _connect(conn: socket.socket, path: Path, timeout: float) -> None:
    """Connect, waiting while the monitor's backlog is full: a unix socket with a timeout says
    EAGAIN then, where a blocking one would wait."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            conn.connect(str(path))
            return
        except BlockingIOError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.01)


def _container_request(
    op: str, runc_root: Path, container_id: str, bundle: Path, runtime: str
) -> dict[str, Any]:
    # The daemon runs in /, so relative paths would mean something else there. `runc_root` is
    # the runtime's state root, whichever runtime that is.
    return {
        "op": op,
        "runc_root": str(runc_root.absolute()),
        "id": container_id,
        "bundle": str(bundle.absolute()),
        "runtime": runtime,
    }


def _read_line(conn: socket.socket) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while size < MAX_REQUEST:
        chunk = conn.recv(65536)
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
        if chunk.endswith(b"\n"):
            break
    return b"".join(chunks)


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    with open(path, "a") as lock:
        deadline = time.monotonic() + 2 * READY_TIMEOUT
        while True:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise MonitorError(f"another client holds {path} for too long") from None
                time.sleep(0.02)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


# --------------------------------------------------------------------------------------------
# The daemon


@dataclass
class _Container:
    """One supervised container; every field changes under the supervisor's lock."""

    runc_root: Path
    container_id: str
    bundle: Path
    runtime: str = "runc"  # the OCI runtime every call about it goes to
    pid: int | None = None
    started: bool = False
    wait_status: int | None = None
    exited_at: str | None = None
    finishing: bool = False
    finished: float | None = None
    log_path: Path | None = None
    restart: RestartPolicy = RestartPolicy()
    restarts: int = 0
    last_exit: dict[str, Any] | None = None  # of the run before a restart
    started_at: float = 0.0
    stopping: bool = False  # a stop was asked for: no restart follows
    backoff: threading.Timer | None = None  # the restart waiting out its delay
    check: dict[str, Any] | None = None  # the healthcheck: command, interval, timeout, ...
    health: str | None = None
    failing: int = 0  # failed checks in a row, outside the start period
    log_limits: logfile.Limits = field(default_factory=logfile.Limits)
    started_wall: float = 0.0  # time.time() at the run's start, for a monitor after this one
    pid_start: int | None = None  # the init's start time in clock ticks: tells a reused pid
    unknown_exit: str | None = None  # why the last run's exit code is not known
    adopted: bool = False  # left running by a monitor before this one
    pidfd: int | None = None  # an adopted init's, polled for its end

    @property
    def exited(self) -> bool:
        return self.wait_status is not None or self.unknown_exit is not None

    def exit_record(self) -> dict[str, Any]:
        if self.unknown_exit is not None:
            return {
                "exit_code": None,
                "exited_at": self.exited_at,
                "signal": None,
                "reason": self.unknown_exit,
            }
        assert self.wait_status is not None
        if os.WIFSIGNALED(self.wait_status):
            number = os.WTERMSIG(self.wait_status)
            return {
                "exit_code": 128 + number,
                "exited_at": self.exited_at,
                "signal": _signal_name(number),
            }
        code = os.WEXITSTATUS(self.wait_status)
        return {"exit_code": code, "exited_at": self.exited_at, "signal": None}

    def status(self) -> ContainerStatus:
        # "exited" only once exit.json is written and runc has forgotten the container.
        if self.finished is not None:
            return ContainerStatus.from_json(
                {"state": "exited", **self.exit_record(), "restarts": self.restarts}
            )
        last = self.last_exit or {}
        if self.backoff is not None:
            return ContainerStatus.from_json(
                {"state": "restarting", **last, "pid": None, "restarts": self.restarts}
            )
        if self.started:
            return ContainerStatus(
                "running",
                self.pid,
                last.get("exit_code"),
                last.get("exited_at"),
                last.get("signal"),
                self.restarts,
                self.health,
                last.get("reason"),
                _rfc3339(self.started_wall) if self.started_wall else None,
            )
        return UNKNOWN

    def registry_record(self) -> dict[str, Any]:
        """What a monitor after this one needs to take the container over."""
        return {
            "runc_root": str(self.runc_root),
            "runtime": self.runtime,
            "id": self.container_id,
            "bundle": str(self.bundle),
            "log": str(self.log_path),
            "log_limits": {
                "max_size": self.log_limits.max_size,
                "max_files": self.log_limits.max_files,
            },
            "restart": self.restart.to_json(),
            "check": self.check,
            "restarts": self.restarts,
            "pid": self.pid,
            "pid_start": self.pid_start,
            "backoff": self.backoff is not None,  # waiting to be started again
            "started_at": self.started_wall,
            "last_exit": self.last_exit,
            "health": self.health,
        }


class _Registry:
    """The containers a monitor supervises, a JSON file each, for the monitor after it."""

    def __init__(self, folder: Path | None) -> None:
        self.folder = folder

    def _path(self, container: _Container) -> Path:
        assert self.folder is not None
        key = f"{container.runc_root}\0{container.container_id}".encode()
        return self.folder / f"{hashlib.sha256(key).hexdigest()[:24]}.json"

    def save(self, container: _Container) -> None:
        if self.folder is None:
            return
        try:
            self.folder.mkdir(mode=0o700, parents=True, exist_ok=True)
            path = self._path(container)
            partial = path.with_name(f".{path.name}.partial")
            partial.write_text(json.dumps(container.registry_record()))
            os.replace(partial, path)
        except OSError as error:
            log.error("cannot record %s in the registry: %s", container.container_id, error)

    def drop(self, container: _Container) -> None:
        if self.folder is not None:
            self._path(container).unlink(missing_ok=True)

    def load(self) -> list[dict[str, Any]]:
        if self.folder is None or not self.folder.is_dir():
            return []
        records = []
        for path in sorted(self.folder.glob("*.json")):
            try:
                record = json.loads(path.read_text())
            except (OSError, ValueError) as error:
                log.warning("unreadable registry entry %s: %s", path, error)
                continue
            if isinstance(record, dict):
                records.append(record)
        return records


@dataclass(frozen=True)
class _Result:
    code: int
    out: str
    err: str


class Supervisor:
    """Starts containers with runc, reaps their inits, records exits; the daemon's core."""

    def __init__(self, registry: Path | None = None) -> None:
        self._registry = _Registry(registry)
        self._pump = logpipe.LogPump()
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._children = threading.Event()
        self._runs: dict[int, int | None] = {}
        self._containers: dict[tuple[str, str], _Container] = {}
        self._by_pid: dict[int, _Container] = {}
        self._strays: dict[int, tuple[int, str, float]] = {}
        self._to_finish: queue.Queue[_Container] = queue.Queue()

    def run_threads(self) -> None:
        """Start the reaper and finisher threads and the log pump."""
        threading.Thread(target=self._reap_forever, name="reaper", daemon=True).start()
        threading.Thread(target=self._finish_forever, name="finisher", daemon=True).start()
        self._pump.start()

    def supervised(self) -> int:
        """Return how many containers are starting or running."""
        with self._lock:
            return sum(1 for c in self._containers.values() if c.finished is None)

    def prune(self) -> None:
        """Forget exits older than KEEP_EXITED seconds: their exit.json still answers."""
        with self._lock:
            cutoff = time.monotonic() - KEEP_EXITED
            for key, c in list(self._containers.items()):
                if c.finished is not None and c.finished < cutoff:
                    del self._containers[key]

    # ----- requests

    def start(
        self,
        runc_root: Path,
        container_id: str,
        bundle: Path,
        log_path: Path,
        restart: RestartPolicy | None = None,
        check: dict[str, Any] | None = None,
        runtime: str = "runc",
        log_limits: logfile.Limits | None = None,
    ) -> int:
        """Create, start and supervise a container; return its pid or raise MonitorError."""
        container = self._reserve(runc_root, container_id, bundle, runtime)
        container.log_path, container.restart = log_path, restart or RestartPolicy()
        container.check, container.log_limits = check, log_limits or logfile.Limits()
        try:
            pid = self._create_and_start(container, log_path)
        except BaseException:
            self._pump.detach(_key(runc_root, container_id), timeout=1.0)
            with self._lock:
                self._forget(container)
            raise
        log.info("started container %s (pid %d) in %s", container_id, pid, runc_root)
        return pid

    def status(
        self, runc_root: Path, container_id: str, bundle: Path, runtime: str = "runc"
    ) -> ContainerStatus:
        """Return the container's status: ours, else its exit.json, else what runc says."""
        with self._lock:
            container = self._containers.get(_key(runc_root, container_id))
            if container is not None:
                return container.status()
        recorded = status_from_exit_file(bundle)
        if recorded is not None:
            return recorded
        # A container left by an earlier monitor still runs, but its exit code is lost.
        state = self._state(runc_root, container_id, runtime)
        if state is not None and state.get("status") == "running":
            return ContainerStatus("running", state.get("pid"), None, None)
        return UNKNOWN

    def wait(
        self,
        runc_root: Path,
        container_id: str,
        bundle: Path,
        timeout: float,
        runtime: str = "runc",
    ) -> ContainerStatus:
        """Wait up to `timeout` seconds for the container to be reaped and deleted."""
        with self._lock:
            container = self._containers.get(_key(runc_root, container_id))
            if container is not None:
                self._changed.wait_for(lambda: self._done(container), timeout)
        return self.status(runc_root, container_id, bundle, runtime)

    def stop(
        self,
        runc_root: Path,
        container_id: str,
        bundle: Path,
        grace: float,
        signal: str = "SIGTERM",
        runtime: str = "runc",
    ) -> ContainerStatus:
        """`signal`, then KILL after `grace`; wait for the reap and the delete. Unknown is fine."""
        _check_id(container_id)
        if signal not in STOP_SIGNALS:
            raise MonitorError(f"{signal!r} is not a signal a container can be stopped with")
        with self._lock:
            container = self._containers.get(_key(runc_root, container_id))
            if container is not None:
                # Asked to stop: whatever the exit, it is not started again.
                container.stopping = True
                if container.backoff is not None:
                    container.backoff.cancel()
                    container.backoff = None
                    container.finished = time.monotonic()
                    self._registry.drop(container)
                    self._changed.notify_all()
                # A start still under way (its request came first, perhaps from an apply since
                # killed) ends before the stop goes on: it is refused, or what it made is stopped.
                asked = container
                self._changed.wait_for(
                    lambda: asked.started or asked.finished is not None or not self._known(asked),
                    2 * RUNC_TIMEOUT,
                )
                if not self._known(asked):
                    container = None
        if container is None or container.finished is not None:
            if (runc_root / container_id).exists():
                # Not ours (an earlier monitor's, or a leftover): runc can still remove it.
                self._runc_call(runc_root, "delete", "--force", container_id, runtime=runtime)
            return self.status(runc_root, container_id, bundle, runtime)
        runtime = container.runtime
        self._runc_call(runc_root, "kill", container_id, signal, runtime=runtime)
        if not self._wait_done(container, grace):
            log.info("container %s ignored %s for %g s: killing it", container_id, signal, grace)
            self._runc_call(runc_root, "kill", container_id, "KILL", runtime=runtime)
            if not self._wait_done(container, KILL_TIMEOUT):
                raise MonitorError(f"container {container_id} did not exit after SIGKILL")
        return self.status(runc_root, container_id, bundle, runtime)

    # ----- taking over from a monitor that is gone

    def adopt(self) -> int:
        """Take over what the registry says an earlier monitor supervised; return how many
        containers were taken over. Call before serving, so that every answer knows them."""
        watched: dict[int, _Container] = {}
        for record in self._registry.load():
            try:
                container = self._adopt_one(record)
            except (KeyError, TypeError, ValueError, MonitorError) as error:
                log.error("cannot adopt registry entry %s: %s", record.get("id"), error)
                continue
            if container is not None and container.pidfd is not None:
                watched[container.pidfd] = container
        if watched:
            threading.Thread(
                target=self._watch_exits, args=(watched,), name="adopted-exits", daemon=True
            ).start()
        return self.supervised()

    def _adopt_one(self, record: dict[str, Any]) -> _Container | None:
        root, cid, bundle = Path(record["runc_root"]), str(record["id"]), Path(record["bundle"])
        _check_id(cid)
        limits = record.get("log_limits") or {}
        container = _Container(
            root,
            cid,
            bundle,
            log_path=Path(record["log"]),
            restart=RestartPolicy.from_json(record.get("restart")),
            restarts=int(record.get("restarts") or 0),
            check=record.get("check"),
            last_exit=record.get("last_exit"),
            log_limits=logfile.Limits(
                int(limits.get("max_size", logfile.MAX_SIZE)),
                int(limits.get("max_files", logfile.MAX_FILES)),
            ),
            adopted=True,
            runtime=str(record.get("runtime", "runc")),
        )
        with self._lock:
            if _key(root, cid) in self._containers:
                return None
            self._containers[_key(root, cid)] = container
        pid, pid_start = record.get("pid"), record.get("pid_start")
        if record.get("backoff"):
            # It was waiting out a restart's backoff: that exit is recorded, so start it again,
            # from scratch if the monitor died while it was starting it.
            if (root / cid).exists():
                self._runc_call(root, "delete", "--force", cid, runtime=container.runtime)
            with self._lock:
                container.backoff = threading.Timer(BACKOFF_FIRST, self._restart, [container])
                container.backoff.daemon = True
                container.backoff.start()
            log.info("adopted container %s, restarting it", cid)
            return container
        container.started_wall = float(record.get("started_at") or time.time())
        ran = max(0.0, time.time() - container.started_wall)
        container.started_at = time.monotonic() - ran
        container.pid, container.pid_start, container.started = pid, pid_start, True
        container.health = record.get("health") if container.check else None
        container.pidfd = None if pid is None else _open_pidfd(pid, pid_start)
        if container.pidfd is None:
            # It ended while no monitor ran: a zombie still tells its code, else nothing does.
            wait_status = None if pid is None else _zombie_status(pid, pid_start)
            with self._lock:
                if wait_status is None:
                    container.unknown_exit = UNSUPERVISED_EXIT
                else:
                    container.wait_status, container.exited_at = wait_status, _utc_now()
                self._finish_if_exited(container)
            log.info("container %s ended while no monitor ran", cid)
            return container
        try:
            pipes = logpipe.open_pipes(bundle)
            self._pump.attach(_key(root, cid), pipes, Path(record["log"]), container.log_limits)
        except OSError as error:
            log.error("cannot drain the output of %s again: %s", cid, error)
        if container.check is not None:
            self._watch_health(container)
        log.info("adopted container %s (pid %d) in %s", cid, container.pid, root)
        return container

    def _watch_exits(self, watched: dict[int, _Container]) -> None:
        """Learn of the end of adopted containers, whose inits this monitor cannot reap."""
        poller = select.poll()
        for fd in watched:
            poller.register(fd, select.POLLIN)
        while watched:
            for fd, _ in poller.poll():
                container = watched.pop(fd)
                poller.unregister(fd)
                assert container.pid is not None
                wait_status = _zombie_status(container.pid, container.pid_start)
                os.close(fd)
                with self._lock:
                    container.pidfd, container.exited_at = None, _utc_now()
                    if wait_status is None:
                        container.unknown_exit = ADOPTED_EXIT
                    else:
                        container.wait_status = wait_status
                    log.info("adopted container %s exited", container.container_id)
                    self._finish_if_exited(container)
                    self._changed.notify_all()

    # ----- starting

    def _reserve(
        self, runc_root: Path, container_id: str, bundle: Path, runtime: str
    ) -> _Container:
        _check_id(container_id)
        self._runtime(runtime)  # installed, and works here: else say so before anything is made
        key = _key(runc_root, container_id)
        with self._lock:
            known = self._containers.get(key)
            if known is not None and known.finished is None:
                raise MonitorError(f"container {container_id} is already running")
            if (runc_root / container_id).exists():
                raise MonitorError(
                    f"container {container_id} already exists in {runc_root}; stop it first"
                )
            container = _Container(runc_root, container_id, bundle, runtime)
            self._containers[key] = container
            return container

    def _create_and_start(self, container: _Container, log_path: Path) -> int:
        root, cid, bundle = container.runc_root, container.container_id, container.bundle
        (bundle / EXIT_FILE).unlink(missing_ok=True)
        (bundle / RUNC_LOG).unlink(missing_ok=True)
        since = time.monotonic()
        self._create(container, log_path)
        try:
            pid = _read_pid(bundle / PID_FILE, cid)
            self._adopt(container, pid, since)
            # Read before it can exit: `runc init` becomes the command, same pid, same start.
            pid_start = _start_time(pid)
            if container.stopping:
                raise MonitorError(f"container {cid} was stopped before it started")
            started = self._runc_call(root, "start", cid, runtime=container.runtime)
            if started.code != 0:
                raise MonitorError(f"container {cid}: runc start failed: {started.err.strip()}")
        except BaseException:
            self._discard(container)
            raise
        with self._lock:
            container.started = True
            container.started_at, container.started_wall = time.monotonic(), time.time()
            container.pid_start = pid_start
            self._changed.notify_all()
            if container.check is not None:
                container.health, container.failing = "starting", 0
                self._watch_health(container)
            self._registry.save(container)
            self._finish_if_exited(container)
        assert container.pid is not None
        return container.pid

    def _watch_health(self, container: _Container) -> None:
        threading.Thread(
            target=self._check_health, args=(container, container.restarts), daemon=True
        ).start()

    def _check_health(self, container: _Container, run: int) -> None:
        """Run the healthcheck every interval while this run of the container lasts."""
        check = container.check
        assert check is not None
        command = [str(part) for part in check["command"]]
        while True:
            time.sleep(float(check["interval"]))
            with self._lock:
                if (
                    container.restarts != run
                    or container.exited
                    or container.finished is not None
                    or container.stopping
                ):
                    return
            result = self._runc_call(
                container.runc_root,
                "exec",
                container.container_id,
                *command,
                timeout=float(check["timeout"]),
                runtime=container.runtime,
            )
            with self._lock:
                if container.restarts != run:
                    return
                was = container.health
                if result.code == 0:
                    container.health, container.failing = "healthy", 0
                elif time.monotonic() - container.started_at >= float(check["start_period"]):
                    container.failing += 1
                    if container.failing >= int(check["retries"]):
                        container.health = "unhealthy"
                if container.health != was and not container.exited:
                    self._registry.save(container)
                self._changed.notify_all()

    def _create(self, container: _Container, log_path: Path) -> None:
        root, cid, bundle = container.runc_root, container.container_id, container.bundle
        runc_log = bundle / RUNC_LOG
        log_path.parent.mkdir(parents=True, exist_ok=True)
        # runc create hands its own stdout and stderr to the container: the FIFOs' write ends.
        pipes = logpipe.open_pipes(bundle)
        try:
            writers = logpipe.open_writers(pipes)
        except BaseException:
            pipes.close()
            raise
        try:
            args = ["--log", str(runc_log), "--log-format", "json", "create", "--bundle"]
            out, err = writers["stdout"], writers["stderr"]
            pid_file = ["--pid-file", str(bundle / PID_FILE)]
            created = self._runc_call(
                root,
                *args,
                str(bundle),
                *pid_file,
                cid,
                stdout=out,
                stderr=err,
                runtime=container.runtime,
            )
        finally:
            for fd in writers.values():
                os.close(fd)
            self._pump.attach(_key(root, cid), pipes, log_path, container.log_limits)
        if created.code != 0:
            self._runc_call(root, "delete", "--force", cid, runtime=container.runtime)
            reason = _runc_log_error(runc_log) or f"exit code {created.code}, see {log_path}"
            raise MonitorError(f"container {cid}: {reason}")

    def _adopt(self, container: _Container, pid: int, since: float) -> None:
        with self._lock:
            container.pid = pid
            self._by_pid[pid] = container
            # The init was our child from the moment runc create exited, so it may have been
            # reaped already; a stray older than the create is an earlier process's pid.
            stray = self._strays.pop(pid, None)
            if stray is not None and stray[2] >= since:
                container.wait_status, container.exited_at, _ = stray

    def _discard(self, container: _Container) -> None:
        # Leave nothing behind: delete --force kills the init, which we then reap.
        self._runc_call(
            container.runc_root,
            "delete",
            "--force",
            container.container_id,
            runtime=container.runtime,
        )
        with self._lock:
            if container.pid is not None:
                self._changed.wait_for(lambda: container.exited, KILL_TIMEOUT)

    def _known(self, container: _Container) -> bool:
        return self._containers.get(_key(container.runc_root, container.container_id)) is container

    def _forget(self, container: _Container) -> None:
        key = _key(container.runc_root, container.container_id)
        if self._containers.get(key) is container:
            del self._containers[key]
        if container.pid is not None and self._by_pid.get(container.pid) is container:
            del self._by_pid[container.pid]
        self._registry.drop(container)
        self._changed.notify_all()

    # ----- reaping and finishing

    def _reap_forever(self) -> None:
        while True:
            self._children.clear()
            try:
                # Peek without reaping, then reap under the lock: a pid is always registered
                # (posix_spawn and _adopt hold the lock) before its status is looked up.
                info = os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOWAIT)
            except ChildProcessError:
                self._children.wait(1.0)
                continue
            if info is None:
                continue
            with self._lock:
                try:
                    pid, wait_status = os.waitpid(info.si_pid, 0)
                except ChildProcessError:
                    continue
                self._reaped(pid, wait_status)

    def _reaped(self, pid: int, wait_status: int) -> None:
        now = _utc_now()
        if pid in self._runs:
            self._runs[pid] = wait_status
        elif pid in self._by_pid:
            container = self._by_pid.pop(pid)
            container.wait_status, container.exited_at = wait_status, now
            log.info("container %s (pid %d) exited", container.container_id, pid)
            self._finish_if_exited(container)
        else:
            log.debug("reaped stray child %d", pid)
            cutoff = time.monotonic() - KEEP_EXITED
            self._strays = {p: s for p, s in self._strays.items() if s[2] > cutoff}
            self._strays[pid] = (wait_status, now, time.monotonic())
        self._changed.notify_all()

    def _finish_if_exited(self, container: _Container) -> None:
        if container.started and container.exited and not container.finishing:
            container.finishing = True
            self._to_finish.put(container)

    def _finish_forever(self) -> None:
        while True:
            container = self._to_finish.get()
            try:
                self._finish(container)
            except Exception:
                log.exception("recording the exit of %s failed", container.container_id)
            with self._lock:
                if not self._schedule_restart(container):
                    container.finished = time.monotonic()
                    self._registry.drop(container)
                self._changed.notify_all()

    def _schedule_restart(self, container: _Container) -> bool:
        """Under the lock: start the container again after its backoff, if its policy says so."""
        record = container.exit_record()
        if container.stopping or not container.restart.restarts_after(
            record["exit_code"], container.restarts
        ):
            return False
        ran = time.monotonic() - container.started_at
        quick = 0 if ran >= BACKOFF_RESET else min(container.restarts, 16)
        delay = min(BACKOFF_FIRST * 2**quick, BACKOFF_MAX)
        container.last_exit = record
        container.backoff = threading.Timer(delay, self._restart, [container])
        container.backoff.daemon = True
        container.backoff.start()
        self._registry.save(container)
        log.info(
            "container %s exited %s: restarting in %.1f s (%s, restart %d)",
            container.container_id,
            record["exit_code"],
            delay,
            container.restart.policy,
            container.restarts + 1,
        )
        return True

    def _restart(self, container: _Container) -> None:
        with self._lock:
            if container.backoff is None or container.stopping:
                return  # stopped while waiting
            container.backoff = None
            container.restarts += 1
            container.pid, container.started, container.finishing = None, False, False
            container.wait_status, container.exited_at = None, None
            container.unknown_exit, container.adopted = None, False
        assert container.log_path is not None
        try:
            self._create_and_start(container, container.log_path)
        except Exception as error:
            # It could not even be started again: that is its end, with the last exit kept.
            log.error("restarting %s failed: %s", container.container_id, error)
            with self._lock:
                last = container.last_exit or {}
                code = last.get("exit_code")
                if code is None:
                    container.unknown_exit = last.get("reason") or UNSUPERVISED_EXIT
                else:
                    container.wait_status = code << 8 if code < 128 else code - 128
                container.exited_at = last.get("exited_at")
                container.finished = time.monotonic()
                self._registry.drop(container)
                self._changed.notify_all()

    def _finish(self, container: _Container) -> None:
        # What it wrote last reaches its log before its exit is told.
        self._pump.detach(_key(container.runc_root, container.container_id), DRAIN_TIMEOUT)
        record = container.exit_record()
        try:
            _write_json(container.bundle / EXIT_FILE, record)
        except OSError as error:
            log.error("cannot record the exit of %s: %s", container.container_id, error)
        deleted = self._runc_call(
            container.runc_root,
            "delete",
            "--force",
            container.container_id,
            runtime=container.runtime,
        )
        if deleted.code != 0:
            log.warning("runc delete %s: %s", container.container_id, deleted.err.strip())
        log.info("container %s finished: %s", container.container_id, record)

    def _done(self, container: _Container) -> bool:
        key = _key(container.runc_root, container.container_id)
        return container.finished is not None or self._containers.get(key) is not container

    def _wait_done(self, container: _Container, timeout: float) -> bool:
        with self._lock:
            return self._changed.wait_for(lambda: self._done(container), timeout)

    # ----- running runc

    def _state(self, runc_root: Path, container_id: str, runtime: str) -> dict[str, Any] | None:
        if not (runc_root / container_id).exists():
            return None
        result = self._runc_call(runc_root, "state", container_id, runtime=runtime)
        if result.code != 0:
            return None
        try:
            state: dict[str, Any] = json.loads(result.out)
        except ValueError:
            return None
        return state

    def _runc_call(
        self,
        runc_root: Path,
        *args: str,
        stdout: int | None = None,
        stderr: int | None = None,
        timeout: float = RUNC_TIMEOUT,
        runtime: str = "runc",
    ) -> _Result:
        """One call of the container's OCI runtime (runc, or crun as this host needs it run)."""
        argv = self._runtime(runtime).command(runc_root, *args)
        return self._run(argv, stdout=stdout, stderr=stderr, timeout=timeout)

    def _runtime(self, name: str) -> runtimes.Runtime:
        """How to run `name` here (probed once, with this process's own way of running
        commands); MonitorError when it is missing or cannot work."""
        try:
            return runtimes.runtime(name, self._probe_run)
        except runtimes.RuntimeUnavailable as error:
            raise MonitorError(f"{error} ({error.hint})" if error.hint else str(error)) from None

    def _probe_run(self, argv: list[str]) -> tuple[int, str]:
        result = self._run(argv, stdout=None, stderr=None, timeout=runtimes.PROBE_TIMEOUT)
        return result.code, result.err or result.out

    def _run(
        self,
        argv: list[str],
        *,
        stdout: int | None,
        stderr: int | None,
        timeout: float = RUNC_TIMEOUT,
    ) -> _Result:
        # posix_spawn, not subprocess: subprocess reaps its own children, and the reaper
        # thread must be the only one calling wait, or it would steal container exits.
        with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
            actions = [
                (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
                (os.POSIX_SPAWN_DUP2, out.fileno() if stdout is None else stdout, 1),
                (os.POSIX_SPAWN_DUP2, err.fileno() if stderr is None else stderr, 2),
            ]
            with self._lock:
                pid = os.posix_spawn(argv[0], argv, os.environ, file_actions=actions)
                self._runs[pid] = None
            self._children.set()
            code = self._wait_run(pid, argv, timeout)
            out.seek(0)
            err.seek(0)
            return _Result(
                code, out.read().decode(errors="replace"), err.read().decode(errors="replace")
            )

    def _wait_run(self, pid: int, argv: list[str], timeout: float = RUNC_TIMEOUT) -> int:
        with self._lock:
            if not self._changed.wait_for(lambda: self._runs[pid] is not None, timeout):
                call = argv[argv.index("--root") + 2 :][:2] if "--root" in argv else argv[:2]
                log.error("%s took over %g s: killing it", " ".join(call), timeout)
                os.kill(pid, signal.SIGKILL)
                self._changed.wait_for(lambda: self._runs[pid] is not None)
            wait_status = self._runs.pop(pid)
        assert wait_status is not None
        return os.waitstatus_to_exitcode(wait_status)


class _Server(socketserver.ThreadingUnixStreamServer):
    # Closing joins the request threads, so the reply to `shutdown` is written before exit.
    daemon_threads = False
    block_on_close = True
    # An apply asks from several workers at once: socketserver's backlog of 5 would turn the
    # sixth connection away (EAGAIN) while the others are being accepted.
    request_queue_size = 128

    def __init__(self, path: Path, supervisor: Supervisor, idle_seconds: float) -> None:
        old_umask = os.umask(0o177)
        try:
            super().__init__(str(path), _Handler)
        finally:
            os.umask(old_umask)
        os.chmod(path, 0o600)
        self.path = path
        self.inode = path.stat().st_ino
        self.supervisor = supervisor
        self.idle_seconds = idle_seconds
        self.guard = threading.Lock()
        self.in_flight = 0
        self.last_request = time.monotonic()
        self.closing = False

    def enter(self) -> bool:
        """Count a request in; False once the server is closing."""
        with self.guard:
            self.in_flight += 1
            self.last_request = time.monotonic()
            return not self.closing

    def leave(self) -> None:
        """Count a request out."""
        with self.guard:
            self.in_flight -= 1
            self.last_request = time.monotonic()

    def close_if_idle(self, own_requests: int, idle_for: float) -> bool:
        """Stop serving when nothing is supervised and no other request is open."""
        with self.guard:
            quiet = time.monotonic() - self.last_request >= idle_for
            if self.closing or self.in_flight > own_requests or not quiet:
                return self.closing
            if self.supervisor.supervised():
                return False
            self.closing = True
            # Unlink first: from here a client spawns a new monitor instead of reaching us.
            self.unlink_socket()
        log.info("idle: shutting down")
        threading.Thread(target=self.shutdown, name="shutdown", daemon=True).start()
        return True

    def unlink_socket(self) -> None:
        """Remove the socket path unless a newer monitor has bound it since."""
        with contextlib.suppress(FileNotFoundError):
            if self.path.stat().st_ino == self.inode:
                self.path.unlink()

    def watch_idle(self) -> None:
        """Close the server after idle_seconds without containers or requests."""
        while not self.close_if_idle(own_requests=0, idle_for=self.idle_seconds):
            self.supervisor.prune()
            time.sleep(min(1.0, max(self.idle_seconds / 4, 0.05)))

    def dispatch(self, request: dict[str, Any]) -> dict[str, Any]:
        """Answer one request; MonitorError becomes an error reply."""
        op = request.get("op")
        if op == "ping":
            return {
                "pid": os.getpid(),
                "supervised": self.supervisor.supervised(),
                "protocol": PROTOCOL,
            }
        if op == "shutdown":
            return {"pid": os.getpid(), "stopped": self.close_if_idle(own_requests=1, idle_for=0)}
        runtime = str(request.get("runtime", "runc"))
        if runtime not in runtimes.RUNTIMES:
            raise MonitorError(f"unknown OCI runtime {runtime!r}: {', '.join(runtimes.RUNTIMES)}")
        if op == "statuses":
            root = Path(request["runc_root"])
            return {
                "statuses": [
                    self.supervisor.status(root, str(c["id"]), Path(c["bundle"]), runtime).to_json()
                    for c in request["containers"]
                ]
            }
        if op not in ("start", "status", "wait", "stop"):
            raise MonitorError(f"unknown request {op!r}")
        supervisor = self.supervisor
        root, cid, bundle = Path(request["runc_root"]), str(request["id"]), Path(request["bundle"])
        if op == "start":
            restart = RestartPolicy.from_json(request.get("restart"))
            log_path, check = Path(request["log"]), request.get("health")
            limits = logfile.Limits(
                int(request.get("log_max_size", logfile.MAX_SIZE)),
                int(request.get("log_max_files", logfile.MAX_FILES)),
            )
            if limits.max_size < 1 or limits.max_files < 0:
                raise MonitorError(f"log limits must be positive, not {limits}")
            pid = supervisor.start(
                root, cid, bundle, log_path, restart, check, runtime=runtime, log_limits=limits
            )
            return {"pid": pid}
        if op == "status":
            status = supervisor.status(root, cid, bundle, runtime)
        elif op == "wait":
            status = supervisor.wait(root, cid, bundle, float(request["timeout"]), runtime)
        else:
            signal_ = str(request.get("signal", "SIGTERM"))
            grace = float(request["grace"])
            status = supervisor.stop(root, cid, bundle, grace, signal_, runtime)
        return status.to_json()


class _Handler(socketserver.StreamRequestHandler):
    timeout = 30.0
    server: _Server

    def handle(self) -> None:
        if not self.server.enter():
            self._reply({"ok": False, "retry": True, "error": "the monitor is shutting down"})
            self.server.leave()
            return
        try:
            line = self.rfile.readline(MAX_REQUEST)
            reply = self._answer(line)
        except OSError as error:
            log.info("client left before its request: %s", error)
            return
        finally:
            # Before the reply: a client that got its answer must find this request closed.
            self.server.leave()
        self._reply(reply)

    def _answer(self, line: bytes) -> dict[str, Any]:
        try:
            request = json.loads(line)
            if not isinstance(request, dict):
                raise MonitorError("a request is a JSON object")
            return {"ok": True, **self.server.dispatch(request)}
        except MonitorError as error:
            return {"ok": False, "error": str(error)}
        except (KeyError, ValueError, TypeError) as error:
            return {"ok": False, "error": f"malformed request: {error!r}"}
        except Exception as error:
            log.exception("request failed")
            return {"ok": False, "error": f"the monitor failed: {error!r}"}

    def _reply(self, reply: dict[str, Any]) -> None:
        try:
            self.wfile.write(json.dumps(reply).encode() + b"\n")
        except OSError as error:
            log.info("client left before the reply: %s", error)


def serve(socket_path: Path, idle_seconds: float = IDLE_SECONDS) -> None:
    """Run the monitor in this process until it is idle for `idle_seconds` or shut down."""
    _become_subreaper()
    # An inherited SIG_IGN would make the kernel reap children itself and lose exit codes.
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    socket_path.parent.mkdir(parents=True, exist_ok=True)
    if Monitor(socket_path)._answers():
        raise MonitorError(f"another monitor already listens on {socket_path}")
    socket_path.unlink(missing_ok=True)
    supervisor = Supervisor(registry_folder(socket_path))
    supervisor.run_threads()
    adopted = supervisor.adopt()
    if adopted:
        log.info("adopted %d containers from the monitor before this one", adopted)
    with _Server(socket_path, supervisor, idle_seconds) as server:
        threading.Thread(target=server.watch_idle, name="idle", daemon=True).start()
        log.info("monitor %d listening on %s", os.getpid(), socket_path)
        try:
            server.serve_forever(poll_interval=0.2)
        finally:
            server.unlink_socket()
    log.info("monitor %d stopped", os.getpid())


def _become_subreaper() -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        error = ctypes.get_errno()
        raise OSError(error, f"prctl(PR_SET_CHILD_SUBREAPER): {os.strerror(error)}")


def _read_pid(path: Path, container_id: str) -> int:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        raise MonitorError(f"container {container_id}: runc create wrote no pid") from None


def _proc_stat(pid: int) -> list[str] | None:
    """The fields of /proc/PID/stat after the command: [0] is the state, [19] the start time
    in clock ticks, [49] the exit status (as waitpid tells it, once a zombie)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text.rsplit(")", 1)[1].split()


def _start_time(pid: int) -> int | None:
    fields = _proc_stat(pid)
    return int(fields[19]) if fields else None


def _open_pidfd(pid: int, start_time: int | None) -> int | None:
    """A pidfd for the process `pid` started at `start_time`, if it still runs."""
    try:
        pidfd = os.pidfd_open(pid)
    except OSError:
        return None
    fields = _proc_stat(pid)
    if fields is None or fields[0] in ("Z", "X") or int(fields[19]) != start_time:
        os.close(pidfd)
        return None
    return pidfd


def _zombie_status(pid: int, start_time: int | None) -> int | None:
    """The wait status of `pid` while it is a zombie its parent has not reaped yet; None once
    it is gone (or the pid is another process's by now)."""
    fields = _proc_stat(pid)
    if fields is None or fields[0] != "Z" or int(fields[19]) != start_time or len(fields) < 50:
        return None
    return int(fields[49])


def _check_id(container_id: str) -> None:
    if not CONTAINER_ID.fullmatch(container_id):
        raise MonitorError(f"invalid container id {container_id!r}")


def _key(runc_root: Path, container_id: str) -> tuple[str, str]:
    return (str(runc_root), container_id)


def _runc_log_error(path: Path) -> str | None:
    """Return the last error message in a runc JSON log, or None."""
    message = None
    with contextlib.suppress(FileNotFoundError):
        for line in path.read_text(errors="replace").splitlines():
            with contextlib.suppress(ValueError):
                entry = json.loads(line)
                if isinstance(entry, dict) and entry.get("level") in ("error", "fatal"):
                    message = str(entry.get("msg"))
    return message


def _write_json(path: Path, document: dict[str, Any]) -> None:
    partial = path.with_name(f".{path.name}.partial")
    with open(partial, "w") as out:
        json.dump(document, out)
        out.write("\n")
        out.flush()
        os.fsync(out.fileno())
    os.replace(partial, path)


def _utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _rfc3339(epoch: float) -> str:
    moment = datetime.fromtimestamp(epoch, UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return str(number)


def main(argv: list[str] | None = None) -> int:
    """Run the monitor: in the foreground, or (--daemon) forked off and detached."""
    parser = argparse.ArgumentParser(prog="python -m executor.monitor", description=__doc__)
    parser.add_argument("--socket", type=Path, default=None, help="unix socket to listen on")
    parser.add_argument("--idle", type=float, default=IDLE_SECONDS, help="idle seconds to exit")
    parser.add_argument("--daemon", action="store_true", help="fork and return at once")
    options = parser.parse_args(argv)
    if options.daemon and os.fork() != 0:
        return 0
    os.chdir("/")
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(process)d %(levelname)s %(name)s: %(message)s"
    )
    try:
        serve((options.socket or default_socket()).absolute(), options.idle)
    except MonitorError as error:
        log.error("%s", error)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
