"""Policy reports for machines: a verdict as a SARIF 2.1.0 log or as JUnit XML.

Both take the verdict and the rule metadata as the plain dicts the signed plan holds, so a
report can be made again from a plan without loading a rule file. SARIF is for code-scanning
views (GitHub, GitLab, IDEs): rule metadata in `tool.driver.rules`, one result per finding at
its Forgefile span, waivers and overrides as suppressions. JUnit is for CI test tabs: one test
case per finding, and one passing case per rule that found nothing.
"""

from __future__ import annotations

import hashlib
import re
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Mapping
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import quote

from forgefile.diagnostics import visible

SARIF_SCHEMA = (
    "https://docs.oasis-open.org/sarif/sarif/v2.1.0/errata01/os/schemas/sarif-schema-2.1.0.json"
)
DOCS_URI = "https://forge.invalid/docs/policy"
SRCROOT = "%SRCROOT%"

# A waiver problem is a finding about the project's waivers; any other problem with severity
# "error" means a rule could not be evaluated, which is the tool failing, not the code.
WAIVER_PROBLEMS = ("expired-waiver", "orphaned-waiver")

_RESULT_LEVELS = {
    "blocking": "error",
    "warning": "warning",
    "overridden": "warning",
    "info": "note",
    "waived": "note",
}
_NOTIFICATION_LEVELS = {"error": "error", "warning": "warning"}
# XML 1.0 cannot carry these even escaped; ElementTree would write them and break the file.
_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")


def sarif(
    verdict: Mapping[str, Any],
    rules: list[dict[str, Any]],
    tool_version: str,
    root: Path | None = None,
) -> dict[str, Any]:
    """The verdict as a SARIF 2.1.0 log with one run; paths under `root` become relative."""
    index = _rule_index(rules)
    driver = _driver(rules, tool_version, root)
    expired = [p for p in verdict.get("problems", []) if p.get("kind") == "expired-waiver"]
    if expired:  # it blocks the plan, so it is a result, under a descriptor of its own
        driver["rules"].append(_EXPIRED_WAIVER)
    run: dict[str, Any] = {
        "tool": {"driver": driver},
        "invocations": [_invocation(verdict.get("problems", []), root)],
        # Forge counts columns in code points (Python str indices), not SARIF's UTF-16 default.
        "columnKind": "unicodeCodePoints",
        "results": [_result(f, index, root) for f in verdict.get("findings", [])]
        + [_expired_result(p, len(driver["rules"]) - 1, root) for p in expired],
        "properties": {
            "verdict": verdict.get("verdict", "pass"),
            "digest": verdict.get("digest", ""),
            "evaluated": verdict.get("evaluated", 0),
            "counts": dict(verdict.get("counts", {})),
        },
    }
    if root is not None:
        # The spec wants a base URI to end with a slash so that relative ones resolve under it.
        base = root.resolve().as_uri().rstrip("/") + "/"
        run["originalUriBaseIds"] = {
            SRCROOT: {"uri": base, "description": {"text": "The project root."}}
        }
    return {"$schema": SARIF_SCHEMA, "version": "2.1.0", "runs": [run]}


def junit(verdict: Mapping[str, Any], rules: list[dict[str, Any]]) -> str:
    """The verdict as JUnit XML: a case per finding, a passing case per quiet rule."""
    suite = ET.Element("testsuite", name="forge policy")
    packs = {r["id"]: r.get("pack", "") for r in rules}
    findings: dict[str, list[Mapping[str, Any]]] = {}
    for finding in verdict.get("findings", []):
        findings.setdefault(finding["rule"], []).append(finding)

    # Grouped by rule in load order, so a CI test tab reads like the rule files.
    order = [r["id"] for r in rules] + [rid for rid in findings if rid not in packs]
    for rule_id in dict.fromkeys(order):
        classname = f"{packs.get(rule_id) or 'project'}.{rule_id}"
        for finding in findings.get(rule_id, []):
            suite.append(_finding_case(classname, finding))
        if rule_id not in findings:
            ET.SubElement(suite, "testcase", classname=classname, name="all resources")
    for number, problem in enumerate(verdict.get("problems", []), 1):
        suite.append(_problem_case(number, problem))

    _count(suite)
    suites = ET.Element("testsuites", _counts_of(suite), name="forge policy")
    suites.append(suite)
    ET.indent(suites)
    data: bytes = ET.tostring(suites, encoding="utf-8", xml_declaration=True)
    return data.decode("utf-8") + "\n"


