"""Planning: the checked IR and a snapshot of state in, a plan document out.

A pure function. The snapshot and the build facts (image and module digests, the policy
verdict) arrive as data; the creation time is an input, so the same inputs at the same time give
the same document, byte for byte, once serialised canonically.
"""

from __future__ import annotations

import hashlib
import ipaddress
from collections.abc import Iterable, Mapping, Sequence, Set
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from forgefile import ir
from forgefile.diagnostics import Diagnostic, DiagnosticError, Span, suggest
from forgefile.evaluate import EvalError, Scope, evaluate
from forgefile.lower import signal_name
from forgefile.values import AttributeRef

from .envelope import canonical_json
from .version import PLAN_FORMAT, VERSION

DEFAULT_TTL = timedelta(hours=1)


@dataclass(frozen=True)
class StateResource:
    """What state remembers of one applied resource."""

    address: str
    kind: str
    spec: Mapping[str, Any]
    spec_digest: str
    depends_on: tuple[str, ...] = ()
    # For long-running workloads: is it running now? None where that does not apply.
    live: bool | None = None
    note: str = ""


@dataclass(frozen=True)
class StateSnapshot:
    lineage: str
    serial: int
    digest: str
    resources: Mapping[str, StateResource] = field(default_factory=dict)


@dataclass(frozen=True)
class ImageFacts:
    digest: str
    env: tuple[tuple[str, str], ...] = ()
    entrypoint: tuple[str, ...] = ()
    command: tuple[str, ...] = ()
    working_dir: str = ""
    user: str = ""


@dataclass(frozen=True)
class BuildFacts:
    """What was computed before planning: built images, module digests, the policy verdict."""

    images: Mapping[str, ImageFacts] = field(default_factory=dict)
    modules: Mapping[str, str] = field(default_factory=dict)
    policy: Mapping[str, Any] = field(default_factory=dict)
    variables_digest: str = ""
    # Prefixes the host already routes elsewhere, (CIDR, device): a subnet must not overlap.
    host_routes: tuple[tuple[str, str], ...] = ()


def spec_digest(spec: Mapping[str, Any]) -> str:
    return "sha256:" + hashlib.sha256(canonical_json(spec)).hexdigest()


# Kinds whose change can be carried out in place; every other change replaces the resource.
_UPDATABLE = {"image", "volume"}


