"""Lowering to the typed IR: defaults, references, variables, and the checks that run there."""

from __future__ import annotations

from pathlib import Path

import pytest

from forgefile import ir
from forgefile.diagnostics import DiagnosticError
from forgefile.lower import load
from forgefile.syntax import Size
from forgefile.values import ResourceRef

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "hello"


def lower(tmp_path: Path, text: str, **variables: str) -> ir.Document:
    (tmp_path / "Forgefile").write_text(text)
    return load(tmp_path, variables, environ={})


def codes(tmp_path: Path, text: str, **variables: str) -> list[str]:
    with pytest.raises(DiagnosticError) as caught:
        lower(tmp_path, text, **variables)
    return [d.code for d in caught.value.diagnostics]


def test_example_lowers_to_typed_resources() -> None:
    """The hello example gives every resource kind, typed, with references resolved."""
    doc = load(EXAMPLE, environ={})
    kinds = {r.address: type(r) for r in doc.resources}
    assert kinds == {
        "image.busybox": ir.Image,
        "image.site": ir.Image,
        "network.front": ir.Network,
        "volume.shared": ir.Volume,
        "service.web": ir.Service,
        "job.hello": ir.Job,
        "wasm.greet": ir.Wasm,
    }
    web = doc.resource("service.web")
    assert isinstance(web, ir.Service)
    assert web.image == ResourceRef("image", "site", web.span)
    assert web.resources.memory == Size(32 << 20)
    assert web.hostname == "web"  # defaults to the block name
    job = doc.resource("job.hello")
    assert isinstance(job, ir.Job) and job.success_codes == (0, 3)
    assert [o.name for o in doc.outputs] == ["web_url", "web_address"]


def test_ir_is_frozen_and_carries_spans() -> None:
    """IR nodes cannot be changed after lowering and point back at their source lines."""
    doc = load(EXAMPLE, environ={})
    web = doc.resource("service.web")
    assert web is not None
    with pytest.raises(AttributeError):
        web.name = "other"  # type: ignore[misc]
    assert web.span.file.endswith("Forgefile")
    assert web.span_of("command").line > web.span.line


def test_variables_from_arguments_environment_and_defaults(tmp_path: Path) -> None:
    """--var beats FORGE_VAR_x beats the default, and each is read as the declared type."""
    text = (
        'variable "n" { type = int  default = 1 }\nlocals { m = var.n * 2 }\n'
        'network "x" { subnet = cidrsubnet("10.213.0.0/16", 8, local.m) }'
    )
    (tmp_path / "Forgefile").write_text(text)
    net = load(tmp_path, {}, environ={}).resource("network.x")
    assert isinstance(net, ir.Network) and net.subnet == "10.213.2.0/24"
    net = load(tmp_path, {}, environ={"FORGE_VAR_n": "3"}).resource("network.x")
    assert isinstance(net, ir.Network) and net.subnet == "10.213.6.0/24"
    net = load(tmp_path, {"n": "4"}, environ={"FORGE_VAR_n": "3"}).resource("network.x")
    assert isinstance(net, ir.Network) and net.subnet == "10.213.8.0/24"


def test_unset_variable_is_an_error_never_an_empty_string(tmp_path: Path) -> None:
    """A variable with no default and no value stops lowering with E0109."""
    assert codes(tmp_path, 'variable "token" { type = string }') == ["E0109"]


def test_variable_given_with_the_wrong_type(tmp_path: Path) -> None:
    """`--var n=abc` for an int variable is a diagnostic naming the variable."""
    assert codes(tmp_path, 'variable "n" { type = int  default = 1 }', n="abc") == ["E0107"]


def test_unknown_attribute_suggests_the_right_one(tmp_path: Path) -> None:
    """A misspelt attribute gets "did you mean" with the schema's name."""
    with pytest.raises(DiagnosticError) as caught:
        lower(tmp_path, 'network "n" { subnt = "10.213.1.0/24" }')
    first = caught.value.diagnostics[0]
    assert first.code == "E0120" and "subnet" in first.hint


def test_required_attribute_missing(tmp_path: Path) -> None:
    """A service without an image names the missing attribute."""
    assert codes(tmp_path, 'service "s" { command = ["x"] }') == ["E0122"]


def test_locals_in_a_cycle_are_named(tmp_path: Path) -> None:
    """Locals that refer to each other in a circle are a diagnostic, not a RecursionError."""
    assert "E0106" in codes(tmp_path, "locals {\n  a = local.b\n  b = local.a\n}")


