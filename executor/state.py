"""The state store: one SQLite database per project.

It holds the lineage and serial that plans are bound to, every applied resource with its spec
and runtime ids, and an append-only event log. The digest that a plan records covers the
lineage, the serial and each resource's spec digest: anything an apply changes moves the serial,
so a plan made before another apply is refused as stale.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import fcntl
import getpass
import hashlib
import json
import os
import secrets
import signal
import socket
import sqlite3
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import sqlite_utils
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from compiler.envelope import canonical_json, key_id
from compiler.plan import StateResource, StateSnapshot

from .errors import ExecutorError

# 2: events carry `prev` and `hash`, a chain an edit cannot hide in.
# 3: a snapshot of the resources and outputs at every serial.
# 4: each snapshot names the plan whose apply made it, so a rollback can reuse its verdict.
SCHEMA_VERSION = 4


class StateError(ExecutorError):
    """The state database is locked, unreadable or from an incompatible version."""


@dataclass(frozen=True)
class Record:
    """One applied resource as stored: the planner's view plus the executor's runtime ids."""

    address: str
    kind: str
    spec: dict[str, Any]
    spec_digest: str
    depends_on: tuple[str, ...]
    runtime: dict[str, Any]
    updated_at: str


def now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class State:
    """A project's state database; open it with `State.open(path)`."""

    def __init__(self, db: sqlite_utils.Database, path: Path) -> None:
        self.db = db
        self.path = path

    @classmethod
    def open(cls, path: Path) -> State:
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            # One connection, which an apply's workers share under a lock (see apply.py).
            db = sqlite_utils.Database(sqlite3.connect(str(path), check_same_thread=False))
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA busy_timeout=5000")
        except Exception as exc:  # sqlite3.DatabaseError and friends
            raise StateError(f"cannot open the state database {path}: {exc}") from None
        state = cls(db, path)
        state._migrate()
        return state

    def close(self) -> None:
        self.db.close()

    def _migrate(self) -> None:
        with self.db.conn:
            self.db.execute(
                "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)"
            )
            self.db.execute(
                "CREATE TABLE IF NOT EXISTS resources (address TEXT PRIMARY KEY, kind TEXT NOT "
                "NULL, spec TEXT NOT NULL, spec_digest TEXT NOT NULL, depends_on TEXT NOT NULL, "
                "runtime TEXT NOT NULL, updated_at TEXT NOT NULL)"
            )
            self.db.execute(
                "CREATE TABLE IF NOT EXISTS events (id INTEGER PRIMARY KEY AUTOINCREMENT, at "
                "TEXT NOT NULL, serial INTEGER NOT NULL, kind TEXT NOT NULL, address TEXT, "
                "detail TEXT NOT NULL)"
            )
            meta = self._meta()
            if "schema" not in meta:
                self._set_meta("schema", str(SCHEMA_VERSION))
                self._set_meta("lineage", str(uuid.uuid4()))
                self._set_meta("serial", "0")
            elif int(meta["schema"]) > SCHEMA_VERSION:
                raise StateError(
                    f"{self.path} was written by a newer Forge (state schema "
                    f"{meta['schema']}); upgrade Forge"
                )
            self.db.execute(
                "CREATE TABLE IF NOT EXISTS snapshots (serial INTEGER PRIMARY KEY, at TEXT NOT "
                "NULL, digest TEXT NOT NULL, body TEXT NOT NULL)"
            )
            self.db.execute(
                "CREATE TABLE IF NOT EXISTS plans (id INTEGER PRIMARY KEY AUTOINCREMENT, at TEXT "
                "NOT NULL, payload_digest TEXT NOT NULL, envelope BLOB NOT NULL)"
            )
            self.db.execute(
                "CREATE TABLE IF NOT EXISTS journal (id INTEGER PRIMARY KEY AUTOINCREMENT, at "
                "TEXT NOT NULL, address TEXT NOT NULL, kind TEXT NOT NULL, step TEXT NOT NULL, "
                "runtime TEXT NOT NULL, outcome TEXT)"
            )
            self.db.execute(
                "CREATE TABLE IF NOT EXISTS checkpoints (id INTEGER PRIMARY KEY AUTOINCREMENT, "
                "event_id INTEGER NOT NULL, head TEXT NOT NULL, at TEXT NOT NULL, keyid TEXT NOT "
                "NULL, sig TEXT NOT NULL)"
            )
            if "plan" not in {row[1] for row in self.db.execute("PRAGMA table_info(snapshots)")}:
                self.db.execute("ALTER TABLE snapshots ADD COLUMN plan TEXT")
            if int(meta.get("schema", SCHEMA_VERSION)) < 3:
                # Earlier serials were never kept; the one there is, is kept from now on.
                self._snapshot()
            if int(meta.get("schema", SCHEMA_VERSION)) < SCHEMA_VERSION:
                self._set_meta("schema", str(SCHEMA_VERSION))
            columns = {row[1] for row in self.db.execute("PRAGMA table_info(events)")}
            if "hash" not in columns:
                self.db.execute("ALTER TABLE events ADD COLUMN prev TEXT")
                self.db.execute("ALTER TABLE events ADD COLUMN hash TEXT")
                # Events written before the chain existed are chained now, as they stand.
                prev = self._genesis()
                for row in self.db.execute(f"SELECT {_EVENT_COLUMNS} FROM events ORDER BY id"):
                    digest = event_hash(prev, row)
                    self.db.execute(
                        "UPDATE events SET prev = ?, hash = ? WHERE id = ?", [prev, digest, row[0]]
                    )
                    prev = digest
                self._set_meta("schema", str(SCHEMA_VERSION))

    def _meta(self) -> dict[str, str]:
        return {row[0]: row[1] for row in self.db.execute("SELECT key, value FROM meta")}

    def _set_meta(self, key: str, value: str) -> None:
        self.db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", [key, value])

    @property
    def lineage(self) -> str:
        return self._meta()["lineage"]

    @property
    def serial(self) -> int:
        try:
            return int(self._meta()["serial"])
        except (KeyError, ValueError):
            raise self._damaged("its serial is not a number") from None

    def _damaged(self, what: str) -> StateError:
        return StateError(
            f"the state database {self.path} is damaged: {what}",
            hint="restore it from a backup; `forge audit verify` shows whether the log was "
            "changed too",
        )

    def records(self) -> dict[str, Record]:
        rows = self.db.execute(
            "SELECT address, kind, spec, spec_digest, depends_on, runtime, updated_at "
            "FROM resources ORDER BY address"
        ).fetchall()
        try:
            return {
                row[0]: Record(
                    row[0],
                    row[1],
                    json.loads(row[2]),
                    row[3],
                    tuple(json.loads(row[4])),
                    json.loads(row[5]),
                    row[6],
                )
                for row in rows
            }
        except (ValueError, TypeError):
            raise self._damaged("a resource's record is not the JSON Forge wrote") from None

    def digest(self) -> str:
        """What a plan is bound to: lineage, serial and every resource's spec digest."""
        specs = {a: r.spec_digest for a, r in self.records().items()}
        return state_digest(self.lineage, self.serial, specs)

    def snapshot(self, live: dict[str, tuple[bool | None, str]] | None = None) -> StateSnapshot:
        """The planner's view of state; `live` says which workloads are running right now."""
        live = live or {}
        return StateSnapshot(
            lineage=self.lineage,
            serial=self.serial,
            digest=self.digest(),
            resources={
                a: StateResource(
                    a, r.kind, r.spec, r.spec_digest, r.depends_on, *live.get(a, (None, ""))
                )
                for a, r in self.records().items()
            },
        )

    # -- writes ---------------------------------------------------------------------------------

    def put(
        self,
        address: str,
        kind: str,
        spec: dict[str, Any],
        spec_digest: str,
        depends_on: list[str],
        runtime: dict[str, Any],
    ) -> None:
        with self.db.conn:
            self.db.execute(
                "INSERT OR REPLACE INTO resources VALUES (?, ?, ?, ?, ?, ?, ?)",
                [
                    address,
                    kind,
                    json.dumps(spec, sort_keys=True),
                    spec_digest,
                    json.dumps(depends_on),
                    json.dumps(runtime, sort_keys=True),
                    now(),
                ],
            )

    def set_runtime(self, address: str, runtime: dict[str, Any]) -> None:
        with self.db.conn:
            self.db.execute(
                "UPDATE resources SET runtime = ?, updated_at = ? WHERE address = ?",
                [json.dumps(runtime, sort_keys=True), now(), address],
            )

    def remove(self, address: str) -> None:
        with self.db.conn:
            self.db.execute("DELETE FROM resources WHERE address = ?", [address])

    def bump_serial(self, outputs: dict[str, Any] | None = None, plan: str | None = None) -> int:
        """Move to the next serial (with the apply's outputs, if it set them) and keep a copy
        of the state as it stands under it, naming the plan (its payload digest) that made it."""
        with self.db.conn:
            serial = self.serial + 1
            self._set_meta("serial", str(serial))
            if outputs is not None:
                self._set_meta("outputs", json.dumps(outputs, sort_keys=True))
            self._snapshot(plan)
        return serial

    def set_outputs(self, outputs: dict[str, Any]) -> None:
        with self.db.conn:
            self._set_meta("outputs", json.dumps(outputs, sort_keys=True))
            self._snapshot()

    # -- the apply journal ----------------------------------------------------------------------

    def intend(self, address: str, kind: str, step: str, runtime: dict[str, Any]) -> int:
        """Record a step before it runs: what it will make (or remove) on the host, so that an
        apply killed in the middle of it can be rolled back (or finished) by the next one."""
        with self.db.conn:
            row = self.db.execute(
                "INSERT INTO journal (at, address, kind, step, runtime) VALUES (?, ?, ?, ?, ?)",
                [now(), address, kind, step, json.dumps(runtime, sort_keys=True)],
            ).lastrowid
        return int(row or 0)

    def settle(self, entry: int, outcome: str) -> None:
        """Record how a journalled step ended: done, failed (and cleaned up), or recovered."""
        with self.db.conn:
            self.db.execute("UPDATE journal SET outcome = ? WHERE id = ?", [outcome, entry])

    def unfinished(self) -> list[JournalEntry]:
        """Steps whose apply died before they ended, oldest first."""
        rows = self.db.execute(
            "SELECT id, at, address, kind, step, runtime FROM journal WHERE outcome IS NULL "
            "ORDER BY id"
        ).fetchall()
        return [JournalEntry(r[0], r[1], r[2], r[3], r[4], json.loads(r[5])) for r in rows]

    # -- snapshots ------------------------------------------------------------------------------

    def _snapshot(self, plan: str | None = None) -> None:
        """Keep the state as it stands under its serial (replacing an earlier copy of it, but
        not the plan that made it)."""
        if self.serial == 0:
            return
        # Outputs are kept whole, sensitive values too, as the meta table keeps them: a
        # rollback restores them. `snapshot_at` redacts them unless asked not to.
        body = {**self.export(), "outputs": self.outputs()}
        self.db.execute(
            "INSERT INTO snapshots (serial, at, digest, body, plan) VALUES (?, ?, ?, ?, ?) "
            "ON CONFLICT (serial) DO UPDATE SET at = excluded.at, digest = excluded.digest, "
            "body = excluded.body, plan = COALESCE(excluded.plan, plan)",
            [self.serial, now(), body["digest"], json.dumps(body, sort_keys=True), plan],
        )

    def snapshots(self) -> list[SnapshotInfo]:
        """Every serial kept, newest first."""
        rows = self.db.execute(
            "SELECT serial, at, digest, body, plan FROM snapshots ORDER BY serial DESC"
        ).fetchall()
        kept = []
        for serial, at, digest, body, plan in rows:
            try:
                count = len(json.loads(body)["resources"])
            except (ValueError, KeyError, TypeError):
                raise self._damaged(f"the copy of serial {serial} is not JSON") from None
            kept.append(SnapshotInfo(serial, at, digest, count, plan))
        return kept

    def snapshot_at(self, serial: int, sensitive: bool = False) -> dict[str, Any] | None:
        """The state as it was at `serial`, in the form `export` writes (with the values of
        sensitive outputs only when `sensitive` is asked for)."""
        row = self.db.execute("SELECT body FROM snapshots WHERE serial = ?", [serial]).fetchone()
        try:
            body: dict[str, Any] | None = json.loads(row[0]) if row else None
        except ValueError:
            raise self._damaged(f"the copy of serial {serial} is not JSON") from None
        if body is not None and not sensitive:
            body["outputs"] = _redacted(body.get("outputs", {}))
        return body

    def export(self) -> dict[str, Any]:
        """The state as JSON for people and tools: no secret values, sensitive outputs redacted.

        Specs hold what the executor runs, never a secret's value (secrets are delivered at run
        time); an output marked sensitive keeps its name and loses its value.
        """
        # TODO(#9): a sensitive variable used in a resource still shows in its spec here.
        return {
            "format": 1,
            "lineage": self.lineage,
            "serial": self.serial,
            "digest": self.digest(),
            "resources": [
                {
                    "address": r.address,
                    "kind": r.kind,
                    "spec": r.spec,
                    "spec_digest": r.spec_digest,
                    "depends_on": list(r.depends_on),
                    "runtime": r.runtime,
                    "updated_at": r.updated_at,
                }
                for r in self.records().values()
            ],
            "outputs": _redacted(self.outputs()),
        }

    def outputs(self) -> dict[str, Any]:
        try:
            value: dict[str, Any] = json.loads(self._meta().get("outputs", "{}"))
        except ValueError:
            raise self._damaged("its outputs are not JSON") from None
        return value

    def event(self, kind: str, address: str | None, **detail: Any) -> None:
        """Append to the audit log, chained to the entry before it; nothing updates or deletes.

        Each entry's hash covers its id, time, serial, kind, address, detail and the previous
        entry's hash, so `verify_events` finds an entry edited, deleted, inserted or moved.
        """
        with self.db.conn:
            # Take the write lock before reading the last hash: two writers must not both chain
            # to it.
            if not self.db.conn.in_transaction:
                self.db.execute("BEGIN IMMEDIATE")
            last = self.db.execute("SELECT hash FROM events ORDER BY id DESC LIMIT 1").fetchone()
            prev = last[0] if last else self._genesis()
            row_id = self.db.execute(
                "INSERT INTO events (at, serial, kind, address, detail, prev) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                [now(), self.serial, kind, address, json.dumps(detail, sort_keys=True), prev],
            ).lastrowid
            row = self.db.execute(
                f"SELECT {_EVENT_COLUMNS} FROM events WHERE id = ?", [row_id]
            ).fetchone()
            self.db.execute(
                "UPDATE events SET hash = ? WHERE id = ?", [event_hash(prev, row), row_id]
            )

    def keep_plan(self, payload_digest: str, envelope: bytes) -> None:
        """Keep a verified plan's signed envelope as it was applied, for `forge audit export`:
        an auditor can check its signatures again, years later, with the signers' keys."""
        with self.db.conn:
            self.db.execute(
                "INSERT INTO plans (at, payload_digest, envelope) VALUES (?, ?, ?)",
                [now(), payload_digest, envelope],
            )

    def plan_of(self, serial: int) -> tuple[str, bytes] | None:
        """(payload digest, envelope) of the plan whose apply made `serial`, if it is kept."""
        row = self.db.execute(
            "SELECT p.payload_digest, p.envelope FROM snapshots s JOIN plans p "
            "ON p.payload_digest = s.plan WHERE s.serial = ? ORDER BY p.id DESC LIMIT 1",
            [serial],
        ).fetchone()
        return (row[0], bytes(row[1])) if row else None

    def plan_envelopes(self) -> list[bytes]:
        """Every kept plan's envelope, newest first."""
        rows = self.db.execute("SELECT envelope FROM plans ORDER BY id DESC").fetchall()
        return [bytes(r[0]) for r in rows]

    def plans(self, since: str = "", until: str = "~") -> list[tuple[str, str, bytes]]:
        """(time, payload digest, envelope) of every plan applied within [since, until]."""
        rows = self.db.execute(
            "SELECT at, payload_digest, envelope FROM plans WHERE at >= ? AND at <= ? ORDER BY id",
            [since, until],
        ).fetchall()
        return [(r[0], r[1], bytes(r[2])) for r in rows]

    def events(self, limit: int = 100, since: str = "", until: str = "~") -> list[dict[str, Any]]:
        rows = self.db.execute(
            "SELECT id, at, serial, kind, address, detail, hash FROM events "
            "WHERE at >= ? AND at <= ? ORDER BY id DESC LIMIT ?",
            [since, until, limit],
        ).fetchall()
        return [
            {
                "id": r[0],
                "at": r[1],
                "serial": r[2],
                "kind": r[3],
                "address": r[4],
                **_detail(r[5]),
                "hash": r[6],
            }
            for r in reversed(rows)
        ]

    def verify_events(self) -> AuditCheck:
        """Walk the chain from the start: the first entry that does not follow is where it broke."""
        prev = self._genesis()
        expected_id = None
        count = 0
        for row in self.db.execute(f"SELECT {_EVENT_COLUMNS}, prev, hash FROM events ORDER BY id"):
            *fields, row_prev, row_hash = row
            entry = fields[0]
            if row_prev != prev:
                gap = expected_id is not None and entry != expected_id
                why = (
                    f"entries {expected_id}..{entry - 1} are missing"
                    if gap
                    else "it does not follow the entry before it (inserted or moved)"
                )
                return AuditCheck(count, entry, f"the chain breaks at entry {entry}: {why}")
            try:
                intact = row_hash == event_hash(prev, tuple(fields))
            except (ValueError, TypeError):  # its detail is no longer the JSON it was written as
                intact = False
            if not intact:
                return AuditCheck(
                    count, entry, f"the chain breaks at entry {entry}: its content was changed"
                )
            prev, expected_id, count = row_hash, entry + 1, count + 1
        return AuditCheck(count, None, "")

    def verify_plans(self) -> list[str]:
        """What is wrong with the kept plans: each plan the log says was verified must still be
        kept, and hold the payload it was kept under (its signatures are the auditor's to check
        against their trust store, as `forge audit export` does)."""
        problems = []
        kept: set[str] = set()
        changed: set[str] = set()
        for digest, envelope in self.db.execute("SELECT payload_digest, envelope FROM plans"):
            try:
                outer = json.loads(bytes(envelope))
                payload = base64.b64decode(outer["payload"], validate=True)
                holds = "sha256:" + hashlib.sha256(payload).hexdigest() == digest
                signed = bool(outer["signatures"])
            except (ValueError, KeyError, TypeError):
                holds = signed = False
            if holds and signed:
                kept.add(digest)
                continue
            changed.add(digest)
            why = "another payload" if not holds else "its signatures were removed"
            problems.append(f"the kept plan {digest[:19]}… was changed: {why}")
        for entry, detail in self.db.execute(
            "SELECT id, detail FROM events WHERE kind = 'plan-verified' ORDER BY id"
        ):
            verified = str(_detail(detail).get("payload"))
            if verified not in kept and verified not in changed:
                problems.append(
                    f"entry {entry} verified the plan {verified[:19]}…, which is no longer "
                    "kept: plans were removed from the database"
                )
        return problems

    # -- signed checkpoints ---------------------------------------------------------------------

    def checkpoint(self, signer: Ed25519PrivateKey) -> Checkpoint:
        """Sign the chain's head: whoever rewrites the log from some entry on, or cuts its tail,
        cannot make the signature over the head they removed hold."""
        with self.db.conn:
            if not self.db.conn.in_transaction:
                self.db.execute("BEGIN IMMEDIATE")
            last = self.db.execute(
                "SELECT id, hash FROM events ORDER BY id DESC LIMIT 1"
            ).fetchone()
            if last is None:
                raise StateError("the audit log is empty: there is nothing to sign yet")
            at = now()
            signature = signer.sign(_checkpoint_message(self.lineage, last[0], last[1], at))
            keyid = key_id(signer.public_key())
            sig = base64.b64encode(signature).decode()
            row_id = self.db.execute(
                "INSERT INTO checkpoints (event_id, head, at, keyid, sig) VALUES (?, ?, ?, ?, ?)",
                [last[0], last[1], at, keyid, sig],
            ).lastrowid
        # The log records the checkpoint too, so a checkpoint deleted later is missed by name.
        self.event("checkpoint", None, checkpoint=int(row_id or 0), entry=last[0], keyid=keyid)
        return Checkpoint(int(row_id or 0), last[0], last[1], at, keyid, sig)

    def checkpoints(self) -> list[Checkpoint]:
        rows = self.db.execute(
            "SELECT id, event_id, head, at, keyid, sig FROM checkpoints ORDER BY id"
        ).fetchall()
        return [Checkpoint(*row) for row in rows]

    def verify_checkpoints(
        self,
        trusted: dict[str, Ed25519PublicKey],
        revoked: dict[str, tuple[Ed25519PublicKey, str]] | None = None,
    ) -> list[str]:
        """What is wrong with the signed checkpoints: each must be signed by a trusted key (or
        by a key revoked only after it signed) and name an entry that is still there, with the
        hash it had when it was signed."""
        problems = []
        points = self.checkpoints()
        kept = {p.id: p for p in points}
        for logged in self.db.execute(
            "SELECT id, detail FROM events WHERE kind = 'checkpoint' ORDER BY id"
        ).fetchall():
            detail = _detail(logged[1])
            point = kept.get(detail.get("checkpoint", -1))
            if point is None or point.event_id != detail.get("entry"):
                problems.append(
                    f"entry {logged[0]} records checkpoint {detail.get('checkpoint')} of entry "
                    f"{detail.get('entry')}, which is gone or changed: checkpoints were removed"
                )
        for point in points:
            key = trusted.get(point.keyid)
            if key is None and point.keyid in (revoked or {}):
                old, revoked_at = (revoked or {})[point.keyid]
                key = old if revoked_at and point.at < revoked_at else None
            message = _checkpoint_message(self.lineage, point.event_id, point.head, point.at)
            if key is None:
                problems.append(
                    f"checkpoint {point.id} (entry {point.event_id}, {point.at}) is not signed "
                    f"by a trusted key ({point.keyid[:19]}…)"
                )
                continue
            try:
                key.verify(base64.b64decode(point.sig, validate=True), message)
            except (InvalidSignature, ValueError):
                problems.append(
                    f"checkpoint {point.id} (entry {point.event_id}, {point.at}): its signature "
                    f"by {point.keyid[:19]}… does not verify, so it was changed after signing"
                )
                continue
            row = self.db.execute(
                "SELECT hash FROM events WHERE id = ?", [point.event_id]
            ).fetchone()
            if row is None:
                problems.append(
                    f"checkpoint {point.id} signed entry {point.event_id}, which is gone: the log "
                    "was cut or rewritten after it"
                )
            elif row[0] != point.head:
                problems.append(
                    f"checkpoint {point.id} signed entry {point.event_id} with another hash: the "
                    "log was rewritten up to it"
                )
        return problems

    def _genesis(self) -> str:
        """The chain's anchor: the state's lineage, so two projects' logs cannot be spliced."""
        return "sha256:" + hashlib.sha256(f"forge-audit:{self.lineage}".encode()).hexdigest()


