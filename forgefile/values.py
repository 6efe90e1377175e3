"""Values an expression evaluates to, besides Python's str, int, float, bool, None, list, dict."""

from __future__ import annotations

from dataclasses import dataclass

from .diagnostics import Span
from .syntax import Duration, Size

__all__ = ["AttributeRef", "Duration", "ResourceRef", "Size", "type_name"]


@dataclass(frozen=True)
class ResourceRef:
    """`service.api`: a resource named by its kind and name, with where it was written."""

    kind: str
    name: str
    span: Span

    @property
    def address(self) -> str:
        return f"{self.kind}.{self.name}"

    def __str__(self) -> str:
        return self.address

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ResourceRef) and (self.kind, self.name) == (other.kind, other.name)

    def __hash__(self) -> int:
        return hash((self.kind, self.name))


@dataclass(frozen=True)
class AttributeRef:
    """`service.api.address`: a value that the planner computes, such as an allocated address."""

    resource: ResourceRef
    path: tuple[str | int, ...]
    span: Span

    def __str__(self) -> str:
        tail = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in self.path)
        return f"{self.resource.address}{tail}"


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
