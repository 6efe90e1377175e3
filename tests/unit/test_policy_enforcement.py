"""Enforcement kept apart from rule logic: pack defaults, project levels, rollouts, overrides,
waivers (in the Forgefile and in policy files), joins, whole-document rules and the commands."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import textwrap
from pathlib import Path

import jsonschema
import pytest
from typer.testing import CliRunner

from compiler import policy
from compiler.envelope import canonical_json
from compiler.policy_cases import coverage, run_cases
from forge.cli import app
from forgefile.diagnostics import DiagnosticError
from forgefile.lower import load
from tests.conftest import REPO

SARIF_SCHEMA = REPO.parent / "shared" / "schemas" / "sarif" / "sarif-schema-2.1.0.json"
TODAY = dt.date(2026, 12, 3)
runner = CliRunner()

FORGEFILE = """\
image "base" {
  context = "."
}

service "web" {
  image      = image.base
  command    = ["httpd"]
  privileged = true
}

service "api" {
  image   = image.base
  command = ["api"]
  volumes = { "/data" = volume.shared }
}

service "worker" {
  image   = image.base
  command = ["work"]
  volumes = { "/data" = volume.shared }
}

volume "shared" {}
"""

PACK = """\
pack "house" {
  title       = "House rules"
  enforcement = "soft"
}

rule "H-privileged" {
  title      = "No privileged containers"
  applies_to = [service]
  severity   = "critical"
  deny when resource.privileged
  message    = "${resource.address} runs privileged"
}

rule "H-shared-volume" {
  title      = "No two services share a volume"
  applies_to = [service]
  severity   = "medium"
  let mounts = flatten([
    for r in document.resources : [for v in values(r.volumes) : { volume = v, by = r.address }]
    if r.kind == "service"
  ])
  let users  = {for m in mounts : m.volume => m.by...}
  deny when anytrue([for v in values(resource.volumes) : length(users[v]) > 1])
  message    = "${resource.address} shares a volume with another service"
}
"""


def project(tmp_path: Path, config: str = "", forgefile: str = FORGEFILE, pack: str = PACK) -> Path:
    """A Forgefile, a pack folder `house` and the project's policy folder with `config`."""
    (tmp_path / "Forgefile").write_text(forgefile)
    (tmp_path / "house").mkdir(exist_ok=True)
    (tmp_path / "house" / "rules.policy").write_text(pack)
    (tmp_path / "policy").mkdir(exist_ok=True)
    uses = 'policy {\n  packs = ["../house"]\n}\n'
    (tmp_path / "policy" / "project.policy").write_text(uses + textwrap.dedent(config))
    return tmp_path


def verdict(
    tmp_path: Path,
    config: str = "",
    forgefile: str = FORGEFILE,
    today: dt.date = TODAY,
    overrides: tuple[policy.Override, ...] = (),
) -> policy.Verdict:
    """Judge the project under `tmp_path` as of `today`."""
    root = project(tmp_path, config, forgefile)
    doc = load(root / "Forgefile", {}, environ={})
    return policy.judge(policy.load_policy([root / "policy"]), doc, today, overrides)


def statuses(v: policy.Verdict) -> dict[tuple[str, str], str]:
    """(rule, resource) -> status of each finding."""
    return {(f.rule.id, f.address): f.status for f in v.findings}


def test_a_pack_sets_the_default_level_of_its_rules(tmp_path: Path) -> None:
    """The pack says soft: its findings block (no override given), and carry the pack's name."""
    v = verdict(tmp_path)
    assert statuses(v)[("H-privileged", "service.web")] == "blocking"
    assert all(f.level == "soft" and f.rule.pack == "house" for f in v.findings)
    assert v.blocked
    assert [p["name"] for p in v.to_json()["packs"]] == ["house"]


def test_a_join_is_written_once_and_finds_both_sides(tmp_path: Path) -> None:
    """The `let` grouping (`=> v...`) indexes volumes once; both sharers are found, not web."""
    found = {a for (rule, a) in statuses(verdict(tmp_path)) if rule == "H-shared-volume"}
    assert found == {"service.api", "service.worker"}


