"""Drivers: carry out one plan action on the host, and undo it.

Each driver's `create` returns the runtime record state keeps (container id, bundle, netns,
exit code...) and leaves nothing behind when it fails; `delete` is idempotent, so a destroy after
a crash finishes the job.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import logfile, network, rootfs, runtimes
from .containers import INIT_BINARY, ContainerError, ContainerSpec, Mount, write_bundle
from .errors import ExecutorError
from .images import ImageError, ImageStore
from .monitor import ContainerStatus, Monitor, MonitorError, RestartPolicy
from .paths import ProjectPaths

log = logging.getLogger(__name__)


class ActionFailed(ExecutorError):
    """An action could not be carried out; the message is what the host said."""

    exit_code = 4

    def __init__(
        self, address: str, message: str, hint: str = "", ran: dict[str, Any] | None = None
    ) -> None:
        self.address = address
        self.hint = hint
        # For a job or module that ran and failed: its exit record, which state keeps so that
        # `forge ps` shows the failure and the next plan runs it again.
        self.ran = ran
        super().__init__(message)

    @property
    def headline(self) -> str:
        return f"{self.address} failed"


@dataclass
class Host:
    """What the drivers work with: the project's folders, image store and monitor."""

    paths: ProjectPaths
    monitor: Monitor

    @functools.cached_property
    def store(self) -> ImageStore:
        # Opened on first use: asking the monitor about a service must not create a store.
        return ImageStore(self.paths.images)

    def log_file(self, address: str) -> Path:
        return self.paths.logs / f"{address}.log"

    def volume_dir(self, name: str) -> Path:
        return self.paths.volumes / name

    def container_id(self, address: str, spec_digest: str) -> str:
        tail = hashlib.sha256(f"{address}\0{spec_digest}".encode()).hexdigest()[:12]
        return f"forge-{self.paths.project_id}-{tail}"

    def container_names(self, address: str, spec_digest: str) -> dict[str, str]:
        """What a container of this spec is called on the host: its runc id, its bundle, and the
        workload name its namespace and veths are named by. All come from the address and the
        spec, so a replacement never shares a name with the container it replaces (both run
        at once under create_before_destroy), and each can be journalled before it exists."""
        cid = self.container_id(address, spec_digest)
        return {"container_id": cid, "bundle": str(self.paths.bundles / cid), "workload": cid}


Create = Callable[[Host, str, dict[str, Any], str], dict[str, Any]]
Delete = Callable[[Host, str, dict[str, Any]], None]


# -- images, networks, volumes ----------------------------------------------------------------


def create_image(host: Host, address: str, spec: dict[str, Any], digest: str) -> dict[str, Any]:
    try:
        host.store.resolve(spec["digest"])
    except ImageError as exc:
        raise ActionFailed(address, str(exc), "run `forge build`, then plan again") from None
    return {"digest": spec["digest"]}


def delete_image(host: Host, address: str, runtime: dict[str, Any]) -> None:
    # Images stay in the store after their block is gone; `forge image rm` removes them.
    return None


def create_network(host: Host, address: str, spec: dict[str, Any], digest: str) -> dict[str, Any]:
    name = spec["name"]
    try:
        bridge = network.ensure_network(
            host.paths.project_id, name, spec["subnet"], spec["gateway"]
        )
    except network.NetworkError as exc:
        raise ActionFailed(address, str(exc)) from None
    return {"bridge": bridge, "name": name}


def delete_network(host: Host, address: str, runtime: dict[str, Any]) -> None:
    network.remove_network(host.paths.project_id, runtime["name"])


def create_volume(host: Host, address: str, spec: dict[str, Any], digest: str) -> dict[str, Any]:
    folder = host.volume_dir(spec["name"])
    folder.mkdir(parents=True, exist_ok=True)
    return {"path": str(folder), "name": spec["name"]}


def delete_volume(host: Host, address: str, runtime: dict[str, Any]) -> None:
    shutil.rmtree(host.volume_dir(runtime["name"]), ignore_errors=True)


# -- containers -------------------------------------------------------------------------------


