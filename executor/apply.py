"""Apply: carry out a verified plan, action by action, recording each step in state.

Teardown first (deletes and the old half of replacements, dependents before what they depend
on), then build-up in the plan's dependency order. Each step is journalled before it runs and
state is written after it ends, so an apply killed midway leaves state that says what exists
and a journal entry that the next apply rolls back (`recover`).
"""

from __future__ import annotations

import concurrent.futures
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

from compiler.plan import spec_digest

from . import logfile, rootfs
from .containers import ulimit_problems
from .drivers import (
    DRIVERS,
    ActionFailed,
    Host,
    checked_binds,
    container_statuses,
    runtime_of,
)
from .images import ImageError
from .monitor import ContainerStatus
from .state import JournalEntry, Record, State

log = logging.getLogger(__name__)

Progress = Callable[[str, str, str], None]  # (phase, address, message)


@dataclass
class ApplyResult:
    changed: list[str] = field(default_factory=list)
    failed: ActionFailed | None = None
    failed_action: dict[str, Any] | None = None
    results: dict[str, dict[str, Any]] = field(default_factory=dict)
    serial: int = 0
    rolled_back: list[str] = field(default_factory=list)


def apply_plan(
    plan: dict[str, Any],
    host: Host,
    state: State,
    progress: Progress | None = None,
    payload_digest: str | None = None,
    rollback: bool = True,
    workers: int = 1,
) -> ApplyResult:
    """Carry out `plan`, which `verify` has accepted; stops at the first failed action. The new
    serial's snapshot names the plan by `payload_digest`, for `forge state rollback`.

    With `rollback`, a failed apply removes again what it created (resources that were not
    there before it): a first deploy that fails halfway leaves nothing half-started. What it
    replaced stays replaced; the old one is gone.

    Each step is journalled before it runs and settled after, so an apply killed in the middle
    leaves a record that the next one rolls back (see `recover`).

    Up to `workers` actions run at once, each as soon as the actions it depends on are done.
    """
    say = progress or (lambda phase, address, message: None)
    result = ApplyResult()
    actions = plan["actions"]
    records = state.records()
    state.event("apply-start", None, actions=len(actions))
    # The exceptions this plan was judged with are part of what an auditor reads: who waived or
    # overrode which rule for which resource, and why.
    judged = plan.get("policy", {})
    # Nested, not spread: a waiver's own `id` must not stand in for the entry's.
    for waiver in judged.get("waivers", []):
        state.event("policy-waiver", waiver.get("resource"), waiver=waiver)
    for override in judged.get("overrides", []):
        where = override.get("finding") or override.get("resource") or None
        state.event("policy-override", where, override=override)
    current: dict[str, Any] = {}  # for an error outside any action (the preflight)
    shared, say = _serialised(state), _one_at_a_time(say)
    teardown = [
        a
        for a in reversed(actions)
        if a["action"] in ("delete", "replace")
        and a["address"] in records
        and not a.get("create_before_destroy")
    ]
    build = [a for a in actions if a["action"] in ("create", "replace", "update")]

    def tear(action: dict[str, Any]) -> None:
        runtime = records[action["address"]].runtime
        _teardown(action, runtime, host, shared, say, result)

    def make(action: dict[str, Any]) -> None:
        old = records.get(action["address"])
        first = old.runtime if old and action.get("create_before_destroy") else None
        _build_up(action, host, shared, say, result, replacing=first)

    try:
        _preflight(actions, host)
        # Dependents go before what they depend on; then the reverse.
        _in_parallel(teardown, tear, _dependents(teardown), workers)
        _in_parallel(build, make, _dependencies(build), workers)
    except ActionFailed as exc:
        result.failed = exc
        state.event("action-failed", exc.address, message=str(exc))
        if rollback:
            _roll_back(actions, records, host, state, say, result)
    except Exception as exc:
        # A bug, or a plan whose spec a driver cannot read: still finish the bookkeeping, so
        # state says what was done and the serial moves.
        broken = exc if isinstance(exc, _Broken) else _Broken(current, exc)
        log.error("apply of %s failed", broken.action.get("address"), exc_info=broken.error)
        address = str(broken.action.get("address", "apply"))
        result.failed = ActionFailed(
            address,
            f"internal error: {type(broken.error).__name__}: {broken.error}",
            "this is a bug in Forge; the log (-v) has the traceback",
        )
        result.failed_action = broken.action or None
        state.event("action-failed", address, message=str(result.failed))
    selection = plan.get("selection") or {}
    # A partial plan leaves other resources as they were: its outputs may name them.
    partial = bool(selection.get("targets") or selection.get("excludes"))
    outputs = plan.get("outputs", {}) if result.failed is None and not partial else None
    if result.changed:
        # One write, and one copy of the state, for the new serial and its outputs.
        result.serial = state.bump_serial(outputs, payload_digest)
    elif outputs is not None:
        state.set_outputs(outputs)
    state.event(
        "apply-end",
        None,
        changed=len(set(result.changed)),
        failed=result.failed.address if result.failed else None,
    )
    return result


