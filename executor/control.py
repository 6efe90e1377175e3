"""Operator commands on one running workload: stop, start, restart, exec.

They change what runs, not what state says should run: a stopped service keeps its record, so
`forge plan` shows it as drift ("stopped by forge stop") and the next apply starts it again, as
`docker compose up` does after `stop`. Each step is journalled like an apply's, so a command
killed halfway is finished or undone by the next apply.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

from . import runtimes
from .drivers import ActionFailed, Host, container_statuses, create_service, delete_container
from .errors import ExecutorError
from .state import Record, State, now


class ControlError(ExecutorError):
    """The workload cannot be stopped, started or entered as asked."""


def service(state: State, address: str) -> Record:
    """The service at `address`, or an error naming the services there are."""
    from forgefile.diagnostics import suggest

    records = state.records()
    record = records.get(address)
    if record is None or record.kind != "service":
        services = sorted(a for a, r in records.items() if r.kind == "service")
        hint = suggest(address, services) or (
            f"services: {', '.join(services)}" if services else "no service has been applied"
        )
        what = f"{address} is a {record.kind}, not a service" if record else f"no {address}"
        raise ControlError(f"{what} in this project's state", hint=hint)
    return record


def running(host: Host, record: Record) -> bool:
    status = container_statuses(host, {record.address: record.runtime})[record.address]
    return status is not None and status.state in ("running", "restarting")


def stop(host: Host, state: State, address: str) -> bool:
    """Stop a service's container (its stop_signal, then KILL after its grace period); False
    when it was not running."""
    record = service(state, address)
    if not running(host, record):
        return False
    entry = state.intend(address, record.kind, "delete", record.runtime)
    delete_container(host, address, record.runtime)
    state.set_runtime(address, {**record.runtime, "stopped": now(), "pid": None})
    state.settle(entry, "done")
    state.event("stopped", address, by="forge stop")
    return True


def start(host: Host, state: State, address: str) -> dict[str, Any] | None:
    """Start a stopped service again from the spec state records; None when it runs."""
    record = service(state, address)
    if running(host, record):
        return None
    # What a dead container left (an exited one still known to runc, its netns) goes first.
    delete_container(host, address, record.runtime)
    made: dict[str, Any] = {
        **host.container_names(address, record.spec_digest),
        "stop_grace": record.spec["stop_grace_period"],
    }
    if record.spec.get("runtime", "runc") != "runc":
        made["runtime"] = record.spec["runtime"]
    entry = state.intend(address, record.kind, "create", made)
    try:
        runtime = create_service(host, address, record.spec, record.spec_digest)
    except ActionFailed:
        state.settle(entry, "failed")
        raise
    state.set_runtime(address, runtime)
    state.settle(entry, "done")
    state.event("started", address, by="forge start", container_id=runtime["container_id"])
    return runtime


def exec_argv(host: Host, state: State, address: str, command: list[str], tty: bool) -> list[str]:
    """The runc (or crun) command that runs `command` inside the service's container, as its own
    process: same user, environment, working directory, capabilities and seccomp profile."""
    record = service(state, address)
    if not running(host, record):
        raise ControlError(f"{address} is not running", hint=f"start it: forge start {address}")
    engine = record.runtime.get("runtime", "runc")
    try:
        runtime = runtimes.runtime(engine)
    except runtimes.RuntimeUnavailable as exc:
        raise ControlError(str(exc), hint=exc.hint) from None
    flags = ["--tty"] if tty else []
    root = host.paths.runtime_root(engine)
    return runtime.command(root, "exec", *flags, str(record.runtime["container_id"]), *command)


def run_exec(argv: list[str]) -> int:
    """Run it attached to this terminal (or these pipes); its exit code."""
    return subprocess.run(argv, check=False).returncode


def bundle_config(record: Record) -> dict[str, Any] | None:
    """The config.json runc runs the container with, if its bundle is there."""
    import json

    bundle = record.runtime.get("bundle")
    if not bundle:
        return None
    try:
        config: dict[str, Any] = json.loads((Path(bundle) / "config.json").read_text())
    except (OSError, ValueError):
        return None
    return config
