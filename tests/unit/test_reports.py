"""Policy reports: a verdict as SARIF 2.1.0 that validates and lands where consumers look, and
as JUnit XML that CI test tabs count correctly."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import jsonschema
import pytest
from jsonschema.validators import validator_for

from compiler import reports


def span(
    file: Path | str, line: int, column: int, end_line: int, end_column: int
) -> dict[str, Any]:
    """A span as the signed plan records it."""
    return {
        "file": str(file),
        "line": line,
        "column": column,
        "end_line": end_line,
        "end_column": end_column,
    }


def rule(
    rule_id: str,
    title: str,
    severity: str = "high",
    verdict: str = "deny",
    enforcement: str = "hard",
    pack: str = "baseline",
    file: Path | str = "/opt/forge/stdlib/policy/baseline/containers.policy",
) -> dict[str, Any]:
    """A rule's metadata as the signed plan records it."""
    return {
        "id": rule_id,
        "title": title,
        "pack": pack,
        "severity": severity,
        "verdict": verdict,
        "enforcement": enforcement,
        "controls": ["CIS-Docker-5.5", "PSS-privileged"] if rule_id == "FRG-C001" else [],
        "remediation": f"fix {rule_id}",
        "span": span(file, 3, 1, 12, 1),
    }


def finding(
    root: Path,
    rule_id: str,
    status: str,
    resource: str = "service.web",
    line: int = 7,
    **extra: Any,
) -> dict[str, Any]:
    """A finding of `rule_id` against `resource` at Forgefile line `line`, column 3 to 19."""
    return {
        "rule": rule_id,
        "severity": "critical" if rule_id == "FRG-C001" else "medium",
        "verdict": "deny",
        "enforcement": "hard",
        "status": status,
        "blocking": status == "blocking",
        "resource": resource,
        "message": f"{resource} breaks {rule_id}",
        "span": span(root / "Forgefile", line, 3, line, 19),
        "rule_span": span("/opt/forge/stdlib/policy/baseline/containers.policy", 3, 1, 12, 1),
        "controls": [],
        "remediation": f"fix {rule_id}",
        "waiver": None,
        "override": None,
        **extra,
    }


def rules_for(root: Path) -> list[dict[str, Any]]:
    """Six rules: four that find something in `verdict_for`, an info rule and a project rule."""
    return [
        rule("FRG-C001", "Workloads do not run privileged", severity="critical"),
        rule("FRG-C018", "Memory is limited", severity="medium", enforcement="advisory"),
        rule("FRG-C022", "No sensitive host paths are mounted", severity="critical"),
        rule("FRG-C010", "Seccomp is not disabled", enforcement="soft"),
        rule("FRG-C021", "Ulimits are deliberate", severity="info", verdict="info"),
        rule("no-latest", "Images are pinned", pack="", file=root / "policy" / "own.policy"),
    ]


def verdict_for(root: Path) -> dict[str, Any]:
    """A blocking, a warning, a waived (in the Forgefile) and an overridden finding, plus an
    expired and an orphaned waiver."""
    waiver = {
        "id": "legacy-root",
        "reason": "the legacy importer needs /etc",
        "owner": "a@b",
        "expires": "2027-01-31",
        "source": "forgefile",
        "span": span(root / "Forgefile", 30, 1, 35, 1),
    }
    override = {"identity": "alice", "reason": "hotfix tonight", "at": "2026-12-03T20:00:00Z"}
    findings = [
        finding(root, "FRG-C001", "blocking"),
        finding(root, "FRG-C018", "warning", resource="job.migrate", line=14),
        finding(root, "FRG-C022", "waived", resource="service.legacy", line=21, waiver=waiver),
        finding(root, "FRG-C010", "overridden", resource="service.worker", override=override),
    ]
    problems = [
        {
            "kind": "expired-waiver",
            "severity": "error",
            "message": "waiver `old` expired on 2026-01-01",
            "span": span(root / "Forgefile", 40, 1, 44, 1),
        },
        {
            "kind": "orphaned-waiver",
            "severity": "warning",
            "message": "waiver `gone` matches no finding",
            "span": span(root / "waivers.forge", 2, 1, 6, 1),
        },
    ]
    counts = {"blocking": 1, "warnings": 1, "waived": 1, "overridden": 1, "info": 0}
    return {
        "verdict": "block",
        "digest": "sha256:" + "0" * 64,
        "evaluated": 42,
        "counts": counts,
        "findings": findings,
        "problems": problems,
    }