def test_env_function_needs_a_default_when_unset(tmp_path: Path) -> None:
    """env() of an unset variable errors unless a default is given."""
    text = 'network "n" { subnet = env("FORGE_TEST_UNSET_SUBNET") }'
    assert codes(tmp_path, text) == ["E0211"]
    doc = lower(tmp_path, 'network "n" { subnet = env("X", "10.213.1.0/24") }')
    assert isinstance(doc.resource("network.n"), ir.Network)


def test_invalid_subnet_and_gateway(tmp_path: Path) -> None:
    """Host bits set and a gateway outside the subnet are both caught, with a fix."""
    assert codes(tmp_path, 'network "n" { subnet = "10.213.1.1/24" }') == ["E0115"]
    text = 'network "n" { subnet = "10.213.1.0/24"  gateway = "10.213.2.1" }'
    assert codes(tmp_path, text) == ["E0117"]


def test_all_errors_reported_at_once(tmp_path: Path) -> None:
    """Problems in different blocks are collected, so one run shows every one of them."""
    text = 'network "a" { subnet = 1 }\nnetwork "b" { subnet = 2 }\nvolume "v" { x = 1 }'
    assert codes(tmp_path, text) == ["E0123", "E0123", "E0120"]


def test_copy_step_needs_src_or_content(tmp_path: Path) -> None:
    """A copy step with neither (or both) of src and content is refused."""
    assert "E0112" in codes(tmp_path, 'image "i" { copy { dst = "/a" } }')


def test_to_document_is_what_policy_reads() -> None:
    """The document view fills defaults and turns references into addresses."""
    doc = load(EXAMPLE, environ={})
    web = doc.resource("service.web")
    assert web is not None
    view = web.to_document()
    assert view["image"] == "image.site"
    assert view["privileged"] is False
    assert view["env"] == {}
    assert view["resources"]["memory"] == 32 << 20


def test_language_reference_matches_the_schema() -> None:
    """docs/language.md's block tables are exactly what the schema says (regenerate if not)."""
    from forgefile.schema import markdown_reference

    doc = (EXAMPLE.parents[1] / "docs" / "language.md").read_text()
    marker = (
        "The tables below are generated from `forgefile/schema.py`, the schema the checker "
        "uses.\n\n"
    )
    assert doc.split(marker, 1)[1] == markdown_reference()


COUNTED = """
image "b" {
  copy { content = "x"  dst = "/x" }
}
network "n" { subnet = "10.213.3.0/24" }
volume "v" {
  for_each = { a = "first", b = "second" }
}
service "api" {
  count    = 2
  image    = image.b
  command  = ["echo", "${count.index}"]
  networks = [network.n]
  volumes  = { "/data" = volume.v[count.index == 0 ? "a" : "b"] }
}
job "after" {
  image      = image.b
  command    = ["echo", volume.v["b"].name]
  depends_on = [service.api]
}
"""


def test_count_and_for_each_make_one_resource_per_instance(tmp_path: Path) -> None:
    """count gives [0], [1]...; for_each gives ["key"]; each instance is its own resource."""
    doc = lower(tmp_path, COUNTED.replace('volume.v["b"].name', '"x"'))
    addresses = [r.address for r in doc.resources]
    assert 'volume.v["a"]' in addresses and 'volume.v["b"]' in addresses
    first, second = doc.resource("service.api[0]"), doc.resource("service.api[1]")
    assert isinstance(first, ir.Service) and isinstance(second, ir.Service)
    assert (first.command, second.command) == (("echo", "0"), ("echo", "1"))
    assert (first.hostname, second.hostname) == ("api-0", "api-1")
    assert [v.address for _, v in second.volumes] == ['volume.v["b"]']
    assert doc.instances() == {"volume.v": ("a", "b"), "service.api": (0, 1)}


def test_depends_on_a_group_means_every_instance(tmp_path: Path) -> None:
    """`depends_on = [service.api]` waits for service.api[0] and service.api[1]."""
    doc = lower(tmp_path, COUNTED.replace('volume.v["b"].name', '"x"'))
    job = doc.resource("job.after")
    assert isinstance(job, ir.Job)
    assert [d.address for d in job.depends_on] == ["service.api[0]", "service.api[1]"]


