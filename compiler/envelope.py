"""Plan envelopes: canonical JSON, compressed with zstd, in a DSSE envelope signed with Ed25519.

Decoding is strict on purpose. Every field of the envelope is checked for type and presence,
unknown and duplicate fields are refused, base64 must be canonical and the `keyid` must name
the key that verified the signature: so any change to the envelope's bytes is refused, not
only a change to the payload.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from dataclasses import dataclass
from typing import Any

import orjson
import zstandard
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from forgefile.collector import paused
from forgefile.diagnostics import ForgeError

PAYLOAD_TYPE = "application/vnd.forge.plan.v1+json+zstd"
ZSTD_LEVEL = 3  # level 19 cost 0.5 s for a 1,000-service plan and saved a fifth of 24 kB
MAX_PAYLOAD = 64 << 20  # a decompressed plan larger than this is refused, not inflated


class EnvelopeError(ForgeError):
    """The envelope is malformed or its signature does not hold."""

    def __init__(self, check: str, message: str, hint: str = "") -> None:
        self.check = check
        self.hint = hint
        super().__init__(message)


def canonical_json(value: Any) -> bytes:
    """One byte sequence per value: sorted keys, no spaces, UTF-8, strings escaped minimally.

    orjson writes it (a 3 MB plan in 4 ms rather than 50); for what orjson does not take, an
    integer past 64 bits or a key that is not a string, json.dumps writes the same form. Numbers
    must be finite: orjson would write NaN as null, and the front end refuses any number that is
    not finite (E0229), so none reaches a plan, a state digest or an image blob.
    """
    try:
        return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)
    except TypeError:
        return json.dumps(
            value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
        ).encode("utf-8")


def key_id(public: Ed25519PublicKey) -> str:
    """A key's id: the SHA-256 of its raw public bytes, so it can't be chosen to collide."""
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return "sha256:" + hashlib.sha256(raw).hexdigest()


def pae(payload_type: str, payload: bytes) -> bytes:
    """DSSE's pre-authentication encoding: what is actually signed."""
    t = payload_type.encode()
    return b"DSSEv1 %d %b %d %b" % (len(t), t, len(payload), payload)


def seal(document: Any, signers: list[Ed25519PrivateKey]) -> bytes:
    """Serialise, compress and sign a plan document; returns the envelope's bytes."""
    if not signers:
        raise EnvelopeError(
            "signature", "a plan needs at least one signing key", "run `forge key generate`"
        )
    payload = zstandard.ZstdCompressor(level=ZSTD_LEVEL, write_checksum=True).compress(
        canonical_json(document)
    )
    message = pae(PAYLOAD_TYPE, payload)
    signatures = [
        {"keyid": key_id(k.public_key()), "sig": base64.b64encode(k.sign(message)).decode()}
        for k in signers
    ]
    envelope = {
        "payloadType": PAYLOAD_TYPE,
        "payload": base64.b64encode(payload).decode(),
        "signatures": signatures,
    }
    return canonical_json(envelope) + b"\n"


@dataclass(frozen=True)
class Opened:
    document: dict[str, Any]
    signers: tuple[str, ...]  # key ids whose signatures verified
    payload_digest: str


def open_envelope(
    data: bytes,
    trusted: dict[str, Ed25519PublicKey],
    threshold: int = 1,
    revoked: frozenset[str] | set[str] = frozenset(),
) -> Opened:
    """Verify an envelope against trusted keys and return its plan document.

    At least `threshold` distinct trusted keys must have signed it. A signature by a key that
    is not trusted does not count (and a revoked key is never trusted), but every signature by
    a trusted key must verify.
    """
    _, payload, signatures = _outer(data)
    message = pae(PAYLOAD_TYPE, payload)
    verified: list[str] = []
    for keyid, sig in signatures:
        key = trusted.get(keyid) if keyid not in revoked else None
        if key is None:
            continue
        try:
            key.verify(sig, message)
        except InvalidSignature:
            raise EnvelopeError(
                "signature",
                f"the signature by {keyid[:19]}… does not verify",
                "the plan was changed after it was signed; plan again",
            ) from None
        verified.append(keyid)
    if len(verified) < threshold:
        raise _too_few(verified, [k for k, _ in signatures], threshold, revoked)
    try:
        raw = zstandard.ZstdDecompressor().decompress(payload, max_output_size=MAX_PAYLOAD)
    except zstandard.ZstdError as exc:
        raise EnvelopeError("format", f"the payload does not decompress: {exc}") from None
    document = _strict_json(raw, "plan")
    if not isinstance(document, dict) or _canonical(document, "plan") != raw:
        _exact_json(raw, "plan")
        raise EnvelopeError("format", "the plan payload is not canonical JSON")
    return Opened(document, tuple(verified), "sha256:" + hashlib.sha256(payload).hexdigest())


def add_signature(data: bytes, signer: Ed25519PrivateKey) -> bytes:
    """The envelope with one more signature over the same payload: a second person's approval.

    The payload is not touched, so every signature already there stays valid.
    """
    envelope, payload, signatures = _outer(data)
    keyid = key_id(signer.public_key())
    if keyid in (k for k, _ in signatures):
        raise EnvelopeError("signature", f"key {keyid[:19]}… has already signed this plan")
    sig = signer.sign(pae(PAYLOAD_TYPE, payload))
    envelope["signatures"].append({"keyid": keyid, "sig": base64.b64encode(sig).decode()})
    return canonical_json(envelope) + b"\n"