def empty_verdict() -> dict[str, Any]:
    """A verdict that found nothing."""
    counts = {"blocking": 0, "warnings": 0, "waived": 0, "overridden": 0, "info": 0}
    return {
        "verdict": "pass",
        "digest": "sha256:" + "1" * 64,
        "evaluated": 3,
        "counts": counts,
        "findings": [],
        "problems": [],
    }


@pytest.fixture
def validator(shared: Path) -> jsonschema.protocols.Validator:
    """The official SARIF 2.1.0 schema, with the validator class its `$schema` names."""
    schema = json.loads((shared / "schemas" / "sarif" / "sarif-schema-2.1.0.json").read_text())
    cls = validator_for(schema)
    cls.check_schema(schema)
    return cls(schema)


def results_by_rule(log: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The results of a one-run log, keyed by rule id."""
    return {r["ruleId"]: r for r in log["runs"][0]["results"]}


def uris(node: Any) -> Iterator[str]:
    """Every value of a `uri` or `...Uri` key anywhere in a SARIF log."""
    if isinstance(node, dict):
        for key, value in node.items():
            if isinstance(value, str) and (key == "uri" or key.endswith("Uri")):
                yield value
            else:
                yield from uris(value)
    elif isinstance(node, list):
        for item in node:
            yield from uris(item)


# SARIF


def test_realistic_sarif_validates_against_the_official_schema(
    tmp_path: Path, validator: jsonschema.protocols.Validator
) -> None:
    """A verdict with every finding status and both waiver problems is a schema-valid log."""
    log = reports.sarif(verdict_for(tmp_path), rules_for(tmp_path), "1.4.0", root=tmp_path)

    errors = [f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(log)]
    assert errors == []
    assert json.loads(json.dumps(log)) == log
    assert log["version"] == "2.1.0"
    # Four findings and the expired waiver, which blocks and so is a result too.
    assert len(log["runs"][0]["results"]) == 5


def test_empty_verdict_gives_a_valid_log_with_no_results(
    tmp_path: Path, validator: jsonschema.protocols.Validator
) -> None:
    """No findings: still a valid log, every rule described, an empty result list."""
    log = reports.sarif(empty_verdict(), rules_for(tmp_path), "1.4.0")

    assert list(validator.iter_errors(log)) == []
    run = log["runs"][0]
    assert run["results"] == []
    assert len(run["tool"]["driver"]["rules"]) == 6
    assert run["invocations"][0]["executionSuccessful"] is True


def test_every_uri_in_the_log_is_a_valid_uri_reference(tmp_path: Path) -> None:
    """Absolute URIs have a scheme; relative ones use forward slashes and no raw spaces."""
    rules = rules_for(tmp_path)
    verdict = verdict_for(tmp_path)
    verdict["findings"][0]["span"]["file"] = str(tmp_path / "sub dir" / "Forgefile")
    log = reports.sarif(verdict, rules, "1.4.0", root=tmp_path)

    found = list(uris(log))
    assert "sub%20dir/Forgefile" in found
    for uri in found:
        assert " " not in uri and "\\" not in uri
        parts = urlsplit(uri)
        assert parts.scheme in ("", "https", "file"), uri
        assert parts.scheme or not uri.startswith("/"), uri


def test_finding_location_lands_where_consumers_read_it(tmp_path: Path) -> None:
    """The Forgefile span is the region (end column made exclusive), the address the logical one."""
    log = reports.sarif(verdict_for(tmp_path), rules_for(tmp_path), "1.4.0", root=tmp_path)
    location = log["runs"][0]["results"][0]["locations"][0]

    physical = location["physicalLocation"]
    assert physical["artifactLocation"] == {"uri": "Forgefile", "uriBaseId": "%SRCROOT%"}
    assert physical["region"] == {"startLine": 7, "startColumn": 3, "endLine": 7, "endColumn": 20}
    assert location["logicalLocations"] == [
        {"fullyQualifiedName": "service.web", "kind": "resource"}
    ]
    assert log["runs"][0]["results"][0]["message"]["text"] == "service.web breaks FRG-C001"


def test_root_becomes_the_srcroot_base_with_a_trailing_slash(tmp_path: Path) -> None:
    """With a root, %SRCROOT% is defined as the root's file URI ending in a slash."""
    log = reports.sarif(verdict_for(tmp_path), rules_for(tmp_path), "1.4.0", root=tmp_path)

    base = log["runs"][0]["originalUriBaseIds"]["%SRCROOT%"]["uri"]
    assert base == tmp_path.resolve().as_uri() + "/"


def test_paths_outside_root_stay_absolute_file_uris(tmp_path: Path) -> None:
    """A rule file outside the project (a built-in pack) is an absolute file URI, no base id."""
    log = reports.sarif(verdict_for(tmp_path), rules_for(tmp_path), "1.4.0", root=tmp_path)
    related = log["runs"][0]["results"][0]["relatedLocations"][0]["physicalLocation"]

    assert related["artifactLocation"] == {
        "uri": "file:///opt/forge/stdlib/policy/baseline/containers.policy"
    }
    assert related["region"]["startLine"] == 3


def test_relative_span_files_are_read_from_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A span path relative to where Forge ran is made relative to the root given."""
    (tmp_path / "app").mkdir()
    monkeypatch.chdir(tmp_path)
    verdict = verdict_for(tmp_path)
    verdict["findings"][0]["span"]["file"] = "app/Forgefile"
    log = reports.sarif(verdict, rules_for(tmp_path), "1.4.0", root=tmp_path / "app")

    artifact = log["runs"][0]["results"][0]["locations"][0]["physicalLocation"]["artifactLocation"]
    assert artifact == {"uri": "Forgefile", "uriBaseId": "%SRCROOT%"}


def test_without_root_relative_paths_stay_relative_and_no_base_is_defined(tmp_path: Path) -> None:
    """No root: a relative span keeps its path under %SRCROOT%, left for the consumer to bind."""
    verdict = verdict_for(tmp_path)
    verdict["findings"][0]["span"]["file"] = "deploy/Forgefile"
    log = reports.sarif(verdict, rules_for(tmp_path), "1.4.0")

    artifact = log["runs"][0]["results"][0]["locations"][0]["physicalLocation"]["artifactLocation"]
    assert artifact == {"uri": "deploy/Forgefile", "uriBaseId": "%SRCROOT%"}
    assert "originalUriBaseIds" not in log["runs"][0]


def test_rule_index_points_at_the_rule_each_result_names(tmp_path: Path) -> None:
    """Each result's ruleIndex is the position of its ruleId in tool.driver.rules."""
    log = reports.sarif(verdict_for(tmp_path), rules_for(tmp_path), "1.4.0", root=tmp_path)
    run = log["runs"][0]
    driver_rules = run["tool"]["driver"]["rules"]

    assert [r["ruleIndex"] for r in run["results"]] == [0, 1, 2, 3, len(driver_rules) - 1]
    for result in run["results"]:
        assert driver_rules[result["ruleIndex"]]["id"] == result["ruleId"]


def test_rule_metadata_lands_in_the_driver(tmp_path: Path) -> None:
    """Title, remediation, docs link, controls, severity and the rule's own line are described."""
    log = reports.sarif(verdict_for(tmp_path), rules_for(tmp_path), "1.4.0", root=tmp_path)
    driver = log["runs"][0]["tool"]["driver"]
    c001, own = driver["rules"][0], driver["rules"][5]

    assert (driver["name"], driver["version"]) == ("forge", "1.4.0")
    assert urlsplit(driver["informationUri"]).scheme == "https"
    assert c001["name"] == "WorkloadsDoNotRunPrivileged"
    assert c001["shortDescription"]["text"] == "Workloads do not run privileged"
    assert c001["help"]["text"] == "fix FRG-C001"
    assert c001["helpUri"].endswith("#FRG-C001")
    assert c001["properties"]["tags"] == ["CIS-Docker-5.5", "PSS-privileged"]
    assert c001["properties"]["severity"] == "critical"
    assert c001["properties"]["enforcement"] == "hard"
    assert own["properties"]["pack"] == ""
    assert own["properties"]["source"] == "policy/own.policy:3"


@pytest.mark.parametrize(
    ("verdict", "enforcement", "level"),
    [
        ("deny", "hard", "error"),
        ("deny", "soft", "error"),
        ("deny", "advisory", "warning"),
        ("warn", "hard", "warning"),
        ("info", "advisory", "note"),
    ],
)
def test_rule_default_level_follows_verdict_and_enforcement(
    verdict: str, enforcement: str, level: str
) -> None:
    """Blocking denies are errors, non-blocking ones and warns are warnings, info is a note."""
    rules = [rule("R1", "A rule", verdict=verdict, enforcement=enforcement)]
    log = reports.sarif(empty_verdict(), rules, "1.4.0")

    assert log["runs"][0]["tool"]["driver"]["rules"][0]["defaultConfiguration"]["level"] == level


def test_result_level_follows_the_finding_status(tmp_path: Path) -> None:
    """Blocking is an error; warning and overridden are warnings; waived and info are notes."""
    verdict = verdict_for(tmp_path)
    verdict["findings"].append(finding(tmp_path, "FRG-C021", "info", resource="service.db"))
    log = reports.sarif(verdict, rules_for(tmp_path), "1.4.0", root=tmp_path)

    levels = {rid: r["level"] for rid, r in results_by_rule(log).items()}
    assert levels == {
        "FRG-C001": "error",
        "FRG-C018": "warning",
        "FRG-C022": "note",
        "FRG-C010": "warning",
        "FRG-C021": "note",
        "forge/expired-waiver": "error",
    }
    assert results_by_rule(log)["FRG-C001"]["properties"] == {
        "severity": "critical",
        "enforcement": "hard",
        "status": "blocking",
        "blocking": True,
    }


def test_a_verdict_without_statuses_is_read_from_blocking(tmp_path: Path) -> None:
    """A finding recorded before statuses existed is an error when blocking, else a warning."""
    verdict = verdict_for(tmp_path)
    for f in verdict["findings"]:
        del f["status"]
    log = reports.sarif(verdict, rules_for(tmp_path), "1.4.0")

    assert [r["level"] for r in log["runs"][0]["results"]] == [
        "error",
        "warning",
        "warning",
        "warning",
        "error",  # the expired waiver
    ]


def test_waived_finding_carries_an_in_source_suppression(tmp_path: Path) -> None:
    """A Forgefile waiver is an accepted inSource suppression with reason, owner, expiry, place."""
    log = reports.sarif(verdict_for(tmp_path), rules_for(tmp_path), "1.4.0", root=tmp_path)
    (suppression,) = results_by_rule(log)["FRG-C022"]["suppressions"]

    assert suppression["kind"] == "inSource"
    assert suppression["status"] == "accepted"
    assert suppression["justification"] == "the legacy importer needs /etc"
    assert suppression["properties"]["owner"] == "a@b"
    assert suppression["properties"]["expires"] == "2027-01-31"
    assert suppression["location"]["physicalLocation"]["region"]["startLine"] == 30
    assert "suppressions" not in results_by_rule(log)["FRG-C001"]


def test_a_waiver_from_a_file_is_an_external_suppression(tmp_path: Path) -> None:
    """A waiver kept in a waivers file, not the Forgefile, is persisted externally."""
    verdict = verdict_for(tmp_path)
    verdict["findings"][2]["waiver"]["source"] = "file"
    log = reports.sarif(verdict, rules_for(tmp_path), "1.4.0")

    assert results_by_rule(log)["FRG-C022"]["suppressions"][0]["kind"] == "external"


def test_overridden_finding_carries_an_external_suppression_with_the_identity(
    tmp_path: Path,
) -> None:
    """A soft override is an accepted external suppression naming who overrode it and why."""
    log = reports.sarif(verdict_for(tmp_path), rules_for(tmp_path), "1.4.0")
    (suppression,) = results_by_rule(log)["FRG-C010"]["suppressions"]

    assert suppression["kind"] == "external"
    assert suppression["status"] == "accepted"
    assert suppression["justification"] == "hotfix tonight"
    assert suppression["properties"]["identity"] == "alice"


def test_waiver_problems_are_notifications_and_the_run_still_succeeded(tmp_path: Path) -> None:
    """Expired and orphaned waivers are error and warning notifications; the tool itself ran."""
    log = reports.sarif(verdict_for(tmp_path), rules_for(tmp_path), "1.4.0", root=tmp_path)
    invocation = log["runs"][0]["invocations"][0]
    expired, orphaned = invocation["toolExecutionNotifications"]

    assert invocation["executionSuccessful"] is True
    assert (expired["level"], expired["descriptor"]["id"]) == ("error", "expired-waiver")
    assert expired["message"]["text"] == "waiver `old` expired on 2026-01-01"
    assert expired["locations"][0]["physicalLocation"]["region"]["startLine"] == 40
    assert (orphaned["level"], orphaned["descriptor"]["id"]) == ("warning", "orphaned-waiver")
    assert orphaned["locations"][0]["physicalLocation"]["artifactLocation"]["uri"] == (
        "waivers.forge"
    )


def test_an_expired_waiver_is_a_blocking_result_at_the_waiver(tmp_path: Path) -> None:
    """It blocks the plan, so a code-scanning view must list it, not only a notification."""
    log = reports.sarif(verdict_for(tmp_path), rules_for(tmp_path), "1.4.0", root=tmp_path)
    result = results_by_rule(log)["forge/expired-waiver"]

    assert result["level"] == "error"
    assert result["message"]["text"] == "waiver `old` expired on 2026-01-01"
    assert result["locations"][0]["physicalLocation"]["region"]["startLine"] == 40
    assert "forge/orphaned-waiver" not in results_by_rule(log)  # a warning stays a notification


def test_an_evaluation_error_marks_the_run_unsuccessful(
    tmp_path: Path, validator: jsonschema.protocols.Validator
) -> None:
    """A problem that is not about waivers and is an error means the tool did not run fully."""
    verdict = empty_verdict()
    verdict["problems"] = [
        {"kind": "evaluation-error", "severity": "error", "message": "index out of range"}
    ]
    log = reports.sarif(verdict, rules_for(tmp_path), "1.4.0")

    assert list(validator.iter_errors(log)) == []
    invocation = log["runs"][0]["invocations"][0]
    assert invocation["executionSuccessful"] is False
    assert "locations" not in invocation["toolExecutionNotifications"][0]


# JUnit


def parse(text: str) -> ET.Element:
    """The one <testsuite> of a JUnit report."""
    root = ET.fromstring(text)
    suites = root.findall("testsuite")
    assert root.tag == "testsuites" and len(suites) == 1
    return suites[0]


def test_junit_counts_and_declaration(tmp_path: Path) -> None:
    """Eight cases: four findings, two quiet rules, two waiver problems; two fail, one skipped."""
    text = reports.junit(verdict_for(tmp_path), rules_for(tmp_path))
    suite = parse(text)

    assert text.startswith("<?xml version='1.0' encoding='utf-8'?>")
    assert suite.get("name") == "forge policy"
    assert len(suite.findall("testcase")) == 8
    counts = {k: suite.get(k) for k in ("tests", "failures", "errors", "skipped")}
    assert counts == {"tests": "8", "failures": "2", "errors": "0", "skipped": "1"}
    assert ET.fromstring(text).get("tests") == "8"


def test_junit_blocking_finding_is_a_failure_with_place_and_remediation(tmp_path: Path) -> None:
    """A blocking finding fails with the message, the file:line:col and the remediation."""
    suite = parse(reports.junit(verdict_for(tmp_path), rules_for(tmp_path)))
    case = suite.find("testcase[@classname='baseline.FRG-C001']")

    assert case is not None and case.get("name") == "service.web"
    failure = case.find("failure")
    assert failure is not None
    assert failure.get("type") == "critical"
    assert failure.get("message") == "service.web breaks FRG-C001"
    assert f"{tmp_path / 'Forgefile'}:7:3" in (failure.text or "")
    assert "remediation: fix FRG-C001" in (failure.text or "")


def test_junit_waived_finding_is_skipped_with_reason_owner_and_expiry(tmp_path: Path) -> None:
    """A waived finding is skipped, and the skip says why, who owns it and until when."""
    suite = parse(reports.junit(verdict_for(tmp_path), rules_for(tmp_path)))
    skipped = suite.find("testcase[@name='service.legacy']/skipped")

    assert skipped is not None
    assert (
        skipped.get("message") == "waived: the legacy importer needs /etc (a@b, until 2027-01-31)"
    )


def test_junit_non_blocking_findings_pass_with_output(tmp_path: Path) -> None:
    """Warnings and overrides pass, with the finding (and who overrode it) in system-out."""
    suite = parse(reports.junit(verdict_for(tmp_path), rules_for(tmp_path)))
    warning = suite.find("testcase[@classname='baseline.FRG-C018']")
    overridden = suite.find("testcase[@classname='baseline.FRG-C010']")

    assert warning is not None and overridden is not None
    assert warning.find("failure") is None and warning.find("skipped") is None
    assert (warning.findtext("system-out") or "").startswith("warning: job.migrate breaks")
    assert "overridden by alice: hotfix tonight" in (overridden.findtext("system-out") or "")


def test_junit_quiet_rules_get_one_passing_case_each(tmp_path: Path) -> None:
    """A rule with no finding is one passing case; a project rule's class is project.<id>."""
    suite = parse(reports.junit(verdict_for(tmp_path), rules_for(tmp_path)))
    passing = [
        c.get("classname") for c in suite.findall("testcase") if c.get("name") == "all resources"
    ]

    assert passing == ["baseline.FRG-C021", "project.no-latest"]


def test_junit_waiver_problems(tmp_path: Path) -> None:
    """An expired waiver fails under forge.waivers; an orphaned one passes with its message."""
    suite = parse(reports.junit(verdict_for(tmp_path), rules_for(tmp_path)))
    expired, orphaned = suite.findall("testcase[@classname='forge.waivers']")

    assert expired.get("name") == f"expired-waiver at {tmp_path / 'Forgefile'}:40"
    failure = expired.find("failure")
    assert failure is not None and failure.get("message") == "waiver `old` expired on 2026-01-01"
    assert orphaned.find("failure") is None
    assert orphaned.findtext("system-out") == "waiver `gone` matches no finding"


def test_junit_evaluation_error_is_an_error_case(tmp_path: Path) -> None:
    """A rule that could not be evaluated is a JUnit error, counted apart from failures."""
    verdict = empty_verdict()
    verdict["problems"] = [
        {"kind": "evaluation-error", "severity": "error", "message": "index out of range"}
    ]
    suite = parse(reports.junit(verdict, rules_for(tmp_path)))

    assert (suite.get("errors"), suite.get("failures")) == ("1", "0")
    assert suite.find("testcase[@classname='forge.evaluation']/error") is not None


def test_junit_empty_verdict_is_one_passing_case_per_rule(tmp_path: Path) -> None:
    """No findings: every rule is a single passing case and nothing fails."""
    suite = parse(reports.junit(empty_verdict(), rules_for(tmp_path)))
    cases = suite.findall("testcase")

    assert [c.get("name") for c in cases] == ["all resources"] * 6
    assert all(len(c) == 0 for c in cases)
    assert (suite.get("tests"), suite.get("failures"), suite.get("skipped")) == ("6", "0", "0")


def test_junit_survives_control_characters_in_messages(tmp_path: Path) -> None:
    """A message with a terminal escape (not allowed in XML 1.0) or a bidi override still gives
    parseable XML, with the characters shown as escapes, as on a terminal."""
    verdict = verdict_for(tmp_path)
    verdict["findings"][0]["message"] = "bad \x1b[31mvalue\x1b[0m \u202eevil"
    suite = parse(reports.junit(verdict, rules_for(tmp_path)))

    failure = suite.find("testcase[@classname='baseline.FRG-C001']/failure")
    assert failure is not None
    assert failure.get("message") == "bad \\x1b[31mvalue\\x1b[0m \\u202eevil"
