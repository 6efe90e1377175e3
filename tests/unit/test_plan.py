"""The planner: actions and their order, diffs against state, address allocation and outputs."""

from __future__ import annotations

import json
import textwrap
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from compiler.envelope import canonical_json
from compiler.plan import (
    BuildFacts,
    ImageFacts,
    StateResource,
    StateSnapshot,
    plan,
    rollback_plan,
    select,
    spec_digest,
)
from forgefile import ir
from forgefile.diagnostics import DiagnosticError
from forgefile.lower import load

CREATED = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
BASE_DIGEST = "sha256:" + "a" * 64
GREET_DIGEST = "sha256:" + "b" * 64
EMPTY = StateSnapshot(lineage="fg-test-lineage", serial=0, digest="sha256:" + "0" * 64)

HELLO = """\
image "base" {
  context = "ctx"
}

network "net" {
  subnet = "10.213.60.0/28"
}

service "web" {
  image    = image.base
  command  = ["httpd", "-f", "-p", "80"]
  networks = [network.net]
}

job "once" {
  image    = image.base
  command  = ["true"]
  networks = [network.net]
}

wasm "greet" {
  module = "greet.wasm"
}

output "web_address" {
  value = service.web.address
}

output "web_url" {
  value = "http://${service.web.address}/"
}
"""

API = """\
service "api" {
  image    = image.base
  command  = ["api"]
  networks = [network.net]
}
"""


def lower(tmp_path: Path, text: str) -> ir.Document:
    """Write `text` as tmp_path/Forgefile (with the files it names) and lower it."""
    (tmp_path / "ctx").mkdir(exist_ok=True)
    (tmp_path / "greet.wasm").write_bytes(b"\0asm\1\0\0\0")
    (tmp_path / "Forgefile").write_text(textwrap.dedent(text))
    return load(tmp_path / "Forgefile", {}, environ={})


def facts(base: str = BASE_DIGEST) -> BuildFacts:
    """Build facts with fake digests: no image store is involved in planning."""
    return BuildFacts(
        images={"image.base": ImageFacts(digest=base)},
        modules={"wasm.greet": GREET_DIGEST},
        policy={"verdict": "pass", "digest": None, "evaluated": 0, "findings": []},
    )


def snapshot_of(document: dict[str, Any], live: dict[str, bool] | None = None) -> StateSnapshot:
    """The state an apply of `document` would leave, specs round-tripped through JSON."""
    resources = {}
    for action in document["actions"]:
        if action["spec"] is None:
            continue
        spec = json.loads(json.dumps(action["spec"]))
        running = (live or {}).get(action["address"], True) if action["kind"] == "service" else None
        resources[action["address"]] = StateResource(
            address=action["address"],
            kind=action["kind"],
            spec=spec,
            spec_digest=spec_digest(spec),
            depends_on=tuple(action["depends_on"]),
            live=running,
            note="" if running is not False else "exited with status 137",
        )
    return StateSnapshot(
        lineage=EMPTY.lineage, serial=1, digest="sha256:" + "1" * 64, resources=resources
    )


