"""Verification before apply, against a real SQLite state and a real key store on disk."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from compiler.envelope import EnvelopeError, add_signature, canonical_json, key_id, seal
from compiler.plan import BuildFacts, ImageFacts, plan
from compiler.version import VERSION
from executor.keys import KeyStore, KeyStoreError
from executor.state import State
from executor.verify import EXIT_CODES, PlanRejected, verify
from forgefile.lower import load

POLICY_DIGEST = "sha256:" + "d" * 64

FORGEFILE = """\
image "base" {
  context = "ctx"
}

network "net" {
  subnet = "10.213.61.0/28"
}

service "web" {
  image    = image.base
  command  = ["httpd", "-f"]
  networks = [network.net]
}
"""


@pytest.fixture
def state(tmp_path: Path) -> Iterator[State]:
    """A fresh state database in tmp_path, closed whatever the test does."""
    opened = State.open(tmp_path / "state" / "forge.db")
    try:
        yield opened
    finally:
        opened.close()


@pytest.fixture
def keys(tmp_path: Path) -> KeyStore:
    """A key store with one trusted signing key, "ci"."""
    store = KeyStore(tmp_path / "keys")
    store.generate("ci")
    return store


def make_plan(
    tmp_path: Path, state: State, created_at: datetime, verdict: str = "pass"
) -> dict[str, Any]:
    """A plan of a small Forgefile against `state`, judged with POLICY_DIGEST."""
    (tmp_path / "ctx").mkdir(exist_ok=True)
    (tmp_path / "Forgefile").write_text(FORGEFILE)
    doc = load(tmp_path / "Forgefile", {}, environ={})
    facts = BuildFacts(
        images={"image.base": ImageFacts(digest="sha256:" + "a" * 64)},
        policy={"verdict": verdict, "digest": POLICY_DIGEST, "evaluated": 1, "findings": []},
    )
    return plan(doc, state.snapshot(), facts, created_at)


def rejection(
    data: bytes, keys: KeyStore, state: State, now: datetime, policy: str | None = POLICY_DIGEST
) -> PlanRejected:
    """Verify `data` and return the PlanRejected it must raise."""
    with pytest.raises(PlanRejected) as caught:
        verify(data, keys, state, now, policy)
    return caught.value


def test_a_fresh_plan_verifies(tmp_path: Path, keys: KeyStore, state: State) -> None:
    """A plan just made against the current state, signed by a trusted key, is accepted."""
    now = datetime.now(UTC)
    document = make_plan(tmp_path, state, now)

    verified = verify(seal(document, [keys.signer("ci")]), keys, state, now, POLICY_DIGEST)

    assert verified.document == document
    assert verified.signers == (keys.list()[0].keyid,)
    assert verified.payload_digest.startswith("sha256:")


def test_a_plan_made_before_another_apply_is_stale(
    tmp_path: Path, keys: KeyStore, state: State
) -> None:
    """Once the state's serial moves on, an older plan is refused as stale with exit code 14."""
    now = datetime.now(UTC)
    data = seal(make_plan(tmp_path, state, now), [keys.signer("ci")])

    state.bump_serial()

    error = rejection(data, keys, state, now)
    assert error.check == "stale"
    assert error.exit_code == 14
    assert "serial 0" in str(error) and "serial 1" in str(error)


def test_a_state_change_without_a_new_serial_is_still_stale(
    tmp_path: Path, keys: KeyStore, state: State
) -> None:
    """A resource written to state since planning makes the plan stale even at the same serial."""
    now = datetime.now(UTC)
    data = seal(make_plan(tmp_path, state, now), [keys.signer("ci")])

    state.put("volume.data", "volume", {}, "sha256:" + "e" * 64, [], {})

    assert rejection(data, keys, state, now).check == "stale"


def test_a_plan_for_another_projects_state_is_stale(
    tmp_path: Path, keys: KeyStore, state: State
) -> None:
    """A plan made against another state database (another lineage) is refused as stale."""
    now = datetime.now(UTC)
    other = State.open(tmp_path / "other" / "forge.db")
    try:
        data = seal(make_plan(tmp_path, other, now), [keys.signer("ci")])
    finally:
        other.close()

    error = rejection(data, keys, state, now)
    assert error.check == "stale"
    assert "another project" in str(error)


def test_a_plan_past_its_expiry_is_refused(tmp_path: Path, keys: KeyStore, state: State) -> None:
    """A plan made two hours ago (it lives one hour) is refused as expired with exit code 13."""
    now = datetime.now(UTC)
    data = seal(make_plan(tmp_path, state, now - timedelta(hours=2)), [keys.signer("ci")])

    error = rejection(data, keys, state, now)
    assert error.check == "expired"
    assert error.exit_code == 13


