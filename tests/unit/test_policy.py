"""The policy engine: rules checked when they load, judged fail-closed against the IR."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from compiler import policy
from forgefile import ir
from forgefile.diagnostics import Diagnostic, DiagnosticError
from forgefile.lower import load
from tests.conftest import REPO

BASELINE = REPO / "tests" / "fixtures" / "example_rules.policy"

FORGEFILE = """\
image "base" {
  context = "ctx"
}

service "web" {
  image      = image.base
  command    = ["httpd", "-f"]
  privileged = PRIVILEGED
  resources {
    LIMIT
  }
}

wasm "greet" {
  module = "greet.wasm"
}
"""


def lower(tmp_path: Path, privileged: bool = False, memory: bool = True) -> ir.Document:
    """A Forgefile with one service (privileged or not, memory-limited or not) and a wasm job."""
    text = FORGEFILE.replace("PRIVILEGED", "true" if privileged else "false")
    text = text.replace("LIMIT", "memory = 32MiB" if memory else "pids = 16")
    (tmp_path / "ctx").mkdir(exist_ok=True)
    (tmp_path / "greet.wasm").write_bytes(b"\0asm\1\0\0\0")
    (tmp_path / "Forgefile").write_text(text)
    return load(tmp_path / "Forgefile", {}, environ={})


def rule_file(tmp_path: Path, body: str, name: str = "rules.policy") -> Path:
    """Write a policy file into tmp_path."""
    path = tmp_path / name
    path.write_text(textwrap.dedent(body))
    return path


def rule(condition: str, applies_to: str = "[service]") -> str:
    """A hard deny rule with `condition`."""
    return f"""\
        rule "under-test" {{
          applies_to  = {applies_to}
          severity    = "high"
          enforcement = "hard"
          deny when {condition}
          message     = "${{resource.address}} is denied"
        }}
        """


def load_errors(path: Path) -> list[Diagnostic]:
    """Load `path` and return the diagnostics it must fail with."""
    with pytest.raises(DiagnosticError) as caught:
        policy.load([path])
    return list(caught.value.diagnostics)


def judge(tmp_path: Path, path: Path, doc: ir.Document) -> policy.Verdict:
    """Load the rules at `path` and judge `doc` with them."""
    rules, digest = policy.load([path])
    return policy.evaluate_rules(rules, doc, digest)


def test_the_example_policy_blocks_a_privileged_service(tmp_path: Path) -> None:
    """`privileged = true` is a blocking finding naming the rule, resource and attribute line."""
    doc = lower(tmp_path, privileged=True)

    verdict = judge(tmp_path, BASELINE, doc)

    assert verdict.blocked
    assert verdict.to_json()["verdict"] == "block"
    [finding] = [f for f in verdict.findings if f.rule.id == "no-privileged"]
    assert finding.blocking
    assert finding.address == "service.web"
    assert finding.message == "service.web must not run privileged"
    lines = (tmp_path / "Forgefile").read_text().splitlines()
    assert lines[finding.span.line - 1].strip() == "privileged = true"
    assert finding.span.end_line == finding.span.line
    assert finding.to_json()["rule"] == "no-privileged"
    assert finding.to_json()["resource"] == "service.web"


def test_the_example_policy_passes_an_unprivileged_service(tmp_path: Path) -> None:
    """A memory-limited, unprivileged service passes the example policy with no findings."""
    verdict = judge(tmp_path, BASELINE, lower(tmp_path))

    assert not verdict.blocked
    assert verdict.findings == ()
    assert verdict.evaluated == 2  # two rules apply to the one service; none to wasm or image


def test_an_advisory_warning_does_not_block(tmp_path: Path) -> None:
    """The advisory `warn when` memory rule reports a service without a limit but passes it."""
    verdict = judge(tmp_path, BASELINE, lower(tmp_path, memory=False))

    [finding] = verdict.findings
    assert finding.rule.id == "memory-limited"
    assert finding.rule.verdict == "warn"
    assert not finding.blocking
    assert not verdict.blocked
    assert verdict.to_json()["verdict"] == "pass"


def test_a_misspelt_resource_field_fails_to_load(tmp_path: Path) -> None:
    """`resource.privilegd` is a load diagnostic in the rule file suggesting `privileged`."""
    path = rule_file(tmp_path, rule("resource.privilegd", "[service, job]"))

    [diagnostic] = load_errors(path)

    assert diagnostic.code == "R0006"
    assert "privilegd" in diagnostic.message
    assert "did you mean `privileged`" in diagnostic.hint
    assert diagnostic.span is not None
    assert diagnostic.span.file == str(path)
    assert path.read_text().splitlines()[diagnostic.span.line - 1].strip() == (
        "deny when resource.privilegd"
    )


def test_a_field_missing_from_one_of_the_kinds_fails_to_load(tmp_path: Path) -> None:
    """A rule for [service, wasm] reading `resource.privileged`, which wasm lacks, fails to load."""
    path = rule_file(tmp_path, rule("resource.privileged", "[service, wasm]"))

    [diagnostic] = load_errors(path)
    assert diagnostic.code == "R0006"


def test_an_unknown_function_fails_to_load(tmp_path: Path) -> None:
    """A call to a function that does not exist is a load diagnostic with a suggestion."""
    path = rule_file(tmp_path, rule("lenght(resource.cap_add) > 0"))

    [diagnostic] = load_errors(path)

    assert diagnostic.code == "R0007"
    assert "lenght" in diagnostic.message
    assert "did you mean `length`" in diagnostic.hint
    assert diagnostic.span is not None
    assert diagnostic.span.file == str(path)
    assert diagnostic.span.line == 5


@pytest.mark.parametrize(
    "condition",
    [
        pytest.param('resource.cap_add[3] == "NET_ADMIN"', id="index-out-of-range"),
        pytest.param("resource.name < 3", id="string-less-than-int"),
        pytest.param("resource.resources.cpus > 1", id="null-greater-than-int"),
        pytest.param('lookup(resource.env, "MISSING") == "x"', id="function-error"),
        pytest.param("resource.resources.memory / 0 > 1", id="division-by-zero"),
    ],
)
def test_a_condition_that_cannot_be_evaluated_blocks(tmp_path: Path, condition: str) -> None:
    """A condition that errors while evaluating is a blocking finding: policy fails closed."""
    path = rule_file(tmp_path, rule(condition))

    verdict = judge(tmp_path, path, lower(tmp_path))

    [finding] = verdict.findings
    assert finding.blocking
    assert finding.address == "service.web"
    assert "could not be evaluated" in finding.message
    assert verdict.blocked


@pytest.mark.parametrize(
    ("condition", "gave"),
    [
        pytest.param("resource.name", "a string", id="string"),
        pytest.param("resource.resources.pids", "a null", id="null"),
        pytest.param("resource.cap_add", "a list", id="list"),
        pytest.param("1", "an int", id="int"),
    ],
)
def test_a_condition_that_is_not_a_bool_blocks(tmp_path: Path, condition: str, gave: str) -> None:
    """A condition giving anything but true or false is a blocking finding, never a pass."""
    path = rule_file(tmp_path, rule(condition))

    verdict = judge(tmp_path, path, lower(tmp_path))

    [finding] = verdict.findings
    assert finding.blocking
    assert f"the condition gave {gave}, not a bool" in finding.message


def test_a_false_condition_passes(tmp_path: Path) -> None:
    """The control for the fail-closed tests: a well-typed false condition is no finding."""
    path = rule_file(tmp_path, rule("length(resource.cap_add) > 0"))

    verdict = judge(tmp_path, path, lower(tmp_path))

    assert verdict.findings == ()
    assert verdict.evaluated == 1


def test_the_digest_follows_the_rule_files_bytes(tmp_path: Path) -> None:
    """The verdict's digest is the load digest, stable for the same bytes, new for any change."""
    path = rule_file(tmp_path, rule("resource.privileged"))
    doc = lower(tmp_path)
    first = judge(tmp_path, path, doc)
    _, again = policy.load([path])

    path.write_text(path.read_text() + "# a comment changes the bytes, not the rules\n")
    second = judge(tmp_path, path, doc)

    assert first.digest == again
    assert first.digest.startswith("sha256:")
    assert second.digest != first.digest
    assert second.to_json()["digest"] == second.digest
    assert policy.digest_of([(path.name, path.read_bytes())]) == second.digest


