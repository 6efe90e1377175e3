"""The audit log is a hash chain: an edited, deleted, inserted or moved entry is found and named.

Real SQLite throughout; the tampering is done as an attacker with write access would, with the
sqlite3 module straight on the database file.
"""

from __future__ import annotations

import base64
import hashlib
import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from executor.keys import KeyStore, KeyStoreError
from executor.state import State, event_hash
from forge.cli import EXIT_AUDIT_BROKEN, app

runner = CliRunner()


@pytest.fixture
def logged(tmp_path: Path) -> Iterator[Path]:
    """A state database with five chained entries."""
    database = tmp_path / ".forge" / "state.db"
    state = State.open(database)
    for n in range(1, 6):
        state.event("action", f"service.s{n}", outcome="created", n=n)
    state.close()
    yield database


def check(database: Path) -> tuple[int, int | None, str]:
    state = State.open(database)
    try:
        found = state.verify_events()
    finally:
        state.close()
    return found.checked, found.broken_at, found.message


def tamper(database: Path, *statements: str) -> None:
    db = sqlite3.connect(database)
    with db:
        for statement in statements:
            db.execute(statement)
    db.close()


def test_an_untouched_log_verifies(logged: Path) -> None:
    assert check(logged) == (5, None, "")


def test_an_edited_entry_is_named(logged: Path) -> None:
    tamper(logged, """UPDATE events SET detail = '{"n": 3, "outcome": "failed"}' WHERE id = 3""")
    assert check(logged) == (2, 3, "the chain breaks at entry 3: its content was changed")


def test_an_edit_that_also_recomputes_the_entry_hash_breaks_the_next_link(logged: Path) -> None:
    """A forger who rehashes the entry they edited is caught where the next entry points back."""
    edited = '{"n": 3, "outcome": "failed"}'
    db = sqlite3.connect(logged)
    prev, at, serial, kind, address = db.execute(
        "SELECT prev, at, serial, kind, address FROM events WHERE id = 3"
    ).fetchone()
    forged = event_hash(prev, (3, at, serial, kind, address, edited))
    with db:
        db.execute("UPDATE events SET detail = ?, hash = ? WHERE id = 3", [edited, forged])
    db.close()
    assert check(logged) == (
        3,
        4,
        "the chain breaks at entry 4: it does not follow the entry before it (inserted or moved)",
    )


def test_a_deleted_entry_is_named(logged: Path) -> None:
    tamper(logged, "DELETE FROM events WHERE id = 2")
    assert check(logged) == (1, 3, "the chain breaks at entry 3: entries 2..2 are missing")


def test_an_inserted_entry_is_named(logged: Path) -> None:
    tamper(
        logged,
        "INSERT INTO events (id, at, serial, kind, address, detail, prev, hash) "
        "SELECT 10, at, serial, kind, address, detail, prev, hash FROM events WHERE id = 2",
    )
    assert check(logged)[1] == 10


def test_moved_entries_are_found(logged: Path) -> None:
    """Swapping the contents of two entries (a reorder) breaks the chain at the first of them."""
    tamper(
        logged,
        "UPDATE events SET id = 100 WHERE id = 2",
        "UPDATE events SET id = 2 WHERE id = 4",
        "UPDATE events SET id = 4 WHERE id = 100",
    )
    assert check(logged)[1] == 2


def test_a_log_from_before_the_chain_is_chained_when_opened(tmp_path: Path) -> None:
    """A schema-1 database's events are chained as they stand, and new ones follow on."""
    database = tmp_path / "state.db"
    db = sqlite3.connect(database)
    with db:
        db.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
        db.executemany(
            "INSERT INTO meta VALUES (?, ?)", [("schema", "1"), ("lineage", "l"), ("serial", "3")]
        )
        db.execute(
            "CREATE TABLE events (id INTEGER PRIMARY KEY AUTOINCREMENT, at TEXT NOT NULL, "
            "serial INTEGER NOT NULL, kind TEXT NOT NULL, address TEXT, detail TEXT NOT NULL)"
        )
        db.execute(
            "INSERT INTO events (at, serial, kind, address, detail) "
            "VALUES ('2026-01-01T00:00:00Z', 1, 'apply', NULL, '{}')"
        )
    db.close()
    state = State.open(database)
    state.event("action", "service.web", outcome="created")
    state.close()
    assert check(database) == (2, None, "")