# SARIF


def _rule_index(rules: list[dict[str, Any]]) -> dict[str, int]:
    index: dict[str, int] = {}
    for position, rule in enumerate(rules):
        index.setdefault(rule["id"], position)
    return index


def _driver(rules: list[dict[str, Any]], tool_version: str, root: Path | None) -> dict[str, Any]:
    return {
        "name": "forge",
        "fullName": "Forge policy",
        "version": tool_version,
        "informationUri": DOCS_URI,
        "rules": [_descriptor(rule, root) for rule in rules],
        "notifications": [
            {"id": "expired-waiver", "shortDescription": {"text": "A waiver is past expiry"}},
            {"id": "orphaned-waiver", "shortDescription": {"text": "A waiver matches nothing"}},
        ],
    }


def _descriptor(rule: Mapping[str, Any], root: Path | None) -> dict[str, Any]:
    rule_id: str = rule["id"]
    title: str = rule.get("title") or rule_id
    remediation: str = rule.get("remediation") or title
    controls = list(rule.get("controls", []))
    verdict, enforcement = rule.get("verdict", "deny"), rule.get("enforcement", "hard")
    properties: dict[str, Any] = {
        "severity": rule.get("severity", ""),
        "pack": rule.get("pack", ""),
        "tags": controls,
        "verdict": verdict,
        "enforcement": enforcement,
    }
    if rule.get("span"):
        properties["source"] = _where(rule["span"], root)

    full = f"{title}. A {rule.get('severity', '')} {verdict} rule, {enforcement} enforcement"
    return {
        "id": rule_id,
        "name": _pascal(title) or rule_id,
        "shortDescription": {"text": title},
        "fullDescription": {
            "text": full + (f"; controls {', '.join(controls)}." if controls else ".")
        },
        "help": {"text": remediation, "markdown": f"**Remediation:** {remediation}"},
        "helpUri": f"{DOCS_URI}#{quote(rule_id, safe='')}",
        "defaultConfiguration": {"level": _rule_level(verdict, enforcement)},
        "properties": properties,
    }


def _rule_level(verdict: str, enforcement: str) -> str:
    if verdict == "info":
        return "note"
    if verdict == "deny" and enforcement in ("hard", "soft"):
        return "error"
    return "warning"


def _pascal(title: str) -> str:
    return "".join(word[:1].upper() + word[1:] for word in re.findall(r"[A-Za-z0-9]+", title))


def _result(finding: Mapping[str, Any], index: dict[str, int], root: Path | None) -> dict[str, Any]:
    status = _status(finding)
    result: dict[str, Any] = {"ruleId": finding["rule"]}
    if finding["rule"] in index:
        result["ruleIndex"] = index[finding["rule"]]
    result["level"] = _RESULT_LEVELS.get(status, "warning")
    result["message"] = {"text": finding.get("message") or finding["rule"]}

    location: dict[str, Any] = {}
    if finding.get("span"):
        location["physicalLocation"] = _physical(finding["span"], root)
    if finding.get("resource"):
        address = finding["resource"]
        location["logicalLocations"] = [{"fullyQualifiedName": address, "kind": "resource"}]
    result["locations"] = [location] if location else []
    if finding.get("rule_span"):
        related = _physical(finding["rule_span"], root)
        text = f"rule {finding['rule']} is defined here"
        result["relatedLocations"] = [
            {"id": 1, "physicalLocation": related, "message": {"text": text}}
        ]

    # Keyed on rule and resource, not line, so a result survives edits above it in the file.
    key = f"{finding['rule']}\0{finding.get('resource', '')}".encode()
    result["partialFingerprints"] = {"forgeRuleResource/v1": hashlib.sha256(key).hexdigest()}
    suppressions = _suppressions(finding, root)
    if suppressions:
        result["suppressions"] = suppressions
    result["properties"] = {
        "severity": finding.get("severity", ""),
        "enforcement": finding.get("enforcement", ""),
        "status": status,
        "blocking": bool(finding.get("blocking", False)),
    }
    return result