def _too_few(
    verified: list[str], signed: list[str], threshold: int, revoked: frozenset[str] | set[str]
) -> EnvelopeError:
    short = ", ".join(k[:19] + "…" for k in signed)
    by_revoked = [k[:19] + "…" for k in signed if k in revoked]
    if by_revoked and not verified:
        return EnvelopeError(
            "signer",
            f"this plan is signed by the revoked key {', '.join(by_revoked)}",
            "plan again and sign with a key that is still trusted",
        )
    if not verified:
        return EnvelopeError(
            "signer",
            f"no trusted key signed this plan (signed by {short})",
            "trust the signer's key with `forge key trust`, or plan again with a trusted key",
        )
    return EnvelopeError(
        "signer",
        f"this plan needs {threshold} trusted signatures and has {len(verified)} "
        f"(signed by {short})",
        "have another trusted signer add theirs with `forge key sign FILE`",
    )


def _outer(data: bytes) -> tuple[dict[str, Any], bytes, list[tuple[str, bytes]]]:
    """The envelope, checked field by field: its payload and its (keyid, signature) pairs."""
    envelope = _strict_json(data, "envelope")
    if not isinstance(envelope, dict) or set(envelope) != {"payloadType", "payload", "signatures"}:
        raise EnvelopeError(
            "format", "the plan envelope must hold exactly payloadType, payload and signatures"
        )
    # Whitespace and key order are not signed, so only the one canonical form is accepted.
    if data != _canonical(envelope, "envelope") + b"\n":
        _exact_json(data, "envelope")  # a duplicate field is named, not just "not canonical"
        raise EnvelopeError(
            "format",
            "the plan envelope is not in canonical form",
            "a plan file is written by `forge plan -o`; do not edit it",
        )
    if envelope["payloadType"] != PAYLOAD_TYPE:
        raise EnvelopeError(
            "format",
            f"payloadType is {envelope['payloadType']!r}, not {PAYLOAD_TYPE!r}",
            "this file is not a Forge plan",
        )
    payload = _b64(envelope["payload"], "payload")
    entries = envelope["signatures"]
    if not isinstance(entries, list) or not entries:
        raise EnvelopeError("signature", "the plan carries no signatures")
    signatures: list[tuple[str, bytes]] = []
    for entry in entries:
        if not isinstance(entry, dict) or set(entry) != {"keyid", "sig"}:
            raise EnvelopeError("format", "each signature must hold exactly keyid and sig")
        keyid, sig = entry["keyid"], _b64(entry["sig"], "signature")
        if not isinstance(keyid, str):
            raise EnvelopeError("format", "keyid must be a string")
        if keyid in (k for k, _ in signatures):
            raise EnvelopeError("format", f"key {keyid[:19]}… signed twice")
        signatures.append((keyid, sig))
    return envelope, payload, signatures


def _canonical(value: Any, what: str) -> bytes:
    """The canonical form of parsed input; a string no UTF-8 can hold (a lone surrogate from a
    \\ud800 escape) has none, so the input cannot have been canonical."""
    try:
        return canonical_json(value)
    except (UnicodeEncodeError, ValueError):
        raise EnvelopeError("format", f"the {what} holds text that is not UTF-8") from None


def _b64(value: Any, what: str) -> bytes:
    if not isinstance(value, str):
        raise EnvelopeError("format", f"{what} must be a base64 string")
    try:
        decoded = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise EnvelopeError("format", f"{what} is not valid base64") from None
    if base64.b64encode(decoded).decode() != value:
        raise EnvelopeError("format", f"{what} is not canonical base64")
    return decoded


def _strict_json(data: bytes, what: str) -> Any:
    """Parse JSON; a duplicate field keeps its last value here, and the canonical check that
    every caller makes next refuses it (re-serialised, the duplicate is gone)."""
    try:
        # A plan is some 100,000 objects that all live on: the cyclic collector, run again and
        # again while they are made, would walk them (and the rest of the heap) to free nothing.
        with paused():
            return orjson.loads(data)
    except orjson.JSONDecodeError:
        # Not JSON to orjson (or an integer past 64 bits): the exact parser says which.
        return _exact_json(data, what)


def _exact_json(data: bytes, what: str) -> Any:
    """The slow parse that names what is wrong: a duplicate field, NaN, or where it breaks."""

    def no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        keys = [k for k, _ in pairs]
        if len(keys) != len(set(keys)):
            dup = next(k for k in keys if keys.count(k) > 1)
            raise EnvelopeError("format", f"the {what} has the field {dup!r} twice")
        return dict(pairs)

    def no_constants(name: str) -> Any:
        raise EnvelopeError("format", f"the {what} holds {name}, which JSON does not allow")

    try:
        return json.loads(
            data.decode("utf-8"), object_pairs_hook=no_duplicates, parse_constant=no_constants
        )
    except RecursionError:
        raise EnvelopeError("format", f"the {what} nests too deeply to be a plan") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise EnvelopeError("format", f"the {what} is not JSON: {exc}") from None
