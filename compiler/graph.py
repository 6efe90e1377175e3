"""The dependency graph of a Forgefile: which resource needs which, as DOT or as text."""

from __future__ import annotations

from forgefile import ir


def edges(doc: ir.Document) -> list[tuple[str, str]]:
    """(dependent, dependency) pairs, in the order the resources are declared."""
    return [(r.address, ref.address) for r in doc.resources for ref in r.references()]


def to_dot(doc: ir.Document) -> str:
    """Graphviz DOT: `forge graph --format dot | dot -Tsvg > graph.svg`."""
    lines = ["digraph forge {", "  rankdir=LR;", '  node [shape=box, fontname="monospace"];']
    for r in doc.resources:
        lines.append(f"  {_quote(r.address)} [label={_quote(r.address)}];")
    for dependent, dependency in sorted(set(edges(doc))):
        lines.append(f"  {_quote(dependent)} -> {_quote(dependency)};")
    lines.append("}")
    return "\n".join(lines) + "\n"


def to_text(doc: ir.Document) -> str:
    """One line per resource: its address and what it needs."""
    needs: dict[str, list[str]] = {r.address: [] for r in doc.resources}
    for dependent, dependency in edges(doc):
        if dependency not in needs[dependent]:
            needs[dependent].append(dependency)
    width = max((len(a) for a in needs), default=0)
    return "".join(
        f"{address:<{width}}  <- {', '.join(deps)}\n" if deps else f"{address}\n"
        for address, deps in needs.items()
    )


def _quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