# -- running actions side by side ----------------------------------------------------------


class _Broken(Exception):
    """An action raised something other than ActionFailed: a bug."""

    def __init__(self, action: dict[str, Any], error: BaseException) -> None:
        super().__init__(str(error))
        self.action, self.error = action, error


def _dependencies(actions: list[dict[str, Any]]) -> dict[str, set[str]]:
    """For a build-up: each action waits for those of `actions` it depends on."""
    here = {a["address"] for a in actions}
    return {a["address"]: set(a["depends_on"]) & here for a in actions}


def _dependents(actions: list[dict[str, Any]]) -> dict[str, set[str]]:
    """For a teardown: each action waits for those of `actions` that depend on it."""
    waits: dict[str, set[str]] = {a["address"]: set() for a in actions}
    for action in actions:
        for dependency in action["depends_on"]:
            if dependency in waits:
                waits[dependency].add(action["address"])
    return waits


def _in_parallel(
    actions: list[dict[str, Any]],
    run: Callable[[dict[str, Any]], None],
    waits: dict[str, set[str]],
    workers: int,
) -> None:
    """Run each action once those it waits for are done, up to `workers` at a time, in the
    order given where there is a choice. After the first failure nothing new starts; what
    runs is finished (each step settles its own journal entry), then the failure is raised:
    the first ActionFailed, else _Broken for an unexpected error."""
    pending = {a["address"]: a for a in actions}
    left = {address: set(deps) for address, deps in waits.items()}
    failures: list[tuple[dict[str, Any], BaseException]] = []
    with concurrent.futures.ThreadPoolExecutor(max(1, workers), "forge-apply") as pool:
        running: dict[concurrent.futures.Future[None], dict[str, Any]] = {}
        try:
            while pending or running:
                if not failures:
                    for address in [a for a in pending if not left[a]][: workers - len(running)]:
                        action = pending.pop(address)
                        running[pool.submit(run, action)] = action
                if not running:
                    break  # what is still pending waits on something that failed
                done, _ = concurrent.futures.wait(
                    running, return_when=concurrent.futures.FIRST_COMPLETED
                )
                for future in done:
                    action = running.pop(future)
                    error = future.exception()
                    if error is not None:
                        failures.append((action, error))
                        continue
                    for deps in left.values():
                        deps.discard(action["address"])
        except BaseException:
            # Ctrl-C: start nothing more, and let what runs finish its bookkeeping.
            pending.clear()
            concurrent.futures.wait(running)
            raise
    first = next((e for _, e in failures if isinstance(e, ActionFailed)), None)
    if first is not None:
        raise first
    if failures:
        action, error = failures[0]
        if not isinstance(error, Exception):
            raise error  # SystemExit and the like, from a worker
        raise _Broken(action, error)


def _serialised(state: State) -> State:
    """`state` for the workers: one call at a time on its one connection."""
    return cast(State, _Serialised(state))


class _Serialised:
    def __init__(self, state: State) -> None:
        self._state = state
        self._lock = threading.RLock()

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._state, name)
        if not callable(attribute):
            return attribute

        def call(*args: Any, **kwargs: Any) -> Any:
            with self._lock:
                return attribute(*args, **kwargs)

        return call


def _one_at_a_time(say: Progress) -> Progress:
    lock = threading.Lock()

    def said(phase: str, address: str, message: str) -> None:
        with lock:
            say(phase, address, message)

    return said


def _sysctl_known(name: str) -> bool:
    # Namespaced sysctls exist in every namespace alike: this host's /proc/sys has the same.
    return Path("/proc/sys", *name.split(".")).exists() if ".." not in name else False


