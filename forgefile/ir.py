"""The typed IR: frozen classes for every resource, with defaults filled in and source spans.

The IR is what policy judges and what the planner compiles, so it holds the effective
configuration that will run. `to_document()` gives the JSON-shaped view that rules and
`forge show --json` read; it never holds a secret value.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, fields
from functools import cached_property
from typing import Any, ClassVar

from .diagnostics import Diagnostic, Span
from .syntax import Duration, Expr, Size
from .values import Key, ResourceRef, instance_address, instance_name

Pairs = tuple[tuple[str, Any], ...]

# Defaults shared with forgefile/schema.py; frozen values, so sharing one instance is safe.
JOB_TIMEOUT = Duration(600 * 10**9)
STOP_GRACE = Duration(10 * 10**9)
WASM_MEMORY = Size(64 << 20)
WASM_TIMEOUT = Duration(60 * 10**9)


@dataclass(frozen=True)
class Node:
    span: Span
    # The span of each attribute as written, so diagnostics can point at `privileged = true`.
    spans: tuple[tuple[str, Span], ...] = field(default=(), compare=False, repr=False)

    def span_of(self, attribute: str) -> Span:
        return dict(self.spans).get(attribute, self.span)


@dataclass(frozen=True)
class Lifecycle:
    """A resource's `lifecycle` block: what plans may do to it."""

    prevent_destroy: bool = False
    ignore_changes: tuple[str, ...] = ()  # names as plan diffs show them (argv, env, ...)
    # A replacement starts before the resource it replaces stops (workloads only).
    create_before_destroy: bool = False


@dataclass(frozen=True)
class Resource(Node):
    name: str = ""
    # The instance key under `count` (an int) or `for_each` (a string); None otherwise.
    key: Key | None = None
    # The import path of the module that declared it ("" for the root Forgefile).
    namespace: str = ""
    lifecycle: Lifecycle = Lifecycle()
    kind: ClassVar[str] = ""

    @property
    def address(self) -> str:
        return instance_address(self.kind, self.name, self.key, self.namespace)

    @property
    def instance(self) -> str:
        """The instance's name where a plain name is needed: a folder, a hostname."""
        return instance_name(self.name, self.key, self.namespace)

    def references(self) -> tuple[ResourceRef, ...]:
        """Every resource this one names, in the order written: the edges of the graph."""
        return self._references

    @cached_property
    def _references(self) -> tuple[ResourceRef, ...]:
        # Lowering, the checks, the graph and the planner all ask; the IR is frozen.
        found: list[ResourceRef] = []
        for f in fields(self):
            _collect_refs(getattr(self, f.name), found)
        return tuple(found)

    def to_document(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"address": self.address, "kind": self.kind}
        values = self.__dict__  # read directly: policy turns every resource into a document
        for name, key, as_map in _document_fields(type(self)):
            value = values[name]
            doc[key] = value if type(value) in _PLAIN and not as_map else _to_json(value, as_map)
        return doc


@dataclass(frozen=True)
class CopyStep(Node):
    dst: str = ""
    src: str | None = None
    content: str | None = None
    mode: int | None = None


@dataclass(frozen=True)
class LinkStep(Node):
    target: str = ""
    links: tuple[str, ...] = ()


@dataclass(frozen=True)
class Image(Resource):
    kind: ClassVar[str] = "image"
    from_: str | ResourceRef = "scratch"
    context: str = "."  # absolute after lowering
    steps: tuple[CopyStep | LinkStep, ...] = ()
    env: Pairs = ()
    entrypoint: tuple[str, ...] = ()
    command: tuple[str, ...] = ()
    working_dir: str = ""
    user: str = ""


@dataclass(frozen=True)
class Network(Resource):
    kind: ClassVar[str] = "network"
    subnet: str = ""
    gateway: str = ""


@dataclass(frozen=True)
class Volume(Resource):
    kind: ClassVar[str] = "volume"


@dataclass(frozen=True)
class Limits:
    memory: Size | None = None
    cpus: float | None = None
    pids: int | None = None


@dataclass(frozen=True)
class Healthcheck:
    """A command run inside a service's container to tell whether it is healthy."""

    command: tuple[str, ...]
    interval: Duration
    timeout: Duration
    retries: int
    start_period: Duration


@dataclass(frozen=True)
class Bind:
    """A `bind` block: a host path mounted into a container, as written (absolute, normalised)."""

    source: str
    target: str
    read_only: bool = True


