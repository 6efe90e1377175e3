"""Host bind mounts: the `bind` block lowered and checked, planned, judged by the packs' rules
(with the `bind_allow` param and waivers), written into config.json, and checked at apply."""

from __future__ import annotations

import datetime as dt
import os
import textwrap
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from compiler import policy
from compiler.plan import BuildFacts, ImageFacts, StateSnapshot, plan, spec_digest
from executor.containers import ALL_CAPABILITIES, ContainerSpec, Mount, config_json
from executor.drivers import ActionFailed, checked_binds
from forgefile import ir
from forgefile.diagnostics import DiagnosticError
from forgefile.lower import load
from tests.conftest import REPO

TODAY = dt.date(2026, 12, 3)
EMPTY = StateSnapshot(lineage="fg-test-lineage", serial=0, digest="sha256:" + "0" * 64)
FACTS = BuildFacts(images={"image.base": ImageFacts(digest="sha256:" + "a" * 64)})


def forgefile(*binds: str, kind: str = "service", extra: str = "") -> str:
    """A Forgefile with one workload `web` whose body holds each of `binds` (block bodies)."""
    blocks = "".join(f"  bind {{\n{textwrap.indent(b, '    ')}\n  }}\n" for b in binds)
    return (
        'image "base" {\n  context = "."\n  user    = "1000:1000"\n}\n\n'
        f'{kind} "web" {{\n  image   = image.base\n  command = ["cat", "/etc/app/x"]\n'
        f"  resources {{\n    memory = 64MiB\n    pids   = 32\n  }}\n{extra}{blocks}}}\n"
    )


def lower(tmp_path: Path, text: str) -> ir.Document:
    (tmp_path / "Forgefile").write_text(text)
    return load(tmp_path / "Forgefile", {}, environ={})


def diagnostics(tmp_path: Path, text: str) -> list[tuple[str, str, int]]:
    with pytest.raises(DiagnosticError) as caught:
        lower(tmp_path, text)
    return [(d.code, d.message, d.span.line if d.span else 0) for d in caught.value.diagnostics]


# -- the language -------------------------------------------------------------------------------


def test_a_bind_lowers_read_only_by_default(tmp_path: Path) -> None:
    """A bind block becomes an ir.Bind, read-only unless it says otherwise, in the document."""
    doc = lower(
        tmp_path,
        forgefile(
            'source = "/srv/app/conf"\ntarget = "/etc/app"',
            'source = "/srv/cache"\ntarget = "/cache"\nread_only = false',
        ),
    )

    [web] = [r for r in doc.resources if isinstance(r, ir.Service)]
    assert web.binds == (
        ir.Bind("/srv/app/conf", "/etc/app", True),
        ir.Bind("/srv/cache", "/cache", False),
    )
    assert web.to_document()["binds"] == [
        {"source": "/srv/app/conf", "target": "/etc/app", "read_only": True},
        {"source": "/srv/cache", "target": "/cache", "read_only": False},
    ]


@pytest.mark.parametrize(
    ("source", "says"),
    [
        ("srv/app", "is not an absolute path"),
        ("./conf", "is not an absolute path"),
        ("/srv/app/", "is not normalised"),
        ("/srv//app", "is not normalised"),
        ("/srv/./app", "is not normalised"),
        ("/srv/x/../app", "is not normalised"),
        ("//srv/app", "is not normalised"),
        ("", "is not an absolute path"),
    ],
)
def test_a_host_path_must_be_absolute_and_normalised(
    tmp_path: Path, source: str, says: str
) -> None:
    """E0314 at validate, at the `source` line, with the normalised form as the fix."""
    text = forgefile(f'source = "{source}"\ntarget = "/etc/app"')

    [(code, message, line)] = diagnostics(tmp_path, text)

    assert code == "E0314"
    assert message == f"bind source `{source}` {says}"
    assert text.splitlines()[line - 1].strip() == f'source = "{source}"'