def actions(document: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The plan's actions by address."""
    return {a["address"]: a for a in document["actions"]}


def kinds_of_action(document: dict[str, Any]) -> dict[str, str]:
    """Each address mapped to what the plan does to it."""
    return {a["address"]: a["action"] for a in document["actions"]}


def address_of(document: dict[str, Any], address: str) -> str:
    """The address (CIDR) the plan gives a workload on its first network."""
    attachment: str = actions(document)[address]["spec"]["networks"][0]["address"]
    return attachment


def test_against_empty_state_everything_is_created_in_dependency_order(tmp_path: Path) -> None:
    """With nothing applied every resource is created, each after everything it depends on."""
    document = plan(lower(tmp_path, HELLO), EMPTY, facts(), CREATED)
    order = [a["address"] for a in document["actions"]]

    assert sorted(order) == sorted(
        ["image.base", "network.net", "service.web", "job.once", "wasm.greet"]
    )
    assert set(kinds_of_action(document).values()) == {"create"}
    assert order.index("image.base") < order.index("service.web")
    assert order.index("network.net") < order.index("service.web")
    assert order.index("image.base") < order.index("job.once")
    assert actions(document)["service.web"]["depends_on"] == ["image.base", "network.net"]
    for position, action in enumerate(document["actions"]):
        assert all(order.index(dep) < position for dep in action["depends_on"])


def test_state_matching_the_plan_gives_only_no_ops(tmp_path: Path) -> None:
    """Planning again against the state the plan's own specs describe changes nothing."""
    doc = lower(tmp_path, HELLO)
    first = plan(doc, EMPTY, facts(), CREATED)

    second = plan(doc, snapshot_of(first), facts(), CREATED)

    assert set(kinds_of_action(second).values()) == {"no-op"}
    assert all(a["diff"] == {} for a in second["actions"])
    assert second["prior_state"]["serial"] == 1


def test_changing_a_command_replaces_only_that_service(tmp_path: Path) -> None:
    """A new command replaces the service with a diff naming argv, and touches nothing else."""
    before = plan(lower(tmp_path, HELLO), EMPTY, facts(), CREATED)
    changed = HELLO.replace('"httpd", "-f", "-p", "80"', '"httpd", "-f", "-p", "8080"')

    after = plan(lower(tmp_path, changed), snapshot_of(before), facts(), CREATED)

    moves = {a: k for a, k in kinds_of_action(after).items() if k != "no-op"}
    assert moves == {"service.web": "replace"}
    web = actions(after)["service.web"]
    assert set(web["diff"]) == {"argv"}
    assert web["diff"]["argv"] == {
        "before": ["httpd", "-f", "-p", "80"],
        "after": ["httpd", "-f", "-p", "8080"],
    }
    assert "argv" in web["reason"]


def test_a_new_image_digest_updates_the_image_and_replaces_its_workloads(tmp_path: Path) -> None:
    """A rebuilt image is updated in place and every workload on it is replaced; nothing else."""
    doc = lower(tmp_path, HELLO)
    before = plan(doc, EMPTY, facts(), CREATED)

    after = plan(doc, snapshot_of(before), facts(base="sha256:" + "c" * 64), CREATED)

    assert kinds_of_action(after) == {
        "image.base": "update",
        "network.net": "no-op",
        "service.web": "replace",
        "job.once": "replace",
        "wasm.greet": "no-op",
    }
    assert set(actions(after)["service.web"]["diff"]) == {"image"}
    assert set(actions(after)["job.once"]["diff"]) == {"image"}
    assert actions(after)["image.base"]["diff"]["digest"]["after"] == "sha256:" + "c" * 64


def test_removing_a_block_deletes_its_resource(tmp_path: Path) -> None:
    """A block gone from the Forgefile is deleted, and the others are left as they are."""
    before = plan(lower(tmp_path, HELLO), EMPTY, facts(), CREATED)
    without_job = HELLO.replace(
        textwrap.dedent(
            """\
            job "once" {
              image    = image.base
              command  = ["true"]
              networks = [network.net]
            }
            """
        ),
        "",
    )
    assert "job" not in without_job

    after = plan(lower(tmp_path, without_job), snapshot_of(before), facts(), CREATED)

    assert kinds_of_action(after) == {
        "image.base": "no-op",
        "network.net": "no-op",
        "service.web": "no-op",
        "job.once": "delete",
        "wasm.greet": "no-op",
    }
    deleted = actions(after)["job.once"]
    assert deleted["reason"] == "no longer in the Forgefile"
    assert deleted["spec"] is None
    assert deleted["kind"] == "job"


def test_a_service_that_is_not_running_is_replaced(tmp_path: Path) -> None:
    """A service whose state says it is not live is replaced, with a reason saying so."""
    doc = lower(tmp_path, HELLO)
    before = plan(doc, EMPTY, facts(), CREATED)

    after = plan(doc, snapshot_of(before, live={"service.web": False}), facts(), CREATED)

    moves = {a: k for a, k in kinds_of_action(after).items() if k != "no-op"}
    assert moves == {"service.web": "replace"}
    reason = actions(after)["service.web"]["reason"]
    assert "not running" in reason
    assert "exited with status 137" in reason


def test_a_finished_job_is_not_drift(tmp_path: Path) -> None:
    """A finished job has no liveness (the executor reports None): it is left alone."""
    doc = lower(tmp_path, HELLO)
    before = plan(doc, EMPTY, facts(), CREATED)
    snapshot = snapshot_of(before)
    job = snapshot.resources["job.once"]
    resources = {
        **snapshot.resources,
        "job.once": StateResource(job.address, job.kind, job.spec, job.spec_digest, live=None),
    }
    finished = StateSnapshot(snapshot.lineage, snapshot.serial, snapshot.digest, resources)

    assert kinds_of_action(plan(doc, finished, facts(), CREATED))["job.once"] == "no-op"


def test_a_network_whose_bridge_is_gone_is_replaced_with_its_services(tmp_path: Path) -> None:
    """A bridge deleted from outside: the network and the services on it are replaced."""
    doc = lower(tmp_path, HELLO)
    snapshot = snapshot_of(plan(doc, EMPTY, facts(), CREATED))
    net = snapshot.resources["network.net"]
    resources = {
        **snapshot.resources,
        "network.net": StateResource(
            net.address, net.kind, net.spec, net.spec_digest, live=False, note="its bridge is gone"
        ),
    }
    drifted = StateSnapshot(snapshot.lineage, snapshot.serial, snapshot.digest, resources)
    document = plan(doc, drifted, facts(), CREATED)
    changes = {a["address"]: a for a in document["actions"] if a["action"] != "no-op"}
    assert set(changes) == {"network.net", "service.web"}
    assert changes["network.net"]["reason"] == "drift: its bridge is gone"
    assert changes["service.web"]["reason"] == "network.net is replaced"


def test_addresses_are_kept_and_new_workloads_get_the_next_free_one(tmp_path: Path) -> None:
    """A workload keeps its address across plans; one added before it gets the next free one."""
    before = plan(lower(tmp_path, HELLO), EMPTY, facts(), CREATED)
    assert address_of(before, "service.web") == "10.213.60.2/28"  # .1 is the gateway
    assert address_of(before, "job.once") == "10.213.60.3/28"
    # Declared first, so without kept addresses it would take web's .2.
    with_api = HELLO.replace('service "web" {', API + '\nservice "web" {')

    after = plan(lower(tmp_path, with_api), snapshot_of(before), facts(), CREATED)

    assert actions(after)["service.api"]["action"] == "create"
    assert address_of(after, "service.web") == "10.213.60.2/28"
    assert address_of(after, "job.once") == "10.213.60.3/28"
    assert address_of(after, "service.api") == "10.213.60.4/28"
    assert kinds_of_action(after)["service.web"] == "no-op"


def test_the_gateway_is_never_handed_out(tmp_path: Path) -> None:
    """A gateway in the middle of the subnet is skipped when workloads get addresses."""
    text = HELLO.replace(
        'subnet = "10.213.60.0/28"', 'subnet = "10.213.60.0/29"\n  gateway = "10.213.60.2"'
    )
    text += API

    document = plan(lower(tmp_path, text), EMPTY, facts(), CREATED)

    given = {address_of(document, a) for a in ("service.api", "service.web", "job.once")}
    assert given == {"10.213.60.1/29", "10.213.60.3/29", "10.213.60.4/29"}
    for action in document["actions"]:
        for attachment in (action["spec"] or {}).get("networks", []):
            assert attachment["gateway"] == "10.213.60.2"


def test_a_kept_address_that_is_now_the_gateway_is_reallocated(tmp_path: Path) -> None:
    """When the gateway moves onto a workload's old address, the workload gets a new one."""
    before = plan(lower(tmp_path, HELLO), EMPTY, facts(), CREATED)
    moved = HELLO.replace(
        'subnet = "10.213.60.0/28"', 'subnet = "10.213.60.0/28"\n  gateway = "10.213.60.2"'
    )

    after = plan(lower(tmp_path, moved), snapshot_of(before), facts(), CREATED)

    assert address_of(after, "service.web") == "10.213.60.1/28"
    assert address_of(after, "job.once") == "10.213.60.3/28"
    assert kinds_of_action(after)["service.web"] == "replace"


def test_a_full_subnet_is_a_diagnostic(tmp_path: Path) -> None:
    """Two workloads on a /30 (one host besides the gateway) fail with P0003."""
    small = HELLO.replace('subnet = "10.213.60.0/28"', 'subnet = "10.213.60.0/30"')

    with pytest.raises(DiagnosticError) as caught:
        plan(lower(tmp_path, small), EMPTY, facts(), CREATED)

    [diagnostic] = caught.value.diagnostics
    assert diagnostic.code == "P0003"
    assert "10.213.60.0/30" in diagnostic.message
    assert diagnostic.span is not None
    assert (tmp_path / "Forgefile").read_text().splitlines()[diagnostic.span.line - 1].strip() == (
        "networks = [network.net]"
    )


def test_the_same_inputs_give_the_same_bytes(tmp_path: Path) -> None:
    """Planning twice from the same Forgefile, state, facts and time gives identical JSON."""
    first = plan(lower(tmp_path, HELLO), EMPTY, facts(), CREATED)
    second = plan(lower(tmp_path, HELLO), EMPTY, facts(), CREATED)
    later = plan(lower(tmp_path, HELLO), EMPTY, facts(), datetime(2024, 5, 1, 12, 1, tzinfo=UTC))

    assert canonical_json(first) == canonical_json(second)
    assert canonical_json(first) != canonical_json(later)
    assert first["created_at"] == "2024-05-01T12:00:00Z"
    assert first["expires_at"] == "2024-05-01T13:00:00Z"


def test_the_destroy_plan_deletes_everything_dependencies_first(tmp_path: Path) -> None:
    """A destroy plan deletes every resource in state, listing what others need first."""
    doc = lower(tmp_path, HELLO)
    applied = snapshot_of(plan(doc, EMPTY, facts(), CREATED))

    document = plan(doc, applied, facts(), CREATED, destroy=True)

    assert document["destroy"] is True
    assert kinds_of_action(document) == {address: "delete" for address in applied.resources}
    assert {a["reason"] for a in document["actions"]} == {"destroy requested"}
    assert document["outputs"] == {}
    # Apply tears down in reverse plan order, so the service must come after its network.
    order = [a["address"] for a in document["actions"]]
    assert order.index("network.net") < order.index("service.web")
    assert order.index("image.base") < order.index("job.once")


def test_outputs_compute_a_service_address(tmp_path: Path) -> None:
    """`service.web.address` in an output is the service's address without the prefix."""
    document = plan(lower(tmp_path, HELLO), EMPTY, facts(), CREATED)

    assert document["outputs"] == {
        "web_address": {"value": "10.213.60.2", "sensitive": False},
        "web_url": {"value": "http://10.213.60.2/", "sensitive": False},
    }


def test_an_output_naming_an_unknown_attribute_is_a_diagnostic(tmp_path: Path) -> None:
    """An output using an attribute no plan can compute fails already when lowering (E0226)."""
    text = HELLO + '\noutput "port" {\n  value = service.web.port\n}\n'

    with pytest.raises(DiagnosticError) as caught:
        lower(tmp_path, text)

    [diagnostic] = caught.value.diagnostics
    assert diagnostic.code == "E0226"
    assert "service.web.port" in diagnostic.message
    assert diagnostic.span is not None
    line = (tmp_path / "Forgefile").read_text().splitlines()[diagnostic.span.line - 1]
    assert line.strip() == "value = service.web.port"


def test_counted_instances_get_their_own_addresses_and_outputs(tmp_path: Path) -> None:
    """service.api[0] and [1] are planned apart, each with an address an output can name."""
    text = (
        HELLO
        + API.replace('service "api" {', 'service "api" {\n  count    = 2')
        + """
output "second" {
  value = service.api[1].address
}
"""
    )
    document = plan(lower(tmp_path, text), EMPTY, facts(), CREATED)
    actions = {a["address"]: a for a in document["actions"]}
    assert {"service.api[0]", "service.api[1]"} <= set(actions)
    first = actions["service.api[0]"]["spec"]["networks"][0]["address"]
    second = actions["service.api[1]"]["spec"]["networks"][0]["address"]
    assert first != second
    assert document["outputs"]["second"]["value"] == second.split("/")[0]


def test_outputs_may_use_locals_and_variables(tmp_path: Path) -> None:
    """An output reading local.x and var.y is computed by the planner with their values."""
    text = HELLO + (
        'variable "scheme" { default = "http" }\n'
        'locals { path = "/index.html" }\n'
        'output "page" {\n  value = "${var.scheme}://${service.web.address}${local.path}"\n}\n'
    )
    document = plan(lower(tmp_path, text), EMPTY, facts(), CREATED)
    address = document["outputs"]["web_address"]["value"]
    assert document["outputs"]["page"]["value"] == f"http://{address}/index.html"


def test_a_subnet_the_host_already_routes_is_refused(tmp_path: Path) -> None:
    """Overlapping a route of the host (another project's bridge, say) is P0006 at the subnet."""
    overlapping = BuildFacts(
        images=facts().images,
        modules=facts().modules,
        host_routes=(("10.213.60.0/29", "fgb0123456789ab"),),
    )
    with pytest.raises(DiagnosticError) as caught:
        plan(lower(tmp_path, HELLO), EMPTY, overlapping, CREATED)
    [diagnostic] = caught.value.diagnostics
    assert diagnostic.code == "P0006" and "fgb0123456789ab" in diagnostic.message
    elsewhere = BuildFacts(
        images=facts().images, modules=facts().modules, host_routes=(("192.0.2.0/24", "eth0"),)
    )
    assert plan(lower(tmp_path, HELLO), EMPTY, elsewhere, CREATED)["actions"]


# -- --target and --exclude -----------------------------------------------------------------


def selection_plan() -> dict[str, Any]:
    """net <- web[0], web[1] <- proxy; vol alone; old is to be deleted."""

    def action(address: str, depends: list[str], kind: str = "service") -> dict[str, Any]:
        return {"address": address, "kind": kind, "action": "create", "depends_on": depends}

    actions = [
        action("network.net", [], "network"),
        action("service.web[0]", ["network.net"]),
        action("service.web[1]", ["network.net"]),
        action("service.proxy", ["service.web[0]", "service.web[1]"]),
        action("volume.vol", [], "volume"),
        {**action("service.old", ["network.net"]), "action": "delete"},
    ]
    return {"actions": actions, "outputs": {}, "selection": {"targets": [], "excludes": []}}


def addresses(document: dict[str, Any]) -> list[str]:
    return [a["address"] for a in document["actions"]]


def test_a_target_brings_what_it_depends_on() -> None:
    narrowed = select(selection_plan(), ["service.proxy"])
    assert addresses(narrowed) == [
        "network.net",
        "service.web[0]",
        "service.web[1]",
        "service.proxy",
    ]
    assert narrowed["selection"] == {"targets": ["service.proxy"], "excludes": []}


def test_a_name_matches_every_instance() -> None:
    assert addresses(select(selection_plan(), ["service.web"])) == [
        "network.net",
        "service.web[0]",
        "service.web[1]",
    ]


def test_an_exclude_takes_what_depends_on_it_along() -> None:
    narrowed = select(selection_plan(), excludes=["service.web[1]"])
    assert addresses(narrowed) == [
        "network.net",
        "service.web[0]",
        "volume.vol",
        "service.old",
    ]


def test_a_target_that_names_nothing_suggests_the_nearest() -> None:
    with pytest.raises(DiagnosticError) as caught:
        select(selection_plan(), ["service.proxi"])
    [error] = caught.value.diagnostics
    assert error.code == "P0007" and error.hint == "did you mean `service.proxy`?"


def test_no_selection_is_the_whole_plan() -> None:
    whole = selection_plan()
    assert select(whole) is whole


# -- lifecycle ----------------------------------------------------------------------------------

GUARDED = """\
image "base" {
  context = "ctx"
}

service "db" {
  image   = image.base
  command = [COMMAND]
  env     = { MODE = "MODEVALUE" }
  lifecycle {
    LIFECYCLE
  }
}
"""


def guarded(command: str = '"db"', mode: str = "a", lifecycle: str = "") -> str:
    text = GUARDED.replace("COMMAND", command).replace("MODEVALUE", mode)
    return text.replace("LIFECYCLE", lifecycle)


def changes(document: dict[str, Any]) -> dict[str, str]:
    return {a["address"]: a["action"] for a in document["actions"] if a["action"] != "no-op"}


def test_ignore_changes_leaves_those_attributes_alone(tmp_path: Path) -> None:
    keep = 'ignore_changes = ["command", "env"]'
    first = plan(lower(tmp_path, guarded(lifecycle=keep)), EMPTY, facts(), CREATED)
    state = snapshot_of(first)

    same = plan(lower(tmp_path, guarded('"db", "-v"', "b", keep)), state, facts(), CREATED)
    assert changes(same) == {}

    other = plan(
        lower(tmp_path, guarded(lifecycle=keep)), state, facts("sha256:" + "c" * 64), CREATED
    )
    [db] = [a for a in other["actions"] if a["address"] == "service.db"]
    assert db["action"] == "replace" and db["spec"]["argv"] == ["db"]  # still the old argv


def test_ignore_changes_of_an_unknown_name_says_which_names_there_are(tmp_path: Path) -> None:
    doc = lower(tmp_path, guarded(lifecycle='ignore_changes = ["comand"]'))
    with pytest.raises(DiagnosticError) as caught:
        plan(doc, EMPTY, facts(), CREATED)
    [error] = caught.value.diagnostics
    assert error.code == "P0009" and error.hint == "did you mean `command`?"


def test_prevent_destroy_fails_a_plan_that_would_replace_or_delete(tmp_path: Path) -> None:
    guard = "prevent_destroy = true"
    first = plan(lower(tmp_path, guarded(lifecycle=guard)), EMPTY, facts(), CREATED)
    state = snapshot_of(first)

    with pytest.raises(DiagnosticError) as replaced:
        plan(lower(tmp_path, guarded('"db2"', lifecycle=guard)), state, facts(), CREATED)
    [error] = replaced.value.diagnostics
    assert error.code == "P0008"
    assert (
        error.message == "service.db has prevent_destroy, and this plan would replace it "
        "(argv changed)"
    )

    with pytest.raises(DiagnosticError) as destroyed:
        plan(lower(tmp_path, guarded(lifecycle=guard)), state, facts(), CREATED, destroy=True)
    assert "would delete it" in destroyed.value.diagnostics[0].message

    # An update in place is not a destroy, and neither is a plan without the mark.
    assert changes(plan(lower(tmp_path, guarded('"db2"')), state, facts(), CREATED)) == {
        "service.db": "replace"
    }


OVERLAP = HELLO.replace(
    'command  = ["httpd", "-f", "-p", "80"]',
    "command  = [var.cmd]\n  lifecycle {\n    create_before_destroy = true\n  }",
).replace('image "base" {', 'variable "cmd" {\n  default = "httpd"\n}\n\nimage "base" {')


def test_create_before_destroy_gives_the_replacement_its_own_address(tmp_path: Path) -> None:
    """A changed service with create_before_destroy is replaced new-first: the plan marks it,
    and gives it a new address (the old one is still in use meanwhile), which outputs see."""
    first = plan(lower(tmp_path, OVERLAP), EMPTY, facts(), CREATED)
    assert "create_before_destroy" not in actions(first)["service.web"]  # nothing to overlap
    state = snapshot_of(first)
    (tmp_path / "Forgefile").write_text(OVERLAP.replace('default = "httpd"', 'default = "nginx"'))
    changed = plan(load(tmp_path / "Forgefile", {}, environ={}), state, facts(), CREATED)
    web = actions(changed)["service.web"]
    assert (web["action"], web.get("create_before_destroy")) == ("replace", True)
    old, new = address_of(first, "service.web"), address_of(changed, "service.web")
    assert old != new
    assert new not in {address_of(first, "job.once"), "10.213.60.1/28"}
    assert changed["outputs"]["web_address"]["value"] == new.split("/")[0]
    assert sorted(web["diff"]) == ["argv", "networks"]
    # Everything else keeps its address and is left alone.
    assert changes(changed) == {"service.web": "replace"}


def test_create_before_destroy_restarts_a_dead_workload_in_place(tmp_path: Path) -> None:
    """A service that died with its spec unchanged has nothing running to overlap with."""
    first = plan(lower(tmp_path, OVERLAP), EMPTY, facts(), CREATED)
    dead = snapshot_of(first, live={"service.web": False})
    restarted = plan(lower(tmp_path, OVERLAP), dead, facts(), CREATED)
    web = actions(restarted)["service.web"]
    assert web["action"] == "replace" and "create_before_destroy" not in web
    assert address_of(restarted, "service.web") == address_of(first, "service.web")


def test_create_before_destroy_on_a_network_is_refused(tmp_path: Path) -> None:
    text = HELLO.replace(
        'subnet = "10.213.60.0/28"',
        'subnet = "10.213.60.0/28"\n  lifecycle {\n    create_before_destroy = true\n  }',
    )
    with pytest.raises(DiagnosticError) as caught:
        lower(tmp_path, text)
    [error] = caught.value.diagnostics
    assert error.code == "E0310" and "bridge is named by the network" in error.message
    assert error.span is not None and (error.span.line, error.span.column) == (8, 5)

    counted = text.replace('network "net" {', 'network "net" {\n  count = 2')
    with pytest.raises(DiagnosticError) as caught:
        lower(tmp_path, counted)
    assert [d.code for d in caught.value.diagnostics].count("E0310") == 1  # not per instance


def test_prevent_destroy_lets_a_dead_workload_restart_and_an_excluded_change_wait(
    tmp_path: Path,
) -> None:
    guard = "prevent_destroy = true"
    first = plan(lower(tmp_path, guarded(lifecycle=guard)), EMPTY, facts(), CREATED)

    dead = snapshot_of(first, live={"service.db": False})
    restarted = plan(lower(tmp_path, guarded(lifecycle=guard)), dead, facts(), CREATED)
    assert changes(restarted) == {"service.db": "replace"}  # drift: nothing is destroyed

    state = snapshot_of(first)
    changed = lower(tmp_path, guarded('"db2"', lifecycle=guard))
    waiting = plan(changed, state, facts(), CREATED, excludes=["service.db"])
    assert changes(waiting) == {}


def test_an_exclude_that_takes_out_a_target_is_an_error() -> None:
    with pytest.raises(DiagnosticError) as caught:
        select(selection_plan(), ["service.proxy"], ["network.net"])
    [error] = caught.value.diagnostics
    assert error.code == "P0007" and "service.proxy" in error.message


# -- rollback -----------------------------------------------------------------------------------


def kept_from(document: dict[str, Any], serial: int) -> dict[str, Any]:
    """What state keeps of the serial an apply of `document` made (as `State.snapshot_at`)."""
    resources = snapshot_of(document).resources.values()
    return {
        "serial": serial,
        "digest": "sha256:" + "5" * 64,
        "resources": [
            {
                "address": r.address,
                "kind": r.kind,
                "spec": r.spec,
                "spec_digest": r.spec_digest,
                "depends_on": list(r.depends_on),
            }
            for r in resources
        ],
        "outputs": {"web_url": {"value": "http://old/", "sensitive": False}},
    }


def test_a_rollback_plans_back_the_specs_of_a_kept_serial(tmp_path: Path) -> None:
    """From serial 1 (web on "httpd") to a state with "api" added and web changed: the rollback
    deletes api, replaces web with its old spec, keeps the rest, and carries the old plan's
    inputs, verdict and spans, the kept outputs, and what it rolls back to."""
    first = plan(lower(tmp_path, HELLO), EMPTY, facts(), CREATED)
    changed = HELLO.replace('"-p", "80"', '"-p", "8080"') + API
    now = snapshot_of(plan(lower(tmp_path, changed), snapshot_of(first), facts(), CREATED))
    back = rollback_plan(kept_from(first, 1), first, "sha256:" + "f" * 64, now, CREATED)
    assert kinds_of_action(back) == {
        "image.base": "no-op",
        "network.net": "no-op",
        "service.web": "replace",
        "job.once": "no-op",
        "wasm.greet": "no-op",
        "service.api": "delete",
    }
    web = actions(back)["service.web"]
    assert web["spec"] == actions(first)["service.web"]["spec"]
    assert web["reason"] == "back to serial 1: argv changed"
    assert web["span"] == actions(first)["service.web"]["span"]
    assert actions(back)["service.api"]["reason"] == "serial 1 did not have it"
    assert back["policy"] == first["policy"] and back["inputs"] == first["inputs"]
    assert back["outputs"] == {"web_url": {"value": "http://old/", "sensitive": False}}
    assert back["rollback"] == {
        "serial": 1,
        "digest": "sha256:" + "5" * 64,
        "plan": "sha256:" + "f" * 64,
    }
    assert back["prior_state"]["serial"] == now.serial
    # Teardown runs the actions backwards: api (which nothing needs) is still ordered after
    # what it depends on, so it goes first.
    order = [a["address"] for a in back["actions"]]
    assert order.index("network.net") < order.index("service.web")


def test_a_rollback_restarts_what_stopped_and_reattaches_services_to_a_new_bridge(
    tmp_path: Path,
) -> None:
    """Drift is repaired as by any plan: a dead service restarts; a replaced bridge takes the
    services on it along."""
    first = plan(lower(tmp_path, HELLO), EMPTY, facts(), CREATED)
    dead = snapshot_of(first, live={"service.web": False})
    back = rollback_plan(kept_from(first, 1), first, "sha256:" + "f" * 64, dead, CREATED)
    assert {a: k for a, k in kinds_of_action(back).items() if k != "no-op"} == {
        "service.web": "replace"
    }
    live = snapshot_of(first)
    net = live.resources["network.net"]
    gone = StateResource(net.address, net.kind, net.spec, net.spec_digest, live=False)
    bridge_gone = StateSnapshot(
        live.lineage, live.serial, live.digest, {**live.resources, "network.net": gone}
    )
    back = rollback_plan(kept_from(first, 1), first, "sha256:" + "f" * 64, bridge_gone, CREATED)
    changes = {a["address"]: a["reason"] for a in back["actions"] if a["action"] != "no-op"}
    assert changes == {
        "network.net": "drift: it stopped",
        "service.web": "network.net is replaced",
    }
