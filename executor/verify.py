"""Verification before apply: a plan runs only if every check holds.

Each refusal names the check that failed, has its own exit code and says what to do.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from compiler.envelope import EnvelopeError, Opened, open_envelope
from compiler.plan import parse_time
from compiler.version import PLAN_FORMAT, VERSION

from .errors import ExecutorError
from .keys import KeyStore
from .state import State

# Exit codes of `forge apply FILE` by failed check; documented in docs/plan-format.md.
EXIT_CODES = {
    "format": 10,
    "signature": 11,
    "signer": 12,
    "expired": 13,
    "stale": 14,
    "policy": 15,
    "toolchain": 16,
    "clock": 17,
}
CLOCK_SKEW = timedelta(minutes=5)


class PlanRejected(ExecutorError):
    """A plan failed one of the checks before apply; nothing was done."""

    def __init__(self, check: str, message: str, hint: str = "") -> None:
        self.check = check
        self.hint = hint
        self.exit_code = EXIT_CODES[check]
        super().__init__(message)

    @property
    def headline(self) -> str:
        return f"plan refused ({self.check} check)"


@dataclass(frozen=True)
class VerifiedPlan:
    document: dict[str, Any]
    signers: tuple[str, ...]
    payload_digest: str


def verify(
    data: bytes, keys: KeyStore, state: State, now: datetime, policy_digest: str | None
) -> VerifiedPlan:
    """Check signature, signer, toolchain, expiry, prior state and policy, in that order.
    `policy_digest` is the digest of the policy files now; None when there are none."""
    try:
        opened: Opened = open_envelope(
            data, keys.trusted(), keys.threshold(), revoked=keys.revoked()
        )
    except EnvelopeError as exc:
        raise PlanRejected(exc.check, str(exc), exc.hint) from None
    plan = opened.document
    _shape(plan)
    _toolchain(plan)
    try:
        expires = parse_time(plan["expires_at"])
    except (KeyError, ValueError, TypeError):
        raise PlanRejected("format", "the plan has no valid expires_at") from None
    try:
        created = parse_time(plan["created_at"])
    except (KeyError, ValueError, TypeError):
        raise PlanRejected("format", "the plan has no valid created_at") from None
    if created > now + CLOCK_SKEW:
        raise PlanRejected(
            "clock",
            f"the plan says it was made at {plan['created_at']}, which is in the future",
            "check the clocks of the machine that planned and of this one, then plan again",
        )
    if now >= expires:
        raise PlanRejected(
            "expired",
            f"the plan expired at {plan['expires_at']}",
            "plan again: `forge plan -o FILE`",
        )
    prior = plan.get("prior_state", {})
    if (prior.get("lineage"), prior.get("serial"), prior.get("digest")) != (
        state.lineage,
        state.serial,
        state.digest(),
    ):
        raise PlanRejected(
            "stale",
            _stale_message(prior, state),
            "plan again against the current state",
        )
    policy = plan.get("policy", {})
    if policy.get("verdict") != "pass":
        raise PlanRejected(
            "policy", "the plan's policy verdict is not pass", "fix the findings and plan again"
        )
    judged = policy.get("digest")
    if judged != policy_digest:
        hint = "plan again so the current policy judges it"
        if policy_digest is None:
            why = "the policy files that judged this plan are gone"
            hint += ", or give `--policy` as it was given to `forge plan`"
        elif judged is None:
            why = "this plan was made with no policy, and there are policy files now"
        else:
            why = "the policy files changed since this plan was made"
        raise PlanRejected("policy", why, hint)
    return VerifiedPlan(plan, opened.signers, opened.payload_digest)


_FIELDS: dict[str, type | tuple[type, ...]] = {
    "format": int,
    "toolchain": dict,
    "created_at": str,
    "expires_at": str,
    "destroy": bool,
    "inputs": dict,
    "prior_state": dict,
    "policy": dict,
    "actions": list,
    "outputs": dict,
    "selection": dict,
    "rollback": (dict, type(None)),
}
_ACTION_FIELDS: dict[str, type | tuple[type, ...]] = {
    "address": str,
    "kind": str,
    "action": str,
    "reason": str,
    "diff": dict,
    "spec": (dict, type(None)),
    "span": (dict, type(None)),
    "depends_on": list,
}
# Fields an action has only where they apply.
_ACTION_OPTIONAL: dict[str, type | tuple[type, ...]] = {"create_before_destroy": bool}
_KINDS = {"image", "network", "volume", "service", "job", "wasm"}
_ACTIONS = {"create", "update", "replace", "delete", "no-op"}


def _shape(plan: dict[str, Any]) -> None:
    """A signed plan is still checked field by field: the executor acts on every one of them."""
    _fields(plan, _FIELDS, "the plan")
    for index, action in enumerate(plan["actions"]):
        if not isinstance(action, dict):
            raise PlanRejected("format", f"action {index} is not an object")
        _fields(action, _ACTION_FIELDS, f"action {index}", _ACTION_OPTIONAL)
        if action["kind"] not in _KINDS or action["action"] not in _ACTIONS:
            raise PlanRejected("format", f"action {index} has an unknown kind or action")
        if action["action"] != "delete" and action["spec"] is None:
            raise PlanRejected("format", f"action {index} ({action['address']}) has no spec")


def _fields(
    value: dict[str, Any],
    fields: dict[str, type | tuple[type, ...]],
    what: str,
    optional: dict[str, type | tuple[type, ...]] | None = None,
) -> None:
    optional = optional or {}
    if not set(fields) <= set(value) <= set(fields) | set(optional):
        unknown = sorted((set(value) - set(optional)) ^ set(fields))
        raise PlanRejected("format", f"{what} has missing or unknown fields: {', '.join(unknown)}")
    for name, kind in {**fields, **optional}.items():
        if name in value and not isinstance(value[name], kind):
            raise PlanRejected("format", f"{what}: `{name}` has the wrong type")


def _toolchain(plan: dict[str, Any]) -> None:
    if plan.get("format") != PLAN_FORMAT:
        raise PlanRejected(
            "toolchain",
            f"plan format {plan.get('format')!r} is not {PLAN_FORMAT}, which this Forge reads",
            "plan with this Forge",
        )
    version = plan.get("toolchain", {}).get("version", "")
    if str(version).split(".")[:2] != VERSION.split(".")[:2]:
        raise PlanRejected(
            "toolchain",
            f"the plan was made by Forge {version}, this is {VERSION}",
            "plan and apply with the same Forge release",
        )


def _stale_message(prior: dict[str, Any], state: State) -> str:
    if prior.get("lineage") != state.lineage:
        return "the plan was made for another project's state (its lineage differs)"
    if prior.get("serial") != state.serial:
        return (
            f"the state changed since this plan was made: it was made at serial "
            f"{prior.get('serial')}, and another apply has moved the state to serial "
            f"{state.serial}"
        )
    return "the state's contents differ from what the plan was made against, at the same serial"