_EXPIRED_WAIVER: dict[str, Any] = {
    "id": "forge/expired-waiver",
    "name": "ExpiredWaiver",
    "shortDescription": {"text": "A waiver is past its expiry date"},
    "fullDescription": {"text": "A waiver past its expiry blocks the plan until renewed."},
    "help": {"text": "Renew the waiver with a new expiry and reason, or fix what it waived."},
    "helpUri": f"{DOCS_URI}#waivers",
    "defaultConfiguration": {"level": "error"},
}


def _expired_result(
    problem: Mapping[str, Any], rule_index: int, root: Path | None
) -> dict[str, Any]:
    result: dict[str, Any] = {
        "ruleId": _EXPIRED_WAIVER["id"],
        "ruleIndex": rule_index,
        "level": "error",
        "message": {"text": problem.get("message") or "expired waiver"},
        "locations": [],
    }
    if problem.get("span"):
        result["locations"] = [{"physicalLocation": _physical(problem["span"], root)}]
    key = f"expired-waiver\0{problem.get('message', '')}".encode()
    result["partialFingerprints"] = {"forgeProblem/v1": hashlib.sha256(key).hexdigest()}
    result["properties"] = {"status": "blocking", "blocking": True}
    return result


def _status(finding: Mapping[str, Any]) -> str:
    # Verdicts recorded before statuses existed carry only `blocking`.
    if finding.get("status"):
        return str(finding["status"])
    if finding.get("blocking"):
        return "blocking"
    return "info" if finding.get("verdict") == "info" else "warning"


def _suppressions(finding: Mapping[str, Any], root: Path | None) -> list[dict[str, Any]]:
    suppressions: list[dict[str, Any]] = []
    waiver = finding.get("waiver")
    if waiver:
        kind = "inSource" if waiver.get("source") == "forgefile" else "external"
        suppression: dict[str, Any] = {
            "kind": kind,
            "status": "accepted",
            "justification": waiver.get("reason", ""),
            "properties": {
                "id": waiver.get("id", ""),
                "owner": waiver.get("owner", ""),
                "expires": waiver.get("expires", ""),
                "source": waiver.get("source", ""),
            },
        }
        if waiver.get("span"):
            suppression["location"] = {"physicalLocation": _physical(waiver["span"], root)}
        suppressions.append(suppression)
    override = finding.get("override")
    if override:
        suppressions.append(
            {
                "kind": "external",
                "status": "accepted",
                "justification": override.get("reason", ""),
                "properties": {
                    "identity": override.get("identity", ""),
                    "at": override.get("at", ""),
                },
            }
        )
    return suppressions


def _invocation(problems: Iterable[Mapping[str, Any]], root: Path | None) -> dict[str, Any]:
    notifications = [_notification(p, root) for p in problems]
    # executionSuccessful says whether the tool ran, not whether the code passed: a blocked plan
    # is a successful run. Only a rule that could not be evaluated makes it false.
    failed = any(
        p.get("severity") == "error" and p.get("kind") not in WAIVER_PROBLEMS for p in problems
    )
    return {"executionSuccessful": not failed, "toolExecutionNotifications": notifications}


def _notification(problem: Mapping[str, Any], root: Path | None) -> dict[str, Any]:
    notification: dict[str, Any] = {
        "level": _NOTIFICATION_LEVELS.get(problem.get("severity", ""), "note"),
        "message": {"text": problem.get("message") or problem.get("kind", "problem")},
        "descriptor": {"id": problem.get("kind", "problem")},
    }
    if problem.get("kind") in WAIVER_PROBLEMS:
        notification["descriptor"]["index"] = WAIVER_PROBLEMS.index(problem["kind"])
    if problem.get("span"):
        notification["locations"] = [{"physicalLocation": _physical(problem["span"], root)}]
    return notification


def _physical(span: Mapping[str, Any], root: Path | None) -> dict[str, Any]:
    physical: dict[str, Any] = {"artifactLocation": _artifact(span["file"], root)}
    line, column = span.get("line", 0), span.get("column", 0)
    if line >= 1:
        region: dict[str, Any] = {"startLine": line}
        if column >= 1:
            region["startColumn"] = column
        end_line, end_column = span.get("end_line", line), span.get("end_column", 0)
        if end_line >= line:
            region["endLine"] = end_line
            # A Forge span's end is inclusive; SARIF's endColumn is the column after the end.
            if end_column >= 1:
                region["endColumn"] = end_column + 1
        physical["region"] = region
    return physical