def runtime_of(address: str, spec: dict[str, Any]) -> str:
    """The OCI runtime a container spec asks for, checked to work here (ActionFailed if not)."""
    name = str(spec.get("runtime", "runc"))
    try:
        runtimes.runtime(name)
    except runtimes.RuntimeUnavailable as exc:
        raise ActionFailed(address, str(exc), exc.hint) from None
    return name


def checked_binds(address: str, spec: dict[str, Any]) -> list[dict[str, Any]]:
    """The spec's binds as they will be mounted: each source must exist, and be the path that
    was judged. A symbolic link anywhere in it is refused rather than followed, since policy
    allowed the path as written and a link can lead anywhere (/etc, a runtime socket)."""
    found = []
    for bind in spec.get("binds", []):
        source = bind["source"]
        try:
            stat = os.stat(source)
        except OSError as exc:
            raise ActionFailed(
                address,
                f"the bind source {source} cannot be mounted: {exc.strerror}",
                "create it, or fix `source` in the Forgefile's bind block",
            ) from None
        real = os.path.realpath(source)
        if real != source:
            raise ActionFailed(
                address,
                f"the bind source {source} is reached through a symbolic link: it leads to "
                f"{real}, and policy judged {source}",
                "bind the real path instead (policy then judges that), or replace the link",
            )
        # Recorded in state: what was mounted, down to the inode, for whoever audits it later.
        found.append({**bind, "device": stat.st_dev, "inode": stat.st_ino})
    return found


def _start_container(host: Host, address: str, spec: dict[str, Any], digest: str) -> dict[str, Any]:
    """Unpack, attach, write config.json and start under the monitor; undo all on failure."""
    # Checked before anything is made: a refusal leaves nothing to clean up.
    engine = runtime_of(address, spec)
    binds = checked_binds(address, spec)
    runtime: dict[str, Any] = {
        **host.container_names(address, digest),
        "log": str(host.log_file(address)),
        "netns": None,
        "stop_grace": spec["stop_grace_period"],
        "stop_signal": spec["stop_signal"],
    }
    if engine != "runc":
        runtime["runtime"] = engine
    if binds:
        runtime["binds"] = binds
    cid, bundle = runtime["container_id"], Path(runtime["bundle"])
    try:
        _remove_bundle(bundle)
        runtime["rootfs"] = rootfs.prepare(
            host.store, spec["image"], host.paths.rootfs_cache, bundle
        )
        netns_path = None
        if spec["networks"]:
            attachments = [
                network.Attachment(n["network"], n["address"], n["gateway"])
                for n in spec["networks"]
            ]
            netns_path = network.attach(host.paths.project_id, runtime["workload"], attachments)
            runtime["netns"] = netns_path
        mounts = tuple(
            Mount(str(host.volume_dir(v["volume"])), v["target"]) for v in spec["volumes"]
        ) + tuple(Mount(b["source"], b["target"], b["read_only"], host=True) for b in binds)
        limits = spec["resources"]
        write_bundle(
            bundle,
            ContainerSpec(
                command=tuple(spec["argv"]),
                env=tuple(sorted(spec["env"].items())),
                working_dir=spec["working_dir"],
                hostname=spec["hostname"],
                user=(spec["user"][0], spec["user"][1]),
                netns_path=netns_path,
                mounts=mounts,
                read_only=spec["read_only"],
                privileged=spec["privileged"],
                cap_add=tuple(spec["cap_add"]),
                cap_drop=tuple(spec["cap_drop"]),
                tmpfs=tuple(spec["tmpfs"]),
                sysctls=tuple(sorted(spec["sysctls"].items())),
                ulimits=tuple(sorted(spec["ulimits"].items())),
                init=_init_binary(address) if spec["init"] else None,
                memory=limits["memory"],
                cpus=limits["cpus"],
                pids=limits["pids"],
            ),
        )
        host.log_file(address).parent.mkdir(parents=True, exist_ok=True)
        runtime["pid"] = host.monitor.start(
            host.paths.runtime_root(engine),
            cid,
            bundle,
            host.log_file(address),
            RestartPolicy.parse(spec["restart"]),
            spec["healthcheck"],
            engine,
            logfile.Limits(
                spec.get("log_max_size", logfile.MAX_SIZE),
                spec.get("log_max_files", logfile.MAX_FILES),
            ),
        )
    except (
        ImageError,
        network.NetworkError,
        ContainerError,
        MonitorError,
        rootfs.RootfsError,
        OSError,
    ) as exc:
        _remove_container(host, address, runtime)
        raise ActionFailed(address, f"{type(exc).__name__.removesuffix('Error')}: {exc}") from None
    except BaseException:
        # Whatever else went wrong (a bug, Ctrl-C), leave no netns, veth or bundle behind.
        _remove_container(host, address, runtime)
        raise
    return runtime


