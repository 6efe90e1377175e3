"""State snapshots: every serial is kept, and the state exports without secret values."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

from typer.testing import CliRunner

from executor.state import State
from forge.cli import app

runner = CliRunner()


def applied(state: State, address: str, argv: list[str]) -> int:
    """Record one resource as an apply would, and move the serial."""
    state.put(address, "service", {"argv": argv}, f"sha256:{len(argv)}", [], {"pid": 1})
    return state.bump_serial()


def test_each_serial_is_kept_as_it_was(tmp_path: Path) -> None:
    state = State.open(tmp_path / ".forge" / "state.db")
    try:
        first = applied(state, "service.web", ["httpd"])
        state.set_outputs({"url": {"value": "http://x", "sensitive": False}})
        applied(state, "service.api", ["api", "--port", "80"])
        state.remove("service.web")
        third = state.bump_serial()

        assert [(k.serial, k.resources) for k in state.snapshots()] == [(3, 1), (2, 2), (1, 1)]
        old = state.snapshot_at(first)
        assert old is not None
        assert [r["address"] for r in old["resources"]] == ["service.web"]
        assert old["outputs"] == {"url": {"value": "http://x", "sensitive": False}}
        assert state.snapshot_at(third) == state.export()
        assert state.snapshot_at(99) is None
    finally:
        state.close()


def test_an_export_holds_no_sensitive_output_value(tmp_path: Path) -> None:
    state = State.open(tmp_path / "state.db")
    try:
        applied(state, "service.web", ["httpd"])
        state.set_outputs(
            {
                "token": {"value": "s3cret-value", "sensitive": True},
                "url": {"value": "http://x", "sensitive": False},
            }
        )
        exported = state.export()
        kept = state.snapshot_at(1)
    finally:
        state.close()

    assert exported["outputs"]["token"] == {"sensitive": True, "value": None}
    assert exported["outputs"]["url"]["value"] == "http://x"
    assert "s3cret-value" not in json.dumps(exported) + json.dumps(kept)


def test_a_serial_names_the_plan_that_made_it_and_keeps_outputs_for_a_rollback(
    tmp_path: Path,
) -> None:
    """bump_serial records the plan's digest (set_outputs at the same serial keeps it), and a
    kept serial's sensitive outputs are there for a rollback, but only when asked for."""
    state = State.open(tmp_path / "state.db")
    try:
        state.keep_plan("sha256:plan-one", b"envelope one")
        state.put("service.web", "service", {"argv": ["a"]}, "sha256:1", [], {})
        serial = state.bump_serial(
            {"token": {"value": "s3cret-value", "sensitive": True}}, "sha256:plan-one"
        )
        state.set_outputs({"token": {"value": "s3cret-value", "sensitive": True}})
        state.put("service.web", "service", {"argv": ["b"]}, "sha256:2", [], {})
        unplanned = state.bump_serial()

        assert state.plan_of(serial) == ("sha256:plan-one", b"envelope one")
        assert state.plan_of(unplanned) is None
        assert [k.plan for k in state.snapshots()] == [None, "sha256:plan-one"]
        whole = state.snapshot_at(serial, sensitive=True)
        shown = state.snapshot_at(serial)
    finally:
        state.close()
    assert whole is not None and shown is not None
    assert whole["outputs"]["token"]["value"] == "s3cret-value"
    assert shown["outputs"]["token"] == {"sensitive": True, "value": None}


def test_a_database_from_before_snapshots_keeps_its_current_serial(tmp_path: Path) -> None:
    database = tmp_path / "state.db"
    state = State.open(database)
    applied(state, "service.web", ["httpd"])
    state.close()
    db = sqlite3.connect(database)
    with db:  # as schema 2 left it
        db.execute("DROP TABLE snapshots")
        db.execute("UPDATE meta SET value = '2' WHERE key = 'schema'")
    db.close()

    state = State.open(database)
    try:
        assert [k.serial for k in state.snapshots()] == [1]
        assert state.snapshot_at(1) == state.export()
    finally:
        state.close()


def test_state_commands(tmp_path: Path) -> None:
    """forge state list, show SERIAL and export, over a project's real state database."""
    (tmp_path / "Forgefile").write_text("")
    state = State.open(tmp_path / ".forge" / "state.db")
    applied(state, "service.web", ["httpd"])
    applied(state, "service.api", ["api"])
    state.close()
    base = ["-f", str(tmp_path)]

    listed = runner.invoke(app, ["state", "list", "--json", *base])
    assert listed.exit_code == 0, listed.output
    data = json.loads(listed.stdout)
    assert data["current"] == 2 and [s["serial"] for s in data["serials"]] == [2, 1]

    shown = runner.invoke(app, ["state", "show", "1", *base])
    assert shown.exit_code == 0, shown.output
    assert "service.web" in shown.stdout and "service.api" not in shown.stdout

    exported = runner.invoke(app, ["state", "export", *base])
    assert exported.exit_code == 0, exported.output
    assert [r["address"] for r in json.loads(exported.stdout)["resources"]] == [
        "service.api",
        "service.web",
    ]

    missing = runner.invoke(app, ["state", "show", "7", *base])
    assert missing.exit_code == 1 and "kept: 2, 1" in missing.output


def test_the_journal_keeps_steps_until_they_are_settled(tmp_path: Path) -> None:
    state = State.open(tmp_path / "state.db")
    try:
        done = state.intend("service.web", "service", "create", {"container_id": "forge-x-1"})
        open_ = state.intend("network.net", "network", "create", {"name": "net"})
        state.settle(done, "done")

        [entry] = state.unfinished()
        assert (entry.id, entry.address, entry.step) == (open_, "network.net", "create")
        assert entry.runtime == {"name": "net"}
        state.settle(open_, "recovered")
        assert state.unfinished() == []
    finally:
        state.close()


def test_a_damaged_database_is_reported_not_a_crash(tmp_path: Path) -> None:
    """What an edit with sqlite3 leaves is an error that names it, with exit 1 or 6, never 70."""
    (tmp_path / "Forgefile").write_text("")
    database = tmp_path / ".forge" / "state.db"
    state = State.open(database)
    applied(state, "service.web", ["httpd"])
    state.event("action", "service.web", outcome="created")
    state.close()
    db = sqlite3.connect(database)
    with db:
        db.execute("UPDATE events SET detail = 'not json'")
        db.execute("UPDATE resources SET spec = 'nope'")
    db.close()
    base = ["-f", str(tmp_path)]

    verified = runner.invoke(app, ["audit", "verify", *base])
    assert verified.exit_code == 6 and "its content was changed" in verified.output
    logged = runner.invoke(app, ["audit", "log", "--json", *base])
    assert logged.exit_code == 0 and "unreadable" in logged.stdout
    exported = runner.invoke(app, ["state", "export", *base])
    assert exported.exit_code == 1 and "is damaged" in exported.output

    db = sqlite3.connect(database)
    with db:
        db.execute("UPDATE meta SET value = 'abc' WHERE key = 'serial'")
    db.close()
    listed = runner.invoke(app, ["state", "list", *base])
    assert listed.exit_code == 1 and "serial is not a number" in listed.output