def test_a_plan_signed_by_an_untrusted_key_is_refused(
    tmp_path: Path, keys: KeyStore, state: State
) -> None:
    """A plan signed by a key that is not in the trust store is refused with exit code 12."""
    now = datetime.now(UTC)
    keys.generate("stranger", trust=False)
    data = seal(make_plan(tmp_path, state, now), [keys.signer("stranger")])

    error = rejection(data, keys, state, now)
    assert error.check == "signer"
    assert error.exit_code == 12


def _flip_payload_char(data: bytes) -> bytes:
    """Change one base64 character in the middle of the payload, keeping it canonical."""
    envelope = json.loads(data)
    payload = bytearray(base64.b64decode(envelope["payload"]))
    payload[len(payload) // 2] ^= 0x40
    envelope["payload"] = base64.b64encode(bytes(payload)).decode()
    return canonical_json(envelope) + b"\n"


@pytest.mark.parametrize(
    ("tamper", "check"),
    [
        pytest.param(_flip_payload_char, "signature", id="payload-byte"),
        pytest.param(lambda d: d[: len(d) // 2], "format", id="truncated"),
        pytest.param(lambda d: d.replace(b'"payload"', b'"Payload"'), "format", id="field-name"),
    ],
)
def test_a_tampered_file_is_refused(
    tmp_path: Path, keys: KeyStore, state: State, tamper: Callable[[bytes], bytes], check: str
) -> None:
    """A changed plan file is refused by the signature or format check, with its exit code."""
    now = datetime.now(UTC)
    data = seal(make_plan(tmp_path, state, now), [keys.signer("ci")])
    changed = tamper(data)
    assert changed != data

    error = rejection(changed, keys, state, now)
    assert error.check == check
    assert error.exit_code == EXIT_CODES[check]


def test_a_changed_policy_is_refused(tmp_path: Path, keys: KeyStore, state: State) -> None:
    """When the policy files' digest differs from the plan's, the plan is refused (exit 15)."""
    now = datetime.now(UTC)
    data = seal(make_plan(tmp_path, state, now), [keys.signer("ci")])

    error = rejection(data, keys, state, now, policy="sha256:" + "f" * 64)
    assert error.check == "policy"
    # Policy files removed since: not "no policy to check", but a policy that is gone.
    gone = rejection(data, keys, state, now, policy=None)
    assert (gone.check, str(gone)) == ("policy", "the policy files that judged this plan are gone")
    assert error.exit_code == 15


def test_a_blocked_verdict_is_refused(tmp_path: Path, keys: KeyStore, state: State) -> None:
    """A plan whose recorded policy verdict is not pass never applies, even if signed."""
    now = datetime.now(UTC)
    data = seal(make_plan(tmp_path, state, now, verdict="block"), [keys.signer("ci")])

    assert rejection(data, keys, state, now).check == "policy"


def _with_version(document: dict[str, Any], version: str) -> dict[str, Any]:
    """The plan as if made by Forge `version`."""
    return {**document, "toolchain": {"name": "forge", "version": version}}


def _bumped(part: int) -> str:
    """VERSION with its major (0), minor (1) or patch (2) number raised by one."""
    numbers = [int(n) for n in VERSION.split(".")]
    numbers[part] += 1
    return ".".join(str(n) for n in numbers)


@pytest.mark.parametrize("part", [0, 1], ids=["major", "minor"])
def test_a_plan_from_another_release_is_refused(
    tmp_path: Path, keys: KeyStore, state: State, part: int
) -> None:
    """A plan made by a Forge whose major or minor version differs is refused (exit 16)."""
    now = datetime.now(UTC)
    document = _with_version(make_plan(tmp_path, state, now), _bumped(part))
    data = seal(document, [keys.signer("ci")])

    error = rejection(data, keys, state, now)
    assert error.check == "toolchain"
    assert error.exit_code == 16


def test_a_plan_from_another_patch_release_verifies(
    tmp_path: Path, keys: KeyStore, state: State
) -> None:
    """A plan made by a Forge that differs only in the patch number is accepted."""
    now = datetime.now(UTC)
    document = _with_version(make_plan(tmp_path, state, now), _bumped(2))

    verified = verify(seal(document, [keys.signer("ci")]), keys, state, now, POLICY_DIGEST)
    assert verified.document["toolchain"]["version"] == _bumped(2)


def test_a_plan_in_another_format_is_refused(tmp_path: Path, keys: KeyStore, state: State) -> None:
    """A plan whose format number this Forge does not read is refused by the toolchain check."""
    now = datetime.now(UTC)
    document = {**make_plan(tmp_path, state, now), "format": 2}

    assert rejection(seal(document, [keys.signer("ci")]), keys, state, now).check == "toolchain"


def test_a_plan_from_the_future_is_refused(tmp_path: Path, keys: KeyStore, state: State) -> None:
    """created_at more than five minutes ahead of this clock is refused with exit code 17."""
    from executor.verify import CLOCK_SKEW

    now = datetime.now(UTC)
    ahead = seal(
        make_plan(tmp_path, state, now + CLOCK_SKEW + timedelta(minutes=1)), [keys.signer("ci")]
    )
    error = rejection(ahead, keys, state, now)
    assert (error.check, error.exit_code) == ("clock", 17)
    slightly = seal(make_plan(tmp_path, state, now + timedelta(minutes=1)), [keys.signer("ci")])
    assert verify(slightly, keys, state, now, POLICY_DIGEST).document["created_at"]


# -- revocation and thresholds ------------------------------------------------------------------


def test_a_plan_by_a_revoked_key_is_refused_and_says_revoked(
    tmp_path: Path, keys: KeyStore, state: State
) -> None:
    now = datetime.now(UTC)
    data = seal(make_plan(tmp_path, state, now), [keys.signer("ci")])
    keyid = keys.revoke("ci", "the laptop was stolen")

    refused = rejection(data, keys, state, now)

    assert (refused.check, refused.exit_code) == ("signer", 12)
    assert "signed by the revoked key" in str(refused)
    assert keyid not in keys.trusted()
    record = json.loads((tmp_path / "keys" / "revoked" / f"{keyid[7:]}.json").read_text())
    assert record["reason"] == "the laptop was stolen"


def test_a_revoked_key_cannot_be_trusted_again(keys: KeyStore, tmp_path: Path) -> None:
    keys.revoke("ci", "leaked")
    with pytest.raises(KeyStoreError, match="never trusted again"):
        keys.trust((tmp_path / "keys" / "ci.pub").read_bytes())
    [info] = keys.list()
    assert (info.name, info.trusted, info.revoked) == ("ci", False, True)


def test_a_key_is_revoked_by_name_or_id_prefix_and_needs_a_reason(keys: KeyStore) -> None:
    keyid = keys.list()[0].keyid
    with pytest.raises(KeyStoreError, match="say why"):
        keys.revoke("ci", "  ")
    with pytest.raises(KeyStoreError, match="at least 8 hex digits"):
        keys.revoke(keyid[7:12], "too short to be sure")
    assert keys.revoke(keyid[7:19], "by prefix") == keyid


def test_a_threshold_needs_that_many_trusted_signatures(
    tmp_path: Path, keys: KeyStore, state: State
) -> None:
    """Two of three: one signature is refused with how many it has; a co-signature passes."""
    keys.generate("alice")
    keys.generate("bob")
    keys.set_threshold(2)
    now = datetime.now(UTC)
    one = seal(make_plan(tmp_path, state, now), [keys.signer("ci")])

    refused = rejection(one, keys, state, now)
    assert refused.check == "signer"
    assert "needs 2 trusted signatures and has 1" in str(refused)
    assert "forge key sign" in refused.hint

    two = add_signature(one, keys.signer("bob"))
    verified = verify(two, keys, state, now, POLICY_DIGEST)
    assert len(verified.signers) == 2

    keys.revoke("bob", "left the team")  # a revoked co-signer no longer counts
    assert "has 1" in str(rejection(two, keys, state, now))


def test_a_threshold_above_the_trusted_keys_is_refused(keys: KeyStore) -> None:
    with pytest.raises(KeyStoreError, match="1 are trusted"):
        keys.set_threshold(2)
    assert keys.threshold() == 1


def test_the_same_key_cannot_sign_twice(tmp_path: Path, keys: KeyStore, state: State) -> None:
    data = seal(make_plan(tmp_path, state, datetime.now(UTC)), [keys.signer("ci")])
    with pytest.raises(EnvelopeError, match="already signed"):
        add_signature(data, keys.signer("ci"))


def test_a_passphrase_for_one_key_does_not_break_a_key_without_one(keys: KeyStore) -> None:
    """FORGE_KEY_PASSPHRASE is set for the protected key; the plain one is read without it."""
    keys.generate("safe", passphrase=b"s3cret")
    both = keys.signers(["safe", "ci"], b"s3cret")
    assert len({key_id(k.public_key()) for k in both}) == 2
    with pytest.raises(KeyStoreError, match="passphrase"):
        keys.signer("safe")


def test_a_revoked_key_signs_nothing_and_cannot_be_revoked_twice(keys: KeyStore) -> None:
    keys.revoke("ci", "lost")
    with pytest.raises(KeyStoreError, match="signs nothing"):
        keys.signer("ci")
    with pytest.raises(KeyStoreError, match="already revoked"):
        keys.revoke("ci", "again")


def test_a_revoked_key_is_not_one_of_the_keys_to_choose_from(keys: KeyStore) -> None:
    """With ci revoked and a second key made, signing needs no --key: only one can sign."""
    keys.generate("next")
    keys.revoke("ci", "rotated")
    assert key_id(keys.signer().public_key()) == key_id(keys.signer("next").public_key())
