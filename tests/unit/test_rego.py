"""The Rego adapter: conftest-style policies judged by regopy in a real child process."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from compiler import rego
from forgefile.lower import load
from tests.conftest import REPO

FIXTURES = REPO / "tests" / "fixtures" / "rego"

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("regopy") is None, reason="needs regopy (pip install regopy)"
)


@pytest.fixture(scope="module")
def document() -> dict[str, Any]:
    """The fixture Forgefile as `forge show --json` prints it."""
    return {"version": 1, **load(FIXTURES / "Forgefile").to_document()}


def judge(case: str, document: dict[str, Any], **options: Any) -> rego.RegoResult:
    return rego.evaluate_rego(FIXTURES / case, document, engine="regopy", **options)


def finding(
    rule: str, verdict: str, message: str, resource: str = "", excepted: bool = False
) -> dict[str, Any]:
    return {
        "rule": f"rego:main.{rule}",
        "verdict": verdict,
        "message": message,
        "resource": resource,
        "blocking": verdict == "deny" and not excepted,
        "excepted": excepted,
    }


def test_string_and_object_messages_become_findings(document: dict[str, Any]) -> None:
    """deny strings, warn objects with `resource` and violation objects with `address` all read."""
    result = judge("rules", document)

    assert result.errors == ()
    assert [f for f in result.findings if not f["excepted"]] == [
        finding("deny", "deny", "service.web runs privileged"),
        finding("violation_root", "deny", "runs as root", "service.web"),
        finding("warn", "warn", "no memory limit", "service.web"),
    ]
    assert result.blocked


def test_an_exception_excepts_only_the_rule_it_names(document: dict[str, Any]) -> None:
    """`rules := ["scratch"]` excepts `deny_scratch`, which then no longer blocks; others stand."""
    result = judge("rules", document)

    excepted = [f for f in result.findings if f["excepted"]]
    assert excepted == [
        finding("deny_scratch", "deny", "image.base builds from scratch", excepted=True)
    ]
    assert excepted[0]["blocking"] is False


def test_subfolders_load_and_test_files_do_not(document: dict[str, Any]) -> None:
    """lib/helpers.rego is loaded; policy_test.rego, which is not valid Rego, is left out."""
    result = judge("rules", document)

    assert result.files == ("lib/helpers.rego", "policy.rego")
    assert result.errors == ()


def test_the_engine_and_its_version_are_recorded(document: dict[str, Any]) -> None:
    """The result names regopy and the version that ran, for the signed plan."""
    result = judge("rules", document)

    assert (result.engine, result.version) == ("regopy", importlib.metadata.version("regopy"))
    assert result.to_json()["engine"] == {"engine": "regopy", "version": result.version}
    assert result.digest.startswith("sha256:")


def test_a_policy_that_runs_too_long_is_killed_and_blocks(document: dict[str, Any]) -> None:
    """A policy still running at the timeout is killed; the error says so, and it blocks."""
    started = time.monotonic()
    result = judge("slow", document, timeout=1)

    assert time.monotonic() - started < 5
    version = importlib.metadata.version("regopy")
    assert result.errors == (f"the Rego engine (regopy {version}) was killed after 1 s",)
    assert result.findings == ()
    assert result.blocked


def test_the_memory_cap_stops_a_huge_array_before_the_timeout(document: dict[str, Any]) -> None:
    """Under a 256 MiB cap a multi-gigabyte array fails at once, not at the 3 s timeout."""
    started = time.monotonic()
    result = judge("memory", document, timeout=3, memory_mb=256)

    assert time.monotonic() - started < 2.5
    assert len(result.errors) == 1
    assert "ran out of memory: it may use at most 256 MiB" in result.errors[0]
    assert result.blocked


def test_a_syntax_error_blocks_and_names_the_file(document: dict[str, Any]) -> None:
    """A Rego syntax error is a blocking error at broken.rego's line and column."""
    result = judge("syntax", document)

    assert len(result.errors) == 1
    assert "broken.rego:6:36: Invalid boolean operator" in result.errors[0]
    assert result.findings == ()
    assert result.blocked


def test_a_crash_of_the_engine_blocks(document: dict[str, Any]) -> None:
    """regopy's segfault on `with input as data...` costs the child, and is a blocking error."""
    result = judge("crash", document)

    assert len(result.errors) == 1
    assert result.errors[0].endswith("crashed (SIGSEGV)")
    assert result.blocked


def test_a_failing_built_in_blocks_instead_of_silencing_the_rule(
    document: dict[str, Any],
) -> None:
    """Division by zero inside a deny is an error, not a deny that quietly never fires."""
    result = judge("builtin_error", document)

    assert len(result.errors) == 1
    assert "divide by zero" in result.errors[0]
    assert result.blocked


def test_rego_v0_rule_is_an_error(document: dict[str, Any]) -> None:
    """regopy reads v0 `deny[msg] { ... }` as an object; that is reported, never a silent pass."""
    result = judge("v0", document)

    assert result.findings == ()
    assert len(result.errors) == 1
    assert result.errors[0].startswith("`main.deny` is an object, not a set of messages")
    assert "`deny contains x if { ... }`" in result.errors[0]


