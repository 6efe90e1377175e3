"""A project's `rego` block: Rego findings judged beside Forge's rules, fail-closed.

The adapter itself is tested in test_rego.py; these tests pin how its findings join the verdict:
their rules and spans, levels, `exception` rules, Forgefile waivers, engine failures, the load
diagnostics of a bad block, and the policy digest that binds the plan to the Rego files.
"""

from __future__ import annotations

import datetime as dt
import importlib.util
import shutil
import textwrap
from pathlib import Path

import pytest

from compiler import policy
from forgefile.diagnostics import DiagnosticError
from forgefile.lower import load
from tests.conftest import REPO

FIXTURES = REPO / "tests" / "fixtures" / "rego"
TODAY = dt.date(2026, 12, 3)
needs_regopy = pytest.mark.skipif(
    importlib.util.find_spec("regopy") is None, reason="needs regopy (pip install regopy)"
)


def project(tmp_path: Path, block: str, rules: str = "rules", forgefile: str = "") -> Path:
    """The fixture Forgefile (plus `forgefile`), a copy of a Rego fixture, a policy folder."""
    (tmp_path / "ctx").mkdir(exist_ok=True)
    (tmp_path / "Forgefile").write_text((FIXTURES / "Forgefile").read_text() + forgefile)
    shutil.copytree(FIXTURES / rules, tmp_path / "rego")
    (tmp_path / "policy").mkdir()
    (tmp_path / "policy" / "project.policy").write_text(textwrap.dedent(block))
    return tmp_path


def judge(root: Path) -> policy.Verdict:
    doc = load(root / "Forgefile", {}, environ={})
    return policy.judge(policy.load_policy([root / "policy"]), doc, TODAY)


def statuses(v: policy.Verdict) -> dict[tuple[str, str], str]:
    return {(f.rule.id, f.address): f.status for f in v.findings}


def codes(root: Path) -> list[tuple[str, int, int]]:
    with pytest.raises(DiagnosticError) as caught:
        policy.load_policy([root / "policy"])
    return [(d.code, d.span.line, d.span.column) for d in caught.value.diagnostics if d.span]


@needs_regopy
def test_rego_findings_join_the_verdict_under_their_own_rules(tmp_path: Path) -> None:
    """deny blocks, warn warns, excepted rules are counted as waived; each has its resource."""
    v = judge(project(tmp_path, 'rego {\n  path = "../rego"\n}\n'))
    assert statuses(v) == {
        # A string message that names one address is placed on that resource.
        ("rego:main.deny", "service.web"): "blocking",
        ("rego:main.violation_root", "service.web"): "blocking",
        ("rego:main.warn", "service.web"): "warning",
        ("rego:main.deny_scratch", "image.base"): "waived",
    }
    web = next(f for f in v.findings if f.rule.id == "rego:main.deny")
    assert (web.span.file, web.span.line) == (str(tmp_path / "Forgefile"), 6)
    assert v.blocked
    assert v.evaluated == 3  # the engine read the image and both services
    assert v.rego is not None and v.rego["engine"]["engine"] == "regopy"
    assert {r.id for r in v.rules} >= {"rego:main.deny", "rego:main.warn"}
    assert v.to_json()["rego"]["files"] == ["lib/helpers.rego", "policy.rego"]


@needs_regopy
def test_the_block_sets_the_level_and_a_forgefile_waiver_excuses_a_rego_finding(
    tmp_path: Path,
) -> None:
    """`enforcement = "advisory"` turns deny into warnings; a waiver names a Rego rule id."""
    waiver = """
waiver "web-root" {
  rule     = "rego:main.violation_root"
  resource = "service.web"
  reason   = "the vendor image needs root until 2.0"
  owner    = "ops@example.com"
  expires  = "2027-01-31"
}
"""
    block = 'rego {\n  path = "../rego"\n  enforcement = "advisory"\n}\n'
    v = judge(project(tmp_path, block, forgefile=waiver))
    found = statuses(v)
    assert found[("rego:main.violation_root", "service.web")] == "waived"
    assert found[("rego:main.deny", "service.web")] == "warning"
    assert not v.blocked
    assert v.to_json()["waivers"][0]["rule"] == "rego:main.violation_root"


@needs_regopy
def test_an_engine_error_is_a_blocking_finding_not_a_pass(tmp_path: Path) -> None:
    """A Rego syntax error stops the engine: the verdict blocks, naming the file, whatever level."""
    block = 'rego {\n  path = "../rego"\n  enforcement = "advisory"\n}\n'
    v = judge(project(tmp_path, block, rules="syntax"))
    [failed] = v.findings
    assert failed.rule.id == "rego:error" and failed.error and failed.status == "blocking"
    assert "broken.rego" in failed.message
    # At the place in the Rego file the engine names, not at the `rego` block.
    assert failed.span.file.endswith("broken.rego") and failed.span.line == 6
    assert v.blocked


def test_no_engine_at_all_blocks(tmp_path: Path) -> None:
    """Asking for an engine that is not installed is a blocking finding at the block."""
    if shutil.which("conftest"):
        pytest.skip("conftest is installed here")
    v = judge(project(tmp_path, 'rego {\n  path = "../rego"\n  engine = "conftest"\n}\n'))
    [failed] = v.findings
    assert failed.error and failed.status == "blocking"
    assert "`conftest` is not available: put the `conftest` binary on PATH" in failed.message
    assert "pip install" not in failed.message
    assert (failed.span.line, failed.span.column) == (1, 1)


