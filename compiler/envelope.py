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

import zstandard
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

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
    """One byte sequence per value: sorted keys, no spaces, UTF-8, no NaN."""
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


def open_envelope(data: bytes, trusted: dict[str, Ed25519PublicKey], threshold: int = 1) -> Opened:
    """Verify an envelope against trusted keys and return its plan document."""
    envelope = _strict_json(data, "envelope")
    if not isinstance(envelope, dict) or set(envelope) != {"payloadType", "payload", "signatures"}:
        raise EnvelopeError(
            "format", "the plan envelope must hold exactly payloadType, payload and signatures"
        )
    # Whitespace and key order are not signed, so only the one canonical form is accepted.
    if data != canonical_json(envelope) + b"\n":
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
    signatures = envelope["signatures"]
    if not isinstance(signatures, list) or not signatures:
        raise EnvelopeError("signature", "the plan carries no signatures")
    message = pae(PAYLOAD_TYPE, payload)
    verified: list[str] = []
    for entry in signatures:
        if not isinstance(entry, dict) or set(entry) != {"keyid", "sig"}:
            raise EnvelopeError("format", "each signature must hold exactly keyid and sig")
        keyid, sig = entry["keyid"], _b64(entry["sig"], "signature")
        if not isinstance(keyid, str):
            raise EnvelopeError("format", "keyid must be a string")
        key = trusted.get(keyid)
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
        if keyid in verified:
            raise EnvelopeError("format", f"key {keyid[:19]}… signed twice")
        verified.append(keyid)
    if len(verified) < threshold:
        ids = ", ".join(
            str(s.get("keyid", "?"))[:19] + "…" for s in signatures if isinstance(s, dict)
        )
        raise EnvelopeError(
            "signer",
            f"no trusted key signed this plan (signed by {ids})",
            "trust the signer's key with `forge key trust`, or plan again with a trusted key",
        )
    try:
        raw = zstandard.ZstdDecompressor().decompress(payload, max_output_size=MAX_PAYLOAD)
    except zstandard.ZstdError as exc:
        raise EnvelopeError("format", f"the payload does not decompress: {exc}") from None
    document = _strict_json(raw, "plan")
    if not isinstance(document, dict) or canonical_json(document) != raw:
        raise EnvelopeError("format", "the plan payload is not canonical JSON")
    return Opened(document, tuple(verified), "sha256:" + hashlib.sha256(payload).hexdigest())


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
