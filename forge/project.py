"""The pipeline as the commands run it: load, check, judge, build, plan, seal, verify, apply.

Each function is one phase; the commands in `cli.py` read as the sequence of them. Nothing here
prints: results and errors go back to the command that renders them.
"""

from __future__ import annotations

import gc
import hashlib
import logging
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from compiler import checks, policy
from compiler.envelope import EnvelopeError, canonical_json, open_envelope, seal
from compiler.plan import (
    BuildFacts,
    ImageFacts,
    parse_time,
    plan,
    prevent_destroy,
    rollback_plan,
    spec_digest,
)
from executor import rootfs
from executor.apply import ApplyResult, Progress, apply_plan, live_status, recover
from executor.build import build_images, module_digests
from executor.drivers import Host
from executor.images import ImageStore
from executor.keys import KeyStore, KeyStoreError
from executor.monitor import Monitor
from executor.paths import ProjectPaths
from executor.state import State, StateError, locked, state_digest
from executor.verify import PlanRejected, VerifiedPlan, verify
from forgefile import ir
from forgefile.diagnostics import Diagnostic, DiagnosticError
from forgefile.lower import FORGEFILE, load

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

log = logging.getLogger(__name__)


@dataclass
class Project:
    """Where a Forgefile, its policy and its state live."""

    forgefile: Path
    state_dir: Path
    policy_paths: tuple[Path, ...]
    variables: dict[str, str]
    # `--override RULE[@ADDRESS]=REASON`: soft findings this plan lets pass, and who said so.
    overrides: tuple[policy.Override, ...] = ()

    @classmethod
    def locate(
        cls, file: Path, state_dir: Path | None, policy_paths: list[Path], variables: dict[str, str]
    ) -> Project:
        # Absolute, so that spans and input paths in plans do not depend on where forge ran.
        forgefile = (file / FORGEFILE if file.is_dir() else file).absolute()
        base = forgefile.parent
        state = state_dir or Path(os.environ.get("FORGE_STATE_DIR", base / ".forge"))
        if not policy_paths and (base / "policy").is_dir():
            policy_paths = [base / "policy"]
        return cls(forgefile, state, tuple(policy_paths), variables)

    @property
    def paths(self) -> ProjectPaths:
        return ProjectPaths.for_state_dir(self.state_dir)

    def keys(self) -> KeyStore:
        return KeyStore(self.paths.keys)

    def signers(self, names: list[str] | None = None) -> list[Ed25519PrivateKey]:
        """The named signing keys (the only one there is, when none is named), opened with
        FORGE_KEY_PASSPHRASE where they are protected."""
        passphrase = os.environ.get("FORGE_KEY_PASSPHRASE")
        return self.keys().signers(names, passphrase.encode() if passphrase else None)

    def state(self) -> State:
        """The state database, made if this is the project's first plan."""
        self.paths.ensure()
        return State.open(self.paths.database)

    def existing_state(self) -> State | None:
        """The state database if anything was ever planned here; reading never creates one."""
        if not self.paths.database.is_file():
            return None
        return State.open(self.paths.database)

    def host(self) -> Host:
        return Host(self.paths, Monitor())


@dataclass
class Checked:
    doc: ir.Document
    warnings: list[Diagnostic]
    verdict: policy.Verdict | None


def check(project: Project) -> Checked:
    """Load, lower and check the Forgefile, then judge it against the policy files."""
    doc = load(project.forgefile, project.variables)
    # The IR lives as long as the command: keep the garbage collector from walking it again and
    # again while policy and the planner make their many small objects.
    gc.freeze()
    warnings = checks.check(doc)
    verdict = judge(project, doc)
    return Checked(doc, warnings, verdict)


def load_policy(project: Project) -> policy.Policy | None:
    """The project's policy files and the packs they use; None when it has no policy at all.

    A policy folder (or --policy path) that holds no policy file is a policy without rules,
    which judges nothing: that blocks, rather than pass as if there were no policy.
    """
    if not project.policy_paths:
        return None
    if not policy.policy_files(project.policy_paths):
        return policy.Policy(digest=policy.digest_of([]))
    return policy.load_policy(list(project.policy_paths))


def judge(project: Project, doc: ir.Document) -> policy.Verdict | None:
    """Judge the IR against the project's policy, as of today (UTC: waivers end by date)."""
    loaded = load_policy(project)
    if loaded is None:
        return None
    return policy.judge(loaded, doc, datetime.now(UTC).date(), project.overrides)