def _artifact(file: str, root: Path | None) -> dict[str, Any]:
    relative = _relative(file, root)
    if relative is not None:
        return {"uri": quote(relative, safe="/"), "uriBaseId": SRCROOT}
    return {"uri": Path(file).as_uri()}


def _relative(file: str, root: Path | None) -> str | None:
    """`file` as a forward-slash path under `root`, or None if it is absolute and outside it.

    Span files are relative to the directory Forge ran in (or absolute), like every path Forge
    prints; with no root, a relative one is left as it is, relative to the consumer's root.
    """
    path = Path(file)
    if root is None:
        return None if path.is_absolute() else PurePosixPath(path).as_posix()
    try:
        return path.resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        return None


def _where(span: Mapping[str, Any], root: Path | None) -> str:
    shown = _relative(span["file"], root) or span["file"]
    return f"{shown}:{span.get('line', 0)}"


# JUnit


def _finding_case(classname: str, finding: Mapping[str, Any]) -> ET.Element:
    case = ET.Element("testcase", classname=_xml(classname), name=_xml(finding.get("resource", "")))
    span = finding.get("span")
    if span:
        case.set("file", _xml(span["file"]))
        case.set("line", str(span.get("line", 0)))

    status = _status(finding)
    message = _xml(finding.get("message", ""))
    if status == "blocking":
        failure = ET.SubElement(case, "failure", message=message, type=finding.get("severity", ""))
        failure.text = _xml(_body(finding))
    elif status == "waived" and finding.get("waiver"):
        waiver = finding["waiver"]
        who = f"{waiver.get('owner', '')}, until {waiver.get('expires', '')}"
        ET.SubElement(case, "skipped", message=_xml(f"waived: {waiver.get('reason', '')} ({who})"))
    else:
        ET.SubElement(case, "system-out").text = _xml(f"{status}: {_body(finding)}")
    return case


def _body(finding: Mapping[str, Any]) -> str:
    lines = [finding.get("message", "")]
    if finding.get("span"):
        span = finding["span"]
        lines.append(f"at {span['file']}:{span.get('line', 0)}:{span.get('column', 0)}")
    if finding.get("remediation"):
        lines.append(f"remediation: {finding['remediation']}")
    override = finding.get("override")
    if override:
        lines.append(f"overridden by {override.get('identity', '')}: {override.get('reason', '')}")
    return "\n".join(lines)


def _problem_case(number: int, problem: Mapping[str, Any]) -> ET.Element:
    kind = problem.get("kind", "problem")
    waiver = kind in WAIVER_PROBLEMS
    span = problem.get("span")
    where = f"{span['file']}:{span.get('line', 0)}" if span else f"#{number}"
    classname = "forge.waivers" if waiver else "forge.evaluation"
    case = ET.Element("testcase", classname=classname, name=_xml(f"{kind} at {where}"))

    message = _xml(problem.get("message", kind))
    if problem.get("severity") != "error":
        ET.SubElement(case, "system-out").text = message
    elif waiver:
        ET.SubElement(case, "failure", message=message, type=kind).text = message
    else:
        # JUnit's <error> is the test not running, which is what an evaluation error is.
        ET.SubElement(case, "error", message=message, type=kind).text = message
    return case


def _count(suite: ET.Element) -> None:
    for key, value in _counts_of(suite).items():
        suite.set(key, value)


def _counts_of(suite: ET.Element) -> dict[str, str]:
    cases = suite.findall("testcase")
    return {
        "tests": str(len(cases)),
        "failures": str(sum(1 for c in cases if c.find("failure") is not None)),
        "errors": str(sum(1 for c in cases if c.find("error") is not None)),
        "skipped": str(sum(1 for c in cases if c.find("skipped") is not None)),
    }


def _xml(text: str) -> str:
    # Controls and bidi overrides shown as escapes, as on a terminal; what XML cannot carry at
    # all (lone surrogates, U+FFFE) as the replacement character.
    return _NOT_XML.sub("\ufffd", visible(text))