@pytest.mark.parametrize(
    ("target", "code"),
    [
        ("etc/app", "E0314"),
        ("/etc/app/", "E0314"),
        ("/", "E0119"),
        ("/proc/x", "E0119"),
        ("/sys", "E0119"),
        ("/dev", "E0119"),
        ("/data", "E0119"),  # the volume's mount point
        ("/tmp", "E0119"),  # the tmpfs
    ],
)
def test_a_target_must_be_a_free_absolute_path(tmp_path: Path, target: str, code: str) -> None:
    """A target is normalised, and hides neither the runtime's mounts nor another mount."""
    extra = '  volumes = { "/data" = volume.v }\n  tmpfs = ["/tmp"]\n'
    text = 'volume "v" {}\n' + forgefile(f'source = "/srv/app"\ntarget = "{target}"', extra=extra)

    assert [d[0] for d in diagnostics(tmp_path, text)] == [code]


def test_two_binds_on_one_target_are_refused(tmp_path: Path) -> None:
    """The second bind of a target is E0119; each problem of several binds is reported."""
    text = forgefile(
        'source = "/srv/a"\ntarget = "/x"',
        'source = "/srv/b"\ntarget = "/x"',
        'source = "srv/c"\ntarget = "/y"',
    )

    found = diagnostics(tmp_path, text)

    assert [(code, message) for code, message, _ in found] == [
        ("E0119", "bind target `/x` is also a bind"),
        ("E0314", "bind source `srv/c` is not an absolute path"),
    ]


def test_runtime_crun_is_accepted_and_reaches_the_ir(tmp_path: Path) -> None:
    """`runtime = "crun"` is no longer E0307: the IR carries it."""
    doc = lower(tmp_path, forgefile(kind="job", extra='  runtime = "crun"\n'))

    [job] = [r for r in doc.resources if isinstance(r, ir.Job)]
    assert job.runtime == "crun"


# -- the plan -----------------------------------------------------------------------------------


def spec_of(tmp_path: Path, text: str) -> dict[str, Any]:
    document = plan(lower(tmp_path, text), EMPTY, FACTS, dt.datetime(2026, 1, 1, tzinfo=dt.UTC))
    [action] = [a for a in document["actions"] if a["address"] == "service.web"]
    spec: dict[str, Any] = action["spec"]
    return spec


def test_the_plan_records_each_bind_source(tmp_path: Path) -> None:
    """The spec holds the host path, so a different path makes a different spec digest."""
    one = spec_of(tmp_path, forgefile('source = "/srv/app/conf"\ntarget = "/etc/app"'))
    other = spec_of(tmp_path, forgefile('source = "/srv/app/conf2"\ntarget = "/etc/app"'))

    assert one["binds"] == [{"source": "/srv/app/conf", "target": "/etc/app", "read_only": True}]
    assert spec_digest(one) != spec_digest(other)


def test_a_spec_without_binds_or_crun_is_as_before(tmp_path: Path) -> None:
    """Neither key is written when unused: specs (and digests) made before them still match."""
    spec = spec_of(tmp_path, forgefile())

    assert "binds" not in spec
    assert "runtime" not in spec
    assert spec_of(tmp_path, forgefile(extra='  runtime = "crun"\n'))["runtime"] == "crun"


# -- policy -------------------------------------------------------------------------------------


def judged(tmp_path: Path, text: str, config: str = "", waiver: str = "") -> policy.Verdict:
    """`text` judged by the baseline pack, with the project's `config` in its policy folder."""
    doc = lower(tmp_path, text + waiver)
    folder = tmp_path / "policy"
    folder.mkdir(exist_ok=True)
    (folder / "project.policy").write_text(config or 'policy { packs = ["baseline"] }\n')
    return policy.judge(policy.load_policy([folder]), doc, TODAY)


def blocking(verdict: policy.Verdict) -> dict[str, str]:
    return {f.rule.id: f.message for f in verdict.findings if f.blocking}


ALLOW_SRV_APP = 'policy {\n  packs  = ["baseline"]\n  params = { bind_allow = ["/srv/app"] }\n}\n'