def test_an_error_in_one_rule_does_not_hide_the_rules_after_it(tmp_path: Path) -> None:
    """A broken rule is reported, and the rules after it still load and are still checked."""
    path = rule_file(
        tmp_path,
        """\
        rule "broken" {
          applies_to = [service]
          deny when true
        }

        rule "later" {
          applies_to = [service]
          severity   = "high"
          deny when resource.privilegd
          message    = "x"
        }

        rule "later" {
          applies_to = [service]
          severity   = "high"
          deny when true
          message    = "x"
        }
        """,
    )
    codes = sorted(d.code for d in load_errors(path))

    # R0003 twice for `broken`, R0006 (misspelt field) for the first `later`, R0010 for the second.
    assert codes == ["R0003", "R0003", "R0006", "R0010"]


def test_a_duplicate_rule_points_at_both_declarations(tmp_path: Path) -> None:
    path = rule_file(tmp_path, rule("true") + rule("false"))
    (error,) = load_errors(path)

    assert error.code == "R0010"
    assert error.span is not None and error.span.line == 8
    (first,) = error.related
    assert first.span.line == 1 and "first declared" in first.message


def test_two_packs_sharing_rules_are_one_error_at_the_packs_line(tmp_path: Path) -> None:
    """restricted holds every baseline rule: listing both is one actionable error, not 16."""
    path = rule_file(tmp_path, 'policy {\n  packs = ["baseline",\n    "restricted"]\n}\n')
    (error,) = load_errors(path)

    assert error.code == "R0010"
    assert "`baseline` and `restricted`" in error.message
    assert error.span is not None and error.span.line == 3
    assert "list only `restricted`" in error.hint
    assert error.related[0].span.line == 2