def test_audit_commands(logged: Path) -> None:
    """`forge audit log --json` lists the entries; `verify` passes, then fails with exit 6."""
    folder = logged.parent.parent
    (folder / "Forgefile").write_text("")
    listed = runner.invoke(app, ["audit", "log", "--json", "-f", str(folder)])
    assert listed.exit_code == 0, listed.output
    entries = json.loads(listed.stdout)["entries"]
    assert [e["address"] for e in entries] == [f"service.s{n}" for n in range(1, 6)]
    assert entries[0]["outcome"] == "created" and entries[0]["hash"].startswith("sha256:")

    verified = runner.invoke(app, ["audit", "verify", "-f", str(folder)])
    assert verified.exit_code == 0, verified.output
    assert "5 entries" in verified.stdout

    tamper(logged, "DELETE FROM events WHERE id = 4")
    broken = runner.invoke(app, ["audit", "verify", "--json", "-f", str(folder)])
    assert broken.exit_code == EXIT_AUDIT_BROKEN
    assert json.loads(broken.stdout)["broken_at"] == 5


# -- signed checkpoints -------------------------------------------------------------------------


def rechain(database: Path, from_id: int) -> None:
    """What an attacker with write access does to hide an edit: recompute every hash after it."""
    db = sqlite3.connect(database)
    with db:
        rows = db.execute(
            "SELECT id, at, serial, kind, address, detail FROM events WHERE id >= ? ORDER BY id",
            [from_id],
        ).fetchall()
        (prev,) = db.execute("SELECT hash FROM events WHERE id = ?", [from_id - 1]).fetchone()
        for row in rows:
            digest = event_hash(prev, row)
            db.execute("UPDATE events SET prev = ?, hash = ? WHERE id = ?", [prev, digest, row[0]])
            prev = digest
    db.close()


@pytest.fixture
def keys(tmp_path: Path) -> KeyStore:
    store = KeyStore(tmp_path / ".forge" / "keys")
    store.generate("auditor")
    return store


def checkpoint_problems(database: Path, keys: KeyStore) -> list[str]:
    state = State.open(database)
    try:
        return state.verify_checkpoints(keys.trusted())
    finally:
        state.close()


def signed(database: Path, keys: KeyStore) -> None:
    state = State.open(database)
    try:
        state.checkpoint(keys.signer("auditor"))
    finally:
        state.close()


def test_a_rewrite_that_rechains_the_log_is_caught_by_the_checkpoint(
    logged: Path, keys: KeyStore
) -> None:
    """The chain alone cannot see an edit whose author recomputed every hash after it."""
    signed(logged, keys)
    tamper(logged, """UPDATE events SET detail = '{"n": 3, "outcome": "failed"}' WHERE id = 3""")
    rechain(logged, 3)

    assert check(logged) == (6, None, "")  # the chain is fooled (6: the checkpoint's own entry)
    assert checkpoint_problems(logged, keys) == [
        "checkpoint 1 signed entry 5 with another hash: the log was rewritten up to it"
    ]


def test_a_cut_tail_is_caught_by_the_checkpoint(logged: Path, keys: KeyStore) -> None:
    signed(logged, keys)
    tamper(logged, "DELETE FROM events WHERE id >= 4")

    assert check(logged) == (3, None, "")
    [problem] = checkpoint_problems(logged, keys)
    assert "signed entry 5, which is gone" in problem