def test_each_value_is_bound(tmp_path: Path) -> None:
    """Inside a for_each block, each.key and each.value are the map's entries."""
    text = 'network "n" {\n  for_each = { a = 1, b = 2 }\n  subnet = "10.213.${each.value}.0/24"\n}'
    doc = lower(tmp_path, text)
    subnets = {r.address: r.subnet for r in doc.resources if isinstance(r, ir.Network)}
    assert subnets == {'network.n["a"]': "10.213.1.0/24", 'network.n["b"]': "10.213.2.0/24"}


@pytest.mark.parametrize(
    ("change", "code"),
    [
        (("networks = [network.n]", "networks = [service.api]"), "E0123"),
        (('volume.v[count.index == 0 ? "a" : "b"]', "volume.v"), "E0135"),
        (("image    = image.b", "image    = image.b[0]"), "E0223"),
        (('volume.v[count.index == 0 ? "a" : "b"]', 'volume.v["c"]'), "E0224"),
        (("count    = 2", "count    = -1"), "E0131"),
        (("count    = 2", "count    = 2\n  for_each = []"), "E0130"),
        (("count    = 2", 'count    = "2"'), "E0131"),
    ],
)
def test_instance_mistakes_are_diagnostics(
    tmp_path: Path, change: tuple[str, str], code: str
) -> None:
    """Naming a group where one instance is needed, a missing key, or a bad count."""
    text = COUNTED.replace('volume.v["b"].name', '"x"').replace(*change)
    assert code in codes(tmp_path, text)


def test_variable_validation(tmp_path: Path) -> None:
    """A validation block refuses a value that breaks its condition, with its message."""
    text = (
        'variable "replicas" {\n  type = int\n  default = 2\n  validation {\n'
        "    condition = var.replicas > 0 && var.replicas <= 10\n"
        '    message   = "replicas must be 1 to 10"\n  }\n}\n'
        "locals { n = var.replicas }\n"
    )
    assert lower(tmp_path, text).variable_values == (("replicas", 2),)
    (tmp_path / "Forgefile").write_text(text)
    with pytest.raises(DiagnosticError) as caught:
        load(tmp_path, {"replicas": "0"}, environ={})
    [diagnostic] = [d for d in caught.value.diagnostics if d.code == "E0140"]
    assert diagnostic.message == "var.replicas = `0`: replicas must be 1 to 10"
    assert diagnostic.span is not None and diagnostic.span.line == 5


@pytest.mark.parametrize(
    ("attribute", "feature"),
    [
        ('ports = ["127.0.0.1:8080:80"]', "published ports"),
        ("secrets = [secret.db]", "secrets"),
    ],
)
def test_parsed_but_not_yet_carried_out_is_refused(
    tmp_path: Path, attribute: str, feature: str
) -> None:
    """What the schema checks but the executor cannot do yet is E0307, never a silent no-op."""
    text = (
        'image "b" {\n  copy { content = "x"  dst = "/x" }\n}\n'
        'secret "db" { vault = "db/password" }\n'
        f'service "s" {{\n  image = image.b\n  command = ["x"]\n  {attribute}\n}}\n'
    )
    with pytest.raises(DiagnosticError) as caught:
        lower(tmp_path, text)
    pending = [d for d in caught.value.diagnostics if d.code == "E0307"]
    assert any(feature in d.message for d in pending), pending
    assert any("secrets (secret blocks)" in d.message for d in pending)


def test_pending_attributes_are_still_type_checked(tmp_path: Path) -> None:
    """A parsed-only attribute with the wrong type is a type error first."""
    text = (
        'image "b" {\n  copy { content = "x"  dst = "/x" }\n}\n'
        'service "s" {\n  image = image.b\n  ports = 8080\n}\n'
    )
    assert "E0123" in codes(tmp_path, text)


def test_numeric_user_and_grace_period_reach_the_ir(tmp_path: Path) -> None:
    """user "1000:1000" and stop_grace_period are carried; a user name is E0307."""
    base = 'image "b" {\n  copy { content = "x"  dst = "/x" }\n}\n'
    doc = lower(
        tmp_path,
        base + 'service "s" {\n  image = image.b\n  user = "1000:1000"\n'
        "  stop_grace_period = 2s\n}\n",
    )
    service = doc.resource("service.s")
    assert isinstance(service, ir.Service)
    assert (service.user, service.stop_grace_period.seconds) == ("1000:1000", 2.0)
    assert codes(tmp_path, base + 'service "s" {\n  image = image.b\n  user = "www"\n}\n') == [
        "E0307"
    ]


