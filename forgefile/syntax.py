"""The syntax tree: Forgefile text to blocks, attributes and expressions, every node with a span.

Lark parses; this module turns its tree into small frozen classes whose names match the grammar's
rules, decodes string escapes and parses `${...}` interpolations, and turns Lark's exceptions
into diagnostics that say what was expected in words a Forgefile author uses.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import cache, cached_property, lru_cache
from typing import Any

import lark

import grammar

from .diagnostics import Diagnostic, DiagnosticError, Span

# Lark's trees and tokens, as the builder walks them; Lark's own types are too loose to help.
Tree = Any

MAX_FILE_BYTES = 1 << 20
MAX_NESTING = 64
MAX_NODES = 250_000


# -- expressions --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Expr:
    span: Span


@dataclass(frozen=True)
class Literal(Expr):
    value: object


@dataclass(frozen=True)
class Template(Expr):
    """A string with interpolations: literal text and expressions, in order."""

    parts: tuple[str | Expr, ...]


@dataclass(frozen=True)
class Variable(Expr):
    name: str


@dataclass(frozen=True)
class GetAttr(Expr):
    target: Expr
    name: str


@dataclass(frozen=True)
class Index(Expr):
    target: Expr
    key: Expr


@dataclass(frozen=True)
class Call(Expr):
    name: str
    args: tuple[Expr, ...]


@dataclass(frozen=True)
class ListExpr(Expr):
    items: tuple[Expr, ...]


@dataclass(frozen=True)
class MapExpr(Expr):
    items: tuple[tuple[Expr, Expr], ...]


@dataclass(frozen=True)
class Binary(Expr):
    op: str
    left: Expr
    right: Expr


@dataclass(frozen=True)
class Unary(Expr):
    op: str
    operand: Expr


@dataclass(frozen=True)
class Conditional(Expr):
    condition: Expr
    then: Expr
    otherwise: Expr


@dataclass(frozen=True)
class ForExpr(Expr):
    """`[for k, v in xs : body if cond]`, or with `key` set, `{for k, v in m : key => body}`."""

    key_var: str | None
    value_var: str
    collection: Expr
    body: Expr
    key: Expr | None
    condition: Expr | None
    # `{for s in xs : s.zone => s.name...}`: values with one key are gathered into a list.
    group: bool = False


def subexpressions(expr: Expr) -> Iterator[Expr]:
    """`expr` and every expression inside it, in the order they are written."""
    stack: list[object] = [expr]
    while stack:
        node = stack.pop()
        if isinstance(node, Expr):
            yield node
            stack.extend(reversed(vars(node).values()))
        elif isinstance(node, tuple):
            stack.extend(reversed(node))


@dataclass(frozen=True)
class Duration:
    """A length of time, kept in nanoseconds so that `1m30s` and `90s` compare equal."""

    nanoseconds: int

    @property
    def seconds(self) -> float:
        return self.nanoseconds / 1e9

    def __str__(self) -> str:
        return f"{self.seconds:g}s"


@dataclass(frozen=True)
class Size:
    """An amount of memory or disk, in bytes."""

    bytes: int

    def __str__(self) -> str:
        return f"{self.bytes}B"


# -- structure ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Attribute:
    name: str
    value: Expr
    span: Span
    name_span: Span


@dataclass(frozen=True)
class Block:
    type: str
    labels: tuple[str, ...]
    attributes: tuple[Attribute, ...]
    blocks: tuple[Block, ...]
    span: Span
    type_span: Span
    label_spans: tuple[Span, ...]

    def attribute(self, name: str) -> Attribute | None:
        return self._by_name.get(name)

    @cached_property
    def _by_name(self) -> dict[str, Attribute]:
        # The first of a repeated name: the duplicate is diagnosed where blocks are lowered.
        by_name: dict[str, Attribute] = {}
        for a in self.attributes:
            by_name.setdefault(a.name, a)
        return by_name


@dataclass(frozen=True)
class File:
    path: str
    text: str
    body: Block


# -- parsing ------------------------------------------------------------------------------------


@cache
def _forgefile_parser() -> lark.Lark:
    return grammar.parser("forgefile.lark")


@cache
def _expression_parser() -> lark.Lark:
    return grammar.parser("expressions.lark", start="expr")


def parse(text: str, path: str) -> File:
    """Parse one Forgefile; raise `DiagnosticError` for anything malformed."""
    text = normalise(text)
    check_limits(text, path)
    try:
        tree = _forgefile_parser().parse(text)
    except lark.exceptions.UnexpectedInput as exc:
        raise DiagnosticError([syntax_diagnostic(exc, text, path)]) from None
    builder = _Builder(path, limit=MAX_NODES)
    try:
        body = builder.body(tree.children[0], _span_of(tree, path))
    except RecursionError:
        raise DiagnosticError([_too_deep(Span(path, 1, 1, 1, 1))]) from None
    return File(path=path, text=text, body=body)


MAX_DEPTH = 128  # operators and brackets inside one expression; evaluation recurses per level


def check_depth(expr: Expr) -> None:
    """Refuse an expression nested past MAX_DEPTH, at the node where it goes past it.

    A chain of 600 `+` or 3,000 `!` has no bracket for the nesting limit to count, and each
    level costs evaluation a few Python frames: past the limit it would end in RecursionError.
    """
    stack: list[tuple[object, int]] = [(expr, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, Expr):
            if depth > MAX_DEPTH:
                raise DiagnosticError([_too_deep(node.span)])
            stack.extend((child, depth + 1) for child in vars(node).values())
        elif isinstance(node, tuple):
            stack.extend((child, depth) for child in node)


def _too_deep(span: Span) -> Diagnostic:
    return Diagnostic(
        "F0002",
        f"an expression nests deeper than the limit of {MAX_DEPTH} operators and brackets",
        span,
        "split it into locals (or `let` bindings in a rule), or use a function such as "
        "anytrue([...]) instead of a long chain of `||`",
    )


def normalise(text: str) -> str:
    """Drop a UTF-8 byte-order mark and turn CRLF line endings into LF: the same IR as clean."""
    return text.removeprefix("\ufeff").replace("\r\n", "\n")


def parse_expression(text: str, path: str, line: int = 1, column: int = 1) -> Expr:
    """Parse an expression that starts at `line:column` of `path` (an interpolation, say)."""
    try:
        tree = _expression_tree(text)
    except lark.exceptions.UnexpectedInput as exc:
        shifted = _shift_error(exc, line, column)
        raise DiagnosticError([syntax_diagnostic(exc, text, path, shifted)]) from None
    try:
        return _Builder(path, line - 1, column - 1).expr(tree)
    except RecursionError:
        raise DiagnosticError([_too_deep(Span(path, line, column, line, column))]) from None


@lru_cache(maxsize=4096)
def _expression_tree(text: str) -> Tree:
    # The same `${var.x}` appears in many strings; its tree is only read, never changed, so
    # one parse serves them all (the builder shifts positions to where each one is).
    return _expression_parser().parse(text)


def check_limits(text: str, path: str) -> None:
    """The file-size and bracket-nesting limits, checked on the text before Lark reads it."""
    if len(text.encode()) > MAX_FILE_BYTES:
        raise DiagnosticError(
            [
                Diagnostic(
                    "F0001",
                    f"file is larger than the limit of {MAX_FILE_BYTES} bytes",
                    Span(path, 1, 1, 1, 1),
                    "split it into modules",
                )
            ]
        )
    depth = 0
    for match in _BRACKET.finditer(text):
        if match.group() in ")]}":
            depth = max(0, depth - 1)
            continue
        depth += 1
        if depth > MAX_NESTING:
            line = text.count("\n", 0, match.start()) + 1
            column = match.start() - text.rfind("\n", 0, match.start())
            raise DiagnosticError(
                [
                    Diagnostic(
                        "F0002",
                        f"nesting deeper than the limit of {MAX_NESTING}",
                        Span(path, line, column, line, column),
                        "flatten the expression or split it into locals",
                    )
                ]
            )


_BRACKET = re.compile(r"[(\[{)\]}]")


def _edge_token(node: Tree, last: bool) -> lark.Token | None:
    """The first (or last) token under `node`. The grammar names every delimiter and keyword,
    so they stay in the tree and a node's span runs from its first token to its last."""
    while not isinstance(node, lark.Token):
        for child in reversed(node.children) if last else node.children:
            if child is not None:
                node = child
                break
        else:
            return None
    token: lark.Token = node
    return token


