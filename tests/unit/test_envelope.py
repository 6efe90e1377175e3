"""Plan envelopes: seal and open round trip, and every way a changed envelope must be refused."""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Callable
from typing import Any

import pytest
import zstandard
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from hypothesis import given, settings
from hypothesis import strategies as st

from compiler.envelope import (
    PAYLOAD_TYPE,
    EnvelopeError,
    canonical_json,
    key_id,
    open_envelope,
    pae,
    seal,
)

# Fixed seeds, so the envelope under test is the same bytes on every run.
KEY = Ed25519PrivateKey.from_private_bytes(bytes([1]) * 32)
OTHER = Ed25519PrivateKey.from_private_bytes(bytes([2]) * 32)
DOCUMENT: dict[str, Any] = {
    "format": 1,
    "created_at": "2024-05-01T12:00:00Z",
    "actions": [{"address": "service.web", "action": "create", "argv": ["httpd", "-f"]}],
    "outputs": {"greeting": {"value": "héllo", "sensitive": False}},
}
ENVELOPE = seal(DOCUMENT, [KEY])


def trusted(*keys: Ed25519PrivateKey) -> dict[str, Ed25519PublicKey]:
    """A trust store holding the public halves of `keys`."""
    return {key_id(k.public_key()): k.public_key() for k in keys}


def fields(envelope: bytes = ENVELOPE) -> dict[str, Any]:
    """The envelope's JSON as a dict, for tests that change one field."""
    decoded: dict[str, Any] = json.loads(envelope)
    return decoded


def encode(envelope: dict[str, Any]) -> bytes:
    """Serialise a hand-changed envelope exactly as `seal` would."""
    return canonical_json(envelope) + b"\n"


def refusal(data: bytes, keys: dict[str, Ed25519PublicKey] | None = None) -> EnvelopeError:
    """Open `data` and return the EnvelopeError it must raise."""
    with pytest.raises(EnvelopeError) as caught:
        open_envelope(data, trusted(KEY) if keys is None else keys)
    return caught.value


def test_seal_then_open_returns_the_document_and_signer() -> None:
    """Opening a sealed envelope gives back the document, the signer and the payload digest."""
    opened = open_envelope(ENVELOPE, trusted(KEY))

    assert opened.document == DOCUMENT
    assert opened.signers == (key_id(KEY.public_key()),)
    payload = base64.b64decode(fields()["payload"])
    assert opened.payload_digest == "sha256:" + hashlib.sha256(payload).hexdigest()
    assert zstandard.ZstdDecompressor().decompress(payload) == canonical_json(DOCUMENT)


def test_sealing_is_deterministic() -> None:
    """The same document and key give byte-identical envelopes: Ed25519 is deterministic."""
    again = Ed25519PrivateKey.from_private_bytes(bytes([1]) * 32)
    reordered = dict(reversed(list(DOCUMENT.items())))

    assert seal(DOCUMENT, [KEY]) == ENVELOPE
    assert seal(reordered, [again]) == ENVELOPE
    assert seal(DOCUMENT, [OTHER]) != ENVELOPE


def test_sealing_without_a_key_is_refused() -> None:
    """A plan cannot be sealed with no signing key at all."""
    with pytest.raises(EnvelopeError) as caught:
        seal(DOCUMENT, [])
    assert caught.value.check == "signature"


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_changing_any_byte_before_the_newline_is_refused(data: st.DataObject) -> None:
    """Any single byte of the envelope's JSON replaced by another value makes it fail to open."""
    position = data.draw(st.integers(0, len(ENVELOPE) - 2), label="position")
    value = data.draw(st.integers(0, 255).filter(lambda v: v != ENVELOPE[position]), label="value")
    changed = ENVELOPE[:position] + bytes([value]) + ENVELOPE[position + 1 :]

    refusal(changed)


