"""The schema of every block: its attributes, their types, defaults and allowed values.

This is the one place that says what a Forgefile may contain. The lowering pass checks blocks
against it, `docs/language.md` describes it, and `forge show --schema` exports it.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
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
        return value  # a variable's default keeps its shape: a map stays a map
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


# -- blocks -------------------------------------------------------------------------------------

REQUIRED: Any = object()


@dataclass(frozen=True)
class Attr:
    name: str
    type: Type
    default: Any = None
    doc: str = ""
    choices: tuple[str, ...] = ()
    # Parsed and type-checked, but not carried out yet: the text names the missing feature.
    # Setting it is an error (E0307) rather than a silent no-op.
    pending: str = ""
    # Where only some values are carried out yet: those values; any other is E0307.
    ready: tuple[Any, ...] = ()

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
    pending: str = ""  # as for Attr: the whole block is parsed but not carried out yet

    def attribute(self, name: str) -> Attr | None:
        return self._by_name.get(name)

    @cached_property
    def _by_name(self) -> dict[str, Attr]:
        return {a.name: a for a in self.attributes}


# Resource limits a workload's `ulimits` may set (as `ulimit` and Docker name them); the
# container driver maps each to its RLIMIT_ name.
ULIMITS = (
    "as", "core", "cpu", "data", "fsize", "locks", "memlock", "msgqueue", "nice", "nofile",
    "nproc", "rss", "rtprio", "rttime", "sigpending", "stack",
)  # fmt: skip

# Linux capabilities, for cap_add and cap_drop; the container driver reads this list too.
CAPABILITIES = (
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN",
    "CAP_NET_RAW",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_MKNOD",
    "CAP_LEASE",
    "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP",
    "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN",
    "CAP_SYSLOG",
    "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND",
    "CAP_AUDIT_READ",
    "CAP_PERFMON",
    "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
)


ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]*")

_WORKLOAD_REFS = ("service", "job", "wasm")

RESOURCES_BLOCK = BlockSpec(
    "resources",
    "Limits on what the workload may use.",
    labels=(),
    attributes=(
        Attr("memory", SIZE, None, "Memory limit, e.g. 64MiB."),
        Attr("cpus", NUMBER, None, "CPU quota in cores, e.g. 0.5."),
        Attr(
            "pids",
            INT,
            None,
            "Most processes the workload may have; at least 16, which runc's own start needs.",
        ),
    ),
)


def _pending_block(kind: str, doc: str, pending: str, *attributes: Attr) -> BlockSpec:
    return BlockSpec(kind, doc, labels=(), attributes=attributes, pending=pending)


HEALTHCHECK_BLOCK = BlockSpec(
    "healthcheck",
    "A command run inside the container to tell whether it is healthy.",
    labels=(),
    attributes=(
        Attr("command", ListOf(STRING), REQUIRED, "Exit 0 means healthy."),
        Attr("interval", DURATION, Duration(30 * 10**9), "Time between checks."),
        Attr("timeout", DURATION, Duration(30 * 10**9), "How long one check may take."),
        Attr("retries", INT, 3, "Failures in a row before the container is unhealthy."),
        Attr(
            "start_period", DURATION, Duration(0), "Grace time after start: failures do not count."
        ),
    ),
)
PORT_BLOCK = _pending_block(
    "port",
    "A published port, long form.",
    "published ports",
    Attr("target", INT, REQUIRED, "The container's port."),
    Attr("published", STRING, "", 'Host port or range, e.g. "8080" or "8080-8090".'),
    Attr("host_ip", STRING, "", 'Host address to bind, e.g. "127.0.0.1".'),
    Attr("protocol", STRING, "tcp", "tcp or udp.", ("tcp", "udp")),
)
NETWORK_ATTACHMENT_BLOCK = _pending_block(
    "network",
    "Joining a network, long form: aliases and a static address.",
    "aliases and static addresses",
    Attr("name", RefTo(("network",)), REQUIRED, "The network, e.g. network.backend."),
    Attr("aliases", ListOf(STRING), (), "More names the workload answers to on it."),
    Attr("ipv4_address", STRING, "", "A static address inside the network's subnet."),
)
SECRET_MOUNT_BLOCK = _pending_block(
    "secret",
    "A secret delivered as a file, long form.",
    "secrets",
    Attr("source", RefTo(("secret",)), REQUIRED, "The secret, e.g. secret.db."),
    Attr("target", STRING, "", "File name under /run/secrets; defaults to the label."),
    Attr("uid", INT, 0, "Owner of the file."),
    Attr("gid", INT, 0, "Group of the file."),
    Attr("mode", STRING, "0400", "Octal mode of the file."),
)

BIND_BLOCK = BlockSpec(
    "bind",
    "A host folder or file mounted into the container (rprivate, nosuid, nodev); policy decides "
    "which host paths may be bound.",
    labels=(),
    attributes=(
        Attr(
            "source",
            STRING,
            REQUIRED,
            'Absolute, normalised host path, e.g. "/srv/app/conf"; it must exist at apply, and '
            "not through a symbolic link.",
        ),
        Attr("target", STRING, REQUIRED, 'Absolute path in the container, e.g. "/etc/app".'),
        Attr("read_only", BOOL, True, "Mount it read-only; false lets the workload write to it."),
    ),
)

_CONTAINER_ATTRS = (
    Attr(
        "image",
        OneOf((RefTo(("image",)), STRING)),
        REQUIRED,
        'The image to run: image.web, "oci:PATH:TAG" (an OCI layout folder) or "archive:PATH" '
        "(an OCI or docker archive), paths relative to the Forgefile.",
    ),
    Attr("command", ListOf(STRING), (), "The command; empty means the image's default."),
    Attr("entrypoint", ListOf(STRING), (), "Replaces the image's entrypoint."),
    Attr("env", MapOf(STRING), (), "Environment variables."),
    Attr("working_dir", STRING, "", "Working directory; empty means the image's."),
    Attr("user", STRING, "", 'Numeric uid or uid:gid to run as, e.g. "1000:1000".'),
    Attr("hostname", STRING, "", "Host name inside the container; defaults to the block name."),
    Attr("networks", ListOf(RefTo(("network",))), (), "Networks to join; none means no network."),
    Attr(
        "network_mode",
        STRING,
        "",
        '"none" for no network at all, or "host".',
        ("", "none", "host"),
        ready=("", "none"),
    ),
    Attr("volumes", MapOf(RefTo(("volume",))), (), "Mount points to volumes."),
    Attr("read_only", BOOL, False, "Mount the root filesystem read-only."),
    Attr("tmpfs", ListOf(STRING), (), "Paths to mount a fresh tmpfs on (nosuid, nodev)."),
    Attr("privileged", BOOL, False, "Every capability and no confinement; policy forbids it."),
    Attr("cap_add", ListOf(STRING), (), "Capabilities beyond the hardened default set."),
    Attr(
        "cap_drop",
        ListOf(STRING),
        (),
        'Capabilities to drop from the default set; "ALL" drops them all (cap_add adds back).',
    ),
    Attr(
        "sysctls",
        MapOf(STRING),
        (),
        "Namespaced kernel parameters: net.*, kernel.shm*, kernel.msg*, kernel.sem, fs.mqueue.*.",
    ),
    Attr(
        "ulimits",
        MapOf(INT),
        (),
        "Resource limits, e.g. { nofile = 1024 }; never above the host's own hard limit.",
    ),
    Attr("init", BOOL, False, "Run tini as PID 1: it forwards signals and reaps zombies."),
    Attr(
        "log_max_size",
        SIZE,
        None,
        "Rotate the log when it would grow past this, e.g. 50MiB [default: 10MiB].",
    ),
    Attr("log_max_files", INT, None, "Rotated log files kept beside the log [default: 5]."),
    Attr("stop_signal", STRING, "TERM", "The signal that asks the workload to stop, e.g. INT."),
    Attr(
        "stop_grace_period",
        DURATION,
        Duration(10 * 10**9),
        "How long to wait after stop_signal before KILL.",
    ),
    Attr(
        "restart",
        STRING,
        "no",
        "no, on-failure[:N], always or unless-stopped: when the monitor starts it again.",
    ),
    Attr(
        "ports",
        ListOf(STRING),
        (),
        'Published ports, e.g. "127.0.0.1:8080:80/tcp".',
        pending="published ports",
    ),
    Attr(
        "secrets",
        ListOf(RefTo(("secret",))),
        (),
        "Secrets delivered under /run/secrets.",
        pending="secrets",
    ),
    Attr(
        "runtime",
        STRING,
        "runc",
        "The OCI runtime; crun must be installed on the host that applies.",
        ("runc", "crun"),
    ),
    Attr("depends_on", ListOf(RefTo(_WORKLOAD_REFS)), (), "Workloads to start first."),
)
DEPENDS_BLOCK = BlockSpec(
    "depends",
    "Wait for another workload to reach a condition before starting.",
    labels=(),
    attributes=(
        Attr("on", RefTo(_WORKLOAD_REFS), REQUIRED, "The workload, e.g. service.db."),
        Attr(
            "condition",
            STRING,
            "started",
            "started; healthy (a service with a healthcheck); completed_successfully (a job).",
            ("started", "healthy", "completed_successfully"),
        ),
    ),
)

LIFECYCLE_BLOCK = BlockSpec(
    "lifecycle",
    "How plans may change the resource: never destroy it, or leave some changes alone.",
    labels=(),
    attributes=(
        Attr(
            "prevent_destroy",
            BOOL,
            False,
            "A plan that would delete or replace the resource fails, naming it.",
        ),
        Attr(
            "ignore_changes",
            ListOf(STRING),
            (),
            "Attributes whose changes the plan leaves alone (by their names in plan diffs).",
        ),
        Attr(
            "create_before_destroy",
            BOOL,
            False,
            "Start the replacement before stopping the old one (workloads; not networks).",
        ),
    ),
)
# Every resource kind takes a lifecycle block.
_LIFECYCLE: dict[str, tuple[BlockSpec, bool]] = {"lifecycle": (LIFECYCLE_BLOCK, False)}

_CONTAINER_BLOCKS: dict[str, tuple[BlockSpec, bool]] = {
    **_LIFECYCLE,
    "depends": (DEPENDS_BLOCK, True),
    "resources": (RESOURCES_BLOCK, False),
    "healthcheck": (HEALTHCHECK_BLOCK, False),
    "bind": (BIND_BLOCK, True),
    "port": (PORT_BLOCK, True),
    "network": (NETWORK_ATTACHMENT_BLOCK, True),
    "secret": (SECRET_MOUNT_BLOCK, True),
}

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
    "import": BlockSpec(
        "import",
        "Another Forgefile, as a module: its variables are this block's other attributes, and its "
        "outputs are read as NAME.OUTPUT. Its resources are addressed module.NAME.KIND.NAME.",
        attributes=(
            Attr("source", STRING, REQUIRED, 'The module\'s folder, e.g. "./modules/db".'),
        ),
        open=True,
    ),
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
            Attr(
                "labels", MapOf(STRING), (), "OCI annotations of the image.", pending="image labels"
            ),
            Attr(
                "expose",
                ListOf(STRING),
                (),
                'Ports the image documents, e.g. "80/tcp".',
                pending="expose",
            ),
            Attr(
                "build_args",
                MapOf(STRING),
                (),
                "Defaults of build arguments.",
                pending="build arguments",
            ),
        ),
        blocks={
            **_LIFECYCLE,
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
                        Attr(
                            "chown",
                            STRING,
                            None,
                            "uid:gid of the copied files.",
                            pending="chown on copy",
                        ),
                        Attr(
                            "from",
                            RefTo(("image",)),
                            None,
                            "Copy out of another image.",
                            pending="multi-stage copies",
                        ),
                    ),
                ),
                True,
            ),
            "run": (
                _pending_block(
                    "run",
                    "Run a command in the image being built, in runc.",
                    "run steps",
                    Attr("command", ListOf(STRING), REQUIRED, "The command."),
                    Attr("network", BOOL, False, "Give the step a network."),
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
            Attr("internal", BOOL, False, "No route out of the network.", ready=(False,)),
        ),
        blocks=_LIFECYCLE,
    ),
    "volume": BlockSpec(
        "volume", "A named, persistent folder that workloads mount.", blocks=_LIFECYCLE
    ),
    "secret": BlockSpec(
        "secret",
        "Where a secret's value lives; the value itself never enters the Forgefile or a plan.",
        attributes=(
            Attr("vault", STRING, None, "A name in Forge's encrypted vault."),
            Attr("env", STRING, None, "An environment variable of the forge command."),
            Attr("file", STRING, None, "A file, relative to the Forgefile."),
        ),
        pending="secrets",
    ),
    "waiver": BlockSpec(
        "waiver",
        "An exception to a policy rule for one resource, with a reason, an owner and an expiry.",
        attributes=(
            Attr("rule", STRING, REQUIRED, "The rule id."),
            Attr("resource", ANY, REQUIRED, "The resource waived, e.g. service.web."),
            Attr("reason", STRING, REQUIRED, "Why."),
            Attr("owner", STRING, REQUIRED, "Who answers for it."),
            Attr("expires", STRING, REQUIRED, 'The last day it holds, e.g. "2027-01-31".'),
        ),
    ),
    "service": BlockSpec(
        "service",
        "A long-running container.",
        attributes=_CONTAINER_ATTRS,
        blocks=_CONTAINER_BLOCKS,
    ),
    "job": BlockSpec(
        "job",
        "A container that runs to completion.",
        attributes=(
            *_CONTAINER_ATTRS,
            Attr("success_codes", ListOf(INT), (0,), "Exit codes that count as success."),
            Attr("timeout", DURATION, Duration(600 * 10**9), "How long the job may run."),
        ),
        blocks=_CONTAINER_BLOCKS,
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
            **_LIFECYCLE,
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
            ),
        },
    ),
}

RESOURCE_KINDS = ("image", "network", "volume", "secret", "service", "job", "wasm")


def markdown_reference() -> str:
    """The block reference of docs/language.md, made from the schema so the two never differ."""
    lines: list[str] = []
    for spec in SCHEMAS.values():
        labels = " ".join(f'"{label.upper()}"' for label in spec.labels)
        status = " *Checked, not carried out yet (E0307).*" if spec.pending else ""
        lines += [
            f"### `{spec.kind}{' ' + labels if labels else ''} {{ ... }}`",
            "",
            spec.doc + status,
            "",
        ]
        lines += _attribute_table(spec)
        for name, (child, repeats) in spec.blocks.items():
            times = "repeatable, in order" if repeats else "at most once"
            status = " *Checked, not carried out yet (E0307).*" if child.pending else ""
            lines += [f"#### `{name} {{ ... }}` ({times})", "", child.doc + status, ""]
            lines += _attribute_table(child)
    return "\n".join(lines).rstrip() + "\n"


def _attribute_table(spec: BlockSpec) -> list[str]:
    if spec.open:
        if spec.kind == "import":
            return [
                "| attribute | type | default | description |",
                "|---|---|---|---|",
                f"| `source` | string | required | {spec.attributes[0].doc} |",
                "| any other | any | | Sets the module's variable of that name. |",
                "",
            ]
        return ["Any attribute name; each is a value, available as `local.NAME`.", ""]
    if not spec.attributes:
        return ["No attributes.", ""]
    rows = ["| attribute | type | default | description |", "|---|---|---|---|"]
    for attr in spec.attributes:
        default = "required" if attr.required else _shown_default(attr.default)
        if isinstance(attr.type, MapOf) and attr.default == ():
            default = "`{}`"
        choices = f" One of {', '.join(repr(c) for c in attr.choices)}." if attr.choices else ""
        status = ""
        if attr.pending:
            status = " *Checked, not carried out yet (E0307).*"
        elif attr.ready:
            shown = ", ".join(_shown_default(v) for v in attr.ready)
            status = f" *Carried out today: {shown}.*"
        rows.append(f"| `{attr.name}` | {attr.type} | {default} | {attr.doc}{choices}{status} |")
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