_EVENT_COLUMNS = "id, at, serial, kind, address, detail"


def state_digest(lineage: str, serial: int, spec_digests: dict[str, str]) -> str:
    """The digest plans record of a state (`prior_state.digest`): lineage, serial, and each
    resource's spec digest by address."""
    body = {"lineage": lineage, "serial": serial, "resources": spec_digests}
    return "sha256:" + hashlib.sha256(canonical_json(body)).hexdigest()


def _redacted(outputs: dict[str, Any]) -> dict[str, Any]:
    return {
        name: {"sensitive": True, "value": None}
        if isinstance(output, dict) and output.get("sensitive")
        else output
        for name, output in outputs.items()
    }


def _detail(text: str) -> dict[str, Any]:
    """An entry's detail; one that is not JSON is shown as it is (verify names the entry)."""
    try:
        value = json.loads(text)
    except ValueError:
        return {"unreadable": text}
    return value if isinstance(value, dict) else {"unreadable": text}


def event_hash(prev: str, row: tuple[Any, ...]) -> str:
    entry_id, at, serial, kind, address, detail = row
    body = canonical_json(
        {
            "prev": prev,
            "id": entry_id,
            "at": at,
            "serial": serial,
            "kind": kind,
            "address": address,
            "detail": json.loads(detail),
        }
    )
    return "sha256:" + hashlib.sha256(body).hexdigest()