def test_unsafe_variable_is_accepted_by_regopy(document: dict[str, Any]) -> None:
    """XXX: regopy 1.5.2 accepts an unsafe variable that OPA rejects; the rule never fires."""
    # Pinned so that a regopy release that rejects it shows up here; the adapter cannot see
    # this case without a Rego parser of its own.
    result = judge("unsafe", document)

    assert (result.findings, result.errors) == ((), ())


def test_rules_of_the_wrong_shape_are_errors(document: dict[str, Any]) -> None:
    """A boolean deny and a message without `msg` are errors; conftest would skip them."""
    result = judge("shapes", document)

    assert result.errors == (
        "`main.deny_flag` is `true`, not a set of messages",
        '`main.warn_text` holds {"text": "no msg field"}: a message must be a string '
        "or an object with a `msg` string",
    )
    assert result.findings == (finding("deny", "deny", "a proper message"),)


@pytest.mark.parametrize("head", ["deny if {", "deny_root := true", "warn = x", "violation {"])
def test_a_single_value_rule_is_refused_before_it_runs(tmp_path: Path, head: str) -> None:
    """`deny if { false }` is undefined when false: the rule would pass without a word."""
    (tmp_path / "policy.rego").write_text(f"package main\n\n{head}\n  true\n}}\n")
    with pytest.raises(rego.RegoError) as caught:
        rego.policy_modules(tmp_path)
    rule = head.split()[0]
    assert str(caught.value).startswith(f"policy.rego:3: `{rule}` is a single value")


@pytest.mark.parametrize("head", ["deny contains msg if {", "deny[msg] {", "deny_x contains 1"])
def test_a_set_rule_is_accepted(tmp_path: Path, head: str) -> None:
    (tmp_path / "policy.rego").write_text(f"package main\n\n{head}\n  msg := 1\n}}\n")
    assert rego.policy_modules(tmp_path)


def test_input_strings_and_big_numbers_reach_the_policy_intact() -> None:
    """Quotes and integers past 2**63 arrive unchanged (regopy's set_input mangles both)."""
    resources = [{"address": 'service."quoted"', "big": 10**20}]
    result = rego.evaluate_rego(FIXTURES / "echo", {"resources": resources}, engine="regopy")

    assert result.errors == ()
    assert [f["message"] for f in result.findings] == ['service."quoted"|100000000000000000000']


def test_the_namespace_chooses_the_package(document: dict[str, Any]) -> None:
    """Rules in `package forge.checks` run with that namespace, and are named after it."""
    result = judge("other_package", document, namespace="forge.checks")

    assert [f["rule"] for f in result.findings] == ["rego:forge.checks.deny"]


def test_a_folder_without_the_package_is_a_user_error(document: dict[str, Any]) -> None:
    """No file declaring `package main` is a RegoError, not an empty, passing verdict."""
    with pytest.raises(rego.RegoError, match="declares `package main`"):
        judge("other_package", document)


@pytest.mark.parametrize(
    ("folder", "options", "message"),
    [
        (FIXTURES / "missing", {}, "does not exist"),
        (FIXTURES, {"namespace": "main; x"}, "is not a Rego package name"),
        (FIXTURES / "rules", {"engine": "sentinel"}, "unknown Rego engine `sentinel`"),
    ],
)
def test_bad_requests_are_user_errors(
    folder: Path, options: dict[str, Any], message: str, document: dict[str, Any]
) -> None:
    """A missing folder, a namespace that is not a package name, an unknown engine: RegoError."""
    with pytest.raises(rego.RegoError, match=message):
        rego.evaluate_rego(folder, document, **options)


def test_regopy_never_enters_the_calling_process(document: dict[str, Any]) -> None:
    """Evaluating with regopy leaves it unimported here: only the child process loads it."""
    result = judge("rules", document)

    assert result.engine == "regopy"
    assert "regopy" not in sys.modules


def test_exec_mode_limits_the_program_it_becomes() -> None:
    """The trampoline for opa and conftest sets their data and CPU limits before exec."""
    worker = [sys.executable, "-P", "-m", "compiler.rego_worker", "exec"]
    limits = ["--memory-mb", "64", "--cpu-seconds", "5"]
    shell = ["/bin/sh", "-c", "ulimit -d; ulimit -t"]
    done = subprocess.run([*worker, *limits, "--", *shell], capture_output=True, check=True)

    assert done.stdout.decode().split() == [str(64 * 1024), "5"]


def test_an_engine_on_path_is_preferred_to_regopy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`opa` before `conftest` before regopy; an engine named explicitly wins."""
    for name in ("opa", "conftest"):
        (tmp_path / name).write_text("#!/bin/sh\n")
        (tmp_path / name).chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path))

    assert rego.find_engine() == ("opa", str(tmp_path / "opa"))
    assert rego.find_engine("conftest") == ("conftest", str(tmp_path / "conftest"))
    assert rego.find_engine("regopy") == ("regopy", sys.executable)
    (tmp_path / "opa").unlink()
    assert rego.find_engine() == ("conftest", str(tmp_path / "conftest"))
    (tmp_path / "conftest").unlink()
    assert rego.find_engine() == ("regopy", sys.executable)
    with pytest.raises(rego.RegoError, match="`opa` is not available"):
        rego.find_engine("opa")