def test_changing_the_final_newline_is_refused() -> None:
    """Replacing the envelope's trailing newline with any other byte makes it fail to open."""
    assert ENVELOPE.endswith(b"\n")
    opened = []
    for value in range(256):
        if value == ord("\n"):
            continue
        try:
            open_envelope(ENVELOPE[:-1] + bytes([value]), trusted(KEY))
        except EnvelopeError:
            continue
        opened.append(value)
    assert opened == []


def test_a_changed_payload_with_valid_base64_fails_the_signature() -> None:
    """A payload changed by one byte, re-encoded as canonical base64, fails the signature."""
    envelope = fields()
    payload = bytearray(base64.b64decode(envelope["payload"]))
    payload[len(payload) // 2] ^= 0x01
    envelope["payload"] = base64.b64encode(bytes(payload)).decode()

    assert refusal(encode(envelope)).check == "signature"


@pytest.mark.parametrize(
    "change",
    [
        pytest.param(lambda e: {**e, "extra": 1}, id="envelope"),
        pytest.param(
            lambda e: {**e, "signatures": [{**e["signatures"][0], "cert": ""}]}, id="signature"
        ),
    ],
)
def test_an_unknown_field_is_refused(change: Callable[[dict[str, Any]], dict[str, Any]]) -> None:
    """A field the format does not define, in the envelope or a signature, is refused."""
    assert refusal(encode(change(fields()))).check == "format"


def test_a_duplicate_field_is_refused() -> None:
    """A field written twice in hand-made JSON is refused, even when both values agree."""
    envelope = fields()
    text = canonical_json(envelope).decode()
    duplicated = text.replace('"payloadType":', f'"payloadType":"{PAYLOAD_TYPE}","payloadType":', 1)
    assert duplicated != text

    error = refusal(duplicated.encode())
    assert error.check == "format"
    assert "payloadType" in str(error)


def test_a_duplicate_field_in_a_signature_is_refused() -> None:
    """A signature entry with its keyid written twice is refused."""
    envelope = fields()
    keyid = envelope["signatures"][0]["keyid"]
    text = canonical_json(envelope).decode()
    duplicated = text.replace('"keyid":', f'"keyid":"{keyid}","keyid":', 1)

    assert refusal(duplicated.encode()).check == "format"


def _last_data_char_bumped(value: str) -> str:
    """Change only the unused low bits before the padding: same bytes, non-canonical text."""
    stripped = value.rstrip("=")
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    bumped = alphabet[alphabet.index(stripped[-1]) + 1]
    return stripped[:-1] + bumped + value[len(stripped) :]


BASE64_VARIANTS: dict[str, Callable[[str], str]] = {
    "padding-removed": lambda v: v.rstrip("="),
    "padding-added": lambda v: v + "=",
    "trailing-newline": lambda v: v + "\n",
    "wrapped-line": lambda v: v[:76] + "\n" + v[76:],
    "unused-bits-set": _last_data_char_bumped,
}


@pytest.mark.parametrize("variant", sorted(BASE64_VARIANTS))
def test_non_canonical_base64_in_a_signature_is_refused(variant: str) -> None:
    """A signature in base64 that decodes leniently but is not the canonical text is refused."""
    envelope = fields()
    sig = envelope["signatures"][0]["sig"]
    assert sig.endswith("==")  # 64 bytes of signature leave one byte in the last group
    changed = BASE64_VARIANTS[variant](sig)
    assert changed != sig
    envelope["signatures"][0]["sig"] = changed

    assert refusal(encode(envelope)).check == "format"


@pytest.mark.parametrize("variant", ["trailing-newline", "wrapped-line", "padding-added"])
def test_non_canonical_base64_in_the_payload_is_refused(variant: str) -> None:
    """A payload in base64 that is not the canonical text is refused."""
    envelope = fields()
    envelope["payload"] = BASE64_VARIANTS[variant](envelope["payload"])

    assert refusal(encode(envelope)).check == "format"


@pytest.mark.parametrize(
    "payload_type", ["application/vnd.in-toto+json", PAYLOAD_TYPE + " ", "", None]
)
def test_a_wrong_payload_type_is_refused(payload_type: str | None) -> None:
    """An envelope whose payloadType is not a Forge plan's is refused as the wrong format."""
    envelope = {**fields(), "payloadType": payload_type}

    assert refusal(encode(envelope)).check == "format"


def test_an_untrusted_signer_is_refused() -> None:
    """A correct signature by a key outside the trust store is refused with check "signer"."""
    assert refusal(ENVELOPE, trusted(OTHER)).check == "signer"
    assert refusal(ENVELOPE, {}).check == "signer"


def test_a_trusted_keyid_over_another_keys_signature_is_refused() -> None:
    """A signature by one key, labelled with a trusted key's id, does not verify."""
    envelope = fields(seal(DOCUMENT, [OTHER]))
    envelope["signatures"][0]["keyid"] = key_id(KEY.public_key())

    assert refusal(encode(envelope)).check == "signature"


def _sealed_raw(raw: bytes, key: Ed25519PrivateKey = KEY) -> bytes:
    """An envelope correctly signed over `raw`, whatever JSON text it is."""
    payload = zstandard.ZstdCompressor().compress(raw)
    sig = key.sign(pae(PAYLOAD_TYPE, payload))
    return encode(
        {
            "payloadType": PAYLOAD_TYPE,
            "payload": base64.b64encode(payload).decode(),
            "signatures": [
                {"keyid": key_id(key.public_key()), "sig": base64.b64encode(sig).decode()}
            ],
        }
    )


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param(b'{"format": 1, "actions": []}', id="spaces"),
        pytest.param(b'{"format":1,"actions":[]}', id="unsorted-keys"),
        pytest.param(b'{"name":"h\\u00e9llo"}', id="escaped-unicode"),
        pytest.param(b'{"actions":[]}\n', id="trailing-newline"),
        pytest.param(b'{"actions":[],"actions":[]}', id="duplicate-key"),
        pytest.param(b"[1,2]", id="not-an-object"),
    ],
)
def test_a_signed_non_canonical_payload_is_refused(raw: bytes) -> None:
    """A valid signature over a payload that is not canonical JSON of an object is refused."""
    assert refusal(_sealed_raw(raw)).check == "format"