def _span_of(node: Tree, path: str, dl: int = 0, dc: int = 0) -> Span:
    first, final = _edge_token(node, last=False), _edge_token(node, last=True)
    if first is None or final is None or first.line is None or final.end_line is None:
        return Span(path, 1, 1, 1, 1)
    line, col = first.line, first.column or 1
    end_line, end_col = final.end_line, (final.end_column or 2) - 1
    # Only the first line of a shifted (interpolated) expression shares the column offset.
    return Span(
        path,
        line + dl,
        col + (dc if line == 1 else 0),
        end_line + dl,
        max(1, end_col + (dc if end_line == 1 else 0)),
    )


MAX_INT = 2**63 - 1  # what plans, state and runc's config.json hold: signed 64 bits


def _too_large(span: Span, hint: str) -> DiagnosticError:
    return DiagnosticError([Diagnostic("E0229", "this number is too large to be one", span, hint)])


class _Builder:
    """Turns a Lark tree into syntax classes; `dl`/`dc` shift positions of interpolations."""

    def __init__(self, path: str, dl: int = 0, dc: int = 0, limit: int | None = None) -> None:
        self.path = path
        self.dl = dl
        self.dc = dc
        # Syntax nodes built so far, and how many the file may have (MAX_NODES for a file).
        self.nodes = 0
        self.limit = limit

    def count(self) -> None:
        self.nodes += 1
        if self.limit is not None and self.nodes > self.limit:
            raise DiagnosticError(
                [
                    Diagnostic(
                        "F0006",
                        f"the file has more than {self.limit} syntax nodes",
                        Span(self.path, 1, 1, 1, 1),
                        "split it into several Forgefiles, or generate fewer blocks with count",
                    )
                ]
            )

    def span(self, node: Tree) -> Span:
        return _span_of(node, self.path, self.dl, self.dc)

    def _checked(self, tree: Tree) -> Expr:
        try:
            expr = self.expr(tree)
        except RecursionError:
            raise DiagnosticError([_too_deep(self.span(tree))]) from None
        check_depth(expr)
        return expr

    def body(
        self,
        tree: Tree,
        span: Span,
        type_: str = "",
        labels: tuple[str, ...] = (),
        type_span: Span | None = None,
        label_spans: tuple[Span, ...] = (),
    ) -> Block:
        attributes: list[Attribute] = []
        blocks: list[Block] = []
        self.count()
        for child in tree.children:
            if child.data == "attribute":
                name, value = child.children
                attributes.append(
                    Attribute(str(name), self._checked(value), self.span(child), self.span(name))
                )
            else:
                blocks.append(self.block(child))
        return Block(
            type_, labels, tuple(attributes), tuple(blocks), span, type_span or span, label_spans
        )

    def block(self, tree: Tree) -> Block:
        name, *labels, _open, body, _close = tree.children
        values = tuple(self.string_value(label.children[0]) for label in labels)
        spans = tuple(self.span(label) for label in labels)
        return self.body(body, self.span(tree), str(name), values, self.span(name), spans)

    def string_value(self, token: Tree) -> str:
        expr = self.string(token)
        if isinstance(expr, Literal) and isinstance(expr.value, str):
            return expr.value
        raise DiagnosticError(
            [
                Diagnostic(
                    "F0003",
                    "a block label cannot hold an interpolation",
                    self.span(token),
                    "write the label as a plain string",
                )
            ]
        )

    def expr(self, node: Tree) -> Expr:
        self.count()
        handler = _HANDLERS[node.data]
        return handler(self, node, self.span(node))

    # Handlers are named after grammar rules.

    def _string(self, node: Tree, span: Span) -> Expr:
        return self.string(node.children[0])

    def _heredoc(self, node: Tree, span: Span) -> Expr:
        token = node.children[0]
        header, *lines = str(token).split("\n")
        lines = lines[:-1]  # the closing tag
        cut = 0
        if header.startswith("<<-"):
            indents = [len(ln) - len(ln.lstrip()) for ln in lines if ln.strip()]
            cut = min(indents, default=0)
            lines = [ln[cut:] for ln in lines]
        text = "".join(ln + "\n" for ln in lines)
        # Every line lost `cut` columns of indent: give them back to interpolations' spans.
        return self.template(text, span, token.line + 1, 1 + cut, raw=True, indent=cut)

    def string(self, token: Tree) -> Expr:
        span = self.span(token)
        return self.template(
            str(token)[1:-1],
            span,
            token.line + self.dl,
            token.column + 1 + (self.dc if token.line == 1 else 0),
            raw=False,
        )

    def template(
        self, text: str, span: Span, line: int, column: int, raw: bool, indent: int = 0
    ) -> Expr:
        """Split literal text and `${...}` parts; `line:column` is where `text` starts."""
        parts: list[str | Expr] = []
        pos = 0
        for match in _INTERPOLATION.finditer(text):
            if match.group(0) == "$${":
                parts.append(text[pos : match.start()] + "${")
                pos = match.end()
                continue
            parts.append(text[pos : match.start()])
            inner = match.group(1)
            at_line, at_col = _position(text, match.start(1), line, column, indent)
            parts.append(parse_expression(inner, self.path, at_line, at_col))
            pos = match.end()
        parts.append(text[pos:])
        decoded: list[str | Expr] = []
        for part in parts:
            if isinstance(part, str):
                part = part if raw else _unescape(part, span)
                if part and decoded and isinstance(decoded[-1], str):
                    decoded[-1] += part
                elif part:
                    decoded.append(part)
            else:
                decoded.append(part)
        if not decoded:
            return Literal(span, "")
        if len(decoded) == 1 and isinstance(decoded[0], str):
            return Literal(span, decoded[0])
        return Template(span, tuple(decoded))

    def _int(self, node: Tree, span: Span) -> Expr:
        value = int(str(node.children[0]).replace("_", ""))
        if abs(value) > MAX_INT:
            raise _too_large(span, "plans and state hold integers of 64 bits at most")
        return Literal(span, value)

    def _float(self, node: Tree, span: Span) -> Expr:
        value = float(str(node.children[0]).replace("_", ""))
        if not math.isfinite(value):
            raise _too_large(span, "plans and state hold finite numbers only")
        return Literal(span, value)

    def _duration(self, node: Tree, span: Span) -> Expr:
        total = sum(
            int(n) * _DURATION_UNITS[u] for n, u in _DURATION_PART.findall(str(node.children[0]))
        )
        if total > MAX_INT:
            raise _too_large(span, "a duration is at most 292 years, 64 bits of nanoseconds")
        return Literal(span, Duration(total))

    def _size(self, node: Tree, span: Span) -> Expr:
        found = _SIZE_PART.fullmatch(str(node.children[0]))
        assert found is not None  # the SIZE terminal is this same pattern
        number, unit = found.groups()
        size = float(number) * _SIZE_UNITS[unit]
        if not size <= MAX_INT:
            raise _too_large(span, "a size is at most 8 EiB, 64 bits of bytes")
        return Literal(span, Size(int(size)))

    def _true(self, node: Tree, span: Span) -> Expr:
        return Literal(span, True)

    def _false(self, node: Tree, span: Span) -> Expr:
        return Literal(span, False)

    def _null(self, node: Tree, span: Span) -> Expr:
        return Literal(span, None)

    def _variable(self, node: Tree, span: Span) -> Expr:
        return Variable(span, str(node.children[0]))

    def _get_attr(self, node: Tree, span: Span) -> Expr:
        target, name = node.children
        return GetAttr(span, self.expr(target), str(name))

    def _index(self, node: Tree, span: Span) -> Expr:
        target, key, _close = node.children
        return Index(span, self.expr(target), self.expr(key))

    def _call(self, node: Tree, span: Span) -> Expr:
        name, *args, _close = node.children
        return Call(span, str(name), tuple(self.expr(a) for a in args if a is not None))

    def _list_expr(self, node: Tree, span: Span) -> Expr:
        _open, *items, _close = node.children
        return ListExpr(span, tuple(self.expr(c) for c in items if c is not None))

    def _map_expr(self, node: Tree, span: Span) -> Expr:
        items = []
        _open, *children, _close = node.children
        for item in children:
            if item is None:
                continue
            key, value = item.children
            if isinstance(key, lark.Token) and key.type.endswith("NAME"):
                key_expr: Expr = Literal(self.span(key), str(key))
            elif isinstance(key, lark.Token):
                key_expr = self.string(key)
            else:
                key_expr = self.expr(key)
            items.append((key_expr, self.expr(value)))
        return MapExpr(span, tuple(items))

    def _for_list(self, node: Tree, span: Span) -> Expr:
        _open, first, second, collection, body, condition, _close = node.children
        key_var, value_var = (str(first), str(second)) if second else (None, str(first))
        return ForExpr(
            span,
            key_var,
            value_var,
            self.expr(collection),
            self.expr(body),
            None,
            self.expr(condition) if condition is not None else None,
        )

    def _for_map(self, node: Tree, span: Span) -> Expr:
        _open, first, second, collection, key, body, group, condition, _close = node.children
        key_var, value_var = (str(first), str(second)) if second else (None, str(first))
        return ForExpr(
            span,
            key_var,
            value_var,
            self.expr(collection),
            self.expr(body),
            self.expr(key),
            self.expr(condition) if condition is not None else None,
            group is not None,
        )

    def _conditional(self, node: Tree, span: Span) -> Expr:
        *chain, then, otherwise = node.children
        return Conditional(span, self.chain(chain), self.expr(then), self.expr(otherwise))

    def _expr(self, node: Tree, span: Span) -> Expr:
        return self.chain(node.children)

    def chain(self, items: list[Tree]) -> Expr:
        """`a op b op c ...`, read flat by the grammar, grouped here by precedence (climbing:
        left-associative, and linear in the length of the chain)."""
        if len(items) == 1:
            return self.expr(items[0])
        operands = [(self.expr(o), self.span(o)) for o in items[0::2]]
        ops = [str(op) for op in items[1::2]]
        position = 0

        def climb(lowest: int) -> tuple[Expr, Span]:
            nonlocal position
            left, left_span = operands[position]
            compared: str | None = None
            while position < len(ops) and _PRECEDENCE[ops[position]] >= lowest:
                op = ops[position]
                precedence = _PRECEDENCE[op]
                if compared is not None and precedence == _PRECEDENCE["=="]:
                    raise DiagnosticError([_chained_comparison(left_span, compared, op)])
                position += 1
                right, right_span = climb(precedence + 1)
                left_span = Span(
                    self.path,
                    left_span.line,
                    left_span.column,
                    right_span.end_line,
                    right_span.end_column,
                )
                left = Binary(left_span, op, left, right)
                compared = op if precedence == _PRECEDENCE["=="] else None
            return left, left_span

        return climb(0)[0]

    def _paren(self, node: Tree, span: Span) -> Expr:
        return self.expr(node.children[1])

    def _not_op(self, node: Tree, span: Span) -> Expr:
        return Unary(span, "!", self.expr(node.children[1]))

    def _negate(self, node: Tree, span: Span) -> Expr:
        return Unary(span, "-", self.expr(node.children[1]))