def plan(
    doc: ir.Document,
    snapshot: StateSnapshot,
    facts: BuildFacts,
    created_at: datetime,
    ttl: timedelta = DEFAULT_TTL,
    destroy: bool = False,
    targets: Sequence[str] = (),
    excludes: Sequence[str] = (),
) -> dict[str, Any]:
    """The plan document that turns `snapshot` into what `doc` declares (or nothing), narrowed
    to `targets` and without `excludes` (see `select`)."""
    created_at = created_at.astimezone(UTC).replace(microsecond=0)
    resources = () if destroy else doc.resources
    addresses = _allocate(resources, snapshot)
    networks = {r.address: r for r in resources if isinstance(r, ir.Network)}
    _check_routes(networks.values(), facts.host_routes)
    specs = {r.address: _spec(r, facts, addresses, networks) for r in resources}
    _ignore_changes(resources, specs, snapshot)
    overlapping: set[str] = set()
    while not (more := _overlapping(resources, specs, snapshot)) <= overlapping:
        # Old and new run side by side for a moment: the new one needs its own addresses, and
        # what reads them (other specs, outputs) sees the new ones; which may change the spec
        # of another create_before_destroy workload in turn.
        overlapping |= more
        addresses = _allocate(resources, snapshot, fresh=overlapping)
        specs = {r.address: _spec(r, facts, addresses, networks) for r in resources}
        _ignore_changes(resources, specs, snapshot)
    depends = {r.address: sorted({ref.address for ref in r.references()}) for r in resources}

    actions = []
    for r in resources:
        spec = specs[r.address]
        actions.append(_action(r, spec, depends[r.address], snapshot.resources.get(r.address)))
    for action in actions:
        if action["action"] == "replace" and action["address"] in overlapping:
            action["create_before_destroy"] = True
    _reattach(actions, resources)
    for address, old in sorted(snapshot.resources.items()):
        if address not in specs:
            actions.append(
                {
                    "address": address,
                    "kind": old.kind,
                    "action": "delete",
                    "reason": "destroy requested" if destroy else "no longer in the Forgefile",
                    "span": None,
                    "diff": {},
                    "spec": None,
                    "depends_on": list(old.depends_on),
                }
            )
    outputs = {} if destroy else _outputs(doc, specs)
    document: dict[str, Any] = {
        "format": PLAN_FORMAT,
        "toolchain": {"name": "forge", "version": VERSION},
        "created_at": _rfc3339(created_at),
        "expires_at": _rfc3339(created_at + ttl),
        "destroy": destroy,
        "inputs": {
            "forgefiles": dict(doc.inputs),
            "variables": facts.variables_digest,
            "images": {a: f.digest for a, f in sorted(facts.images.items())},
            "modules": dict(sorted(facts.modules.items())),
        },
        "prior_state": {
            "lineage": snapshot.lineage,
            "serial": snapshot.serial,
            "digest": snapshot.digest,
        },
        "policy": dict(facts.policy),
        "actions": _ordered(actions),
        "outputs": outputs,
        "selection": {"targets": [], "excludes": []},
        "rollback": None,
    }
    document = select(document, targets, excludes)
    prevent_destroy(document["actions"], doc, snapshot)
    return document


def rollback_plan(
    kept: Mapping[str, Any],
    made_by: Mapping[str, Any],
    made_by_digest: str,
    snapshot: StateSnapshot,
    created_at: datetime,
    ttl: timedelta = DEFAULT_TTL,
) -> dict[str, Any]:
    """The plan that turns `snapshot` back into `kept`, the state at an earlier serial.

    No Forgefile is read: the specs are the ones that serial ran, and the plan carries the inputs
    and the policy verdict of `made_by`, the signed plan whose apply made that serial (`kept`
    holds the outputs as they were, sensitive values included), so the
    policy files must be the ones that judged them (`forge apply` checks the digest). The
    actions are decided as for any plan: what serial lacks is deleted, a different spec is
    replaced (or updated in place), and what is the same but not running is restarted.
    """
    created_at = created_at.astimezone(UTC).replace(microsecond=0)
    serial = kept["serial"]
    spans = {a["address"]: a["span"] for a in made_by.get("actions", [])}
    wanted = {r["address"]: r for r in kept["resources"]}
    actions = []
    for address, r in sorted(wanted.items()):
        old = snapshot.resources.get(address)
        spec = r["spec"]
        digest = spec_digest(spec)
        if old is None:
            kind, reason, diff = "create", f"serial {serial} had it", {}
        elif old.spec_digest != digest:
            diff = _diff(old.spec, spec)
            kind = "update" if r["kind"] in _UPDATABLE else "replace"
            reason = f"back to serial {serial}: {', '.join(sorted(diff))} changed"
        elif old.live is False:
            kind, reason, diff = "replace", f"drift: {old.note or 'it stopped'}", {}
        else:
            kind, reason, diff = "no-op", "as at serial " + str(serial), {}
        actions.append(
            {
                "address": address,
                "kind": r["kind"],
                "action": kind,
                "reason": reason,
                "span": spans.get(address),
                "diff": diff,
                "spec": spec,
                "depends_on": list(r["depends_on"]),
            }
        )
    _reattach_specs(actions)
    for address, old in sorted(snapshot.resources.items()):
        if address not in wanted:
            actions.append(
                {
                    "address": address,
                    "kind": old.kind,
                    "action": "delete",
                    "reason": f"serial {serial} did not have it",
                    "span": None,
                    "diff": {},
                    "spec": None,
                    "depends_on": list(old.depends_on),
                }
            )
    return {
        "format": PLAN_FORMAT,
        "toolchain": {"name": "forge", "version": VERSION},
        "created_at": _rfc3339(created_at),
        "expires_at": _rfc3339(created_at + ttl),
        "destroy": False,
        "inputs": dict(made_by["inputs"]),
        "prior_state": {
            "lineage": snapshot.lineage,
            "serial": snapshot.serial,
            "digest": snapshot.digest,
        },
        "policy": dict(made_by["policy"]),
        "actions": _ordered(actions),
        "outputs": dict(kept["outputs"]),
        "selection": {"targets": [], "excludes": []},
        "rollback": {"serial": serial, "digest": kept["digest"], "plan": made_by_digest},
    }