def _roll_back(
    actions: list[dict[str, Any]],
    before: dict[str, Record],
    host: Host,
    state: State,
    say: Progress,
    result: ApplyResult,
) -> None:
    """Remove what this failed apply created, dependents first."""
    now = state.records()
    made = [
        a
        for a in actions
        if a["action"] == "create" and a["address"] in now and a["address"] not in before
    ]
    for action in reversed(made):
        address = action["address"]
        say("delete", address, "rolling back: the apply failed")
        runtime = now[address].runtime
        entry = state.intend(address, action["kind"], "delete", runtime)
        try:
            DRIVERS[action["kind"]][1](host, address, runtime)
        except ActionFailed as exc:
            # State keeps it and the journal entry stays open: the next apply finishes it.
            say("failed", address, f"not rolled back: {exc}")
            continue
        state.remove(address)  # its log stays: `forge logs` tells why the apply failed
        state.settle(entry, "done")
        state.event("rolled-back", address)
        result.rolled_back.append(address)
        say("rolled back", address, "removed, as the apply failed")


def _preflight(actions: list[dict[str, Any]], host: Host) -> None:
    """Check what the plan pinned before anything is torn down: module bytes, image digests."""
    from . import wasm

    for action in actions:
        spec = action["spec"]
        if action["action"] not in ("create", "replace", "update") or spec is None:
            continue
        if action["kind"] == "wasm" and spec["digest"]:
            try:
                actual = wasm.module_digest(Path(spec["module"]))
            except OSError as exc:
                raise ActionFailed(
                    action["address"],
                    f"cannot read {spec['module']}: {exc.strerror}",
                    "nothing was changed; plan again",
                ) from None
            if actual != spec["digest"]:
                raise ActionFailed(
                    action["address"],
                    f"the module {spec['module']} changed since planning",
                    "nothing was changed; plan again",
                )
        if action["kind"] in ("service", "job"):
            try:
                # The runtime works here, and each bind source exists and is no symbolic link.
                runtime_of(action["address"], spec)
                checked_binds(action["address"], spec)
            except ActionFailed as exc:
                hint = f"nothing was changed; {exc.hint}"
                raise ActionFailed(exc.address, str(exc), hint) from None
            try:
                rootfs.chosen_mode()
            except rootfs.RootfsError as exc:
                raise ActionFailed(action["address"], str(exc), "nothing was changed") from None
            unknown = [n for n in spec["sysctls"] if not _sysctl_known(n)]
            if unknown:
                raise ActionFailed(
                    action["address"],
                    f"this kernel has no sysctl {', '.join(unknown)}",
                    "nothing was changed; check the name (`sysctl -a` lists them)",
                )
            too_high = ulimit_problems(tuple(spec["ulimits"].items()))
            if too_high:
                raise ActionFailed(
                    action["address"],
                    "; ".join(too_high),
                    "nothing was changed; lower it in the Forgefile (runc cannot raise a limit "
                    "above its caller's)",
                )
        image = spec.get("image") if action["kind"] in ("service", "job") else spec.get("digest")
        if action["kind"] in ("image", "service", "job") and image:
            try:
                host.store.resolve(image)
            except ImageError as exc:
                raise ActionFailed(
                    action["address"],
                    str(exc),
                    "nothing was changed; run `forge build`, then plan again",
                ) from None


def _teardown(
    action: dict[str, Any],
    runtime: dict[str, Any],
    host: Host,
    state: State,
    say: Progress,
    result: ApplyResult,
) -> None:
    address = action["address"]
    _create, delete = DRIVERS[action["kind"]]
    say("delete", address, "removing" if action["action"] == "delete" else "replacing")
    started = time.monotonic()
    entry = state.intend(address, action["kind"], "delete", runtime)
    delete(host, address, runtime)
    if action["action"] == "delete":
        # A workload that is gone takes its log with it; a replaced one keeps appending.
        logfile.remove(host.log_file(address))
    state.remove(address)
    state.settle(entry, "done")
    state.event("deleted", address, seconds=round(time.monotonic() - started, 3))
    log.info("deleted %s in %.2fs", address, time.monotonic() - started)
    result.changed.append(address)
    say("deleted", address, "removed" if action["action"] == "delete" else "removed, to replace")