# Grammar rule (as the Forgefile grammar names it, and as the expression grammar does) to handler.
_HANDLERS: dict[str, Callable[[_Builder, Tree, Span], Expr]] = {
    prefix + name.removeprefix("_"): handler
    for name, handler in vars(_Builder).items()
    if name.startswith("_") and not name.startswith("__") and callable(handler)
    for prefix in ("", "expressions__")
}

# Binary operators, loosest first; all are left-associative, and comparisons do not chain.
_PRECEDENCE = {
    "||": 1,
    "&&": 2,
    **dict.fromkeys(("==", "!=", "<", "<=", ">", ">="), 3),
    "+": 4,
    "-": 4,
    "*": 5,
    "/": 5,
    "%": 5,
}


def _chained_comparison(span: Span, first: str, second: str) -> Diagnostic:
    return Diagnostic(
        "F0112",
        f"comparisons do not chain: `a {first} b {second} c` compares a boolean",
        span,
        f"compare each pair and join them: `a {first} b && b {second} c`",
    )


_INTERPOLATION = re.compile(r'\$\$\{|\$\{((?:[^}"]|"(?:[^"\\]|\\.)*")*)\}')
_ESCAPE = re.compile(r"\\(u[0-9a-fA-F]{4}|.)")
_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", '"': '"', "\\": "\\"}
_DURATION_PART = re.compile(r"([0-9]+)(ns|us|ms|s|m|h)")
_DURATION_UNITS = {
    "ns": 1,
    "us": 10**3,
    "ms": 10**6,
    "s": 10**9,
    "m": 60 * 10**9,
    "h": 3600 * 10**9,
}
_SIZE_PART = re.compile(r"([0-9]+(?:\.[0-9]+)?)(KiB|MiB|GiB|TiB|KB|MB|GB|TB|B)")
_SIZE_UNITS = {
    "B": 1,
    "KB": 10**3,
    "MB": 10**6,
    "GB": 10**9,
    "TB": 10**12,
    "KiB": 1 << 10,
    "MiB": 1 << 20,
    "GiB": 1 << 30,
    "TiB": 1 << 40,
}