def test_the_project_overrides_a_level_per_rule_and_per_pack(tmp_path: Path) -> None:
    """`enforce "RULE"` beats `enforce "PACK"`, which beats the pack's default."""
    config = """
        enforce "house" { level = "advisory" }
        enforce "H-privileged" { level = "hard" }
    """
    s = statuses(verdict(tmp_path, config))
    assert s[("H-privileged", "service.web")] == "blocking"
    assert s[("H-shared-volume", "service.api")] == "warning"


def test_a_rollout_warns_until_its_date_then_blocks(tmp_path: Path) -> None:
    """`warn_until`: advisory through that day, the level after it; the finding says so."""
    config = 'enforce "H-privileged" {\n  level = "hard"\n  warn_until = "2026-12-31"\n}\n'
    before = verdict(tmp_path, config, today=dt.date(2026, 12, 31))
    [early] = [f for f in before.findings if f.rule.id == "H-privileged"]
    assert (early.status, early.level) == ("warning", "advisory")
    assert early.rollout == "advisory until 2026-12-31, then hard"
    after = verdict(tmp_path, config, today=dt.date(2027, 1, 1))
    assert statuses(after)[("H-privileged", "service.web")] == "blocking"


def test_a_soft_finding_passes_with_an_identity_and_a_reason(tmp_path: Path) -> None:
    """An override names who and why; it is recorded with the finding and in the verdict."""
    given = policy.Override("H-privileged", "service.web", "vendor appliance", "alice")
    v = verdict(tmp_path, overrides=(given,))
    assert statuses(v)[("H-privileged", "service.web")] == "overridden"
    assert v.to_json()["overrides"] == [{**given.to_json(), "finding": "service.web"}]
    assert v.to_json()["counts"]["overridden"] == 1


def test_a_hard_finding_cannot_be_overridden(tmp_path: Path) -> None:
    """Overriding a hard rule changes nothing and says the override matched no soft finding."""
    given = policy.Override("H-privileged", "", "please", "alice")
    v = verdict(tmp_path, 'enforce "H-privileged" { level = "hard" }', overrides=(given,))
    assert statuses(v)[("H-privileged", "service.web")] == "blocking"
    assert [p.kind for p in v.problems] == ["unused-override"]


WAIVER = """
waiver "legacy" {
  rule     = "H-privileged"
  resource = service.web
  reason   = "the appliance needs raw sockets until v2"
  owner    = "ops@example.com"
  expires  = "EXPIRES"
}
"""


def test_a_forgefile_waiver_excuses_one_rule_for_one_resource(tmp_path: Path) -> None:
    """A waiver block beside the service: waived, counted apart, recorded with who and why."""
    v = verdict(tmp_path, forgefile=FORGEFILE + WAIVER.replace("EXPIRES", "2027-01-31"))
    [waived] = [f for f in v.findings if f.rule.id == "H-privileged"]
    assert waived.status == "waived" and waived.waiver is not None
    assert waived.waiver.owner == "ops@example.com"
    assert v.to_json()["counts"]["waived"] == 1
    assert v.to_json()["waivers"][0]["source"] == "forgefile"
    assert statuses(v)[("H-shared-volume", "service.api")] == "blocking"


def test_an_expired_waiver_blocks(tmp_path: Path) -> None:
    """Past its date a waiver excuses nothing, and is itself an error."""
    v = verdict(tmp_path, forgefile=FORGEFILE + WAIVER.replace("EXPIRES", "2026-12-02"))
    assert statuses(v)[("H-privileged", "service.web")] == "blocking"
    assert [(p.kind, p.severity) for p in v.problems] == [("expired-waiver", "error")]
    assert v.to_json()["counts"]["errors"] == 1


def test_an_expired_waiver_blocks_even_when_no_finding_does(tmp_path: Path) -> None:
    """The verdict's counts say why it blocks: an error, though no finding is blocking."""
    fixed = FORGEFILE.replace("privileged = true", "privileged = false")
    shared = 'enforce "H-shared-volume" { level = "advisory" }'
    v = verdict(tmp_path, shared, forgefile=fixed + WAIVER.replace("EXPIRES", "2026-01-01"))
    counts = v.to_json()["counts"]

    assert v.blocked and v.to_json()["verdict"] == "block"
    assert (counts["blocking"], counts["errors"]) == (0, 1)


