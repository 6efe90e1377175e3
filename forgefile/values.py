"""Values an expression evaluates to, besides Python's str, int, float, bool, None, list, dict."""

from __future__ import annotations

from dataclasses import dataclass

from .diagnostics import Span
from .syntax import Duration, Size

__all__ = [
    "AttributeRef",
    "Duration",
    "Key",
    "ResourceRef",
    "Size",
    "instance_address",
    "instance_name",
    "type_name",
]


Key = int | str


@dataclass(frozen=True)
class ResourceRef:
    """`service.api` or `service.api[0]`: a resource (instance) by kind, name and key.

    A reference without a key to a resource with `count` or `for_each` names the whole group.
    `namespace` is the import path ("db", or "app.db" when nested) of a resource declared inside
    an imported module; empty for the root Forgefile.
    """

    kind: str
    name: str
    span: Span
    key: Key | None = None
    namespace: str = ""

    @property
    def address(self) -> str:
        return instance_address(self.kind, self.name, self.key, self.namespace)

    @property
    def instance(self) -> str:
        return instance_name(self.name, self.key, self.namespace)

    def __str__(self) -> str:
        return self.address

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ResourceRef) and (
            self.kind,
            self.name,
            self.key,
            self.namespace,
        ) == (other.kind, other.name, other.key, other.namespace)

    def __hash__(self) -> int:
        return hash((self.kind, self.name, self.key, self.namespace))


def instance_address(kind: str, name: str, key: Key | None, namespace: str = "") -> str:
    """`service.web`, `service.web[0]`, `service.web["eu"]` or `module.db.service.pg`."""
    prefix = "".join(f"module.{part}." for part in namespace.split(".")) if namespace else ""
    if key is None:
        return f"{prefix}{kind}.{name}"
    shown = f"[{key}]" if isinstance(key, int) else f'["{key}"]'
    return f"{prefix}{kind}.{name}{shown}"


def instance_name(name: str, key: Key | None, namespace: str = "") -> str:
    """A name for one instance that is safe in host names, folders and hostnames: `db-pg-0`."""
    base = name if key is None else f"{name}-{key}"
    return f"{namespace.replace('.', '-')}-{base}" if namespace else base


@dataclass(frozen=True)
class AttributeRef:
    """`service.api.address`: a value that the planner computes, such as an allocated address."""

    resource: ResourceRef
    path: tuple[str | int, ...]
    span: Span

    def __str__(self) -> str:
        tail = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in self.path)
        return f"{self.resource.address}{tail}"


def a_type(value: object) -> str:
    """The type's name with its article, for messages: "an int", "a string"."""
    name = type_name(value)
    return ("an " if name[0] in "aeiou" else "a ") + name


def type_name(value: object) -> str:
    """The Forgefile name of a value's type, for diagnostics."""
    match value:
        case bool():
            return "bool"
        case int():
            return "int"
        case float():
            return "float"
        case str():
            return "string"
        case None:
            return "null"
        case list() | tuple():
            return "list"
        case dict():
            return "map"
        case Duration():
            return "duration"
        case Size():
            return "size"
        case ResourceRef():
            return f"reference to {value.kind}"
        case AttributeRef():
            return "computed attribute"
    return type(value).__name__