def _unescape(text: str, span: Span) -> str:
    def one(match: re.Match[str]) -> str:
        code = match.group(1)
        if code.startswith("u") and len(code) == 5:
            return chr(int(code[1:], 16))
        if code in _ESCAPES:
            return _ESCAPES[code]
        raise DiagnosticError(
            [
                Diagnostic(
                    "F0004",
                    f"unknown escape sequence `\\{code}` in a string",
                    span,
                    'the escapes are \\n \\t \\r \\" \\\\ and \\uXXXX',
                )
            ]
        )

    return _ESCAPE.sub(one, text)


def _position(text: str, offset: int, line: int, column: int, indent: int = 0) -> tuple[int, int]:
    """Where `offset` into `text` is in the file; `indent` columns were cut from later lines."""
    before = text[:offset]
    newlines = before.count("\n")
    if newlines:
        return line + newlines, offset - before.rfind("\n") + indent
    return line, column + offset


# -- syntax errors ------------------------------------------------------------------------------

# Characters that look like Forgefile syntax but are not, named so the user can find them.
CONFUSABLES = {
    "\u00a0": "a no-break space",
    "\u2007": "a figure space",
    "\u202f": "a narrow no-break space",
    "\u200b": "a zero-width space",
    "\u2018": "a left single quotation mark",
    "\u2019": "a right single quotation mark",
    "\u201c": "a left double quotation mark",
    "\u201d": "a right double quotation mark",
    "\u2013": "an en dash",
    "\u2014": "an em dash",
    "\u2212": "a minus sign",
    "\uff1d": "a fullwidth equals sign",
}

