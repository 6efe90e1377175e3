"""Apply: carry out a verified plan, action by action, recording each step in state.

Teardown first (deletes and the old half of replacements, dependents before what they depend
on), then build-up in the plan's dependency order. State is written after every action, so an
interrupted apply leaves state that says exactly what exists.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from compiler.plan import spec_digest

from .drivers import DRIVERS, ActionFailed, Host, container_status
from .images import ImageError
from .state import State

log = logging.getLogger(__name__)

Progress = Callable[[str, str, str], None]  # (phase, address, message)


@dataclass
class ApplyResult:
    changed: list[str] = field(default_factory=list)
    failed: ActionFailed | None = None
    failed_action: dict[str, Any] | None = None
    results: dict[str, dict[str, Any]] = field(default_factory=dict)
    serial: int = 0


def apply_plan(
    plan: dict[str, Any], host: Host, state: State, progress: Progress | None = None
) -> ApplyResult:
    """Carry out `plan`, which `verify` has accepted; stops at the first failed action."""
    # TODO(#5): journal each step's intent before it runs, so an apply killed midway can be
    # resumed or rolled back; today state records only the steps that finished.
    say = progress or (lambda phase, address, message: None)
    result = ApplyResult()
    actions = plan["actions"]
    records = state.records()
    state.event("apply-start", None, actions=len(actions))
    # The exceptions this plan was judged with are part of what an auditor reads: who waived or
    # overrode which rule for which resource, and why.
    judged = plan.get("policy", {})
    for waiver in judged.get("waivers", []):
        state.event("policy-waiver", waiver.get("resource"), **waiver)
    for override in judged.get("overrides", []):
        state.event("policy-override", override.get("resource") or None, **override)
    current: dict[str, Any] = {}
    try:
        _preflight(actions, host)
        for action in reversed(actions):
            if action["action"] in ("delete", "replace") and action["address"] in records:
                current = action
                _teardown(action, records[action["address"]].runtime, host, state, say, result)
        for action in actions:
            if action["action"] in ("create", "replace", "update"):
                current = action
                _build_up(action, host, state, say, result)
    except ActionFailed as exc:
        result.failed = exc
        state.event("action-failed", exc.address, message=str(exc))
    except Exception as exc:
        # A bug, or a plan whose spec a driver cannot read: still finish the bookkeeping, so
        # state says what was done and the serial moves.
        log.exception("apply of %s failed", current.get("address"))
        address = str(current.get("address", "apply"))
        result.failed = ActionFailed(
            address,
            f"internal error: {type(exc).__name__}: {exc}",
            "this is a bug in Forge; the log (-v) has the traceback",
        )
        result.failed_action = current or None
        state.event("action-failed", address, message=str(result.failed))
    if result.changed:
        result.serial = state.bump_serial()
    selection = plan.get("selection") or {}
    if result.failed is None and not (selection.get("targets") or selection.get("excludes")):
        # A partial plan leaves other resources as they were: its outputs may name them.
        state.set_outputs(plan.get("outputs", {}))
    state.event(
        "apply-end",
        None,
        changed=len(result.changed),
        failed=result.failed.address if result.failed else None,
    )
    return result


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
    delete(host, address, runtime)
    if action["action"] == "delete":
        # A workload that is gone takes its log with it; a replaced one keeps appending.
        host.log_file(address).unlink(missing_ok=True)
    state.remove(address)
    state.event("deleted", address, seconds=round(time.monotonic() - started, 3))
    log.info("deleted %s in %.2fs", address, time.monotonic() - started)
    result.changed.append(address)


def _build_up(
    action: dict[str, Any], host: Host, state: State, say: Progress, result: ApplyResult
) -> None:
    address, spec = action["address"], action["spec"]
    create, _delete = DRIVERS[action["kind"]]
    digest = spec_digest(spec)
    say("create", address, action["action"])
    started = time.monotonic()
    try:
        runtime = create(host, address, spec, digest)
    except ActionFailed as exc:
        result.failed_action = action
        if exc.ran is not None:
            # It ran and failed: state remembers that, so ps shows it and plan runs it again.
            state.put(address, action["kind"], spec, digest, action["depends_on"], exc.ran)
            result.changed.append(address)
        raise
    state.put(address, action["kind"], spec, digest, action["depends_on"], runtime)
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
    for address, record in state.records().items():
        if record.kind == "network":
            present = network.network_present(host.paths.project_id, record.runtime["name"])
            live[address] = (True, "") if present else (False, "its bridge is gone")
        elif record.kind == "service":
            live[address] = _service_live(host, record.runtime)
        elif "failure" in record.runtime:
            live[address] = (False, f"it failed last time ({record.runtime['failure']})")
    return live


def _service_live(host: Host, runtime: dict[str, Any]) -> tuple[bool | None, str]:
    netns = runtime.get("netns")
    if netns and not os.path.exists(netns):
        return False, "its network namespace is gone"
    status = container_status(host, runtime)
    if status is None or status.state == "unknown":
        return False, "the container is gone"
    if status.state == "exited":
        return False, f"it exited with code {status.exit_code}"
    return True, ""
