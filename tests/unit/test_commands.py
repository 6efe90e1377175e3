"""Commands that read a Forgefile or state and print something about it: graph, schema, init,
show, logs."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
from typer.testing import CliRunner

from compiler import graph
from forge.cli import app
from forgefile.lower import load
from forgefile.schema import SCHEMAS, json_schema

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "hello"
runner = CliRunner()


def test_graph_edges_follow_references() -> None:
    """Every reference in the example is an edge from the dependent to what it needs."""
    doc = load(EXAMPLE, environ={})
    edges = set(graph.edges(doc))
    assert ("service.web", "image.site") in edges
    assert ("wasm.greet", "job.hello") in edges
    assert ("image.site", "image.busybox") in edges
    assert not any(dependent.startswith("network.") for dependent, _ in edges)


def test_graph_dot_is_one_statement_per_node_and_edge() -> None:
    """The DOT output declares each resource once and each distinct edge once."""
    doc = load(EXAMPLE, environ={})
    dot = graph.to_dot(doc)
    assert dot.startswith("digraph forge {") and dot.rstrip().endswith("}")
    assert dot.count(" -> ") == len(set(graph.edges(doc)))
    assert dot.count("[label=") == len(doc.resources)


def test_schema_is_valid_and_judges_blocks() -> None:
    """The exported JSON Schema is itself valid, accepts good blocks and names bad ones."""
    schema = json_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    validator = jsonschema.Draft202012Validator(schema)
    good = {
        "service": {"web": {"image": "image.site", "count": 2, "resources": {"memory": "64MiB"}}},
        "network": {"front": {"subnet": "10.213.47.0/28"}},
        "image": {"site": {"copy": [{"content": "x", "dst": "/x"}]}},
    }
    assert list(validator.iter_errors(good)) == []
    bad = {"service": {"web": {"image": 5, "privileged": "yes", "imgae": 1}}}
    messages = sorted(e.message for e in validator.iter_errors(bad))
    assert len(messages) == 3
    assert set(schema["properties"]) == set(SCHEMAS)


def test_schema_command_prints_the_schema() -> None:
    """`forge schema` prints exactly json_schema()."""
    result = runner.invoke(app, ["schema"])
    assert result.exit_code == 0
    assert json.loads(result.stdout) == json_schema()


def test_init_writes_a_starter_that_validates(tmp_path: Path) -> None:
    """`forge init DIR` writes a Forgefile and a policy folder that validate as they are."""
    result = runner.invoke(app, ["init", str(tmp_path), "--subnet", "10.213.92.0/28"])
    assert result.exit_code == 0, result.output
    doc = load(tmp_path, environ={})
    assert {r.address for r in doc.resources} >= {"service.web", "network.app"}
    assert 'default     = "10.213.92.0/28"' in (tmp_path / "Forgefile").read_text()
    checked = runner.invoke(app, ["validate", "-f", str(tmp_path)])
    assert checked.exit_code == 0, checked.output


def test_init_never_overwrites(tmp_path: Path) -> None:
    """An existing Forgefile is left alone and the command fails, writing nothing."""
    (tmp_path / "Forgefile").write_text("# mine\n")
    result = runner.invoke(app, ["init", str(tmp_path)])
    assert result.exit_code == 1
    assert (tmp_path / "Forgefile").read_text() == "# mine\n"
    assert not (tmp_path / "policy").exists()


def test_validate_json_reports_diagnostics_with_ranges(tmp_path: Path) -> None:
    """`forge validate --json` exits 1 and lists each diagnostic with its range."""
    (tmp_path / "Forgefile").write_text('network "n" {\n  subnet = 1\n}\n')
    result = runner.invoke(app, ["validate", "--json", "-f", str(tmp_path)])
    assert result.exit_code == 1
    report = json.loads(result.stdout)
    assert report["version"] == 1 and report["valid"] is False
    [diagnostic] = report["diagnostics"]
    assert diagnostic["code"] == "E0123"
    assert diagnostic["range"]["start"]["line"] == 2


def test_fmt_check_diff_and_rewrite(tmp_path: Path) -> None:
    """fmt --check fails on a messy file and changes nothing; fmt rewrites; then --check passes."""
    messy = 'network "n" {\nsubnet="10.213.3.0/24"   # the lab\n}\n'
    path = tmp_path / "Forgefile"
    path.write_text(messy)
    assert runner.invoke(app, ["fmt", "--check", str(path)]).exit_code == 1
    assert path.read_text() == messy
    shown = runner.invoke(app, ["fmt", "--diff", str(tmp_path)])
    assert shown.exit_code == 1 and '+  subnet = "10.213.3.0/24"  # the lab' in shown.stdout
    assert runner.invoke(app, ["fmt", str(path)]).exit_code == 0
    assert path.read_text() == 'network "n" {\n  subnet = "10.213.3.0/24"  # the lab\n}\n'
    assert runner.invoke(app, ["fmt", "--check", str(path)]).exit_code == 0


def test_shipped_forgefiles_are_canonical() -> None:
    """The example and the init template are written the way `forge fmt` writes them."""
    from forgefile.fmt import format_source

    root = EXAMPLE.parents[1]
    for path in (EXAMPLE / "Forgefile", root / "stdlib" / "templates" / "init" / "Forgefile"):
        assert format_source(path.read_text()) == path.read_text(), path


def test_key_commands_revoke_set_a_threshold_and_co_sign(tmp_path: Path) -> None:
    """forge key generate/threshold/sign/revoke/list, as two approvers would use them."""
    (tmp_path / "Forgefile").write_text('volume "data" {}\n')
    plan_file = tmp_path / "plan.forge"
    base = ["-f", str(tmp_path)]

    def forge(*args: str) -> str:
        result = runner.invoke(app, [*args, *base])
        assert result.exit_code == 0, result.output
        return result.output

    forge("key", "generate", "alice")
    forge("key", "generate", "bob")
    assert "signed by 2 of the 2" in forge("key", "threshold", "2")

    bad = runner.invoke(app, ["key", "threshold", "3", *base])
    assert bad.exit_code != 0 and "2 are trusted" in bad.output

    forge("plan", "--key", "alice", "-o", str(plan_file))
    assert len(json.loads(plan_file.read_bytes())["signatures"]) == 1
    assert "now carries 2 signature(s)" in forge("key", "sign", str(plan_file), "--key", "bob")
    assert len(json.loads(plan_file.read_bytes())["signatures"]) == 2

    again = runner.invoke(app, ["key", "sign", str(plan_file), "--key", "bob", *base])
    assert again.exit_code != 0 and "already signed" in again.output

    assert "Revoked" in forge("key", "revoke", "bob", "--reason", "left the team")
    listed = forge("key", "list")
    assert "revoked" in listed


def test_flags_that_do_not_go_together_are_refused(tmp_path: Path) -> None:
    (tmp_path / "Forgefile").write_text('volume "data" {}\n')
    base = ["-f", str(tmp_path)]
    refresh = runner.invoke(app, ["plan", "--refresh-only", "-o", str(tmp_path / "p"), *base])
    assert refresh.exit_code == 1 and "takes no -o" in refresh.output
    assert not (tmp_path / "p").exists()
    resume = runner.invoke(app, ["apply", "--resume", str(tmp_path / "p"), *base])
    assert resume.exit_code == 1 and "takes no plan" in resume.output
    audit = runner.invoke(
        app, ["audit", "export", "--since", "2026-12-05", "--until", "2026-12-01", *base]
    )
    assert audit.exit_code == 1 and "is after --until" in audit.output


def test_logs_prints_rotated_files_in_order_and_filters_by_since(tmp_path: Path) -> None:
    """forge logs reads ADDRESS.log.1 before ADDRESS.log, prints text (or time and text with
    -t), keeps lines from --since on, and refuses a --since it cannot read, saying why."""
    from executor import logfile

    (tmp_path / "Forgefile").write_text('volume "data" {}\n')
    logs = tmp_path / ".forge" / "logs"
    logs.mkdir(parents=True)
    early, late = "2026-12-04T09:00:00.000000000Z", "2026-12-04T10:00:00.000000000Z"
    (logs / "service.x.log.1").write_bytes(logfile.encode(early, "stdout", False, b"first"))
    (logs / "service.x.log").write_bytes(
        logfile.encode(late, "stderr", True, b"sec") + logfile.encode(late, "stderr", False, b"ond")
    )
    base = ["--file", str(tmp_path)]

    def forge(*args: str) -> str:
        result = runner.invoke(app, ["logs", *args, "service.x", *base])
        assert result.exit_code == 0, result.output
        return result.output

    assert forge() == "first\nsecond\n"
    assert forge("-t") == f"{early} first\n{late} second\n"
    assert forge("--since", "2026-12-04T09:30:00Z") == "second\n"
    assert forge("--since", "2026-12-04T09:30:00+01:00") == "first\nsecond\n"
    assert forge("--since", "1m") == ""
    bad = runner.invoke(app, ["logs", "--since", "10 minutes", "service.x", *base])
    assert bad.exit_code == 1
    assert "--since '10 minutes' is neither a duration nor a time" in bad.output
    assert "1h30m" in bad.output and "Traceback" not in bad.output
    missing = runner.invoke(app, ["logs", "service.y", *base])
    assert missing.exit_code == 1 and "no logs for service.y" in missing.output


def test_uptime_shows_the_two_largest_units() -> None:
    from forge.cli import _duration

    shown = [_duration(s) for s in (None, 0, 59, 61, 3599, 3661, 90061)]
    assert shown == ["", "0s", "59s", "1m01s", "59m59s", "1h01m", "1d01h"]