def policy_digest(project: Project) -> str | None:
    loaded = load_policy(project)
    return loaded.digest if loaded else None


def build(project: Project, doc: ir.Document) -> dict[str, ImageFacts]:
    return build_images(doc, ImageStore(_ensure(project).images))


def _ensure(project: Project) -> ProjectPaths:
    project.paths.ensure()
    return project.paths


def make_plan(
    project: Project,
    checked: Checked,
    destroy: bool = False,
    created_at: datetime | None = None,
    ttl: timedelta | None = None,
    targets: Sequence[str] = (),
    excludes: Sequence[str] = (),
) -> dict[str, Any]:
    """Build what the plan needs, snapshot state (with live status) and compile the plan."""
    images = {} if destroy else build(project, checked.doc)
    modules = {} if destroy else module_digests(checked.doc)
    verdict = checked.verdict
    facts = BuildFacts(
        images=images,
        modules=modules,
        # A destroy is not judged (there is nothing left to judge) but is still bound to the
        # policy files as they are, like any plan.
        policy=verdict.to_json(compact=True)
        if verdict
        else {"verdict": "pass", "digest": policy_digest(project), "evaluated": 0, "findings": []},
        variables_digest=_variables_digest(checked.doc),
        # Only networks are checked against the host's routes: without one, netlink (and
        # pyroute2's import, ~60 ms) is not needed.
        host_routes=_routes(project) if _has_networks(checked.doc) and not destroy else (),
    )
    state = project.state()
    try:
        snapshot = state.snapshot(live_status(project.host(), state))
    finally:
        state.close()
    when = created_at or datetime.now(UTC)
    return plan(
        checked.doc,
        snapshot,
        facts,
        when,
        destroy=destroy,
        targets=targets,
        excludes=excludes,
        **_ttl(ttl),
    )


def make_rollback(
    project: Project, serial: int, created_at: datetime | None = None, ttl: timedelta | None = None
) -> dict[str, Any]:
    """The plan that brings the host back to what state held at `serial`.

    It reruns the specs that serial ran, under the verdict of the signed plan that made it; so
    it is refused when that plan is not kept, its signers are no longer trusted, or the policy
    that judged it has changed since (other files, a waiver expired, a phased-in rule now
    enforced). `prevent_destroy` is read from the Forgefile as it is now, if it loads.
    """
    state = project.existing_state()
    if state is None:
        raise StateError("there is no state here to roll back", hint="nothing was ever applied")
    try:
        kept = state.snapshot_at(serial, sensitive=True)
        made = state.plan_of(serial)
        outputs_now = state.outputs()
        snapshot = state.snapshot(live_status(project.host(), state))
        anchor = (
            snapshot.digest
            if serial == state.serial
            else _signed_digest_of(state, project.keys(), serial)
        )
    finally:
        state.close()
    if kept is None:
        raise StateError(
            f"serial {serial} is not kept", hint="`forge state list` shows the serials there are"
        )
    if made is None:
        raise StateError(
            f"the plan that made serial {serial} is not on record (serials made before Forge "
            "kept them cannot be rolled back to)",
            hint="check out the Forgefile of that time and `forge apply` it instead",
        )
    made_digest, envelope = made
    keys = project.keys()
    try:
        made_by = open_envelope(
            envelope, keys.trusted(), keys.threshold(), revoked=keys.revoked()
        ).document
    except EnvelopeError as exc:
        raise PlanRejected(
            exc.check,
            f"the plan that made serial {serial} does not verify with today's trust store: {exc}",
            "a rollback reruns what a trusted plan ran, under the signers and threshold "
            "trusted now; apply the Forgefile of that time instead",
        ) from None
    prior = made_by.get("prior_state", {})
    if (prior.get("lineage"), prior.get("serial")) != (kept["lineage"], serial - 1):
        raise StateError(
            f"the plan state names as the one that made serial {serial} was made against "
            f"serial {prior.get('serial')}, not {serial - 1}: the state database was changed",
            hint="do not roll back to it; a backup of state.db restores it",
        )
    _kept_copy_holds(kept, anchor, serial)
    kept = _vouched_for(kept, made_by, snapshot, serial, outputs_now)
    _still_judged(project, made_by, serial)
    document = rollback_plan(
        kept, made_by, made_digest, snapshot, created_at or datetime.now(UTC), **_ttl(ttl)
    )
    if not project.forgefile.exists():
        return document  # nothing marks anything prevent_destroy
    try:
        declared = load(project.forgefile, project.variables)
    except DiagnosticError as exc:
        # Unlike a destroy, a rollback can wait until the Forgefile loads: without it, what
        # it marks prevent_destroy would be deleted unchecked.
        raise DiagnosticError(
            [
                *exc.diagnostics,
                Diagnostic(
                    "P0010",
                    "a rollback reads the Forgefile for its prevent_destroy marks, and it does "
                    "not load",
                    None,
                    "fix it, or give its variables with --var",
                ),
            ]
        ) from None
    prevent_destroy(document["actions"], declared, snapshot)
    return document