def _init_binary(address: str) -> str:
    if not Path(INIT_BINARY).is_file():
        raise ActionFailed(
            address,
            f"init = true runs tini as PID 1, and {INIT_BINARY} is not on this host",
            "install it (apt-get install tini), or set init = false",
        )
    return INIT_BINARY


def _remove_container(
    host: Host, address: str, runtime: dict[str, Any], strict: bool = False
) -> None:
    """Stop the container and remove its namespace and bundle. `strict`: if it could not be
    stopped and runc still has it, remove nothing and fail, so that state keeps it (and the next
    destroy tries again) rather than forgetting a container that runs on."""
    cid, bundle = runtime.get("container_id"), runtime.get("bundle")
    if cid and bundle:
        engine = runtime.get("runtime", "runc")
        root = host.paths.runtime_root(engine)
        try:
            host.monitor.stop(
                root,
                cid,
                Path(bundle),
                grace=runtime["stop_grace"],
                signal=runtime.get("stop_signal", "SIGTERM"),
                runtime=engine,
            )
        except MonitorError as exc:
            if strict and (root / cid).exists():
                raise ActionFailed(
                    address,
                    f"could not stop {cid}: {exc}",
                    "nothing of it was removed; run the command again",
                ) from None
            log.warning("stopping %s (%s): %s", address, cid, exc)
    # Containers made before the namespace was named by the container were named by address.
    network.detach(host.paths.project_id, runtime.get("workload", address))
    if bundle:
        _remove_bundle(Path(bundle))


def _remove_bundle(bundle: Path) -> None:
    try:
        rootfs.release(bundle)
    except rootfs.RootfsError as exc:
        log.warning("%s; `forge destroy` tries again", exc)
        return  # removing the tree through a mounted overlay would only hide its files
    shutil.rmtree(bundle, ignore_errors=True)
    if bundle.exists():
        log.warning("could not remove bundle %s; `forge destroy` tries again", bundle)


def create_service(host: Host, address: str, spec: dict[str, Any], digest: str) -> dict[str, Any]:
    return _start_container(host, address, spec, digest)


def delete_container(host: Host, address: str, runtime: dict[str, Any]) -> None:
    _remove_container(host, address, runtime, strict=True)


def create_job(host: Host, address: str, spec: dict[str, Any], digest: str) -> dict[str, Any]:
    """Run the job to completion; a code outside success_codes fails the action."""
    runtime = _start_container(host, address, spec, digest)
    bundle = Path(runtime["bundle"])
    engine = runtime.get("runtime", "runc")
    root = host.paths.runtime_root(engine)
    try:
        status = host.monitor.wait(
            root, runtime["container_id"], bundle, spec["timeout"], runtime=engine
        )
        timed_out = status.state != "exited"
    except MonitorError as exc:
        _remove_container(host, address, runtime)
        raise ActionFailed(address, f"waiting for the job failed: {exc}") from None
    if timed_out:
        status = host.monitor.stop(root, runtime["container_id"], bundle, 0.0, runtime=engine)
    _remove_container(host, address, runtime)
    result = _exit_record(status)
    record = {**result, "log": runtime["log"]}
    if not timed_out and result["exit_code"] is None:
        raise ActionFailed(
            address,
            f"the job's exit code is unknown: {status.reason}",
            f"see `forge logs {address}`, and run it again",
            ran={**record, "failure": "exit code unknown"},
        )
    if timed_out:
        raise ActionFailed(
            address,
            f"the job did not finish within {spec['timeout']:g}s",
            "raise `timeout`, or look at `forge logs " + address + "`",
            ran={**record, "failure": "timed out"},
        )
    if result["exit_code"] not in spec["success_codes"]:
        raise ActionFailed(
            address,
            f"the job exited with code {result['exit_code']}, which is "
            f"not in success_codes {spec['success_codes']}",
            f"see `forge logs {address}`",
            ran={**record, "failure": f"exit {result['exit_code']}"},
        )
    return record