@pytest.mark.parametrize("applies_to", ["document", "[document]"])
def test_a_document_rule_may_be_written_bare_or_as_a_list(tmp_path: Path, applies_to: str) -> None:
    path = rule_file(
        tmp_path,
        f"""\
        rule "doc" {{
          applies_to = {applies_to}
          severity   = "low"
          deny when length(document.resources) > 0
          message    = "has resources"
        }}
        """,
    )
    (loaded,), _ = policy.load([path])

    assert loaded.kinds == ()
    verdict = judge(tmp_path, path, lower(tmp_path))
    assert [f.rule.id for f in verdict.findings] == ["doc"]


def test_document_and_kinds_together_is_an_error(tmp_path: Path) -> None:
    errors = load_errors(rule_file(tmp_path, rule("true", "[service, document]")))

    # R0004 for applies_to, and no follow-on error about what the kinds would have allowed.
    assert [e.code for e in errors] == ["R0004"]
    assert "not both" in errors[0].message


def test_a_policy_file_that_is_not_utf8_says_where(tmp_path: Path) -> None:
    path = tmp_path / "rules.policy"
    path.write_bytes(b'# fine\nrule "x" {\n  title = "caf\xe9"\n}\n')
    (error,) = load_errors(path)

    assert error.code == "R0000"
    assert "is not UTF-8 text (byte 32 is 0xe9)" in error.message
    assert error.span is not None and (error.span.line, error.span.column) == (3, 15)