def _signed_digest_of(state: State, keys: KeyStore, serial: int) -> str | None:
    """The state digest a trusted, signed plan recorded for `serial`: the `prior_state` of a
    plan applied against it. State's own copy of that serial is checked against it."""
    for envelope in state.plan_envelopes():
        try:
            document = open_envelope(envelope, keys.trusted(), 1, revoked=keys.revoked()).document
        except EnvelopeError:
            continue
        prior = document.get("prior_state", {})
        if prior.get("lineage") == state.lineage and prior.get("serial") == serial:
            return str(prior.get("digest"))
    return None


def _vouched_for(
    kept: dict[str, Any],
    made_by: dict[str, Any],
    snapshot: Any,
    serial: int,
    outputs_now: dict[str, Any],
) -> dict[str, Any]:
    """The kept copy with only what signed records vouch for: the state digest covers each
    resource's spec, not its kind, dependencies or the outputs. Those are taken from the signed
    plan that made the serial (its actions, and its outputs when it was a whole plan), else from
    the current state where the spec is the same; what neither vouches for is refused. Outputs
    a partial plan left unset stay as they are now."""
    signed = {a["address"]: a for a in made_by.get("actions", []) if a.get("spec") is not None}
    resources = []
    for resource in kept["resources"]:
        address, digest = resource["address"], spec_digest(resource["spec"])
        action = signed.get(address)
        current = snapshot.resources.get(address)
        if action is not None and spec_digest(action["spec"]) == digest:
            kind, depends = action["kind"], list(action["depends_on"])
        elif current is not None and current.spec_digest == digest:
            kind, depends = current.kind, list(current.depends_on)
        else:
            raise StateError(
                f"nothing signed says what {address} was at serial {serial} (its kind and "
                "dependencies)",
                hint="apply the Forgefile of that time instead",
            )
        resources.append({**resource, "kind": kind, "depends_on": depends})
    selection = made_by.get("selection") or {}
    whole = not (selection.get("targets") or selection.get("excludes"))
    outputs = dict(made_by.get("outputs", {})) if whole else outputs_now
    return {**kept, "resources": resources, "outputs": outputs}


def _kept_copy_holds(kept: dict[str, Any], anchor: str | None, serial: int) -> None:
    """The kept copy of a serial is what signed plans say it was, or the rollback is refused:
    the state database is not signed, and a rollback reruns its specs unjudged."""
    specs: dict[str, str] = {}
    for resource in kept["resources"]:
        specs[resource["address"]] = spec_digest(resource["spec"])
    computed = state_digest(kept["lineage"], serial, specs)
    if anchor is None:
        raise StateError(
            f"no trusted plan records the state of serial {serial}, so its kept copy cannot be "
            "checked",
            hint="apply the Forgefile of that time instead",
        )
    if computed != anchor:
        raise StateError(
            f"the kept copy of serial {serial} is not the state signed plans recorded for it: "
            "the state database was changed",
            hint="do not roll back to it; `forge audit verify` checks the rest of the log, and "
            "a backup of state.db restores it",
        )


def _ttl(ttl: timedelta | None) -> dict[str, timedelta]:
    return {"ttl": ttl} if ttl else {}


def _still_judged(project: Project, made_by: dict[str, Any], serial: int) -> None:
    """A verdict from another day stands only if nothing it rested on has moved since."""
    verdict = made_by.get("policy", {})
    loaded = load_policy(project)
    now = loaded.digest if loaded else None
    hint = (
        f"the current policy has not judged what serial {serial} ran: check out the Forgefile of "
        "that time and `forge apply` it, so that it is judged now"
    )
    if verdict.get("digest") != now:
        why = (
            f"the policy files that judged serial {serial} are gone"
            if now is None
            else f"the policy files changed since serial {serial} was judged"
        )
        raise PlanRejected("policy", why, hint)
    today = datetime.now(UTC).date()
    for waiver in verdict.get("waivers", []):
        if waiver.get("expires") and waiver["expires"] < today.isoformat():
            raise PlanRejected(
                "policy",
                f"serial {serial} passed policy under waiver {waiver.get('id')!r} for "
                f"{waiver.get('rule')} on {waiver.get('resource')}, which expired on "
                f"{waiver['expires']}",
                hint,
            )
    judged_on = parse_time(made_by["created_at"]).date()
    for entry in loaded.enforce if loaded else ():
        if entry.warn_until is not None and judged_on <= entry.warn_until < today:
            raise PlanRejected(
                "policy",
                f"{entry.target} was advisory until {entry.warn_until.isoformat()} when serial "
                f"{serial} was judged, and is {entry.level} now",
                hint,
            )