@dataclass(frozen=True)
class JournalEntry:
    """One step of an apply, recorded before it ran."""

    id: int
    at: str
    address: str
    kind: str
    step: str  # "create" or "delete"
    runtime: dict[str, Any]  # what the step makes or removes on the host


@dataclass(frozen=True)
class Checkpoint:
    """A signature over the audit chain's head at one moment."""

    id: int
    event_id: int
    head: str
    at: str
    keyid: str
    sig: str


def _checkpoint_message(lineage: str, event_id: int, head: str, at: str) -> bytes:
    # Its own prefix, so a checkpoint signature can never pass for a plan's (DSSE) or the reverse.
    body = {"lineage": lineage, "event": event_id, "head": head, "at": at}
    return b"forge-audit-checkpoint-v1\n" + canonical_json(body)


@dataclass(frozen=True)
class SnapshotInfo:
    serial: int
    at: str
    digest: str
    resources: int
    # The payload digest of the plan whose apply made this serial; None before schema 4.
    plan: str | None = None


@dataclass(frozen=True)
class AuditCheck:
    """What `forge audit verify` found: entries checked, and where the chain broke, if it did."""

    checked: int
    broken_at: int | None
    message: str


class StateLocked(StateError):
    """Another forge command holds the project's lock."""


@dataclass(frozen=True)
class LockHolder:
    """Who holds a project's lock: written into the lock file by the holder itself."""

    id: str
    pid: int
    user: str
    host: str
    operation: str
    since: str

    def describe(self) -> str:
        return (
            f"{self.user}@{self.host} (pid {self.pid}) holds it for `{self.operation}` since "
            f"{self.since}, lock id {self.id}"
        )