def _reattach_specs(actions: list[dict[str, Any]]) -> None:
    """`_reattach` for plans made from specs: a service on a replaced bridge is replaced."""
    replaced = {
        a["spec"]["name"]: a["address"]
        for a in actions
        if a["kind"] == "network" and a["action"] == "replace"
    }
    for action in actions:
        if action["kind"] != "service" or action["action"] != "no-op":
            continue
        lost = [
            replaced[n["network"]] for n in action["spec"]["networks"] if n["network"] in replaced
        ]
        if lost:
            action["action"] = "replace"
            action["reason"] = f"{lost[0]} is replaced"


# Forgefile attribute names whose values reach the spec under another name.
_SPEC_NAMES = {"command": "argv", "entrypoint": "argv"}


def _ignore_changes(
    resources: Iterable[ir.Resource], specs: dict[str, dict[str, Any]], snapshot: StateSnapshot
) -> None:
    """`lifecycle { ignore_changes = [...] }`: those parts of the spec keep what state has."""
    errors = []
    for r in resources:
        if not r.lifecycle.ignore_changes:
            continue
        spec, old = specs[r.address], snapshot.resources.get(r.address)
        for name in r.lifecycle.ignore_changes:
            key = _SPEC_NAMES.get(name, name)
            if key not in spec:
                near = suggest(name, [*spec, *(n for n, k in _SPEC_NAMES.items() if k in spec)])
                errors.append(
                    Diagnostic(
                        "P0009",
                        f"{r.address} has no attribute `{name}` for ignore_changes to leave alone",
                        r.span_of("lifecycle"),
                        near or f"its plan diffs name: {', '.join(sorted(spec))}",
                    )
                )
            elif old is not None and key in old.spec:
                spec[key] = old.spec[key]
    if errors:
        raise DiagnosticError(errors)


def prevent_destroy(
    actions: list[dict[str, Any]], doc: ir.Document, snapshot: StateSnapshot
) -> None:
    """`lifecycle { prevent_destroy = true }`: a plan that would delete or replace it fails.

    Restarting a workload that died (drift: the same spec, not live) destroys nothing, and is
    not refused.
    """
    protected = {r.address: r for r in doc.resources if r.lifecycle.prevent_destroy}

    def repairs_drift(action: dict[str, Any]) -> bool:
        old = snapshot.resources.get(action["address"])
        return (
            action["action"] == "replace"
            and old is not None
            and old.live is False
            and action["spec"] is not None
            and old.spec_digest == spec_digest(action["spec"])
        )

    errors = [
        Diagnostic(
            "P0008",
            f"{a['address']} has prevent_destroy, and this plan would "
            + ("delete it" if a["action"] == "delete" else f"replace it ({a['reason']})"),
            protected[a["address"]].span_of("lifecycle"),
            "undo the change that replaces it, or set prevent_destroy = false first (on purpose)",
        )
        for a in actions
        if a["address"] in protected
        and a["action"] in ("delete", "replace")
        and not repairs_drift(a)
    ]
    if errors:
        raise DiagnosticError(errors)