@pytest.mark.parametrize("field", ["reason", "owner", "rule"])
def test_a_blank_waiver_field_is_an_error_in_the_forgefile(tmp_path: Path, field: str) -> None:
    """A waiver must say which rule, why and who answers for it; whitespace says none of it."""
    value = {"reason": "the appliance needs raw sockets until v2", "owner": "ops@example.com"}
    value["rule"] = "H-privileged"
    blanked = WAIVER.replace(f'"{value[field]}"', '"   "').replace("EXPIRES", "2027-01-31")
    (tmp_path / "Forgefile").write_text(FORGEFILE + blanked)
    with pytest.raises(DiagnosticError) as caught:
        load(tmp_path / "Forgefile", {}, environ={})
    (error,) = caught.value.diagnostics
    assert (error.code, error.message) == ("E0162", f"a waiver's `{field}` is blank")
    assert error.span is not None and error.span.line == len(FORGEFILE.splitlines()) + 3 + (
        ["rule", "resource", "reason", "owner"].index(field)
    )


def test_a_blank_waiver_field_is_an_error_in_a_policy_file(tmp_path: Path) -> None:
    config = """
        waiver "w" {
          rule = "H-privileged"
          resource = "service.web"
          reason = ""
          owner = "  "
          expires = "2027-06-30"
        }
    """
    root = project(tmp_path, config)
    with pytest.raises(DiagnosticError) as caught:
        policy.load_policy([root / "policy"])
    assert [(d.code, d.message) for d in caught.value.diagnostics] == [
        ("R0016", "a waiver's `reason` is blank"),
        ("R0016", "a waiver's `owner` is blank"),
    ]


def test_a_waiver_holds_through_its_last_day(tmp_path: Path) -> None:
    """`expires` is the last day the waiver holds."""
    v = verdict(tmp_path, forgefile=FORGEFILE + WAIVER.replace("EXPIRES", TODAY.isoformat()))
    assert statuses(v)[("H-privileged", "service.web")] == "waived"


def test_a_waiver_in_a_policy_file_and_an_orphaned_one(tmp_path: Path) -> None:
    """A waiver file excuses like a block; one that waives nothing broken warns."""
    config = """
        waiver "shared-ok" {
          rule = "H-shared-volume"
          resource = "service.api"
          reason = "read-only in practice"
          owner = "data@example.com"
          expires = "2027-06-30"
        }
        waiver "stale" {
          rule = "H-privileged"
          resource = "service.api"
          reason = "was privileged once"
          owner = "ops@example.com"
          expires = "2027-06-30"
        }
    """
    v = verdict(tmp_path, config)
    assert statuses(v)[("H-shared-volume", "service.api")] == "waived"
    assert [(p.kind, p.severity) for p in v.problems] == [("orphaned-waiver", "warning")]
    assert "service.api" in v.problems[0].message


def test_info_and_whole_document_rules(tmp_path: Path) -> None:
    """`info when` never blocks; `applies_to = document` evaluates once for the whole file."""
    pack = (
        PACK
        + """
rule "H-count" {
  applies_to = document
  severity   = "info"
  info when length(document.resources) > 3
  message    = "${length(document.resources)} resources"
}
"""
    )
    root = project(tmp_path, 'enforce "house" { level = "advisory" }', pack=pack)
    doc = load(root / "Forgefile", {}, environ={})
    v = policy.judge(policy.load_policy([root / "policy"]), doc, TODAY)
    [info] = [f for f in v.findings if f.rule.id == "H-count"]
    assert (info.status, info.address, info.message) == ("info", "", "5 resources")
    assert not v.blocked


def test_a_run_that_evaluates_nothing_is_an_error(tmp_path: Path) -> None:
    """Rules for services over a Forgefile without one pass nothing: that is an error."""
    v = verdict(tmp_path, forgefile='volume "only" {}\n')
    assert v.evaluated == 0 and v.blocked
    assert [p.kind for p in v.problems] == ["nothing-evaluated"]