@contextlib.contextmanager
def locked(state_dir: Path, operation: str = "apply") -> Iterator[LockHolder]:
    """Hold the project's lock, so two applies never interleave; record who holds it.

    The lock is an flock on `<state>/lock`: the kernel drops it when its process ends, however
    it ends, so a lock never outlives its holder. The file holds the holder's record, for the
    message another command gets, and for `forge force-unlock`.
    """
    state_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(state_dir / "lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(fd)
            who = holder.describe() if holder else "another forge command holds it"
            raise StateLocked(
                f"the state in {state_dir} is locked: {who}",
                hint="wait for it to finish; if it hangs, `forge force-unlock "
                f"{holder.id if holder else 'ID'}` stops it",
            ) from None
        holder = LockHolder(
            secrets.token_hex(4),
            os.getpid(),
            _user(),
            socket.gethostname(),
            operation,
            now(),
        )
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(dataclasses.asdict(holder)).encode(), 0)
        try:
            yield holder
        finally:
            os.ftruncate(fd, 0)
    finally:
        os.close(fd)


def lock_holder(state_dir: Path) -> LockHolder | None:
    """The lock's holder, or None when nothing holds it."""
    try:
        fd = os.open(state_dir / "lock", os.O_RDWR)
    except FileNotFoundError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return _read_holder(fd)
        return None  # it could be taken: nobody holds it
    finally:
        os.close(fd)