def select(
    document: dict[str, Any], targets: Sequence[str] = (), excludes: Sequence[str] = ()
) -> dict[str, Any]:
    """The plan narrowed: each target with everything it depends on, then without each
    excluded resource and everything that depends on it. The plan records the selection.

    A name matches that address, and every instance of it (`service.web` is also
    `service.web[0]`); a name that matches nothing is an error with the nearest address.
    """
    if not targets and not excludes:
        return document
    actions = document["actions"]
    by_address = {a["address"]: a for a in actions}
    needs = {a["address"]: set(a["depends_on"]) & set(by_address) for a in actions}
    needed_by: dict[str, set[str]] = {address: set() for address in by_address}
    for address, deps in needs.items():
        for dep in deps:
            needed_by[dep].add(address)
    keep = set(by_address)
    wanted: set[str] = set()
    if targets:
        wanted = _matching(targets, by_address, "--target")
        keep = _closure(wanted, needs)
    if excludes:
        keep -= _closure(_matching(excludes, by_address, "--exclude"), needed_by)
    lost = sorted(wanted - keep)
    if lost:
        raise DiagnosticError(
            [
                Diagnostic(
                    "P0007",
                    f"--exclude takes out {', '.join(lost)}, which --target asks for (it is "
                    "excluded, or depends on what is)",
                    None,
                    "drop one of the two flags",
                )
            ]
        )
    return {
        **document,
        "actions": [a for a in actions if a["address"] in keep],
        "selection": {"targets": sorted(targets), "excludes": sorted(excludes)},
    }


def _matching(names: Sequence[str], addresses: Mapping[str, Any], flag: str) -> set[str]:
    found: set[str] = set()
    errors = []
    for name in names:
        hits = {a for a in addresses if a == name or a.startswith(name + "[")}
        if not hits:
            near = suggest(name, {a.split("[", 1)[0] for a in addresses} | set(addresses))
            errors.append(
                Diagnostic(
                    "P0007",
                    f"{flag} {name} names no resource of this plan",
                    None,
                    near or "name a resource's address, such as service.web",
                )
            )
        found |= hits
    if errors:
        raise DiagnosticError(errors)
    return found


def _closure(start: set[str], edges: Mapping[str, set[str]]) -> set[str]:
    seen, stack = set(start), list(start)
    while stack:
        for nxt in edges.get(stack.pop(), ()):
            if nxt not in seen:
                seen.add(nxt)
                stack.append(nxt)
    return seen


def _check_routes(networks: Iterable[ir.Network], routes: Iterable[tuple[str, str]]) -> None:
    """A subnet the host already routes elsewhere would steal that traffic, or lose its own."""
    errors = []
    for net in networks:
        subnet = ipaddress.IPv4Network(net.subnet)
        for cidr, device in routes:
            if subnet.overlaps(ipaddress.IPv4Network(cidr, strict=False)):
                errors.append(
                    Diagnostic(
                        "P0006",
                        f"{net.address} ({net.subnet}) overlaps {cidr}, which this host already "
                        f"routes through {device}",
                        net.span_of("subnet"),
                        "choose a subnet no other network on this host uses (another Forge "
                        "project's bridge counts)",
                    )
                )
                break
    if errors:
        raise DiagnosticError(errors)


def _action(
    r: ir.Resource, spec: dict[str, Any], depends_on: list[str], old: StateResource | None
) -> dict[str, Any]:
    digest = spec_digest(spec)
    if old is None:
        kind, reason, diff = "create", "not yet created", {}
    elif old.spec_digest != digest:
        diff = _diff(old.spec, spec)
        changed = ", ".join(sorted(diff))
        kind = "update" if r.kind in _UPDATABLE else "replace"
        reason = f"{changed} changed"
    elif old.live is False:
        what = "not running" if r.kind == "service" else "drift"
        kind, reason, diff = "replace", f"{what}: {old.note or 'it stopped'}", {}
    else:
        kind, reason, diff = "no-op", "up to date", {}
    return {
        "address": r.address,
        "kind": r.kind,
        "action": kind,
        "reason": reason,
        "span": r.span.to_json(),
        "diff": diff,
        "spec": spec,
        "depends_on": depends_on,
    }