@pytest.mark.parametrize(
    ("config", "code"),
    [
        ('enforce "H-privilegd" { level = "hard" }', "R0021"),
        ('enforce "house" { level = "strict" }', "R0005"),
        ('enforce "house" {\n  level = "hard"\n  warn_until = "soon"\n}', "R0015"),
        ('polcy "x" {}', "R0020"),
        ('waiver "w" { rule = "H-privileged" }', "R0003"),
    ],
)
def test_configuration_mistakes_are_diagnostics(tmp_path: Path, config: str, code: str) -> None:
    """A misspelt rule, level, date or block in the project's policy fails to load, by code."""
    root = project(tmp_path, config)
    with pytest.raises(DiagnosticError) as caught:
        policy.load_policy([root / "policy"])
    assert code in [d.code for d in caught.value.diagnostics]


def test_a_pack_cannot_carry_project_configuration(tmp_path: Path) -> None:
    """`enforce` inside a pack would let a pack loosen itself: refused with R0013."""
    root = project(tmp_path)
    (root / "house" / "sneaky.policy").write_text('enforce "house" { level = "advisory" }\n')
    with pytest.raises(DiagnosticError) as caught:
        policy.load_policy([root / "policy"])
    assert [d.code for d in caught.value.diagnostics] == ["R0013"]


def test_the_digest_pins_the_packs_a_project_uses(tmp_path: Path) -> None:
    """Changing a rule in a used pack changes the policy digest that goes into the plan."""
    root = project(tmp_path)
    before = policy.load_policy([root / "policy"]).digest
    (root / "house" / "rules.policy").write_text(PACK.replace('"medium"', '"high"'))
    assert policy.load_policy([root / "policy"]).digest != before


CASES = """
test "privileged is caught" {
  forgefile = <<-EOT
    image "b" { context = "." }
    service "s" {
      image = image.b
      command = ["x"]
      privileged = true
    }
  EOT
  fires  = ["H-privileged"]
}

test "a plain service passes" {
  forgefile = <<-EOT
    image "b" { context = "." }
    service "s" {
      image = image.b
      command = ["x"]
    }
  EOT
  passes = ["H-privileged", "H-shared-volume"]
}
"""


def test_policy_cases_run_and_measure_coverage(tmp_path: Path) -> None:
    """`test` blocks pass when the named rules fire (or not); coverage names rules never fired."""
    root = project(tmp_path)
    (root / "house" / "cases.policy").write_text(CASES)
    loaded = policy.load_policy([root / "house"])
    results = run_cases(loaded)
    assert [r.passed for r in results] == [True, True]
    assert coverage(loaded, results).uncovered == ("H-shared-volume",)


def test_a_failing_case_says_what_it_expected(tmp_path: Path) -> None:
    """A case whose rule does not fire fails with the rule named."""
    root = project(tmp_path)
    (root / "house" / "cases.policy").write_text(CASES.replace("privileged = true", ""))
    [bad, _] = run_cases(policy.load_policy([root / "house"]))
    assert bad.problems == ("expected H-privileged to fire; it did not",)


def test_a_case_cannot_pass_a_rule_it_never_evaluates(tmp_path: Path) -> None:
    """A fixture without a service says nothing about a service rule: the case fails."""
    root = project(tmp_path)
    text = 'test "empty" {\n  forgefile = <<-EOT\n    volume "v" {}\n  EOT\n'
    (root / "house" / "cases.policy").write_text(text + '  passes = ["H-privileged"]\n}\n')
    [result] = run_cases(policy.load_policy([root / "house"]))
    assert result.problems == (
        "H-privileged applies to service, which the fixture does not declare: "
        "it passes without being evaluated",
    )


@pytest.mark.parametrize(
    ("lists", "says"),
    [
        ('fires = ["H-privileged"]\n  passes = ["H-privileged"]', "both to fire and to pass"),
        ("", "expects nothing"),
    ],
)
def test_a_case_lists_each_rule_once(tmp_path: Path, lists: str, says: str) -> None:
    root = project(tmp_path)
    case = f'test "t" {{\n  forgefile = ""\n  {lists}\n}}\n'
    (root / "house" / "cases.policy").write_text(case)
    with pytest.raises(DiagnosticError) as caught:
        policy.load_policy([root / "house"])
    [error] = caught.value.diagnostics
    assert error.code == "R0023" and says in error.message


def test_policy_test_without_cases_fails(tmp_path: Path) -> None:
    """Zero cases is not a pass: exit 1, saying there is nothing to run."""
    root = project(tmp_path)
    result = runner.invoke(app, ["policy", "test", "-f", str(root), str(root / "house")])
    assert result.exit_code == 1
    assert "no `test` blocks" in result.output