def _has_networks(doc: ir.Document) -> bool:
    return any(isinstance(r, ir.Network) for r in doc.resources)


def _routes(project: Project) -> tuple[tuple[str, str], ...]:
    from executor.network import foreign_routes

    return tuple(foreign_routes(project.paths.project_id))


def _variables_digest(doc: ir.Document) -> str:
    # Values of sensitive variables are hashed along with the rest, never written out.
    body = canonical_json({k: repr(v) for k, v in doc.variable_values})
    return "sha256:" + hashlib.sha256(body).hexdigest()


def sign(project: Project, document: dict[str, Any], key_names: list[str] | None = None) -> bytes:
    """Seal the plan with each named key (the only key there is, when none is named)."""
    return seal(document, project.signers(key_names))


def _checkpoint(project: Project, state: State) -> None:
    """Sign the audit log's head with this project's own key, when it has one it can use.

    A plan signed elsewhere may be applied where no private key is, or only one behind a
    passphrase not given: then the log is not signed this time (`forge audit checkpoint` does
    it later), and the apply is not failed for it.
    """
    try:
        [signer] = project.signers()
    except KeyStoreError as exc:
        log.info("the audit log is not signed after this apply: %s", exc)
        return
    state.checkpoint(signer)


def drift(project: Project) -> list[dict[str, str]]:
    """What differs on the host from what state records, without reading the Forgefile:
    containers that stopped, namespaces and bridges removed from outside, failed jobs."""
    state = project.existing_state()
    if state is None:
        return []
    try:
        records = state.records()
        live = live_status(project.host(), state)
    finally:
        state.close()
    return [
        {"address": address, "kind": records[address].kind, "drift": note or "not live"}
        for address, (present, note) in sorted(live.items())
        if present is False
    ]


def resume(project: Project, progress: Progress | None = None) -> list[str]:
    """Only finish or roll back what an interrupted apply left, under the lock; plan nothing."""
    if project.existing_state() is None:
        return []
    with locked(project.state_dir, "resume"):
        state = project.state()
        try:
            return recover(project.host(), state, progress)
        finally:
            state.close()


def apply(
    project: Project,
    envelope: bytes,
    progress: Progress | None = None,
    rollback: bool = True,
    workers: int = 1,
) -> tuple[VerifiedPlan, ApplyResult]:
    """Verify a signed plan against the current state and policy, then carry it out, up to
    `workers` actions at once."""
    host = project.host()
    project.paths.ensure_run()
    with locked(project.state_dir):
        state = project.state()
        try:
            # Host-only: what an apply that died left half-done is undone before this one.
            recover(host, state, progress)
            verified = verify(
                envelope, project.keys(), state, datetime.now(UTC), policy_digest(project)
            )
            state.event(
                "plan-verified",
                None,
                signers=list(verified.signers),
                payload=verified.payload_digest,
            )
            state.keep_plan(verified.payload_digest, envelope)
            result = apply_plan(
                verified.document, host, state, progress, verified.payload_digest, rollback, workers
            )
            _checkpoint(project, state)
            # Images no container runs from any more need not stay unpacked.
            rootfs.prune(project.paths.rootfs_cache)
        finally:
            state.close()
    if verified.document.get("destroy") and result.failed is None:
        forget_run_dir(project)
    return verified, result


def forget_run_dir(project: Project) -> None:
    """Nothing of this project runs any more: drop its run-time folder, and let the host's
    monitor go if no other project needs it. A container runc still knows of (one an
    interrupted apply started, which the next apply's recovery removes) keeps the folder."""
    for root in project.paths.runtime_roots:
        if root.is_dir() and any(root.iterdir()):
            log.info("%s still holds containers: the run folder is kept", root)
            return
    rootfs.release_under(project.paths.run_dir)
    shutil.rmtree(project.paths.run_dir, ignore_errors=True)
    project.host().monitor.shutdown_if_idle()
