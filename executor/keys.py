"""Signing keys and the trust store.

Private keys are PEM files with mode 0600, optionally encrypted with a passphrase; a key's id is
the SHA-256 of its public key. The trust store is a folder of public keys: `forge apply`
accepts a plan only when a key in it signed the plan.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
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


class KeyStore:
    """Keys in `<state>/keys/NAME.key|.pub`, trusted public keys in `<state>/keys/trusted/`."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.trusted_dir = root / "trusted"

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
        self.trusted_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        (self.trusted_dir / f"{keyid.split(':')[1]}.pub").write_bytes(_public_pem(key))
        return keyid

    def trusted(self) -> dict[str, Ed25519PublicKey]:
        keys: dict[str, Ed25519PublicKey] = {}
        for path in sorted(self.trusted_dir.glob("*.pub")):
            key = _load_public(path.read_bytes())
            keys[key_id(key)] = key
        return keys

    def signer(self, name: str | None = None, passphrase: bytes | None = None) -> Ed25519PrivateKey:
        """The named private key, or the only one there is."""
        candidates = sorted(self.root.glob("*.key"))
        if name is not None:
            candidates = [p for p in candidates if p.stem == name]
        if not candidates:
            raise KeyStoreError(
                f"no signing key{' named ' + name if name else ''} in {self.root}; "
                "run `forge key generate`"
            )
        if len(candidates) > 1:
            names = ", ".join(p.stem for p in candidates)
            raise KeyStoreError(f"several signing keys ({names}); choose one with --key NAME")
        data = candidates[0].read_bytes()
        try:
            key = serialization.load_pem_private_key(data, password=passphrase)
        except TypeError:
            raise KeyStoreError(
                f"key {candidates[0].stem} is protected by a passphrase; set FORGE_KEY_PASSPHRASE"
            ) from None
        except ValueError as exc:
            raise KeyStoreError(f"cannot load key {candidates[0]}: {exc}") from None
        if not isinstance(key, Ed25519PrivateKey):
            raise KeyStoreError(f"{candidates[0]} is not an Ed25519 key")
        return key

    def list(self) -> list[KeyInfo]:
        trusted = self.trusted()
        infos = []
        for pub in sorted(self.root.glob("*.pub")):
            keyid = key_id(_load_public(pub.read_bytes()))
            infos.append(
                KeyInfo(pub.stem, keyid, keyid in trusted, (self.root / f"{pub.stem}.key").exists())
            )
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