def test_huge_subnets_and_endless_files_are_refused_quickly(tmp_path: Path) -> None:
    """0.0.0.0/0 is refused without walking its hosts; /dev/zero is read only to the limit."""
    assert codes(tmp_path, 'network "n" { subnet = "0.0.0.0/0" }') == ["E0118"]
    assert codes(tmp_path, 'network "n" { subnet = "10.0.0.0/7" }') == ["E0116"]
    with pytest.raises(DiagnosticError) as caught:
        load(Path("/dev/zero"), environ={})
    assert caught.value.diagnostics[0].code in ("F0001", "F0005")


def test_runaway_strings_are_stopped(tmp_path: Path) -> None:
    """A chain of locals doubling a string stops at the limit with E0225, not MemoryError."""
    chain = "\n".join(f'  s{i + 1} = "${{local.s{i}}}${{local.s{i}}}"' for i in range(40))
    text = f'locals {{\n  s0 = "xxxxxxxx"\n{chain}\n}}\noutput "o" {{ value = local.s40 }}'
    assert "E0225" in codes(tmp_path, text)


@pytest.mark.parametrize(
    "attribute",
    [
        'cap_add = ["CAP_NOPE"]',
        'env = { "A=B" = "1" }',
        'volumes = { "relative" = volume.v }',
        'working_dir = "srv"',
        "resources {\n    memory = 1B\n  }",
        "resources {\n    cpus = 0\n  }",
        "resources {\n    pids = 0\n  }",
        "resources {\n    pids = 4\n  }",
        "resources {\n    pids = 9999999999999\n  }",
        'cap_drop = ["CAP_NOPE"]',
        'tmpfs = ["tmp"]',
        'tmpfs = ["/data"]\n  volumes = { "/data" = volume.v }',
        'sysctls = { "kernel.hostname" = "x" }',
        "ulimits = { files = 10 }",
        "ulimits = { nofile = -1 }",
        'stop_signal = "STOPNOW"',
        'restart = "sometimes"',
        'tmpfs = ["/proc"]',
        'tmpfs = ["/sys/fs/cgroup"]',
        'tmpfs = ["/dev/"]',
        "resources {\n    cpus = 0.001\n  }",
        "resources {\n    cpus = 99999999999999999999.5\n  }",
        'restart = "always:3"',
        "log_max_size = 1KiB",
        "log_max_files = 101",
        "log_max_files = -1",
    ],
)
def test_values_no_workload_can_start_with_are_refused(tmp_path: Path, attribute: str) -> None:
    """Values runc would refuse at apply time are E0119 at validate time instead."""
    text = (
        'image "b" {\n  copy { content = "x"  dst = "/x" }\n}\nvolume "v" {}\n'
        f'service "s" {{\n  image = image.b\n  command = ["x"]\n  {attribute}\n}}\n'
    )
    assert "E0119" in codes(tmp_path, text)


def test_a_tmpfs_below_dev_is_allowed(tmp_path: Path) -> None:
    """/dev as a whole is the runtime's, but /dev/shm and the like may be a tmpfs."""
    text = (
        'image "b" {\n  copy { content = "x"  dst = "/x" }\n}\n'
        'service "s" {\n  image = image.b\n  command = ["x"]\n  tmpfs = ["/dev/shm", "/run"]\n}\n'
    )
    (service,) = [r for r in lower(tmp_path, text).resources if r.address == "service.s"]
    assert isinstance(service, ir.Service)
    assert service.tmpfs == ("/dev/shm", "/run")


def test_exit_codes_outside_a_byte_are_refused(tmp_path: Path) -> None:
    """success_codes hold exit statuses, 0 to 255."""
    text = (
        'image "b" {\n  copy { content = "x"  dst = "/x" }\n}\n'
        'job "j" {\n  image = image.b\n  command = ["x"]\n  success_codes = [0, 256]\n}\n'
    )
    assert codes(tmp_path, text) == ["E0119"]


def test_a_map_key_set_twice_is_an_error(tmp_path: Path) -> None:
    """`{ A = "1", A = "2" }` is E0228, not a silent last-one-wins."""
    text = 'volume "v" {\n  for_each = { a = 1, "a" = 2 }\n}\n'
    assert codes(tmp_path, text) == ["E0228"]