def test_policy_check_prints_sarif_that_validates(tmp_path: Path) -> None:
    """`forge policy check --format sarif` validates against SARIF 2.1.0 and exits 3 on a block."""
    root = project(tmp_path)
    result = runner.invoke(app, ["policy", "check", "-f", str(root), "--format", "sarif"])
    assert result.exit_code == 3, result.output
    log = json.loads(result.stdout)
    schema = json.loads(SARIF_SCHEMA.read_text())
    jsonschema.validators.validator_for(schema)(schema).validate(log)
    rule_ids = {r["ruleId"] for r in log["runs"][0]["results"]}
    assert rule_ids == {"H-privileged", "H-shared-volume"}


def test_override_flag_reaches_the_plan_document(tmp_path: Path) -> None:
    """`--override RULE@ADDRESS=REASON --identity` is recorded in the verdict JSON."""
    root = project(tmp_path, 'enforce "H-shared-volume" { level = "advisory" }')
    args = ["policy", "check", "-f", str(root), "--format", "json", "--identity", "alice"]
    args += ["--override", "H-privileged@service.web=vendor appliance"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["verdict"] == "pass"
    assert data["overrides"] == [
        {
            "rule": "H-privileged",
            "resource": "service.web",
            "reason": "vendor appliance",
            "identity": "alice",
            "finding": "service.web",
        }
    ]


def test_an_override_without_a_reason_is_refused(tmp_path: Path) -> None:
    """A reason is required: `--override RULE` alone exits 1."""
    root = project(tmp_path)
    result = runner.invoke(app, ["policy", "check", "-f", str(root), "--override", "H-privileged"])
    assert result.exit_code == 1
    assert "reason is required" in result.output


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--identity", "   ", "--override", "H-privileged=why"], "--identity is blank"),
        (["--override", "=why"], "names no rule"),
        (["--override", "H-privileged=one", "--override", "H-privileged=two"], "given twice"),
        (["--identity", "bob\x1b[31m", "--override", "H-privileged=why"], "control characters"),
        (["--override", "@service.web=why"], "names no rule"),
    ],
)
def test_an_override_must_name_a_rule_and_a_who(tmp_path: Path, args: list[str], says: str) -> None:
    root = project(tmp_path)
    result = runner.invoke(app, ["policy", "check", "-f", str(root), *args])
    assert result.exit_code == 1
    assert says in result.output


def test_an_override_of_a_misspelt_rule_suggests_the_id(tmp_path: Path) -> None:
    root = project(tmp_path)
    overrides = (policy.Override("H-privilegd", "", "why", "alice"),)
    doc = load(root / "Forgefile", {}, environ={})
    v = policy.judge(policy.load_policy([root / "policy"]), doc, TODAY, overrides)
    [unused] = [p for p in v.problems if p.kind == "unused-override"]
    assert "no loaded rule is H-privilegd (did you mean `H-privileged`?)" in unused.message


def test_policy_explain_shows_the_values_that_made_it_fire(tmp_path: Path) -> None:
    """`forge policy explain RULE@ADDRESS` prints the rule, the fields it read and the result."""
    root = project(tmp_path)
    result = runner.invoke(app, ["policy", "explain", "H-privileged@service.web", "-f", str(root)])
    assert result.exit_code == 0, result.output
    assert "resource.privileged = true" in result.stdout
    assert "fires on service.web" in result.stdout