_TOKEN_WORDS = {
    "BANG": '"!"',
    "NEGATE": '"-"',
    "MINUS": '"-"',
    "BINARY_OP": "an operator",
    "ELLIPSIS": '"..."',
    "QMARK": '"?"',
    "INT": "a number",
    "FLOAT": "a number",
    "DURATION": "a duration",
    "SIZE": "a size",
    "HEREDOC": "a heredoc",
    "EQUAL": '"="',
    "OPEN_CURLY": '"{"',
    "CLOSE_CURLY": '"}"',
    "OPEN_SQUARE": '"["',
    "CLOSE_SQUARE": '"]"',
    "OPEN_PAREN": '"("',
    "CLOSE_PAREN": '")"',
    "LPAR": '"("',
    "COMMA": '","',
    "COLON": '":"',
    "NAME": "a name",
    "STRING": "a string",
    "$END": "the end of the file",
}


def _shift_error(exc: lark.exceptions.UnexpectedInput, line: int, column: int) -> tuple[int, int]:
    err_line = getattr(exc, "line", 1) or 1
    err_col = getattr(exc, "column", 1) or 1
    return line + err_line - 1, (column + err_col - 1) if err_line == 1 else err_col


def syntax_diagnostic(
    exc: lark.exceptions.UnexpectedInput,
    text: str,
    path: str,
    at: tuple[int, int] | None = None,
) -> Diagnostic:
    """A Lark parse failure as a diagnostic, in the words a Forgefile author would use."""
    line, column = at or (
        max(1, getattr(exc, "line", 1) or 1),
        max(1, getattr(exc, "column", 1) or 1),
    )
    unclosed = _unclosed_opener(text, exc, Span(path, line, column, line, column))
    if unclosed is not None:
        return unclosed
    if isinstance(exc, lark.exceptions.UnexpectedEOF) or (
        isinstance(exc, lark.exceptions.UnexpectedToken) and exc.token.type == "$END"
    ):
        lines = text.splitlines() or [""]
        line, column = len(lines), len(lines[-1]) + 1
        opened = _unclosed(text)
        hint = f'close the "{opened}" that is still open' if opened else "finish the block"
        return Diagnostic(
            "F0100",
            "the file ends in the middle of a block or expression",
            Span(path, line, column, line, column),
            hint,
        )
    span = Span(path, line, column, line, column)
    if isinstance(exc, lark.exceptions.UnexpectedCharacters):
        char = exc.char
        if char == '"':
            return Diagnostic(
                "F0101",
                "this string is not closed on its line",
                span,
                'add the closing `"`, or use a heredoc (<<EOT) for text with newlines',
            )
        if char == "'":
            return Diagnostic(
                "F0102", "strings use double quotes", span, "write \"...\" instead of '...'"
            )
        if char in CONFUSABLES:
            return Diagnostic(
                "F0108",
                f"{CONFUSABLES[char]} (U+{ord(char):04X}) where Forgefile syntax is expected",
                span,
                "replace it with the plain ASCII character; editors and web pages often "
                "substitute these",
            )
        if not char.isascii():
            return Diagnostic(
                "F0109",
                f"`{char}` (U+{ord(char):04X}) cannot appear outside a string",
                span,
                "names are ASCII letters, digits and _; put other text inside quotes",
            )
        return Diagnostic(
            "F0103",
            f"unexpected character `{char}`",
            span,
            "remove it, or quote the text as a string",
        )
    assert isinstance(exc, lark.exceptions.UnexpectedToken)
    token = exc.token
    span = Span(path, line, column, line, column + max(0, len(str(token)) - 1))
    wanted = {t.removeprefix("expressions__") for t in exc.expected if not t.startswith("__")}
    expected = sorted(_TOKEN_WORDS.get(t, t.lower()) for t in wanted)
    if "EQUAL" in wanted and "OPEN_CURLY" in wanted:
        return Diagnostic(
            "F0104",
            f"expected `=` or a block after the name, found `{token}`",
            span,
            "an attribute is written `name = value`; a block `name { ... }`",
        )
    if token.type == "EQUAL":
        return Diagnostic(
            "F0105",
            "unexpected `=`",
            span,
            "an attribute name must be a plain name, not a string or expression",
        )
    bracket = _open_bracket(text, line, column)
    closer = {"[": "]", "(": ")", "{": "}"}
    if bracket and {"CLOSE_SQUARE", "CLOSE_PAREN"} & wanted:
        char, at_line, at_col = bracket
        return Diagnostic(
            "F0107",
            f"expected `,` or `{closer[char]}`, found `{token}`",
            span,
            f"close the `{char}` opened at line {at_line}, column {at_col}",
        )
    shown = ", ".join(expected[:6]) + (" ..." if len(expected) > 6 else "")
    return Diagnostic("F0106", f"unexpected `{token}`", span, f"expected one of: {shown}")