def test_a_bad_rego_block_is_a_diagnostic_at_the_attribute(tmp_path: Path) -> None:
    """Every mistake in the block is reported at once, each where it is."""
    block = """\
    rego {
      path        = "../nowhere"
      engine      = "opaa"
      timeout     = 10
      memory      = "512MiB"
      enforcement = "strict"
      packge      = "main"
    }
    """
    assert sorted(codes(project(tmp_path, block))) == [
        ("R0001", 7, 3),
        ("R0005", 3, 17),
        ("R0005", 6, 17),
        ("R0008", 4, 17),
        ("R0008", 5, 17),
        ("R0030", 2, 17),
    ]


@pytest.mark.parametrize(
    ("path", "says"),
    [
        ("../rego/policy.rego", "is a file: `path` names the folder"),
        ("../tests-only", "holds only tests (`*_test.rego`)"),
    ],
)
def test_a_path_that_holds_no_policy_says_why(tmp_path: Path, path: str, says: str) -> None:
    root = project(tmp_path, f'rego {{\n  path = "{path}"\n}}\n')
    (root / "tests-only").mkdir()
    shutil.copy(root / "rego" / "policy_test.rego", root / "tests-only")
    with pytest.raises(DiagnosticError) as caught:
        policy.load_policy([root / "policy"])
    [error] = caught.value.diagnostics
    assert error.code == "R0030" and says in error.message


def test_limits_of_zero_say_they_must_be_more(tmp_path: Path) -> None:
    root = project(tmp_path, 'rego {\n  path = "../rego"\n  timeout = 0s\n  memory = 0MiB\n}\n')
    with pytest.raises(DiagnosticError) as caught:
        policy.load_policy([root / "policy"])
    assert [(d.message, d.span.line) for d in caught.value.diagnostics if d.span] == [
        ("a limit of 0 allows nothing: it must be more than 0", 3),
        ("a limit of 0 allows nothing: it must be more than 0", 4),
    ]


def test_a_single_value_deny_is_a_diagnostic_in_the_rego_file(tmp_path: Path) -> None:
    """`deny if { ... }` would pass in silence when false: refused at its own line."""
    root = project(tmp_path, 'rego {\n  path = "../rego"\n}\n')
    (root / "rego" / "policy.rego").write_text("package main\n\ndeny if {\n  false\n}\n")
    with pytest.raises(DiagnosticError) as caught:
        policy.load_policy([root / "policy"])
    [error] = caught.value.diagnostics
    assert error.span is not None and error.span.file.endswith("rego/policy.rego")
    assert (error.code, error.span.line) == ("R0030", 3)


@needs_regopy
def test_a_message_naming_an_unknown_resource_says_so(tmp_path: Path) -> None:
    root = project(tmp_path, 'rego {\n  path = "../rego"\n}\n')
    (root / "rego" / "policy.rego").write_text(
        'package main\n\ndeny contains {"msg": "bad", "resource": "service.nope"}\n'
    )
    [found] = judge(root).findings
    assert found.address == ""
    assert found.message == "bad (it names `service.nope`, which this Forgefile does not declare)"


def test_a_folder_without_the_package_and_a_second_block_are_diagnostics(tmp_path: Path) -> None:
    block = 'rego {\n  path = "../rego"\n  namespace = "forge"\n}\nrego {\n  path = "../rego"\n}\n'
    root = project(tmp_path, block)
    assert codes(root) == [("R0030", 2, 10)]
    (root / "policy" / "project.policy").write_text(
        'rego {\n  path = "../rego"\n}\nrego {\n  path = "../rego"\n}\n'
    )
    assert codes(root) == [("R0011", 4, 1)]


def test_a_pack_cannot_bring_rego(tmp_path: Path) -> None:
    """Rego runs a program: only the project's own policy may ask for it."""
    root = project(tmp_path, 'policy {\n  packs = ["../pack"]\n}\n')
    (root / "pack").mkdir()
    (root / "pack" / "pack.policy").write_text('pack "p" {}\nrego {\n  path = "../rego"\n}\n')
    assert codes(root) == [("R0013", 2, 1)]


def test_the_policy_digest_covers_the_rego_files_and_only_them(tmp_path: Path) -> None:
    """Editing a .rego changes the digest the plan is bound to; a _test.rego does not."""
    root = project(tmp_path, 'rego {\n  path = "../rego"\n}\n')
    before = policy.load_policy([root / "policy"]).digest
    (root / "rego" / "policy_test.rego").write_text("package main\n# a conftest verify test\n")
    assert policy.load_policy([root / "policy"]).digest == before
    helper = root / "rego" / "lib" / "helpers.rego"
    helper.write_text(helper.read_text() + "\n# edited\n")
    assert policy.load_policy([root / "policy"]).digest != before


@needs_regopy
def test_rego_over_a_forgefile_without_resources_is_an_error_not_a_pass(tmp_path: Path) -> None:
    """Fail-closed: the Rego found nothing because it was shown nothing."""
    root = project(tmp_path, 'rego {\n  path = "../rego"\n}\n')
    (root / "Forgefile").write_text("")
    v = judge(root)
    assert [(p.kind, p.severity) for p in v.problems] == [("nothing-evaluated", "error")]
    assert v.blocked


def test_enforce_names_the_rego_pack_or_a_rego_rule(tmp_path: Path) -> None:
    """Rego rules are known only after the engine runs, so `rego` and `rego:...` are accepted."""
    block = (
        'rego {\n  path = "../rego"\n}\n'
        'enforce "rego" { level = "advisory" }\n'
        'enforce "rego:main.deny" { level = "soft" }\n'
    )
    loaded = policy.load_policy([project(tmp_path, block) / "policy"])
    assert [e.target for e in loaded.enforce] == ["rego", "rego:main.deny"]
