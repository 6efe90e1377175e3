"""Signing keys and the trust store.

Private keys are PEM files with mode 0600, optionally encrypted with a passphrase; a key's id is
the SHA-256 of its public key. The trust store is a folder of public keys: `forge apply`
accepts a plan only when enough keys in it signed the plan (the threshold, one by default).
A revoked key's public key moves to a folder of its own and can never be trusted again.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from compiler.envelope import key_id

from .errors import ExecutorError


class KeyStoreError(ExecutorError):
    """A key is missing, unreadable, or protected by a passphrase that was not given."""


@dataclass(frozen=True)
class KeyInfo:
    name: str
    keyid: str
    trusted: bool
    private: bool
    revoked: bool = False


class KeyStore:
    """Keys in `<state>/keys/NAME.key|.pub`, trusted public keys in `<state>/keys/trusted/`,
    revoked ones in `<state>/keys/revoked/`, the threshold in `<state>/keys/trust.json`."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.trusted_dir = root / "trusted"
        self.revoked_dir = root / "revoked"
        self.policy_file = root / "trust.json"

    def generate(self, name: str, passphrase: bytes | None = None, trust: bool = True) -> KeyInfo:
        if not name.replace("-", "").replace("_", "").isalnum():
            raise KeyStoreError(f"`{name}` is not a valid key name; use letters, digits, - and _")
        private_path = self.root / f"{name}.key"
        if private_path.exists():
            raise KeyStoreError(
                f"a key named {name} already exists at {private_path}",
            )
        key = Ed25519PrivateKey.generate()
        encryption: serialization.KeySerializationEncryption = (
            serialization.BestAvailableEncryption(passphrase)
            if passphrase
            else serialization.NoEncryption()
        )
        pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption
        )
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as out:
            out.write(pem)
        public_pem = _public_pem(key.public_key())
        (self.root / f"{name}.pub").write_bytes(public_pem)
        if trust:
            self.trust(public_pem)
        return KeyInfo(name, key_id(key.public_key()), trust, True)

    def trust(self, public_pem: bytes) -> str:
        key = _load_public(public_pem)
        keyid = key_id(key)
        if keyid in self.revoked():
            raise KeyStoreError(
                f"key {keyid[:19]}… was revoked, and a revoked key is never trusted again; "
                "its owner makes a new one with `forge key generate`"
            )
        self.trusted_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        (self.trusted_dir / f"{keyid.split(':')[1]}.pub").write_bytes(_public_pem(key))
        return keyid

    def trusted(self) -> dict[str, Ed25519PublicKey]:
        revoked = self.revoked()
        keys: dict[str, Ed25519PublicKey] = {}
        for path in sorted(self.trusted_dir.glob("*.pub")):
            key = _load_public(path.read_bytes())
            if key_id(key) not in revoked:
                keys[key_id(key)] = key
        return keys

    def revoke(self, which: str, reason: str) -> str:
        """Stop trusting a key for good: by its name, its id, or a prefix of its id."""
        if not reason.strip():
            raise KeyStoreError("say why the key is revoked: --reason TEXT")
        key = self._find_public(which)
        keyid = key_id(key)
        hexid = keyid.split(":")[1]
        if keyid in self.revoked():
            raise KeyStoreError(f"key {keyid[:19]}… is already revoked; its record stays as it is")
        self.revoked_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        record = {"keyid": keyid, "at": datetime.now(UTC).isoformat(), "reason": reason.strip()}
        (self.revoked_dir / f"{hexid}.pub").write_bytes(_public_pem(key))
        (self.revoked_dir / f"{hexid}.json").write_text(json.dumps(record, indent=2) + "\n")
        (self.trusted_dir / f"{hexid}.pub").unlink(missing_ok=True)
        return keyid

    def revoked(self) -> set[str]:
        return {"sha256:" + p.stem for p in self.revoked_dir.glob("*.pub")}

    def revoked_keys(self) -> dict[str, tuple[Ed25519PublicKey, str]]:
        """Revoked keys with the time of their revocation: what they signed before it stands."""
        found = {}
        for path in sorted(self.revoked_dir.glob("*.pub")):
            try:
                at = str(json.loads(path.with_suffix(".json").read_text())["at"])
            except (OSError, ValueError, KeyError):
                at = ""  # no record of when: nothing it signed is taken on trust
            found["sha256:" + path.stem] = (_load_public(path.read_bytes()), at)
        return found

    def threshold(self) -> int:
        """How many trusted keys must sign a plan for apply to accept it."""
        try:
            data = json.loads(self.policy_file.read_text())
        except FileNotFoundError:
            return 1
        except (OSError, ValueError) as exc:
            raise KeyStoreError(f"cannot read the trust policy {self.policy_file}: {exc}") from None
        value = data.get("threshold") if isinstance(data, dict) else None
        if type(value) is not int or value < 1:
            raise KeyStoreError(
                f"the trust policy {self.policy_file} needs a threshold of 1 or more; "
                "set it with `forge key threshold N`"
            )
        return value

    def set_threshold(self, count: int) -> None:
        trusted = len(self.trusted())
        if count < 1:
            raise KeyStoreError("the threshold is at least 1")
        if count > trusted:
            raise KeyStoreError(
                f"a threshold of {count} needs {count} trusted keys, and {trusted} are trusted; "
                "trust more with `forge key trust` first"
            )
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.policy_file.write_text(json.dumps({"threshold": count}) + "\n")

    def _find_public(self, which: str) -> Ed25519PublicKey:
        named = self.root / f"{which}.pub"
        if "/" not in which and named.is_file():
            return _load_public(named.read_bytes())
        wanted = which.removeprefix("sha256:")
        found = {
            key_id(key): key
            for folder in (self.trusted_dir, self.root)
            for path in folder.glob("*.pub")
            if key_id(key := _load_public(path.read_bytes()))
            .removeprefix("sha256:")
            .startswith(wanted)
        }
        if len(wanted) >= 8 and len(found) == 1:
            return next(iter(found.values()))
        raise KeyStoreError(
            f"no single key is named or has an id starting with `{which}`; "
            "`forge key list` shows names and ids (give at least 8 hex digits)"
        )

    def signers(
        self, names: list[str] | None = None, passphrase: bytes | None = None
    ) -> list[Ed25519PrivateKey]:
        """The named private keys (each once), or the only one there is."""
        if not names:
            return [self.signer(None, passphrase)]
        return [self.signer(name, passphrase) for name in dict.fromkeys(names)]

    def signer(self, name: str | None = None, passphrase: bytes | None = None) -> Ed25519PrivateKey:
        """The named private key, or the only one there is."""
        candidates = sorted(self.root.glob("*.key"))
        if name is not None:
            candidates = [p for p in candidates if p.stem == name]
        if name is None and len(candidates) > 1:
            # A revoked key signs nothing: it does not count among the keys to choose from.
            revoked = self.revoked()
            candidates = [p for p in candidates if self._keyid_of(p.stem) not in revoked]
        if not candidates:
            raise KeyStoreError(
                f"no signing key{' named ' + name if name else ''} in {self.root}; "
                "run `forge key generate`"
            )
        if len(candidates) > 1:
            names = ", ".join(p.stem for p in candidates)
            raise KeyStoreError(f"several signing keys ({names}); choose one with --key NAME")
        data = candidates[0].read_bytes()
        # FORGE_KEY_PASSPHRASE may be set for another key of the same command: a key without one
        # is read without it.
        encrypted = b"ENCRYPTED" in data.split(b"\n", 1)[0]
        try:
            key = serialization.load_pem_private_key(
                data, password=passphrase if encrypted else None
            )
        except TypeError:
            raise KeyStoreError(
                f"key {candidates[0].stem} is protected by a passphrase; set FORGE_KEY_PASSPHRASE"
            ) from None
        except ValueError as exc:
            raise KeyStoreError(f"cannot load key {candidates[0]}: {exc}") from None
        if not isinstance(key, Ed25519PrivateKey):
            raise KeyStoreError(f"{candidates[0]} is not an Ed25519 key")
        if key_id(key.public_key()) in self.revoked():
            raise KeyStoreError(
                f"key {candidates[0].stem} was revoked, and a revoked key signs nothing; "
                "sign with another key, or generate a new one"
            )
        return key

    def _keyid_of(self, name: str) -> str | None:
        try:
            return key_id(_load_public((self.root / f"{name}.pub").read_bytes()))
        except (OSError, ValueError):
            return None

    def list(self) -> list[KeyInfo]:
        """This project's own keys, then the trusted and revoked keys of other signers."""
        trusted, revoked = self.trusted(), self.revoked()
        infos = []
        for pub in sorted(self.root.glob("*.pub")):
            keyid = key_id(_load_public(pub.read_bytes()))
            private = (self.root / f"{pub.stem}.key").exists()
            infos.append(KeyInfo(pub.stem, keyid, keyid in trusted, private, keyid in revoked))
        own = {info.keyid for info in infos}
        infos += [KeyInfo("", k, True, False) for k in sorted(trusted) if k not in own]
        infos += [KeyInfo("", k, False, False, True) for k in sorted(revoked) if k not in own]
        return infos


def _public_pem(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _load_public(data: bytes) -> Ed25519PublicKey:
    try:
        key = serialization.load_pem_public_key(data)
    except ValueError:
        raise KeyStoreError(
            "this is not a PEM public key; trust the NAME.pub that `forge key generate` wrote "
            "(never a .key file)"
        ) from None
    if not isinstance(key, Ed25519PublicKey):
        raise KeyStoreError("only Ed25519 public keys can be trusted")
    return key