def test_every_bind_is_denied_until_the_project_allows_its_folder(tmp_path: Path) -> None:
    """FRG-C036 blocks with the default (empty) allow-list, and passes a listed folder."""
    text = forgefile('source = "/srv/app/conf"\ntarget = "/etc/app"')

    before = judged(tmp_path, text)
    after = judged(tmp_path, text, ALLOW_SRV_APP)

    assert blocking(before) == {
        "FRG-C036": "service.web binds /srv/app/conf from the host, outside the folders policy "
        "allows (bind_allow: none)"
    }
    assert blocking(after) == {}
    assert after.to_json()["params"] == {"bind_allow": ["/srv/app"]}


def test_sensitive_paths_are_denied_even_when_allowed(tmp_path: Path) -> None:
    """bind_allow = ["/"] lifts FRG-C036, never FRG-C022 or FRG-C023."""
    text = forgefile(
        'source = "/etc"\ntarget = "/host-etc"',
        'source = "/var/run/docker.sock"\ntarget = "/var/run/docker.sock"',
    )
    config = 'policy {\n  packs  = ["baseline"]\n  params = { bind_allow = ["/"] }\n}\n'

    found = blocking(judged(tmp_path, text, config))

    assert sorted(found) == ["FRG-C022", "FRG-C023"]
    assert "/etc, /var/run/docker.sock" in found["FRG-C022"]


def test_a_waiver_excuses_one_bind_rule_for_one_workload(tmp_path: Path) -> None:
    """A waiver of FRG-C036 lets the bind pass, counted as waived; FRG-C022 still blocks."""
    waiver = textwrap.dedent("""
        waiver "vendor-conf" {
          rule     = "FRG-C036"
          resource = service.web
          reason   = "reads the vendor's config in place until v4"
          owner    = "platform@example.com"
          expires  = "2027-03-31"
        }
        """)
    text = forgefile('source = "/opt/vendor/conf"\ntarget = "/etc/app"')

    verdict = judged(tmp_path, text, waiver=waiver)

    assert blocking(verdict) == {}
    assert verdict.count("waived") == 1
    assert [w["rule"] for w in verdict.to_json()["waivers"]] == ["FRG-C036"]


def test_the_allow_list_is_part_of_the_policy_digest(tmp_path: Path) -> None:
    """A plan is pinned to the allow-list it was judged with: changing it changes the digest."""
    text = forgefile('source = "/srv/app/conf"\ntarget = "/etc/app"')
    config = ALLOW_SRV_APP.replace("/srv/app", "/srv")

    assert judged(tmp_path, text, ALLOW_SRV_APP).digest != judged(tmp_path, text, config).digest


@pytest.mark.parametrize(
    ("config", "says"),
    [
        (
            'policy {\n  packs = ["baseline"]\n  params = { bind_alow = ["/srv"] }\n}\n',
            "the policy block sets param `bind_alow`, which no loaded pack or file declares",
        ),
        (
            'policy {\n  packs = ["baseline"]\n  params = { bind_allow = "/srv" }\n}\n',
            "param `bind_allow` is a list (its default is []), not a string",
        ),
        (
            'policy {\n  packs = ["baseline"]\n  params = ["bind_allow"]\n}\n',
            "`params` is a map of param names to values, not a list",
        ),
        (
            'rule "X" {\n  applies_to = [service]\n  severity = "low"\n'
            '  deny when length(param.allowed) > 0\n  message = "x"\n}\n',
            "rule `X` reads `param.allowed`, which no loaded file declares",
        ),
    ],
)
def test_param_mistakes_are_r0024_when_the_policy_loads(
    tmp_path: Path, config: str, says: str
) -> None:
    """A misspelt or mistyped param is an error at its line, not a rule that quietly passes."""
    folder = tmp_path / "policy"
    folder.mkdir()
    (folder / "project.policy").write_text(config)

    with pytest.raises(DiagnosticError) as caught:
        policy.load_policy([folder])

    assert [(d.code, d.message) for d in caught.value.diagnostics] == [("R0024", says)]