def test_a_checkpoint_by_an_untrusted_key_or_edited_is_refused(
    logged: Path, keys: KeyStore, tmp_path: Path
) -> None:
    signed(logged, keys)
    other = KeyStore(tmp_path / "other")
    other.generate("mallory", trust=False)
    state = State.open(logged)
    state.checkpoint(other.signer("mallory"))
    state.close()
    tamper(logged, "UPDATE checkpoints SET at = '2020-01-01T00:00:00Z' WHERE id = 1")

    problems = checkpoint_problems(logged, keys)
    assert [p.split(" (")[0] for p in problems] == [
        "checkpoint 1",
        "checkpoint 2",
    ]
    assert "does not verify, so it was changed after signing" in problems[0]  # edited
    assert "not signed by a trusted key" in problems[1]  # mallory's


def test_audit_checkpoint_and_verify_commands(logged: Path, keys: KeyStore) -> None:
    folder = logged.parent.parent
    (folder / "Forgefile").write_text("")
    unsigned = runner.invoke(app, ["audit", "verify", "-f", str(folder)])
    assert unsigned.exit_code == 0 and "no signed checkpoint yet" in unsigned.stdout

    made = runner.invoke(app, ["audit", "checkpoint", "-f", str(folder)])
    assert made.exit_code == 0, made.output
    assert "Signed entry 5" in made.stdout

    ok = runner.invoke(app, ["audit", "verify", "--json", "-f", str(folder)])
    assert ok.exit_code == 0, ok.output
    assert json.loads(ok.stdout)["signed_through"] == 5

    tamper(logged, "DELETE FROM events WHERE id = 5")
    cut = runner.invoke(app, ["audit", "verify", "-f", str(folder)])
    assert cut.exit_code == EXIT_AUDIT_BROKEN
    assert "which is gone" in cut.output


def test_a_deleted_checkpoint_is_missed_by_its_entry(logged: Path, keys: KeyStore) -> None:
    signed(logged, keys)
    tamper(logged, "DELETE FROM checkpoints")

    assert check(logged) == (6, None, "")
    [problem] = checkpoint_problems(logged, keys)
    assert "records checkpoint 1 of entry 5, which is gone" in problem


def test_a_checkpoint_by_a_key_revoked_later_still_counts(logged: Path, keys: KeyStore) -> None:
    """Revoking a key must not make the log look tampered with; a revoked key signs no more."""
    signed(logged, keys)
    keys.revoke("auditor", "rotated")
    state = State.open(logged)
    try:
        assert state.verify_checkpoints(keys.trusted(), keys.revoked_keys()) == []
        with pytest.raises(KeyStoreError, match="revoked"):
            state.checkpoint(keys.signer("auditor"))
    finally:
        state.close()


def test_verify_names_a_kept_plan_removed_or_changed(tmp_path: Path) -> None:
    """The log says which plans were verified: one gone from the plans table, holding another
    payload than it was kept under, or stripped of its signatures is a problem `audit verify`
    names, once."""

    def envelope(payload: bytes, signatures: list[dict[str, str]]) -> bytes:
        body = {"payload": base64.b64encode(payload).decode(), "signatures": signatures}
        return json.dumps(body).encode()

    state = State.open(tmp_path / "state.db")
    try:
        payload = b"the payload"
        digest = "sha256:" + hashlib.sha256(payload).hexdigest()
        state.event("plan-verified", None, payload=digest)
        state.keep_plan(digest, envelope(payload, [{"keyid": "k", "sig": "s"}]))
        assert state.verify_plans() == []
        state.db.execute("UPDATE plans SET envelope = ?", [envelope(b"another", [{"k": "s"}])])
        [changed] = state.verify_plans()
        assert "was changed: another payload" in changed
        state.db.execute("UPDATE plans SET envelope = ?", [envelope(payload, [])])
        [unsigned] = state.verify_plans()
        assert "its signatures were removed" in unsigned
        state.db.execute("DELETE FROM plans")
        [gone] = state.verify_plans()
        assert "no longer kept" in gone
    finally:
        state.close()