def _build_up(
    action: dict[str, Any],
    host: Host,
    state: State,
    say: Progress,
    result: ApplyResult,
    replacing: dict[str, Any] | None = None,
) -> None:
    """Create what `action` asks for; with `replacing` (create_before_destroy), remove that
    runtime once the new one runs, so the old one serves until then."""
    address, spec = action["address"], action["spec"]
    create, delete = DRIVERS[action["kind"]]
    digest = spec_digest(spec)
    _wait_for(action, host, state, say)
    say("create", address, action["action"])
    started = time.monotonic()
    entry = state.intend(address, action["kind"], "create", _will_make(host, action, digest))
    try:
        runtime = create(host, address, spec, digest)
        if replacing is not None and action["kind"] == "service":
            _still_running(host, address, runtime, delete)
    except ActionFailed as exc:
        say("failed", address, str(exc))
        result.failed_action = action
        if exc.ran is not None:
            # It ran and failed: state remembers that, so ps shows it and plan runs it again.
            state.put(address, action["kind"], spec, digest, action["depends_on"], exc.ran)
            result.changed.append(address)
        state.settle(entry, "failed")  # the driver undid what it had made
        raise
    # The old runtime's removal is journalled before state forgets it: if the apply dies in
    # between, the next one finishes removing it.
    retire = state.intend(address, action["kind"], "delete", replacing) if replacing else None
    state.put(address, action["kind"], spec, digest, action["depends_on"], runtime)
    state.settle(entry, "done")
    elapsed = time.monotonic() - started
    state.event(
        action["action"],
        address,
        seconds=round(elapsed, 3),
        runtime={k: v for k, v in runtime.items() if k != "log"},
    )
    log.info("%s %s in %.2fs", action["action"], address, elapsed)
    result.changed.append(address)
    result.results[address] = runtime
    say("done", address, _describe(action["kind"], runtime))
    if retire is not None and replacing is not None:
        say("delete", address, "stopping the one it replaced, now that the new one runs")
        started = time.monotonic()
        delete(host, address, replacing)
        state.settle(retire, "done")
        state.event(
            "deleted", address, seconds=round(time.monotonic() - started, 3), after_successor=True
        )
        say("done", address, f"{_describe(action['kind'], runtime)}; the one it replaced is gone")


def _wait_for(action: dict[str, Any], host: Host, state: State, say: Progress) -> None:
    """`depends { condition = ... }`: hold this workload back until each dependency is healthy
    (its healthcheck passed) or completed successfully (a job that ran to a success code)."""
    address = action["address"]
    waits = sorted((action["spec"] or {}).get("wait_for", {}).items())
    records = state.records() if waits else {}  # all of state: not once per plain create
    for dependency, condition in waits:
        record = records.get(dependency)
        if record is None:
            raise ActionFailed(address, f"{dependency}, which it waits for, is not there")
        if condition == "completed_successfully":
            if "failure" in record.runtime or record.runtime.get("exit_code") is None:
                raise ActionFailed(
                    address, f"{dependency} did not complete successfully, and it waits for that"
                )
            continue
        check = record.spec.get("healthcheck") or {}
        say("create", address, f"waiting for {dependency} to be healthy")
        budget = float(check.get("start_period", 0)) + (
            float(check.get("interval", 30)) + float(check.get("timeout", 30))
        ) * (int(check.get("retries", 3)) + 1)
        deadline = time.monotonic() + budget + 5
        while True:
            status = container_statuses(host, {dependency: record.runtime})[dependency]
            health = status.health if status is not None else None
            if health == "healthy":
                break
            if health == "unhealthy" or status is None or status.state in ("exited", "unknown"):
                why = "is unhealthy" if health == "unhealthy" else "is not running"
                raise ActionFailed(
                    address,
                    f"{dependency} {why}, and {address} waits for it to be healthy",
                    f"see `forge logs {dependency}` and `forge inspect {dependency}`",
                )
            if time.monotonic() > deadline:
                raise ActionFailed(
                    address,
                    f"{dependency} was not healthy within {budget + 5:.0f}s, and {address} "
                    "waits for it",
                    f"see `forge logs {dependency}`; its healthcheck may never pass",
                )
            time.sleep(0.2)


# How long a create_before_destroy replacement must keep running before the old one is
# stopped: a command that fails at once must not take the service down with the old one.
SETTLE = 1.0


