"""forge audit export: the plans applied, re-verifiable, with verdicts and outcomes."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

from compiler.envelope import open_envelope
from executor.keys import KeyStore
from executor.paths import ProjectPaths
from tests.conftest import needs
from tests.integration.test_example import force_cleanup, forge_in, leftovers

pytestmark = needs("runc")


def test_an_export_holds_each_plan_applied_with_its_signers_and_outcome(tmp_path: Path) -> None:
    paths = ProjectPaths.for_state_dir(tmp_path / ".forge")
    (tmp_path / "Forgefile").write_text('volume "data" {}\n')
    try:
        assert forge_in(tmp_path, "key", "generate", "ops").returncode == 0
        assert forge_in(tmp_path, "apply", "--auto-approve").returncode == 0
        (tmp_path / "Forgefile").write_text('volume "data" {}\nvolume "logs" {}\n')
        assert forge_in(tmp_path, "apply", "--auto-approve").returncode == 0

        today = datetime.now(UTC).date()
        exported = forge_in(tmp_path, "audit", "export", "--since", today.isoformat())
        assert exported.returncode == 0, exported.stderr
        bundle = json.loads(exported.stdout)
        keyid = KeyStore(tmp_path / ".forge" / "keys").list()[0].keyid

        assert bundle["chain"]["intact"] and bundle["checkpoints"]["problems"] == []
        assert bundle["missing_plans"] == []
        assert bundle["checkpoints"]["count"] == 2  # apply signed the log's head each time
        first, second = bundle["plans"]
        assert [a["address"] for a in first["actions"]] == ["volume.data"]
        assert [a["address"] for a in second["actions"]] == ["volume.logs"]
        assert second["signers"] == [keyid]
        assert second["signatures_verify"].startswith("yes")
        assert second["outcome"]["finished"] and second["outcome"]["failed"] is None
        envelope = base64.b64decode(second["envelope"])
        trusted = KeyStore(tmp_path / ".forge" / "keys").trusted()
        assert open_envelope(envelope, trusted).payload_digest == second["payload_digest"]

        yesterday = (today - timedelta(days=1)).isoformat()
        before = json.loads(forge_in(tmp_path, "audit", "export", "--until", yesterday).stdout)
        assert before["plans"] == [] and before["events"] == []

        bad = forge_in(tmp_path, "audit", "export", "--since", "last week")
        assert bad.returncode == 1 and "is not a date" in bad.stderr
    finally:
        forge_in(tmp_path, "destroy", "--auto-approve")
        left = leftovers(paths)
        force_cleanup(paths)
    assert left == []
