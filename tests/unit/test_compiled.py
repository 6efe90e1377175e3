"""`evaluate.compiled` gives what `evaluate` gives: the same value, or the same diagnostic.

Policy runs rules through `compiled`; everything else in Forge through `evaluate`. A rule must
not mean one thing in `forge policy check` and another wherever the tree walker reads it.
"""

from __future__ import annotations

from typing import Any

import pytest

from forgefile.diagnostics import DiagnosticError
from forgefile.evaluate import Scope, compiled, evaluate
from forgefile.syntax import parse_expression

RESOURCE = {
    "address": "service.web",
    "user": "0:0",
    "env": {"DB_PASSWORD": "x", "HOME": "/root"},
    "command": ["httpd", "-f"],
    "resources": {"memory": None, "pids": 16},
    "cap_add": ["NET_ADMIN"],
}

VALUES = [
    # values, names, attributes and indexes
    "1",
    '"a ${resource.address} b"',
    "resource.user",
    "resource.resources.memory == null",
    "resource.command[0]",
    "resource.command[-1]",
    'resource.env["HOME"]',
    "[1, 2, resource.user]",
    '{ a = 1, "b" = resource.user }',
    # operators, with short-circuits and each comparison
    "!(resource.resources.memory == null)",
    "-resource.resources.pids",
    "1 + 2 * 3 - 4 / 2 % 3",
    "16MiB + 16MiB",
    "2 * 1m30s",
    'resource.resources.pids >= 16 && resource.user != ""',
    "false && resource.nothing",
    "true || resource.nothing",
    'resource.user == "0:0" ? "root" : "user"',
    # functions and loops
    'replace(split(":", resource.user)[0], "0", "") == ""',
    'length(regexall("pass", lower(join("_", keys(resource.env))))) > 0',
    '[for c in resource.cap_add : lower(c) if c != ""]',
    "{for k, v in resource.env : k => length(v)}",
    "{for c in concat(resource.command, resource.cap_add) : length(c) => c...}",
    'format("%s has %d", resource.address, length(resource.env))',
]

# Each must be the same diagnostic at the same place.
ERRORS = [
    "resource.nothing",
    "resource.command[9]",
    'resource.command["x"]',
    "nothing",
    "!resource.user",
    "-resource.user",
    '1 + "a"',
    "1 / 0",
    '1 < "a"',
    'regexall("(", "x")',
    'lookup(resource.env, "NOPE")',
    "resource.user ? 1 : 2",
    "[for c in resource.user : c]",
    "{for c in resource.command : 1 => c}",
    'file("x")',
    "unknown_function(1)",
]


def outcome(run: Any) -> tuple[str, Any]:
    try:
        return "value", run()
    except DiagnosticError as exc:
        return "error", [(d.code, d.message, d.span) for d in exc.diagnostics]


@pytest.mark.parametrize(
    ("text", "road"), [(t, "value") for t in VALUES] + [(t, "error") for t in ERRORS]
)
def test_compiled_agrees_with_evaluate(text: str, road: str) -> None:
    expr = parse_expression(text, "rule.policy")
    scope = Scope(bindings={"resource": RESOURCE})

    walked = outcome(lambda: evaluate(expr, scope))
    fast = outcome(lambda: compiled(expr)(scope))

    assert fast == walked
    assert walked[0] == road