def test_a_failed_for_each_causes_no_follow_on_errors(tmp_path: Path) -> None:
    """After a bad for_each, uses of the group stay quiet: one error, the real one."""
    text = (
        'volume "v" {\n  for_each = ["a", "a"]\n}\n'
        'image "b" {\n  copy { content = "x"  dst = "/x" }\n}\n'
        'service "s" {\n  image = image.b\n  volumes = { "/d" = volume.v["a"] }\n}\n'
    )
    assert codes(tmp_path, text) == ["E0132"]


def test_depends_conditions_and_healthchecks_lower_and_are_checked(tmp_path: Path) -> None:
    """A `depends` block orders like depends_on and keeps its condition; a condition that can
    never be met (no healthcheck to pass, a service that never completes) is E0313."""
    text = (
        'image "b" {\n  copy { content = "x"  dst = "/x" }\n}\n'
        'service "db" {\n  image = image.b\n  command = ["db"]\n'
        '  healthcheck {\n    command = ["true"]\n    interval = 2s\n  }\n}\n'
        'job "seed" {\n  image = image.b\n  command = ["seed"]\n}\n'
        'service "t" {\n  image = image.b\n  command = ["t"]\n'
        '  depends {\n    on = service.db\n    condition = "healthy"\n  }\n'
        '  depends {\n    on = job.seed\n    condition = "completed_successfully"\n  }\n}\n'
    )
    (tmp_path / "Forgefile").write_text(text)
    doc = load(tmp_path / "Forgefile", {}, environ={})
    t = doc.resource("service.t")
    assert isinstance(t, ir.Service)
    assert [r.address for r in t.depends_on] == ["service.db", "job.seed"]
    assert t.conditions == (("service.db", "healthy"), ("job.seed", "completed_successfully"))
    db = doc.resource("service.db")
    assert isinstance(db, ir.Service) and db.healthcheck is not None
    assert (db.healthcheck.command, db.healthcheck.interval.seconds) == (("true",), 2.0)
    from compiler import checks

    def checked(text: str) -> list[str]:
        with pytest.raises(DiagnosticError) as caught:
            checks.check(lower(tmp_path, text))
        return [d.code for d in caught.value.diagnostics]

    checks.check(doc)  # nothing to say
    no_check = text.replace('  healthcheck {\n    command = ["true"]\n    interval = 2s\n  }\n', "")
    assert checked(no_check) == ["E0313"]
    done = 'on = job.seed\n    condition = "completed_successfully"'
    never_done = text.replace(done, done.replace("job.seed", "service.db"))
    assert checked(never_done) == ["E0313"]
    bad = text.replace('"healthy"', '"ready"')
    assert "E0124" in codes(tmp_path, bad)


def test_images_by_source_name_a_folder_or_archive_beside_the_forgefile(tmp_path: Path) -> None:
    """`oci:PATH:TAG` and `archive:PATH` lower to sources with absolute paths (a colon in a
    path that exists is part of it); a missing one is E0312, another scheme E0311."""
    (tmp_path / "layout").mkdir()
    (tmp_path / "web.tar").write_bytes(b"")
    (tmp_path / "odd:name.tar").write_bytes(b"")
    text = (
        'service "a" {\n  image = "oci:layout:1.0"\n  command = ["x"]\n}\n'
        'service "b" {\n  image = "archive:web.tar"\n  command = ["x"]\n}\n'
        'service "c" {\n  image = "archive:odd:name.tar"\n  command = ["x"]\n}\n'
    )
    (tmp_path / "Forgefile").write_text(text)
    doc = load(tmp_path / "Forgefile", {}, environ={})
    workloads = {r.address: r for r in doc.resources if isinstance(r, ir.Container)}
    source = workloads["service.a"].image
    assert isinstance(source, ir.ImageSource)
    assert (source.kind, source.path, source.tag) == ("oci", str(tmp_path / "layout"), "1.0")
    assert workloads["service.b"].to_document()["image"] == f"archive:{tmp_path}/web.tar"
    assert workloads["service.c"].image_name == f"archive:{tmp_path}/odd:name.tar"

    assert codes(tmp_path, text.replace("oci:layout:1.0", "oci:missing:1.0")) == ["E0312"]
    assert codes(tmp_path, text.replace("oci:layout:1.0", "docker://busybox")) == ["E0311"]
    assert codes(tmp_path, text.replace("archive:web.tar", "archive:layout")) == ["E0312"]
