"""The policy engine: rule files that judge the checked IR before anything is planned.

A rule names the kinds it applies to, a `deny when` (or `warn when`) condition in the
Forgefile expression language, a severity, an enforcement level and a message. Rules are
checked against the IR schema when they load, so a misspelt field is a diagnostic in the rule
file, not a rule that silently never fires. Evaluation is fail-closed: a condition that cannot
be evaluated is a finding, never a pass.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import lark

from forgefile import ir
from forgefile.diagnostics import Collector, Diagnostic, DiagnosticError, Span, suggest
from forgefile.evaluate import Scope, evaluate
from forgefile.schema import RESOURCE_KINDS, SCHEMAS
from forgefile.syntax import (
    Call,
    Expr,
    GetAttr,
    Literal,
    Variable,
    expression_from_tree,
    span_of,
    string_from_token,
    subexpressions,
    syntax_diagnostic,
)
from stdlib import functions

SEVERITIES = ("critical", "high", "medium", "low", "info")
ENFORCEMENT = ("advisory", "soft", "hard")
_RULE_ATTRIBUTES = (
    "title",
    "applies_to",
    "severity",
    "enforcement",
    "controls",
    "message",
    "remediation",
)


@dataclass(frozen=True)
class Rule:
    id: str
    title: str
    kinds: tuple[str, ...]
    verdict: str  # "deny" or "warn"
    condition: Expr
    message: Expr
    severity: str
    enforcement: str
    controls: tuple[str, ...]
    remediation: str
    span: Span


@dataclass(frozen=True)
class Finding:
    rule: Rule
    address: str
    message: str
    span: Span
    blocking: bool

    def to_json(self) -> dict[str, Any]:
        return {
            "rule": self.rule.id,
            "severity": self.rule.severity,
            "enforcement": self.rule.enforcement,
            "verdict": self.rule.verdict,
            "blocking": self.blocking,
            "resource": self.address,
            "message": self.message,
            "span": self.span.to_json(),
            "rule_span": self.rule.span.to_json(),
            "controls": list(self.rule.controls),
            "remediation": self.rule.remediation,
        }


@dataclass(frozen=True)
class Verdict:
    findings: tuple[Finding, ...]
    evaluated: int
    digest: str

    @property
    def blocked(self) -> bool:
        return any(f.blocking for f in self.findings)

    def to_json(self) -> dict[str, Any]:
        return {
            "verdict": "block" if self.blocked else "pass",
            "digest": self.digest,
            "evaluated": self.evaluated,
            "findings": [f.to_json() for f in self.findings],
        }


@cache
def _parser() -> lark.Lark:
    return lark.Lark.open_from_package(
        "grammar", "policy.lark", parser="lalr", propagate_positions=True, maybe_placeholders=True
    )


def policy_files(paths: Iterable[Path]) -> list[Path]:
    """The `*.policy` files named, or found directly inside the folders named, sorted."""
    found: list[Path] = []
    for path in paths:
        found.extend(sorted(path.glob("*.policy")) if path.is_dir() else [path])
    return found


def digest_of(files: Iterable[tuple[str, bytes]]) -> str:
    h = hashlib.sha256()
    for name, data in sorted(files):
        h.update(f"{name}\0{hashlib.sha256(data).hexdigest()}\n".encode())
    return "sha256:" + h.hexdigest()


def load(files: list[Path], display: dict[Path, str] | None = None) -> tuple[list[Rule], str]:
    """Parse and check rule files; returns the rules and the digest of the files' bytes."""
    rules: list[Rule] = []
    contents: list[tuple[str, bytes]] = []
    out = Collector()
    for path in files:
        shown = (display or {}).get(path, str(path))
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise DiagnosticError(
                [Diagnostic("R0000", f"cannot read policy {path}: {exc.strerror}", None)]
            ) from None
        contents.append((path.name, data))
        rules.extend(_rules(data.decode("utf-8", errors="replace"), shown, out))
    seen: dict[str, Rule] = {}
    for rule in rules:
        if rule.id in seen:
            out.error("R0010", f"rule `{rule.id}` is declared twice", rule.span, "rename one")
        seen[rule.id] = rule
    out.raise_if_errors()
    return rules, digest_of(contents)


def _rules(text: str, path: str, out: Collector) -> list[Rule]:
    try:
        tree = _parser().parse(text)
    except lark.exceptions.UnexpectedInput as exc:
        raise DiagnosticError([syntax_diagnostic(exc, text, path)]) from None
    rules = []
    for node in tree.children:
        rule = _rule(node, path, out)
        if rule is not None:
            rules.append(rule)
    return rules