def _exit_record(status: ContainerStatus) -> dict[str, Any]:
    return {"exit_code": status.exit_code, "exited_at": status.exited_at}


# -- WASM -------------------------------------------------------------------------------------


def create_wasm(host: Host, address: str, spec: dict[str, Any], digest: str) -> dict[str, Any]:
    from . import wasm

    module = Path(spec["module"])
    try:
        actual = wasm.module_digest(module)
    except OSError as exc:
        raise ActionFailed(address, f"cannot read the module {module}: {exc.strerror}") from None
    if spec["digest"] and actual != spec["digest"]:
        raise ActionFailed(
            address,
            f"the module {module} changed since planning (planned "
            f"{spec['digest'][:19]}…, now {actual[:19]}…)",
            "plan again",
        )
    log_path = host.log_file(address)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    limits = spec["limits"]
    with tempfile.TemporaryDirectory(dir=log_path.parent, prefix=".wasm-") as scratch:
        outputs = {stream: Path(scratch) / stream for stream in logfile.STREAMS}
        run = wasm.WasmRun(
            module=str(module),
            args=tuple(spec["args"]),
            env=tuple(sorted(spec["env"].items())),
            preopens=tuple(
                wasm.Preopen(str(host.volume_dir(m["volume"])), m["guest"], m["writable"])
                for m in spec["mounts"]
            ),
            stdout=str(outputs["stdout"]),
            stderr=str(outputs["stderr"]),
            memory=limits["memory"],
            fuel=limits["fuel"],
            timeout=limits["timeout"],
        )
        try:
            result = wasm.run(run)
        except wasm.WasmError as exc:
            raise ActionFailed(address, str(exc)) from None
        finally:
            # A module's output is read once it has run: its records carry the time it ended,
            # and its stdout comes before its stderr.
            for stream, path in outputs.items():
                with contextlib.suppress(FileNotFoundError):
                    logfile.append_output(log_path, stream, path.read_bytes())
    record = {
        "exit_code": result.exit_code,
        "outcome": result.outcome,
        "detail": result.detail,
        "log": str(log_path),
    }
    if result.outcome != "exit":
        detail = f" ({result.detail})" if result.detail else ""
        raise ActionFailed(
            address,
            f"the module stopped: {result.outcome}{detail}",
            "raise the limit it hit, or see `forge logs " + address + "`",
            ran={**record, "failure": result.outcome},
        )
    if result.exit_code not in spec["success_codes"]:
        raise ActionFailed(
            address,
            f"the module exited with code {result.exit_code}, which is "
            f"not in success_codes {spec['success_codes']}",
            f"see `forge logs {address}`",
            ran={**record, "failure": f"exit {result.exit_code}"},
        )
    return record


def delete_wasm(host: Host, address: str, runtime: dict[str, Any]) -> None:
    return None


DRIVERS: dict[str, tuple[Create, Delete]] = {
    "image": (create_image, delete_image),
    "network": (create_network, delete_network),
    "volume": (create_volume, delete_volume),
    "service": (create_service, delete_container),
    "job": (create_job, delete_container),
    "wasm": (create_wasm, delete_wasm),
}


def container_statuses(
    host: Host, records: dict[str, dict[str, Any]]
) -> dict[str, ContainerStatus | None]:
    """The monitor's word on each container (by address) in a few requests; None where state
    knows no container (a finished job) or the monitor could not say."""
    found: dict[str, ContainerStatus | None] = dict.fromkeys(records)
    by_engine: dict[str, dict[str, tuple[str, Path]]] = {}
    for address, runtime in records.items():
        if runtime.get("container_id") and runtime.get("bundle"):
            asked = by_engine.setdefault(runtime.get("runtime", "runc"), {})
            asked[address] = (runtime["container_id"], Path(runtime["bundle"]))
    for engine, asked in by_engine.items():
        root = host.paths.runtime_root(engine)
        try:
            answers = host.monitor.statuses(root, list(asked.values()), engine)
        except MonitorError as exc:
            log.warning("status of %d %s containers: %s", len(asked), engine, exc)
            continue
        found.update(zip(asked, answers, strict=True))
    return found