@dataclass(frozen=True)
class ImageSource:
    """`image = "oci:PATH:TAG"` or `"archive:PATH"`: an image read from outside the store,
    imported (blob by blob, each checked) when the plan is made."""

    kind: str  # "oci" (a layout folder) or "archive" (an OCI or docker archive)
    path: str  # absolute
    tag: str
    span: Span

    @property
    def ref(self) -> str:
        """How plans and policy name it: the source as written, its path made absolute."""
        return f"{self.kind}:{self.path}" + (f":{self.tag}" if self.tag else "")


@dataclass(frozen=True)
class Container(Resource):
    """What services and jobs share: an image run by runc."""

    image: ResourceRef | ImageSource | None = None
    command: tuple[str, ...] = ()
    entrypoint: tuple[str, ...] = ()
    env: Pairs = ()
    working_dir: str = ""
    user: str = ""  # numeric uid or uid:gid; empty means the image's
    hostname: str = ""
    networks: tuple[ResourceRef, ...] = ()
    volumes: Pairs = ()
    binds: tuple[Bind, ...] = ()
    read_only: bool = False
    tmpfs: tuple[str, ...] = ()
    privileged: bool = False
    cap_add: tuple[str, ...] = ()
    cap_drop: tuple[str, ...] = ()
    sysctls: Pairs = ()
    ulimits: Pairs = ()
    init: bool = False
    log_max_size: Size | None = None  # None: the monitor's default, logfile.MAX_SIZE
    log_max_files: int | None = None  # None: logfile.MAX_FILES
    stop_signal: str = "TERM"
    restart: str = "no"
    healthcheck: Healthcheck | None = None
    # `depends { on = ... condition = ... }`: the address waited for and for what, beyond
    # "started" (the workload's `on` is in depends_on too, so it orders the graph).
    conditions: Pairs = ()
    depends_on: tuple[ResourceRef, ...] = ()
    stop_grace_period: Duration = STOP_GRACE
    resources: Limits = field(default_factory=Limits)
    runtime: str = "runc"  # the OCI runtime binary: runc or crun

    @property
    def image_name(self) -> str:
        """The image block's address, or the source's ref: what build facts are keyed by."""
        if isinstance(self.image, ResourceRef):
            return self.image.address
        assert self.image is not None, "lowering always sets the image"
        return self.image.ref


@dataclass(frozen=True)
class Service(Container):
    kind: ClassVar[str] = "service"


@dataclass(frozen=True)
class Job(Container):
    kind: ClassVar[str] = "job"
    success_codes: tuple[int, ...] = (0,)
    timeout: Duration = JOB_TIMEOUT


@dataclass(frozen=True)
class WasmLimits:
    memory: Size | None = WASM_MEMORY
    fuel: int | None = None
    timeout: Duration | None = WASM_TIMEOUT


@dataclass(frozen=True)
class Wasm(Resource):
    kind: ClassVar[str] = "wasm"
    module: str = ""  # absolute after lowering
    mode: str = "job"
    args: tuple[str, ...] = ()
    env: Pairs = ()
    mounts: Pairs = ()
    depends_on: tuple[ResourceRef, ...] = ()
    success_codes: tuple[int, ...] = (0,)
    limits: WasmLimits = field(default_factory=WasmLimits)


@dataclass(frozen=True)
class Variable(Node):
    name: str = ""
    type: str = "any"
    default: Any = None
    has_default: bool = False
    description: str = ""
    sensitive: bool = False


@dataclass(frozen=True)
class Output(Node):
    name: str = ""
    value: Expr | None = None
    description: str = ""
    sensitive: bool = False


@dataclass(frozen=True)
class Waiver(Node):
    """An exception to one policy rule for one resource, until a date, with who and why."""

    name: str = ""
    rule: str = ""
    resource: str = ""  # the address waived
    reason: str = ""
    owner: str = ""
    expires: str = ""  # YYYY-MM-DD: the waiver holds through that day (UTC)
    source: str = "forgefile"  # or "file": a waiver block in a policy file

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.name,
            "rule": self.rule,
            "resource": self.resource,
            "reason": self.reason,
            "owner": self.owner,
            "expires": self.expires,
            "source": self.source,
            "span": self.span.to_json(),
        }


# What a waiver's text fields must say, for the diagnostic when one is left blank.
WAIVER_HINTS = {
    "rule": "name the rule it waives, such as FRG-C001",
    "reason": "say why the rule does not apply here; auditors read it",
    "owner": "name who answers for the waiver, such as a team or an email",
    "resource": "name the resource it waives, such as service.web",
}


RESOURCE_CLASSES: dict[str, type[Resource]] = {
    cls.kind: cls for cls in (Image, Network, Volume, Service, Job, Wasm)
}