def test_a_signed_canonical_payload_built_by_hand_opens() -> None:
    """An envelope built by hand opens when its signed payload is canonical JSON (the control)."""
    raw = canonical_json({"format": 1, "actions": []})

    assert open_envelope(_sealed_raw(raw), trusted(KEY)).document == {"format": 1, "actions": []}


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ('{"payload":"\\ud800","payloadType":"x","signatures":[]}', "not UTF-8"),
        ('{"payload":"x","payloadType":"x","signatures":[],"n":18446744073709551616}', ""),
        ('{"payload":"x","payloadType":NaN,"signatures":[]}', "NaN"),
    ],
    ids=["lone-surrogate", "past-64-bits", "nan"],
)
def test_json_the_fast_parser_does_not_take_is_refused_cleanly(text: str, says: str) -> None:
    """What orjson refuses goes through the exact parser: a clean refusal, never a crash."""
    error = refusal(text.encode() + b"\n")
    assert error.check == "format"
    assert says in str(error)


def test_canonical_json_is_the_same_bytes_as_before_for_plan_values() -> None:
    """orjson writes what json.dumps(sort_keys, no spaces, UTF-8) wrote, so digests hold."""
    import json

    value = {
        "b": [1, 2.5, -0.0, 0.1 + 0.2, 10**15, True, None],
        "a": {"é": '\u2028\u001b"\\/', "z": "日本", "k": ""},
    }
    old = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    assert canonical_json(value) == old.encode()
    assert canonical_json({"n": 2**70}) == b'{"n":1180591620717411303424}'  # json.dumps path