def test_a_rule_stuck_in_a_backtracking_regex_blocks_instead_of_hanging(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A Forgefile value can make a careless pattern take hours: the rule is cut off, closed."""
    monkeypatch.setattr(policy, "RULE_TIME_LIMIT", 0.3)
    path = rule_file(tmp_path, rule('length(regexall("(a+)+$", resource.command[0])) > 0'))
    (tmp_path / "ctx").mkdir()
    (tmp_path / "Forgefile").write_text(
        'image "b" {\n  context = "ctx"\n}\n\n'
        f'service "web" {{\n  image   = image.b\n  command = ["{"a" * 40}!"]\n}}\n'
    )
    doc = load(tmp_path / "Forgefile", {}, environ={})

    [finding] = judge(tmp_path, path, doc).findings

    assert finding.error and finding.blocking and finding.address == "service.web"
    assert "ran past 0.3 s, at service.web" in finding.message


def test_a_rule_nested_past_the_limit_is_f0002(tmp_path: Path) -> None:
    (error,) = load_errors(rule_file(tmp_path, rule("!" * 3000 + "resource.privileged")))
    assert error.code == "F0002"


def body(lines: str, applies_to: str = "[service]") -> str:
    """A rule whose body is `lines` after applies_to and severity."""
    return f'rule "r" {{\n  applies_to = {applies_to}\n  severity = "low"\n{lines}\n}}\n'


@pytest.mark.parametrize(
    ("lines", "code", "says"),
    [
        (
            '  let caps = resource.cap_add\n  deny when length(caps) > 0\n  message = "x"',
            "R0017",
            "cannot read `resource`",
        ),
        (
            '  let a = b\n  let b = 1\n  deny when a > 0\n  message = "x"',
            "R0017",
            "reads `b`, which nothing binds",
        ),
        (
            '  deny when resource.privileged\n  message = "${undefined_name}"',
            "R0017",
            "reads `undefined_name`",
        ),
        ('  deny when var.x == 1\n  message = "x"', "R0017", "cannot read `var`"),
        (
            '  deny when resource.resources.memry == null\n  message = "x"',
            "R0006",
            "`resource.resources` has no field `memry`",
        ),
        (
            '  let home = env("HOME")\n  deny when home == ""\n  message = "x"',
            "R0007",
            "`env()` reads the machine",
        ),
        (
            '  let a = 1\n  let a = 2\n  deny when a > 0\n  message = "x"',
            "R0010",
            "`let a` is bound twice",
        ),
        ("  deny when true\n  message = 42", "R0008", "not an int"),
        ('  deny when true\n  message = "  "', "R0008", "says what broke the rule"),
    ],
)
def test_mistakes_a_rule_makes_are_caught_when_it_loads(
    tmp_path: Path, lines: str, code: str, says: str
) -> None:
    """Each of these loaded before and failed later, once per resource, as 'not evaluated'."""
    errors = load_errors(rule_file(tmp_path, body(lines)))
    assert [(e.code, says in e.message) for e in errors] == [(code, True)]


def test_a_for_variable_and_a_let_are_bound_where_they_are_read(tmp_path: Path) -> None:
    lines = (
        '  let bad = ["SYS_ADMIN"]\n'
        "  deny when length([for c in resource.cap_add : c if contains(bad, c)]) > 0\n"
        '  message = "${join(", ", [for k, v in resource.env : k])}"'
    )
    (loaded,), _ = policy.load([rule_file(tmp_path, body(lines))])
    assert loaded.id == "r"


@pytest.mark.parametrize("rule_id", ["", "   ", "a=b", "x@service.web", "rego:mine", "a\x1bb"])
def test_a_rule_id_that_cannot_be_named_is_refused(tmp_path: Path, rule_id: str) -> None:
    text = body('  deny when true\n  message = "x"').replace('rule "r"', f'rule "{rule_id}"')
    path = tmp_path / "rules.policy"
    path.write_text(text)
    assert [e.code for e in load_errors(path)] == ["R0009"]


def test_one_mistake_does_not_hide_the_others(tmp_path: Path) -> None:
    lines = (
        '  remedation = "fix it"\n'
        "  deny when lenght(resource.name) > 0 && resource.privilegd\n"
        '  message = "x"'
    )
    codes = sorted(e.code for e in load_errors(rule_file(tmp_path, body(lines))))
    assert codes == ["R0001", "R0006", "R0007"]


@pytest.mark.parametrize(
    ("applies_to", "says"),
    [
        ("[servce]", "did you mean `service`?"),
        ("[]", "lists no kinds"),
        ('["service"]', 'write kinds bare: service, not "service"'),
    ],
)
def test_a_wrong_applies_to_is_one_error_without_follow_ons(
    tmp_path: Path, applies_to: str, says: str
) -> None:
    text = body('  deny when resource.privileged\n  message = "x"', applies_to)
    [error] = load_errors(rule_file(tmp_path, text))
    assert error.code == "R0004" and says in error.message + error.hint


def test_a_field_only_some_kinds_have_says_which_and_how(tmp_path: Path) -> None:
    text = body('  deny when resource.privileged\n  message = "x"', "[image, service]")
    [error] = load_errors(rule_file(tmp_path, text))
    assert error.message.startswith("`privileged` is a field of service but not of image")
    assert 'lookup(resource, "privileged", DEFAULT)' in error.hint