@dataclass(frozen=True)
class Document:
    """A whole lowered Forgefile: the unit that is checked, judged and planned."""

    path: str
    resources: tuple[Resource, ...]
    variables: tuple[Variable, ...] = ()
    outputs: tuple[Output, ...] = ()
    # Every input file read while lowering (Forgefiles, file() arguments): path -> digest.
    inputs: Pairs = ()
    # The values variables took, sensitive ones included: never serialised as they are.
    variable_values: Pairs = field(default=(), repr=False)
    # Resources with `count` or `for_each`: group address -> instance keys, in order.
    groups: tuple[tuple[str, tuple[Key, ...]], ...] = ()
    # The values of locals, and the outputs of imported modules, for the outputs the planner
    # evaluates.
    local_values: Pairs = field(default=(), repr=False)
    module_outputs: Pairs = field(default=(), repr=False)
    # What lowering noticed but did not refuse: unused variables and locals.
    warnings: tuple[Diagnostic, ...] = ()
    # `waiver` blocks: exceptions to policy rules, judged with the policy.
    waivers: tuple[Waiver, ...] = ()

    def resource(self, address: str) -> Resource | None:
        return next((r for r in self.resources if r.address == address), None)

    def declared(self) -> dict[str, set[str]]:
        """Kind to the names declared (a group with count = 0 too): what references may name."""
        names: dict[str, set[str]] = {}
        for r in self.resources:
            if not r.namespace:
                names.setdefault(r.kind, set()).add(r.name)
        for address, _keys in self.groups:
            if not address.startswith("module."):
                kind, name = address.split(".", 1)
                names.setdefault(kind, set()).add(name)
        return names

    def instances(self) -> dict[str, tuple[Key, ...]]:
        """Group address to instance keys, for resources with `count` or `for_each`."""
        return dict(self.groups)

    def to_document(self) -> dict[str, Any]:
        return {
            "resources": [r.to_document() for r in self.resources],
            "outputs": [o.name for o in self.outputs],
        }


def _collect_refs(value: Any, found: list[ResourceRef]) -> None:
    if isinstance(value, ResourceRef):
        found.append(value)
    elif isinstance(value, tuple):
        for item in value:
            _collect_refs(item, found)


_FIELDS: dict[type, tuple[tuple[str, str, bool], ...]] = {}


def _document_fields(cls: type) -> tuple[tuple[str, str, bool], ...]:
    """A resource class's fields as (attribute, document key, is a map), made once per class."""
    if cls not in _FIELDS:
        _FIELDS[cls] = tuple(
            (f.name, f.name.rstrip("_"), f.type == "Pairs")
            for f in fields(cls)
            if f.name not in ("span", "spans")
        )
    return _FIELDS[cls]


_PLAIN = frozenset((str, int, float, bool, type(None)))


def _to_json(value: Any, as_map: bool = False) -> Any:
    """The JSON form of an IR value: references as addresses, sizes as bytes, times as seconds."""
    if as_map:
        return {k: v if type(v) in _PLAIN else _to_json(v) for k, v in value}
    kind = type(value)
    if kind in _PLAIN:
        return value
    if kind is tuple:
        return [v if type(v) in _PLAIN else _to_json(v) for v in value]
    convert = _CONVERT.get(kind)
    if convert is None:  # a subclass: find the converter of the class it extends
        convert = next((c for t, c in _CONVERT.items() if isinstance(value, t)), _same)
        _CONVERT[kind] = convert
    return convert(value)


def _record(value: Any) -> dict[str, Any]:
    return {name: _to_json(getattr(value, name)) for name in _record_fields(type(value))}


def _step(value: CopyStep | LinkStep) -> dict[str, Any]:
    return {"copy" if isinstance(value, CopyStep) else "link": _record(value)}


_RECORD_FIELDS: dict[type, tuple[str, ...]] = {}


def _record_fields(cls: type) -> tuple[str, ...]:
    if cls not in _RECORD_FIELDS:
        _RECORD_FIELDS[cls] = tuple(f.name for f in fields(cls) if f.name not in ("span", "spans"))
    return _RECORD_FIELDS[cls]


def _same(value: Any) -> Any:
    return value


# Each IR value type and its JSON form; looked up by exact type, which is what the IR holds.
_CONVERT: dict[type, Callable[[Any], Any]] = {
    ResourceRef: lambda ref: ref.address,
    ImageSource: lambda source: source.ref,
    Size: lambda size: size.bytes,
    Duration: lambda duration: duration.seconds,
    CopyStep: _step,
    LinkStep: _step,
    Limits: _record,
    Bind: _record,
    Healthcheck: _record,
    WasmLimits: _record,
    Lifecycle: lambda cycle: {
        "prevent_destroy": cycle.prevent_destroy,
        "ignore_changes": list(cycle.ignore_changes),
        "create_before_destroy": cycle.create_before_destroy,
    },
}