def test_policy_explain_json_carries_the_values_and_the_finding(tmp_path: Path) -> None:
    root = project(tmp_path)
    args = ["policy", "explain", "H-privileged@service.web", "-f", str(root), "--json"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["rule"]["id"] == "H-privileged" and data["address"] == "service.web"
    assert data["values"] == {"resource.address": "service.web", "resource.privileged": True}
    assert data["fires"] is True
    assert [f["resource"] for f in data["findings"]] == ["service.web"]


@pytest.mark.parametrize(
    ("target", "says"),
    [
        ("H-privileged@service.wb", "no resource `service.wb`"),
        ("H-privileged@volume.shared", "`volume.shared` is a volume, which it never judges"),
    ],
)
def test_policy_explain_refuses_an_address_it_cannot_explain(
    tmp_path: Path, target: str, says: str
) -> None:
    """Before printing the rule: a misspelt address gets a suggestion, a wrong kind a reason."""
    root = project(tmp_path)
    result = runner.invoke(app, ["policy", "explain", target, "-f", str(root)])
    assert result.exit_code == 1
    assert says in result.output
    assert "deny when" not in result.output
    if "wb" in target:
        assert "did you mean `service.web`?" in result.output


def test_apply_records_the_waivers_and_overrides_it_was_judged_with(tmp_path: Path) -> None:
    """The audit log gets one event per waiver and override in the plan's verdict."""
    from executor.apply import apply_plan
    from executor.drivers import Host
    from executor.monitor import Monitor
    from executor.paths import ProjectPaths
    from executor.state import State

    paths = ProjectPaths.for_state_dir(tmp_path / "state")
    paths.ensure()
    state = State.open(paths.database)
    given = policy.Override("H-privileged", "service.web", "vendor appliance", "alice")
    judged = verdict(
        tmp_path,
        'enforce "H-shared-volume" { level = "advisory" }',
        forgefile=FORGEFILE,
        overrides=(given,),
    ).to_json()
    plan = {"actions": [], "policy": judged, "outputs": {}}
    apply_plan(plan, Host(paths, Monitor(tmp_path / "monitor.sock")), state)
    events = [e for e in state.events() if e["kind"].startswith("policy-")]
    assert events == [
        {
            **events[0],
            "kind": "policy-override",
            "address": "service.web",
            "override": {**given.to_json(), "finding": "service.web"},
        }
    ]
    assert isinstance(events[0]["id"], int)  # the entry's own number, not a name from it


def test_an_override_of_a_whole_rule_is_logged_for_each_finding_it_let_pass(
    tmp_path: Path,
) -> None:
    """One --override RULE=... letting two findings pass: two entries, each naming its own."""
    from executor.apply import apply_plan
    from executor.drivers import Host
    from executor.monitor import Monitor
    from executor.paths import ProjectPaths
    from executor.state import State

    paths = ProjectPaths.for_state_dir(tmp_path / "state")
    paths.ensure()
    state = State.open(paths.database)
    given = policy.Override("H-shared-volume", "", "reviewed", "alice")
    judged = verdict(tmp_path, overrides=(given,)).to_json(compact=True)
    apply_plan(
        {"actions": [], "policy": judged, "outputs": {}},
        Host(paths, Monitor(tmp_path / "m.sock")),
        state,
    )
    logged = [e["address"] for e in state.events() if e["kind"] == "policy-override"]
    assert logged == ["service.api", "service.worker"]


def test_the_policy_reference_lists_the_shipped_packs_rule_by_rule() -> None:
    """docs/policy.md ends with the tables generated from stdlib/policy (regenerate if not)."""
    doc = (REPO / "docs" / "policy.md").read_text()
    marker = "The tables below are generated from `stdlib/policy/`; a test keeps them equal.\n\n"
    assert doc.split(marker, 1)[1] == policy.pack_reference()


DOCUMENT_RULE = """
rule "H-count" {
  applies_to = document
  severity   = "low"
  deny when length(document.resources) > 3
  message    = "too many resources"
}
"""


def test_a_document_rule_is_waived_with_resource_document(tmp_path: Path) -> None:
    config = """
        enforce "H-privileged" { level = "advisory" }
        enforce "H-shared-volume" { level = "advisory" }
        waiver "big-on-purpose" {
          rule = "H-count"
          resource = "document"
          reason = "the demo needs five"
          owner = "ops@example.com"
          expires = "2027-06-30"
        }
    """
    root = project(tmp_path, config, pack=PACK + DOCUMENT_RULE)
    v = policy.judge(
        policy.load_policy([root / "policy"]), load(root / "Forgefile", {}, environ={}), TODAY
    )
    assert statuses(v)[("H-count", "")] == "waived"
    assert v.problems == () and not v.blocked


@pytest.mark.parametrize(
    ("resource", "says"),
    [
        (
            "service.wbe",
            "names service.wbe, which this Forgefile does not declare "
            "(did you mean `service.web`?)",
        ),
        ("service.web", "repeats waiver `legacy`"),
    ],
)
def test_an_orphaned_waiver_says_why(tmp_path: Path, resource: str, says: str) -> None:
    config = f"""
        waiver "second" {{
          rule = "H-privileged"
          resource = "{resource}"
          reason = "again"
          owner = "ops@example.com"
          expires = "2027-06-30"
        }}
    """
    v = verdict(tmp_path, config, forgefile=FORGEFILE + WAIVER.replace("EXPIRES", "2027-01-31"))
    [orphan] = [p for p in v.problems if p.kind == "orphaned-waiver"]
    assert says in orphan.message


@pytest.mark.parametrize(
    "config",
    [
        "policy {\n  packs = []\n}\n",
        'enforce "house" { level = "hard" }\nenforce "house" { level = "advisory" }\n',
        'waiver "w" {\n rule = "H-privileged"\n resource = "service.web"\n reason = "r"\n'
        ' owner = "o"\n expires = "2027-01-01"\n}\n' * 2,
    ],
    ids=["policy", "enforce", "waiver"],
)
def test_a_second_block_of_one_kind_is_an_error(tmp_path: Path, config: str) -> None:
    root = project(tmp_path, config)
    with pytest.raises(DiagnosticError) as caught:
        policy.load_policy([root / "policy"])
    [error] = caught.value.diagnostics
    assert error.code == "R0011" and error.related


@pytest.mark.parametrize("fmt", ["json", "sarif", "junit"])
def test_a_policy_that_does_not_load_still_gives_ci_a_report(tmp_path: Path, fmt: str) -> None:
    """Exit 1 with the diagnostics on stderr, and a report on stdout saying nothing was judged."""
    root = project(tmp_path, 'enforce "H-privilegd" { level = "hard" }')
    result = runner.invoke(app, ["policy", "check", "-f", str(root), "--format", fmt])

    assert result.exit_code == 1
    if fmt == "json":
        data = json.loads(result.stdout)
        assert data["verdict"] == "error" and data["diagnostics"][0]["code"] == "R0021"
    elif fmt == "sarif":
        log = json.loads(result.stdout)
        schema = json.loads(SARIF_SCHEMA.read_text())
        jsonschema.validators.validator_for(schema)(schema).validate(log)
        invocation = log["runs"][0]["invocations"][0]
        assert invocation["executionSuccessful"] is False
        assert "R0021" in invocation["toolExecutionNotifications"][0]["message"]["text"]
    else:
        assert "<error" in result.stdout and "R0021" in result.stdout


def test_an_override_for_the_resource_wins_over_one_for_the_rule(tmp_path: Path) -> None:
    overrides = (
        policy.Override("H-privileged", "", "whole rule", "alice"),
        policy.Override("H-privileged", "service.web", "this one", "bob"),
    )
    v = verdict(tmp_path, overrides=overrides)
    [found] = [f for f in v.findings if f.rule.id == "H-privileged"]
    assert found.override is not None and found.override.reason == "this one"


def test_a_plan_carries_what_decided_and_only_a_digest_of_the_advisories(tmp_path: Path) -> None:
    """The compact verdict (what plans hold): the overridden finding whole (its rule's facts
    once, under `rules`), the two warnings as their count and the digest of their full JSON."""
    overrides = (policy.Override("H-privileged", "", "reviewed", "alice"),)
    v = verdict(tmp_path, 'enforce "H-shared-volume" { level = "advisory" }', overrides=overrides)
    full, compact = v.to_json(), v.to_json(compact=True)
    assert [f["status"] for f in full["findings"]] == ["overridden", "warning", "warning"]

    [short] = compact["findings"]
    facts = compact["rules"][short["rule"]]
    assert full["findings"][0] == {
        **short,
        "pack": facts["pack"],
        "severity": facts["severity"],
        "verdict": facts["verdict"],
        "rule_span": facts["span"],
        "controls": facts["controls"],
        "remediation": facts["remediation"],
    }
    advisory = [f for f in full["findings"] if f["status"] in ("warning", "info")]
    assert compact["advisories"] == {
        "count": 2,
        "digest": "sha256:" + hashlib.sha256(canonical_json(advisory)).hexdigest(),
    }
    assert compact["counts"] == full["counts"] and compact["overrides"] == full["overrides"]
    assert set(compact["rules"]) == {"H-privileged", "H-shared-volume"}