def _reattach(actions: list[dict[str, Any]], resources: tuple[ir.Resource, ...]) -> None:
    """A service on a network that is replaced must be replaced too: its veth went with it."""
    replaced = {
        a["address"] for a in actions if a["kind"] == "network" and a["action"] == "replace"
    }
    by_address = {r.address: r for r in resources}
    for action in actions:
        service = by_address.get(action["address"])
        if not isinstance(service, ir.Service) or action["action"] != "no-op":
            continue
        lost = [n.address for n in service.networks if n.address in replaced]
        if lost:
            action["action"] = "replace"
            action["reason"] = f"{lost[0]} is replaced"


def _diff(before: Mapping[str, Any], after: Mapping[str, Any]) -> dict[str, Any]:
    keys = sorted(set(before) | set(after))
    return {
        k: {"before": before.get(k), "after": after.get(k)}
        for k in keys
        if before.get(k) != after.get(k)
    }


def _ordered(actions: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Actions in dependency order (a stable topological sort), so the plan reads top-down."""
    by_address = {a["address"]: a for a in actions}
    done: set[str] = set()
    out: list[dict[str, Any]] = []

    def visit(address: str) -> None:
        if address in done or address not in by_address:
            return
        done.add(address)
        for dep in by_address[address]["depends_on"]:
            visit(dep)
        out.append(by_address[address])

    for action in sorted(actions, key=lambda a: a["address"]):
        visit(action["address"])
    return out


# -- specs: what the executor needs, resolved ------------------------------------------------


def _spec(
    r: ir.Resource,
    facts: BuildFacts,
    addresses: Mapping[str, Mapping[str, str]],
    networks: Mapping[str, ir.Network],
) -> dict[str, Any]:
    match r:
        case ir.Image():
            return {"digest": _image(facts, r.address, r.span).digest}
        case ir.Network():
            return {"name": r.instance, "subnet": r.subnet, "gateway": r.gateway}
        case ir.Volume():
            return {"name": r.instance}
        case ir.Container():
            return _container_spec(r, facts, addresses.get(r.address, {}), networks)
        case ir.Wasm():
            return _wasm_spec(r, facts)
    raise AssertionError(f"no spec for {r.address}")  # pragma: no cover


def _image(facts: BuildFacts, address: str, span: Span) -> ImageFacts:
    found = facts.images.get(address)
    if found is None:
        raise DiagnosticError(
            [Diagnostic("P0001", f"{address} has not been built", span, "run `forge build` first")]
        )
    return found


def _container_spec(
    r: ir.Container,
    facts: BuildFacts,
    addresses: Mapping[str, str],
    networks: Mapping[str, ir.Network],
) -> dict[str, Any]:
    image = _image(facts, r.image_name, r.span_of("image"))
    entrypoint = list(r.entrypoint or image.entrypoint)
    command = list(r.command) if r.command else ([] if r.entrypoint else list(image.command))
    argv = entrypoint + command
    if not argv:
        raise DiagnosticError(
            [
                Diagnostic(
                    "P0002",
                    f"{r.address} has no command, and {r.image_name} sets none",
                    r.span,
                    "add `command = [...]`",
                )
            ]
        )
    env = dict(image.env)
    env.update(dict(r.env))
    spec: dict[str, Any] = {
        "image": image.digest,
        "argv": argv,
        "env": env,
        "working_dir": r.working_dir or image.working_dir or "/",
        "user": _user(r, image),
        "stop_grace_period": r.stop_grace_period.seconds,
        "hostname": r.hostname,
        "networks": [
            {
                "network": n.instance,
                "address": addresses[n.address],
                "gateway": networks[n.address].gateway,
            }
            for n in r.networks
        ],
        "volumes": [{"target": t, "volume": v.instance} for t, v in r.volumes],
        "read_only": r.read_only,
        "tmpfs": list(r.tmpfs),
        "privileged": r.privileged,
        "cap_add": list(r.cap_add),
        "cap_drop": list(r.cap_drop),
        "sysctls": dict(r.sysctls),
        "ulimits": dict(r.ulimits),
        "init": r.init,
        "stop_signal": signal_name(r.stop_signal) or "SIGTERM",
        "restart": r.restart,
        "healthcheck": _healthcheck(r.healthcheck),
        # What to wait for before this one starts, beyond the dependencies having started.
        "wait_for": dict(r.conditions),
        "resources": {
            "memory": r.resources.memory.bytes if r.resources.memory else None,
            "cpus": r.resources.cpus,
            "pids": r.resources.pids,
        },
    }
    # Written only when used, so that the spec digest of every container made before binds,
    # runtimes and log limits existed stays the same and no upgrade replaces it.
    if r.binds:
        spec["binds"] = [
            {"source": b.source, "target": b.target, "read_only": b.read_only} for b in r.binds
        ]
    if r.runtime != "runc":
        spec["runtime"] = r.runtime
    if r.log_max_size is not None:
        spec["log_max_size"] = r.log_max_size.bytes
    if r.log_max_files is not None:
        spec["log_max_files"] = r.log_max_files
    if isinstance(r, ir.Job):
        spec["success_codes"] = list(r.success_codes)
        spec["timeout"] = r.timeout.seconds
    return spec


def _healthcheck(check: ir.Healthcheck | None) -> dict[str, Any] | None:
    if check is None:
        return None
    return {
        "command": list(check.command),
        "interval": check.interval.seconds,
        "timeout": check.timeout.seconds,
        "retries": check.retries,
        "start_period": check.start_period.seconds,
    }


def _user(r: ir.Container, image: ImageFacts) -> list[int]:
    """[uid, gid] to run as: the workload's, else the image's, else root."""
    text = r.user or image.user or "0"
    uid, _, gid = text.partition(":")
    if not uid.isdigit() or (gid and not gid.isdigit()):
        raise DiagnosticError(
            [
                Diagnostic(
                    "P0005",
                    f'{r.address} runs as {r.image_name}\'s user "{text}", a name; names '
                    "are not carried out by this version of Forge yet",
                    r.span,
                    'set user = "UID:GID" on the workload',
                )
            ]
        )
    return [int(uid), int(gid or uid)]


def _wasm_spec(r: ir.Wasm, facts: BuildFacts) -> dict[str, Any]:
    return {
        "module": r.module,
        "digest": facts.modules.get(r.address, ""),
        "mode": r.mode,
        "args": list(r.args),
        "env": dict(r.env),
        "mounts": [{"guest": g, "volume": v.instance, "writable": True} for g, v in r.mounts],
        "success_codes": list(r.success_codes),
        "limits": {
            "memory": r.limits.memory.bytes if r.limits.memory else None,
            "fuel": r.limits.fuel,
            "timeout": r.limits.timeout.seconds if r.limits.timeout else None,
        },
    }


def _overlapping(
    resources: Iterable[ir.Resource],
    specs: Mapping[str, Mapping[str, Any]],
    snapshot: StateSnapshot,
) -> set[str]:
    """Workloads with `create_before_destroy` whose spec changed: their replacement starts
    while they still run. (One that died is restarted in place: nothing runs to overlap.)"""
    overlapping = set()
    for r in resources:
        old = snapshot.resources.get(r.address)
        if (
            r.lifecycle.create_before_destroy
            and isinstance(r, ir.Container | ir.Wasm)
            and old is not None
            and old.spec_digest != spec_digest(specs[r.address])
        ):
            overlapping.add(r.address)
    return overlapping


def _allocate(
    resources: tuple[ir.Resource, ...], snapshot: StateSnapshot, fresh: Set[str] = frozenset()
) -> dict[str, dict[str, str]]:
    """An address per (workload, network): kept from state when the subnet is unchanged,
    except for the `fresh` workloads, which get another while the old one stays taken."""
    networks = {r.address: r for r in resources if isinstance(r, ir.Network)}
    taken: dict[str, set[str]] = {a: {n.gateway} for a, n in networks.items()}
    result: dict[str, dict[str, str]] = {}
    workloads = [r for r in resources if isinstance(r, ir.Container)]
    pending: list[tuple[ir.Container, ir.Network]] = []
    for w in workloads:
        for ref in w.networks:
            net = networks[ref.address]
            kept = _kept_address(snapshot.resources.get(w.address), net)
            if kept and w.address in fresh:
                taken[net.address].add(kept)
                pending.append((w, net))
            elif kept and kept not in taken[net.address]:
                taken[net.address].add(kept)
                result.setdefault(w.address, {})[net.address] = f"{kept}/{_prefix(net)}"
            else:
                pending.append((w, net))
    for w, net in pending:
        subnet = ipaddress.IPv4Network(net.subnet)
        free = next((str(h) for h in subnet.hosts() if str(h) not in taken[net.address]), None)
        if free is None:
            raise DiagnosticError(
                [
                    Diagnostic(
                        "P0003",
                        f"{net.address} ({net.subnet}) has no free address left for {w.address}"
                        + (" while its old container still runs" if w.address in fresh else ""),
                        w.span_of("networks"),
                        "use a larger subnet"
                        + (
                            ", or drop create_before_destroy (it needs a spare address for the "
                            "replacement)"
                            if w.address in fresh
                            else ""
                        ),
                    )
                ]
            )
        taken[net.address].add(free)
        result.setdefault(w.address, {})[net.address] = f"{free}/{subnet.prefixlen}"
    return result


def _kept_address(old: StateResource | None, net: ir.Network) -> str | None:
    if old is None:
        return None
    for attachment in old.spec.get("networks", []):
        if attachment.get("network") == net.instance:
            iface = ipaddress.IPv4Interface(attachment["address"])
            if iface.network == ipaddress.IPv4Network(net.subnet):
                return str(iface.ip)
    return None


def _prefix(net: ir.Network) -> int:
    return ipaddress.IPv4Network(net.subnet).prefixlen


def _outputs(doc: ir.Document, specs: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    def attributes(ref: AttributeRef) -> Any:
        spec = specs.get(ref.resource.address, {})
        if ref.path == ("address",) and spec.get("networks"):
            return spec["networks"][0]["address"].split("/")[0]
        raise EvalError(
            "P0004",
            f"`{ref}` is not an attribute the planner knows",
            ref.span,
            "outputs can use service.NAME.address and job.NAME.address",
        )

    scope = Scope(
        variables=dict(doc.variable_values),
        locals=dict(doc.local_values),
        modules=dict(doc.module_outputs),
        attributes=attributes,
        resources=doc.declared(),
        instances=doc.instances(),
    )
    values: dict[str, Any] = {}
    errors: list[Diagnostic] = []
    for output in doc.outputs:
        assert output.value is not None
        try:
            value = evaluate(output.value, scope)
        except DiagnosticError as exc:
            errors.extend(exc.diagnostics)
            continue
        values[output.name] = {
            "value": "(sensitive)" if output.sensitive else _plain(value),
            "sensitive": output.sensitive,
        }
    if errors:
        raise DiagnosticError(errors)
    return values


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, str | int | float | bool) or value is None:
        return value
    return str(value)


def _rfc3339(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(text: str) -> datetime:
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
