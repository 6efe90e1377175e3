"""The schema of every block: its attributes, their types, defaults and allowed values.

This is the one place that says what a Forgefile may contain. The lowering pass checks blocks
against it, `docs/language.md` describes it, and `forge show --schema` exports it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .syntax import Duration, Size
from .values import ResourceRef, type_name

# -- types --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Type:
    name: str

    def __str__(self) -> str:
        return self.name


@dataclass(frozen=True)
class ListOf(Type):
    name: str = field(init=False, default="list")
    element: Type

    def __str__(self) -> str:
        return f"list({self.element})"


@dataclass(frozen=True)
class MapOf(Type):
    name: str = field(init=False, default="map")
    element: Type

    def __str__(self) -> str:
        return f"map({self.element})"


@dataclass(frozen=True)
class RefTo(Type):
    name: str = field(init=False, default="ref")
    kinds: tuple[str, ...]

    def __str__(self) -> str:
        return " or ".join(f"{k}.NAME" for k in self.kinds)


@dataclass(frozen=True)
class OneOf(Type):
    name: str = field(init=False, default="one of")
    options: tuple[Type, ...]

    def __str__(self) -> str:
        return " or ".join(str(o) for o in self.options)


STRING = Type("string")
INT = Type("int")
NUMBER = Type("number")
BOOL = Type("bool")
DURATION = Type("duration")
SIZE = Type("size")
ANY = Type("any")


class Mismatch(Exception):
    """A value does not have the declared type; `path` says where inside it."""

    def __init__(self, expected: Type, value: object, path: str = "") -> None:
        self.expected = expected
        self.value = value
        self.path = path
        where = f" at {path}" if path else ""
        super().__init__(f"expected {expected}{where}, found {type_name(value)}")


def coerce(value: Any, type_: Type, path: str = "") -> Any:
    """Check `value` against `type_` and freeze it: lists become tuples, maps sorted pairs."""
    if type_ is ANY:
        return _freeze(value)
    if isinstance(type_, ListOf):
        if not isinstance(value, list | tuple):
            raise Mismatch(type_, value, path)
        return tuple(coerce(v, type_.element, f"{path}[{i}]") for i, v in enumerate(value))
    if isinstance(type_, MapOf):
        if not isinstance(value, dict):
            raise Mismatch(type_, value, path)
        return tuple((k, coerce(v, type_.element, f"{path}[{k!r}]")) for k, v in value.items())
    if isinstance(type_, OneOf):
        for option in type_.options:
            try:
                return coerce(value, option, path)
            except Mismatch:
                continue
        raise Mismatch(type_, value, path)
    if isinstance(type_, RefTo):
        if isinstance(value, ResourceRef) and value.kind in type_.kinds:
            return value
        raise Mismatch(type_, value, path)
    if not _SCALAR_CHECKS[type_.name](value):
        raise Mismatch(type_, value, path)
    return float(value) if type_ is NUMBER else value


_SCALAR_CHECKS: dict[str, Callable[[Any], bool]] = {
    "string": lambda v: isinstance(v, str),
    "int": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "number": lambda v: isinstance(v, int | float) and not isinstance(v, bool),
    "bool": lambda v: isinstance(v, bool),
    "duration": lambda v: isinstance(v, Duration),
    "size": lambda v: isinstance(v, Size),
}


def _freeze(value: Any) -> Any:
    if isinstance(value, list | tuple):
        return tuple(_freeze(v) for v in value)
    if isinstance(value, dict):
        return tuple((k, _freeze(v)) for k, v in value.items())
    return value


# -- blocks -------------------------------------------------------------------------------------

REQUIRED: Any = object()


@dataclass(frozen=True)
class Attr:
    name: str
    type: Type
    default: Any = None
    doc: str = ""
    choices: tuple[str, ...] = ()

    @property
    def required(self) -> bool:
        return self.default is REQUIRED


@dataclass(frozen=True)
class BlockSpec:
    kind: str
    doc: str
    labels: tuple[str, ...] = ("name",)
    attributes: tuple[Attr, ...] = ()
    blocks: dict[str, tuple[BlockSpec, bool]] = field(
        default_factory=dict
    )  # name -> (spec, repeats)
    open: bool = False  # `locals`: any attribute name is allowed

    def attribute(self, name: str) -> Attr | None:
        return next((a for a in self.attributes if a.name == name), None)


_WORKLOAD_REFS = ("service", "job", "wasm")

RESOURCES_BLOCK = BlockSpec(
    "resources",
    "Limits on what the workload may use.",
    labels=(),
    attributes=(
        Attr("memory", SIZE, None, "Memory limit, e.g. 64MiB."),
        Attr("cpus", NUMBER, None, "CPU quota in cores, e.g. 0.5."),
        Attr("pids", INT, None, "Most processes the workload may have."),
    ),
)

_CONTAINER_ATTRS = (
    Attr("image", RefTo(("image",)), REQUIRED, "The image to run, e.g. image.web."),
    Attr("command", ListOf(STRING), (), "The command; empty means the image's default."),
    Attr("entrypoint", ListOf(STRING), (), "Replaces the image's entrypoint."),
    Attr("env", MapOf(STRING), (), "Environment variables."),
    Attr("working_dir", STRING, "", "Working directory; empty means the image's."),
    Attr("hostname", STRING, "", "Host name inside the container; defaults to the block name."),
    Attr("networks", ListOf(RefTo(("network",))), (), "Networks to join; none means no network."),
    Attr("volumes", MapOf(RefTo(("volume",))), (), "Mount points to volumes."),
    Attr("read_only", BOOL, False, "Mount the root filesystem read-only."),
    Attr("privileged", BOOL, False, "Every capability and no confinement; policy forbids it."),
    Attr("cap_add", ListOf(STRING), (), "Capabilities beyond the hardened default set."),
    Attr("depends_on", ListOf(RefTo(_WORKLOAD_REFS)), (), "Workloads to start first."),
)

SCHEMAS: dict[str, BlockSpec] = {
    "variable": BlockSpec(
        "variable",
        "An input to the Forgefile, set with --var NAME=VALUE or FORGE_VAR_NAME.",
        attributes=(
            Attr(
                "type",
                STRING,
                "any",
                "string, int, number, bool, duration, size or any.",
                ("string", "int", "number", "bool", "duration", "size", "any"),
            ),
            Attr("default", ANY, None, "The value when none is given; without it, one must be."),
            Attr("description", STRING, "", "What the variable is for."),
            Attr("sensitive", BOOL, False, "Hide the value in plans and output."),
        ),
        blocks={
            "validation": (
                BlockSpec(
                    "validation",
                    "A rule the value must meet; checked before anything else is evaluated.",
                    labels=(),
                    attributes=(
                        Attr(
                            "condition",
                            BOOL,
                            REQUIRED,
                            "A bool over var.NAME, e.g. var.replicas > 0.",
                        ),
                        Attr("message", STRING, REQUIRED, "Says what a good value is."),
                    ),
                ),
                True,
            )
        },
    ),
    "locals": BlockSpec("locals", "Named values computed once.", labels=(), open=True),
    "output": BlockSpec(
        "output",
        "A value shown after apply; it may use computed attributes such as an address.",
        attributes=(
            Attr("value", ANY, REQUIRED, 'The value, e.g. "http://${service.web.address}/".'),
            Attr("description", STRING, "", "What the output is."),
            Attr("sensitive", BOOL, False, "Show `(sensitive)` instead of the value."),
        ),
    ),
    "image": BlockSpec(
        "image",
        "An OCI image built from a parent and ordered copy and link steps.",
        attributes=(
            Attr(
                "from",
                OneOf((STRING, RefTo(("image",)))),
                "scratch",
                '"scratch" or another image, e.g. image.base.',
            ),
            Attr("context", STRING, ".", "Folder that copy sources are read from."),
            Attr("env", MapOf(STRING), (), "Default environment of workloads."),
            Attr("entrypoint", ListOf(STRING), (), "Default entrypoint of workloads."),
            Attr("command", ListOf(STRING), (), "Default command of workloads."),
            Attr("working_dir", STRING, "", "Default working directory of workloads."),
            Attr("user", STRING, "", 'Default user of workloads, e.g. "1000:1000".'),
        ),
        blocks={
            "copy": (
                BlockSpec(
                    "copy",
                    "Copy a file or folder from the context, or inline content, into the image.",
                    labels=(),
                    attributes=(
                        Attr("src", STRING, None, "Path inside the context."),
                        Attr("content", STRING, None, "Inline file content, instead of src."),
                        Attr("dst", STRING, REQUIRED, "Absolute path in the image."),
                        Attr("mode", STRING, None, 'Octal file mode, e.g. "0755".'),
                    ),
                ),
                True,
            ),
            "link": (
                BlockSpec(
                    "link",
                    "Make symbolic links in the image, e.g. busybox applets.",
                    labels=(),
                    attributes=(
                        Attr("target", STRING, REQUIRED, "What the links point to."),
                        Attr("links", ListOf(STRING), REQUIRED, "Absolute paths of the links."),
                    ),
                ),
                True,
            ),
        },
    ),
    "network": BlockSpec(
        "network",
        "A Linux bridge with a subnet that workloads join.",
        attributes=(
            Attr("subnet", STRING, REQUIRED, 'IPv4 CIDR, e.g. "10.213.47.0/24".'),
            Attr("gateway", STRING, "", "The bridge's address; defaults to the first host."),
        ),
    ),
    "volume": BlockSpec("volume", "A named, persistent folder that workloads mount."),
    "service": BlockSpec(
        "service",
        "A long-running container.",
        attributes=_CONTAINER_ATTRS,
        blocks={"resources": (RESOURCES_BLOCK, False)},
    ),
    "job": BlockSpec(
        "job",
        "A container that runs to completion.",
        attributes=(
            *_CONTAINER_ATTRS,
            Attr("success_codes", ListOf(INT), (0,), "Exit codes that count as success."),
            Attr("timeout", DURATION, Duration(600 * 10**9), "How long the job may run."),
        ),
        blocks={"resources": (RESOURCES_BLOCK, False)},
    ),
    "wasm": BlockSpec(
        "wasm",
        "A WebAssembly (WASI preview 1) module.",
        attributes=(
            Attr("module", STRING, REQUIRED, "Path to the .wasm file."),
            Attr(
                "mode",
                STRING,
                "job",
                "job runs to completion; service keeps running.",
                ("job", "service"),
            ),
            Attr("args", ListOf(STRING), (), "Arguments after argv[0]."),
            Attr("env", MapOf(STRING), (), "Environment variables."),
            Attr("mounts", MapOf(RefTo(("volume",))), (), "Guest paths to volumes (writable)."),
            Attr("depends_on", ListOf(RefTo(_WORKLOAD_REFS)), (), "Workloads to run first."),
            Attr("success_codes", ListOf(INT), (0,), "Exit codes that count as success."),
        ),
        blocks={
            "limits": (
                BlockSpec(
                    "limits",
                    "Bounds on the module's memory, CPU and time.",
                    labels=(),
                    attributes=(
                        Attr("memory", SIZE, Size(64 << 20), "Linear memory limit."),
                        Attr("fuel", INT, None, "Instructions budget (wasmtime fuel)."),
                        Attr("timeout", DURATION, Duration(60 * 10**9), "Wall-clock limit."),
                    ),
                ),
                False,
            )
        },
    ),
}

RESOURCE_KINDS = ("image", "network", "volume", "service", "job", "wasm")


def markdown_reference() -> str:
    """The block reference of docs/language.md, made from the schema so the two never differ."""
    lines: list[str] = []
    for spec in SCHEMAS.values():
        labels = " ".join(f'"{label.upper()}"' for label in spec.labels)
        lines += [f"### `{spec.kind}{' ' + labels if labels else ''} {{ ... }}`", "", spec.doc, ""]
        lines += _attribute_table(spec)
        for name, (child, repeats) in spec.blocks.items():
            times = "repeatable, in order" if repeats else "at most once"
            lines += [f"#### `{name} {{ ... }}` ({times})", "", child.doc, ""]
            lines += _attribute_table(child)
    return "\n".join(lines).rstrip() + "\n"


def _attribute_table(spec: BlockSpec) -> list[str]:
    if spec.open:
        return ["Any attribute name; each is a value, available as `local.NAME`.", ""]
    if not spec.attributes:
        return ["No attributes.", ""]
    rows = ["| attribute | type | default | description |", "|---|---|---|---|"]
    for attr in spec.attributes:
        default = "required" if attr.required else _shown_default(attr.default)
        if isinstance(attr.type, MapOf) and attr.default == ():
            default = "`{}`"
        choices = f" One of {', '.join(repr(c) for c in attr.choices)}." if attr.choices else ""
        rows.append(f"| `{attr.name}` | {attr.type} | {default} | {attr.doc}{choices} |")
    return [*rows, ""]


def _shown_default(value: Any) -> str:
    if value is None:
        return "none"
    if isinstance(value, tuple):
        return "`[]`" if not value else f"`{list(value)}`"
    if isinstance(value, Duration):
        return f"`{value}`"
    if isinstance(value, Size):
        return f"`{value.bytes // (1 << 20)}MiB`" if value.bytes % (1 << 20) == 0 else str(value)
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, str):
        return f'`"{value}"`'
    return f"`{value}`"


def json_schema() -> dict[str, Any]:
    """A JSON Schema (2020-12) of the blocks, in the JSON form `{"service": {"NAME": {...}}}`.

    Editors use it to complete and check attribute names and types; it is made from the same
    table the checker uses.
    """
    properties: dict[str, Any] = {}
    for kind, spec in SCHEMAS.items():
        body = _block_schema(spec)
        if kind in RESOURCE_KINDS and kind != "image":
            body["properties"]["count"] = {"type": "integer", "minimum": 0}
            body["properties"]["for_each"] = {"type": ["object", "array"]}
        if spec.labels:
            properties[kind] = {
                "type": "object",
                "additionalProperties": body,
                "propertyNames": {"pattern": NAME_PATTERN},
            }
        else:
            properties[kind] = body
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": "https://forge.invalid/schema/forgefile-v1.json",
        "title": "Forgefile",
        "type": "object",
        "additionalProperties": False,
        "properties": properties,
    }


NAME_PATTERN = "^[A-Za-z_][A-Za-z0-9_-]*$"
_DURATION_PATTERN = "^([0-9]+(ns|us|ms|s|m|h))+$"
_SIZE_PATTERN = "^[0-9]+(\\.[0-9]+)?(KiB|MiB|GiB|TiB|KB|MB|GB|TB|B)$"


def _block_schema(spec: BlockSpec) -> dict[str, Any]:
    if spec.open:
        return {"type": "object", "description": spec.doc}
    props: dict[str, Any] = {a.name: _type_schema(a) for a in spec.attributes}
    for name, (child, repeats) in spec.blocks.items():
        one = _block_schema(child)
        props[name] = {"type": "array", "items": one} if repeats else one
    return {
        "type": "object",
        "description": spec.doc,
        "additionalProperties": False,
        "properties": props,
        "required": [a.name for a in spec.attributes if a.required],
    }


def _type_schema(attr: Attr) -> dict[str, Any]:
    out = _json_type(attr.type)
    if attr.doc:
        out["description"] = attr.doc
    if attr.choices:
        out["enum"] = list(attr.choices)
    return out


def _json_type(type_: Type) -> dict[str, Any]:
    if isinstance(type_, ListOf):
        return {"type": "array", "items": _json_type(type_.element)}
    if isinstance(type_, MapOf):
        return {"type": "object", "additionalProperties": _json_type(type_.element)}
    if isinstance(type_, RefTo):
        kinds = "|".join(type_.kinds)
        return {
            "type": "string",
            "pattern": f"^({kinds})\\.[A-Za-z_][A-Za-z0-9_-]*(\\[.+\\])?$",
        }
    if isinstance(type_, OneOf):
        return {"anyOf": [_json_type(o) for o in type_.options]}
    simple = {
        "string": {"type": "string"},
        "int": {"type": "integer"},
        "number": {"type": "number"},
        "bool": {"type": "boolean"},
        "duration": {"type": "string", "pattern": _DURATION_PATTERN},
        "size": {"type": "string", "pattern": _SIZE_PATTERN},
        "any": {},
    }
    return dict(simple[type_.name])
