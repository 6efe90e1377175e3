"""`forge audit export`: a compliance bundle of what was applied, by whom, judged how, with what
outcome, over a time range.

The bundle is one JSON document. Each plan applied in the range is there as its signed envelope
(base64 of the file's bytes, so an auditor can check the signatures again with the signers'
public keys) and as a summary read from its payload: when it was made, by which toolchain,
against which state serial, the policy verdict with its waivers and overrides, its actions and
the outcome the audit log recorded. The log's entries in the range, and the state of its hash
chain and signed checkpoints, come with it.
"""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime
from typing import Any

import zstandard
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from compiler.envelope import MAX_PAYLOAD, EnvelopeError, open_envelope

from .state import State

EXPORT_FORMAT = 1


def export(
    state: State,
    trusted: dict[str, Ed25519PublicKey],
    since: str = "",
    until: str = "~",
    revoked: dict[str, tuple[Ed25519PublicKey, str]] | None = None,
) -> dict[str, Any]:
    """The bundle of everything applied with `since <= time <= until` (ISO 8601, UTC)."""
    events = state.events(limit=1 << 62, since=since, until=until)
    plans = [
        _plan(at, digest, envelope, trusted, events)
        for at, digest, envelope in state.plans(since, until)
    ]
    # Every plan the log says was verified must be among the plans kept: one that is gone was
    # removed from the database, which an auditor must hear about.
    kept = {p["payload_digest"] for p in plans}
    missing = [
        {"verified_at": e["at"], "payload_digest": e.get("payload"), "entry": e["id"]}
        for e in events
        if e["kind"] == "plan-verified" and e.get("payload") not in kept
    ]
    chain = state.verify_events()
    points = state.checkpoints()
    return {
        "format": EXPORT_FORMAT,
        "kind": "forge-audit-export",
        "exported_at": datetime.now(UTC).isoformat(),
        "lineage": state.lineage,
        "range": {"since": since or None, "until": until if until != "~" else None},
        "chain": {
            "intact": chain.broken_at is None,
            "checked": chain.checked,
            "broken_at": chain.broken_at,
            "message": chain.message,
        },
        "checkpoints": {
            "count": len(points),
            "signed_through": max((p.event_id for p in points), default=0),
            "problems": state.verify_checkpoints(trusted, revoked),
        },
        "plans": plans,
        "missing_plans": missing,
        "events": events,
    }


def _plan(
    at: str,
    digest: str,
    envelope: bytes,
    trusted: dict[str, Ed25519PublicKey],
    events: list[dict[str, Any]],
) -> dict[str, Any]:
    try:
        outer = json.loads(envelope)
        document = json.loads(
            zstandard.ZstdDecompressor().decompress(
                base64.b64decode(outer["payload"]), max_output_size=MAX_PAYLOAD
            )
        )
    except (ValueError, TypeError, KeyError, zstandard.ZstdError) as exc:
        return {
            "applied_at": at,
            "payload_digest": digest,
            "unreadable": f"the kept envelope is damaged: {type(exc).__name__}: {exc}",
            "envelope": base64.b64encode(bytes(envelope)).decode(),
        }
    try:
        open_envelope(envelope, trusted, threshold=1)
        verifies = "yes, with today's trust store"
    except EnvelopeError as exc:
        verifies = f"not with today's trust store: {exc}"
    judged = document.get("policy", {})
    return {
        "applied_at": at,
        "payload_digest": digest,
        "signers": [s["keyid"] for s in outer["signatures"]],
        "signatures_verify": verifies,
        "created_at": document.get("created_at"),
        "toolchain": document.get("toolchain"),
        "destroy": document.get("destroy"),
        "prior_state": document.get("prior_state"),
        "selection": document.get("selection"),
        "policy": {
            key: judged.get(key)
            for key in ("verdict", "digest", "evaluated", "counts", "waivers", "overrides", "rego")
        },
        "actions": [
            {"address": a["address"], "action": a["action"], "reason": a["reason"]}
            for a in document.get("actions", [])
            if a["action"] != "no-op"
        ],
        "outcome": _outcome(digest, events),
        "envelope": base64.b64encode(envelope).decode(),
    }


def _outcome(digest: str, events: list[dict[str, Any]]) -> dict[str, Any] | None:
    """What the log says came of the plan: the apply-end after its plan-verified entry."""
    verified = next(
        (
            i
            for i, e in enumerate(events)
            if e["kind"] == "plan-verified" and e.get("payload") == digest
        ),
        None,
    )
    if verified is None:
        return None
    end = None
    for entry in events[verified + 1 :]:
        if entry["kind"] == "plan-verified":
            break  # the next apply began: this one never reached its end
        if entry["kind"] == "apply-end":
            end = entry
            break
    if end is None:
        return {"finished": False}
    return {"finished": True, "at": end["at"], "changed": end["changed"], "failed": end["failed"]}