def _still_running(host: Host, address: str, runtime: dict[str, Any], delete: Any) -> None:
    deadline = time.monotonic() + SETTLE
    while time.monotonic() < deadline:
        status = container_statuses(host, {address: runtime})[address]
        # A restart policy hides a crash behind a new start: any restart counts as one.
        if status is not None and (status.state in ("exited", "restarting") or status.restarts):
            delete(host, address, runtime)
            raise ActionFailed(
                address,
                f"the replacement exited with code {status.exit_code} within {SETTLE:g}s of "
                "starting; the one it replaces keeps running",
                f"see `forge logs {address}`",
            )
        time.sleep(0.1)


def _will_make(host: Host, action: dict[str, Any], digest: str) -> dict[str, Any]:
    """What a create makes on the host, known before it runs: what a rollback removes.

    Container ids, bundles, namespaces and bridges are named from the address and the spec, so
    they can be written down first. Images, volumes and WASM runs leave nothing to undo.
    """
    kind, address, spec = action["kind"], action["address"], action["spec"]
    if kind in ("service", "job"):
        made = {
            **host.container_names(address, digest),
            "stop_grace": spec["stop_grace_period"],
            "stop_signal": spec["stop_signal"],
        }
        if spec.get("runtime", "runc") != "runc":
            made["runtime"] = spec["runtime"]  # whose state root the rollback looks in
        return made
    if kind == "network":
        return {"name": spec["name"]}
    return {}


def recover(host: Host, state: State, progress: Progress | None = None) -> list[str]:
    """Undo what an apply that died left half-done, before anything else runs.

    A create that never finished is rolled back: its container, bundle, namespace and veth, or
    its bridge, are removed (state never recorded them, so the next plan creates them again).
    If state did record it, the create had finished and only its settling was lost. A delete
    that never finished is finished on the host; state still holds the resource, and the plan
    sees it gone and replaces it. State is not changed here, so a plan made before recovery
    is still the plan of this state. Returns what was done, one line per step.
    """
    done = []
    records = state.records()
    for entry in state.unfinished():
        record = records.get(entry.address)
        _create, delete = DRIVERS[entry.kind]
        if entry.step == "create" and record is not None and _same_runtime(record, entry):
            state.settle(entry.id, "done")
            continue
        if entry.runtime:
            delete(host, entry.address, entry.runtime)
        verb = "rolled back the create of" if entry.step == "create" else "finished deleting"
        state.settle(entry.id, "recovered")
        state.event("recovered", entry.address, step=entry.step, journalled_at=entry.at)
        line = f"{verb} {entry.address} (from an apply interrupted at {entry.at})"
        if progress is not None:
            progress("recover", entry.address, line)
        done.append(line)
    return done


def _same_runtime(record: Record, entry: JournalEntry) -> bool:
    keys = ("container_id", "name")
    return all(record.runtime.get(k) == entry.runtime.get(k) for k in keys if k in entry.runtime)


def _describe(kind: str, runtime: dict[str, Any]) -> str:
    if kind in ("job", "wasm"):
        return f"exited {runtime.get('exit_code')}"
    if kind == "service":
        return f"running as {runtime.get('container_id')}"
    return "ready"


def live_status(host: Host, state: State) -> dict[str, tuple[bool | None, str]]:
    """What is still there: the drift the next plan repairs.

    A service whose container exited or whose network namespace is gone, and a network whose
    bridge was deleted from outside, are not live; the planner replaces them.
    """
    from . import network

    live: dict[str, tuple[bool | None, str]] = {}
    services: dict[str, dict[str, Any]] = {}
    for address, record in state.records().items():
        if record.kind == "network":
            present = network.network_present(host.paths.project_id, record.runtime["name"])
            live[address] = (True, "") if present else (False, "its bridge is gone")
        elif record.kind == "service":
            netns = record.runtime.get("netns")
            if "stopped" in record.runtime:
                live[address] = (False, f"stopped by `forge stop` at {record.runtime['stopped']}")
            elif netns and not os.path.exists(netns):
                live[address] = (False, "its network namespace is gone")
            else:
                services[address] = record.runtime
        elif "failure" in record.runtime:
            live[address] = (False, f"it failed last time ({record.runtime['failure']})")
    # One question to the monitor for all the containers, not one each.
    for address, status in container_statuses(host, services).items():
        live[address] = _running(status)
    return live


def _running(status: ContainerStatus | None) -> tuple[bool, str]:
    if status is None or status.state == "unknown":
        return False, "the container is gone"
    if status.state == "exited":
        return False, f"it exited with code {status.exit_code}"
    return True, ""
