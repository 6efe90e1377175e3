"""A rollback reruns an old serial under its old verdict: only while that verdict still stands."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from executor.verify import PlanRejected
from forge.project import Project, _still_judged, policy_digest

TODAY = datetime.now(UTC).date()


def project(tmp_path: Path, policy: str) -> Project:
    folder = tmp_path / "policy"
    folder.mkdir()
    (folder / "project.policy").write_text(policy)
    return Project(tmp_path / "Forgefile", tmp_path / ".forge", (folder,), {})


def made_by(digest: str | None, judged: datetime, waivers: list[dict[str, Any]]) -> dict[str, Any]:
    """The parts of the plan that made the serial that a rollback rests on."""
    return {
        "created_at": judged.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "policy": {"verdict": "pass", "digest": digest, "waivers": waivers},
    }


RULES = 'policy {\n  packs = ["baseline"]\n}\n'


def test_the_same_policy_and_no_dates_passed_lets_the_old_verdict_stand(tmp_path: Path) -> None:
    p = project(tmp_path, RULES)
    _still_judged(p, made_by(policy_digest(p), datetime.now(UTC), []), 3)


def test_other_policy_files_refuse_the_rollback(tmp_path: Path) -> None:
    p = project(tmp_path, RULES)
    with pytest.raises(PlanRejected, match="policy files changed since serial 3") as refused:
        _still_judged(p, made_by("sha256:" + "0" * 64, datetime.now(UTC), []), 3)
    assert refused.value.exit_code == 15
    assert "forge apply" in refused.value.hint


def test_a_waiver_that_expired_since_refuses_the_rollback(tmp_path: Path) -> None:
    p = project(tmp_path, RULES)
    expired = (TODAY - timedelta(days=1)).isoformat()
    waiver = {"id": "w1", "rule": "FRG-C014", "resource": "service.web", "expires": expired}
    judged = datetime.now(UTC) - timedelta(days=10)
    with pytest.raises(PlanRejected, match=f"waiver 'w1' for FRG-C014 .* expired on {expired}"):
        _still_judged(p, made_by(policy_digest(p), judged, [waiver]), 3)
    waiver["expires"] = TODAY.isoformat()  # holds through today
    _still_judged(p, made_by(policy_digest(p), judged, [waiver]), 3)


def test_a_rule_phased_in_since_refuses_the_rollback(tmp_path: Path) -> None:
    until = (TODAY - timedelta(days=2)).isoformat()
    p = project(
        tmp_path, RULES + f'enforce "FRG-I006" {{\n  level = "hard"\n  warn_until = "{until}"\n}}\n'
    )
    long_ago = datetime.now(UTC) - timedelta(days=30)
    with pytest.raises(PlanRejected, match=f"FRG-I006 was advisory until {until}"):
        _still_judged(p, made_by(policy_digest(p), long_ago, []), 3)
    # Judged after the rule took effect: the verdict already enforced it.
    _still_judged(p, made_by(policy_digest(p), datetime.now(UTC), []), 3)