def force_unlock(state_dir: Path, lock_id: str, wait: float = 30.0) -> LockHolder:
    """Stop the process that holds the lock `lock_id`, the way Ctrl-C stops it, and wait.

    A lock never outlives its process, so a lock that stays is a command that hangs: it gets
    SIGTERM, which a forge command takes as an interrupt and stops cleanly at.
    """
    holder = lock_holder(state_dir)
    if holder is None:
        raise StateError(f"the state in {state_dir} is not locked; there is nothing to unlock")
    if holder.id != lock_id:
        raise StateError(
            f"lock id {lock_id} is not the lock on {state_dir}: {holder.describe()}",
        )
    if holder.host != socket.gethostname():
        raise StateError(
            f"the lock is held on {holder.host}; run `forge force-unlock {lock_id}` there"
        )
    with contextlib.suppress(ProcessLookupError):  # it ended just now, and with it the lock
        os.kill(holder.pid, signal.SIGTERM)
    deadline = time.monotonic() + wait
    while lock_holder(state_dir) is not None:
        if time.monotonic() > deadline:
            raise StateError(
                f"process {holder.pid} did not stop within {wait:.0f} s of SIGTERM",
            )
        time.sleep(0.05)
    return holder


def _read_holder(fd: int) -> LockHolder | None:
    try:
        data = json.loads(os.pread(fd, 4096, 0) or b"null")
        return LockHolder(**data) if isinstance(data, dict) else None
    except (ValueError, TypeError):
        return None


def _user() -> str:
    try:
        return getpass.getuser()
    except (OSError, KeyError):
        return f"uid {os.getuid()}"