def test_a_policy_test_case_sets_its_own_params() -> None:
    """`forge policy test` cases judge with the defaults unless a case sets a param."""
    from compiler.policy_cases import run_cases

    loaded = policy.load_policy([REPO / "stdlib" / "policy" / "baseline"])
    results = {r.test.name: r for r in run_cases(loaded)}

    assert results["FRG-C036-inside-the-allow-list"].passed
    assert "FRG-C036" in results["FRG-C036-nothing-allowed-by-default"].fired


# -- config.json --------------------------------------------------------------------------------


def test_a_host_bind_is_mounted_safely(
    runtime_spec_validator: jsonschema.Draft4Validator,
) -> None:
    """bind (not rbind), rprivate, nosuid, nodev, ro; a volume keeps rbind; both validate."""
    spec = ContainerSpec(
        command=("cat",),
        mounts=(
            Mount("/srv/forge/volumes/v", "/data"),
            Mount("/srv/app/conf", "/etc/app", readonly=True, host=True),
            Mount("/srv/cache", "/cache", readonly=False, host=True),
        ),
    )

    config = config_json(spec, host_capabilities=frozenset(ALL_CAPABILITIES))

    by_target = {m["destination"]: m for m in config["mounts"]}
    assert by_target["/etc/app"] == {
        "destination": "/etc/app",
        "type": "bind",
        "source": "/srv/app/conf",
        "options": ["bind", "rprivate", "nosuid", "nodev", "ro"],
    }
    assert by_target["/cache"]["options"][-1] == "rw"
    assert by_target["/data"]["options"] == ["rbind", "rprivate", "rw"]
    assert list(runtime_spec_validator.iter_errors(config)) == []


# -- at apply -----------------------------------------------------------------------------------


def test_a_missing_source_is_refused(tmp_path: Path) -> None:
    """ActionFailed names the path and what the host said."""
    spec = {"binds": [{"source": str(tmp_path / "gone"), "target": "/x", "read_only": True}]}

    with pytest.raises(ActionFailed, match="cannot be mounted: No such file or directory"):
        checked_binds("service.web", spec)


def test_a_source_through_a_symbolic_link_is_refused_naming_its_target(tmp_path: Path) -> None:
    """A link in the source, or in a folder above it, is not followed: policy judged the path."""
    (tmp_path / "real").mkdir()
    (tmp_path / "real" / "conf").write_text("x")
    (tmp_path / "link").symlink_to(tmp_path / "real")
    for source in (tmp_path / "link", tmp_path / "link" / "conf"):
        spec = {"binds": [{"source": str(source), "target": "/x", "read_only": True}]}
        with pytest.raises(ActionFailed) as caught:
            checked_binds("service.web", spec)
        assert f"it leads to {os.path.realpath(source)}" in str(caught.value)


def test_a_good_source_is_recorded_down_to_its_inode(tmp_path: Path) -> None:
    """What state keeps: the bind as planned, with the device and inode that were mounted."""
    source = tmp_path.resolve() / "conf"
    source.mkdir()
    spec = {"binds": [{"source": str(source), "target": "/x", "read_only": True}]}

    [found] = checked_binds("service.web", spec)

    assert found == {
        "source": str(source),
        "target": "/x",
        "read_only": True,
        "device": source.stat().st_dev,
        "inode": source.stat().st_ino,
    }


def test_policy_explain_shows_the_allow_list_a_rule_read(tmp_path: Path) -> None:
    """`forge policy explain FRG-C036@...` lists param.bind_allow beside the binds."""
    doc = lower(tmp_path, forgefile('source = "/srv/app/conf"\ntarget = "/etc/app"'))
    loaded = policy.load_policy([REPO / "stdlib" / "policy" / "baseline"])
    rule = loaded.rule("FRG-C036")
    assert rule is not None

    values = policy.explain_bindings(rule, doc, "service.web", {"bind_allow": ["/srv/app"]})

    assert values["param.bind_allow"] == ["/srv/app"]
    assert values["resource.binds"][0]["source"] == "/srv/app/conf"
