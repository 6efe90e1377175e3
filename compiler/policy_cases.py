"""`forge policy test`: table-driven cases whose fixtures are Forgefile snippets.

A `test` block in a policy file names a Forgefile snippet, the rules that must fire on it
(`fires`) and the rules that must be evaluated on it without firing (`passes`). The snippet is
lowered like any Forgefile, in a folder of its own, and judged by the loaded rules alone: the
project's enforcement levels and waivers do not change which rules fire.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from forgefile.diagnostics import DiagnosticError
from forgefile.lower import FORGEFILE, load

from .policy import Policy, PolicyTest, evaluate_rules


@dataclass(frozen=True)
class CaseResult:
    test: PolicyTest
    fired: tuple[str, ...]
    problems: tuple[str, ...]  # empty when the case passed

    @property
    def passed(self) -> bool:
        return not self.problems

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.test.name,
            "passed": self.passed,
            "fired": list(self.fired),
            "problems": list(self.problems),
            "span": self.test.span.to_json(),
        }


@dataclass(frozen=True)
class Coverage:
    """Which rules the cases exercise: a rule is covered when some case expects it to fire."""

    rules: tuple[str, ...]
    fired: frozenset[str]
    passed: frozenset[str]

    @property
    def uncovered(self) -> tuple[str, ...]:
        return tuple(r for r in self.rules if r not in self.fired)

    @property
    def percent(self) -> float:
        return (
            100.0 * (len(self.rules) - len(self.uncovered)) / len(self.rules)
            if self.rules
            else 100.0
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "rules": len(self.rules),
            "covered": len(self.rules) - len(self.uncovered),
            "percent": round(self.percent, 1),
            "uncovered": list(self.uncovered),
            "without_passing_case": [r for r in self.rules if r not in self.passed],
        }


def run_cases(policy: Policy) -> list[CaseResult]:
    """Run every `test` block of the loaded policy against its rules."""
    return [_run(case, policy) for case in policy.tests]


def coverage(policy: Policy, results: Sequence[CaseResult]) -> Coverage:
    fired = {r for res in results if res.passed for r in res.test.fires}
    passed = {r for res in results if res.passed for r in res.test.passes}
    return Coverage(tuple(r.id for r in policy.rules), frozenset(fired), frozenset(passed))


def _run(case: PolicyTest, policy: Policy) -> CaseResult:
    with tempfile.TemporaryDirectory(prefix="forge-policy-test-") as folder:
        path = Path(folder) / FORGEFILE
        path.write_text(case.forgefile)
        try:
            doc = load(path, {}, environ={})
        except DiagnosticError as exc:
            first = exc.diagnostics[0]
            return CaseResult(
                case, (), (f"the fixture does not compile: {first.code} {first.message}",)
            )
        # Each param at its default, unless the case sets it: the project's values do not count.
        params = {p.name: p.default for p in policy.declared} | dict(case.params)
        verdict = evaluate_rules(list(policy.rules), doc, policy.digest, params)
    fired = tuple(sorted({f.rule.id for f in verdict.findings}))
    errors = [f.message for f in verdict.findings if f.error]
    problems = [f"expected {rule} to fire; it did not" for rule in case.fires if rule not in fired]
    problems += [f"expected {rule} not to fire; it did" for rule in case.passes if rule in fired]
    # A rule that passes only because the fixture has nothing it applies to tests nothing.
    kinds = {r.kind for r in doc.resources}
    problems += [
        f"{rule_id} applies to {', '.join(rule.kinds)}, which the fixture does not declare: "
        "it passes without being evaluated"
        for rule_id in case.passes
        if (rule := policy.rule(rule_id)) is not None and rule.kinds and not kinds & set(rule.kinds)
    ]
    return CaseResult(case, fired, tuple(errors + problems))