def _open_bracket(text: str, line: int, column: int) -> tuple[str, int, int] | None:
    """The innermost bracket still open at `line:column`, with where it was opened."""
    stack: list[tuple[str, int, int]] = []
    pairs = {")": "(", "]": "[", "}": "{"}
    in_string = False
    for number, content in enumerate(text.splitlines()[:line], start=1):
        limit = column - 1 if number == line else len(content)
        for index, ch in enumerate(content[:limit], start=1):
            if ch == '"':
                in_string = not in_string
            elif in_string:
                continue
            elif ch == "#":
                break
            elif ch in "([{":
                stack.append((ch, number, index))
            elif ch in pairs and stack and stack[-1][0] == pairs[ch]:
                stack.pop()
    return stack[-1] if stack else None


def _unclosed_opener(
    text: str, exc: lark.exceptions.UnexpectedInput, span: Span
) -> Diagnostic | None:
    """A heredoc or comment opener that failed to lex as one because it never closes."""
    offset = getattr(exc, "pos_in_stream", None)
    token = getattr(exc, "token", None)
    if token is not None and getattr(token, "start_pos", None) is not None:
        offset = token.start_pos
    if offset is None:
        return None
    rest = text[offset : offset + 2]
    if rest == "<<":
        return Diagnostic(
            "F0110",
            "this heredoc is never closed",
            span,
            "end it with its tag alone on a line (leading spaces are fine), e.g. EOT",
        )
    if rest == "/*" or text[max(0, offset - 1) : offset + 1] == "/*":
        return Diagnostic("F0111", "this comment is never closed", span, "end it with */")
    return None


def _unclosed(text: str) -> str:
    stack: list[str] = []
    pairs = {")": "(", "]": "[", "}": "{"}
    in_string = False
    for ch in text:
        if ch == '"':
            in_string = not in_string
        elif in_string:
            continue
        elif ch in "([{":
            stack.append(ch)
        elif ch in pairs and stack and stack[-1] == pairs[ch]:
            stack.pop()
    return stack[-1] if stack else ""


def expression_from_tree(tree: Tree, path: str) -> Expr:
    """The syntax class of an expression that another grammar (policy) parsed with Lark."""
    try:
        expr = _Builder(path).expr(tree)
    except RecursionError:
        raise DiagnosticError([_too_deep(_span_of(tree, path))]) from None
    check_depth(expr)
    return expr


def string_from_token(token: Tree, path: str) -> Expr:
    """A STRING token of another grammar, decoded and with its interpolations parsed."""
    return _Builder(path).string(token)


def span_of(node: Tree, path: str) -> Span:
    return _span_of(node, path)