def _rule(node: Any, path: str, out: Collector) -> Rule | None:
    _keyword, label, _open, *items, _close = node.children
    span = span_of(node, path)
    rule_id = _literal_string(string_from_token(label, path))
    attrs: dict[str, tuple[Expr, Span]] = {}
    conditions: list[tuple[str, Expr]] = []
    for item in items:
        if item.data == "condition":
            verdict, expr = item.children
            conditions.append((str(verdict), expression_from_tree(expr, path)))
            continue
        name, expr = item.children
        item_span = span_of(name, path)
        if str(name) not in _RULE_ATTRIBUTES:
            out.error(
                "R0001",
                f"a rule has no attribute `{name}`",
                item_span,
                suggest(str(name), _RULE_ATTRIBUTES)
                or f"rule attributes are: {', '.join(_RULE_ATTRIBUTES)}",
            )
            continue
        attrs[str(name)] = (expression_from_tree(expr, path), item_span)
    if len(conditions) != 1:
        out.error(
            "R0002",
            f"rule `{rule_id}` needs exactly one `deny when` or `warn when`",
            span,
            "add `deny when <condition>`",
        )
        return None
    for needed in ("applies_to", "message", "severity"):
        if needed not in attrs:
            out.error("R0003", f"rule `{rule_id}` needs `{needed}`", span, f"add `{needed} = ...`")
    if out.has_errors:
        return None
    kinds = _kinds(attrs["applies_to"], out)
    # No CallContext: a verdict must not depend on the host's files or environment.
    scope = Scope()
    severity = _choice(attrs["severity"], SEVERITIES, scope, out)
    enforcement = _choice(attrs.get("enforcement"), ENFORCEMENT, scope, out, default="hard")
    verdict, condition = conditions[0]
    _check_fields(condition, kinds, out)
    _check_fields(attrs["message"][0], kinds, out)
    controls = evaluate(attrs["controls"][0], scope) if "controls" in attrs else []
    return Rule(
        id=rule_id,
        title=_plain(attrs.get("title"), scope),
        kinds=kinds,
        verdict=verdict,
        condition=condition,
        message=attrs["message"][0],
        severity=severity,
        enforcement=enforcement,
        controls=tuple(str(c) for c in controls),
        remediation=_plain(attrs.get("remediation"), scope),
        span=span,
    )


def _literal_string(expr: Expr) -> str:
    return expr.value if isinstance(expr, Literal) and isinstance(expr.value, str) else "?"


def _plain(entry: tuple[Expr, Span] | None, scope: Scope) -> str:
    return str(evaluate(entry[0], scope)) if entry else ""


def _kinds(entry: tuple[Expr, Span], out: Collector) -> tuple[str, ...]:
    expr, _ = entry
    names = [i for i in getattr(expr, "items", (expr,))]
    kinds = []
    for item in names:
        name = item.name if isinstance(item, Variable) else None
        if name is None or name not in RESOURCE_KINDS:
            known = list(RESOURCE_KINDS)
            out.error(
                "R0004",
                "applies_to lists resource kinds, such as [service, job]",
                item.span,
                suggest(str(name), known) or f"kinds: {', '.join(known)}",
            )
            continue
        kinds.append(name)
    return tuple(kinds)


def _choice(
    entry: tuple[Expr, Span] | None,
    allowed: tuple[str, ...],
    scope: Scope,
    out: Collector,
    default: str = "",
) -> str:
    if entry is None:
        return default
    value = evaluate(entry[0], scope)
    if value not in allowed:
        out.error(
            "R0005",
            f"`{value}` is not one of {', '.join(allowed)}",
            entry[0].span,
            suggest(str(value), allowed),
        )
        return default
    return str(value)


def _check_fields(expr: Expr, kinds: tuple[str, ...], out: Collector) -> None:
    """`resource.X` must name a field of every kind the rule applies to; calls must exist."""
    fields = set.intersection(*(_fields(kind) for kind in kinds)) if kinds else set()
    for node in subexpressions(expr):
        if (
            isinstance(node, GetAttr)
            and isinstance(node.target, Variable)
            and node.target.name == "resource"
            and node.name not in fields
        ):
            out.error(
                "R0006",
                f"resources of kind {', '.join(kinds)} have no field `{node.name}`",
                node.span,
                suggest(node.name, fields),
            )
        if isinstance(node, Call) and node.name not in functions.NAMES:
            out.error(
                "R0007",
                f"unknown function `{node.name}`",
                node.span,
                suggest(node.name, functions.NAMES),
            )


def _fields(kind: str) -> set[str]:
    """The fields `resource` has for one kind, as `Resource.to_document()` writes them."""
    spec = SCHEMAS[kind]
    fields = {"address", "kind", "name"} | {a.name for a in spec.attributes} | set(spec.blocks)
    if kind == "image":  # its copy and link blocks appear as one ordered `steps` list
        fields = (fields - set(spec.blocks)) | {"steps"}
    return fields


def evaluate_rules(rules: list[Rule], doc: ir.Document, digest: str) -> Verdict:
    """Judge every resource a rule applies to; linear in rules times resources."""
    findings: list[Finding] = []
    evaluated = 0
    whole = doc.to_document()
    for resource in doc.resources:
        document = resource.to_document()
        for rule in rules:
            if resource.kind not in rule.kinds:
                continue
            evaluated += 1
            scope = Scope(bindings={"resource": document, "document": whole})
            try:
                fired = evaluate(rule.condition, scope)
                if not isinstance(fired, bool):
                    raise TypeError(f"the condition gave a {type(fired).__name__}, not a bool")
                message = str(evaluate(rule.message, scope)) if fired else ""
            except (DiagnosticError, TypeError) as exc:
                # Fail closed: a rule that cannot be evaluated blocks like one that fired.
                findings.append(
                    Finding(
                        rule,
                        resource.address,
                        f"rule `{rule.id}` could not be evaluated: {exc}",
                        resource.span,
                        True,
                    )
                )
                continue
            if fired:
                span = resource.span_of(_first_field(rule.condition) or "")
                blocking = rule.verdict == "deny" and rule.enforcement != "advisory"
                findings.append(Finding(rule, resource.address, message, span, blocking))
    return Verdict(tuple(findings), evaluated, digest)


def _first_field(expr: Expr) -> str | None:
    for node in subexpressions(expr):
        if (
            isinstance(node, GetAttr)
            and isinstance(node.target, Variable)
            and node.target.name == "resource"
        ):
            return node.name
    return None
