"""The canonical layout of a Forgefile, with its comments kept: what `forge fmt` writes.

Formatting runs in three steps, data flowing one way:

1. `syntax.parse` decides whether the file is valid and says where it is not. A second parser over
   the same grammar keeps every token, so parentheses and the exact text of each string, heredoc
   and number survive, and collects the comments that the grammar ignores.
2. `_Layout` walks that tree and lays it out as lines of pieces, leaving comments aside.
3. `_weave` hangs each comment on the line of the token beside it, aligns the `=` of attributes
   now that it knows which lines comments separate, and writes the text.

The layout: two-space indentation; one attribute a line; the `=` of consecutive single-line
attributes aligned (a nested block, a blank line, a comment line or a multi-line attribute ends the
run); one blank line between top-level blocks and at most one wherever the author left some; every
non-empty block body expanded. A list, a map or a call's arguments stay on one line when they were
on one line and still end within `WIDTH` columns, else they take one item a line, each with a
trailing comma. Whether they fit is judged before padding, and an attribute that padding would
push past `WIDTH` starts a new run instead: so padding never changes the lines, and formatting a
second time changes nothing. Map items are written `key = value` (a `:` becomes `=`), one-line maps
`{ a = 1 }`, and `for` expressions on one line.

A comment stays on its line. One that had a line to itself goes before the token that followed it,
at that line's indent; one after code goes at the end of the line holding the token before it, two
spaces out; a `/* */` between two tokens of a line stays between them. A comment whose line is
joined to another (`a +  # why` above `b`) moves above the joined line rather than being lost.
"""

from __future__ import annotations

import bisect
import contextvars
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache
from typing import Any, NamedTuple

import lark

import grammar

from .diagnostics import DiagnosticError
from .syntax import normalise, parse, syntax_diagnostic

# Lark's trees, with None where an optional part is missing, as the layout walks them.
Node = Any

WIDTH = 100
INDENT = 2
_OPENERS = frozenset("{[(")
_CLOSERS = frozenset("}])")


def format_source(text: str, path: str = "<input>") -> str:
    """The canonical form of a Forgefile; raises `DiagnosticError` if it does not parse."""
    text = normalise(text)
    parse(text, path)
    tree, comments = _parse_keeping_comments(text, path)
    source = _Source.of(text, tree, comments)
    layout = _Layout(source)
    layout.body(tree.children[0], 0, top=True)
    return _weave(layout.lines, source)


# -- parsing, comments kept ---------------------------------------------------------------------


class _At(NamedTuple):
    """Where a token or comment sits: offsets, and lines counted from 1."""

    start: int
    end: int
    line: int
    end_line: int


def _at(token: lark.Token) -> _At:
    # Lark fills every position of a token it lexed; the fallbacks only satisfy the types.
    return _At(token.start_pos or 0, token.end_pos or 0, token.line or 1, token.end_line or 1)


@dataclass(frozen=True)
class _Comment:
    text: str
    at: _At

    @property
    def fits_inline(self) -> bool:
        """A one-line `/* */` can sit between two tokens; `#` and `//` run to the line's end."""
        return self.text.startswith("/*") and "\n" not in self.text


# The comments of the parse in progress: the lexer callback is fixed when the (cached) parser is
# built, so each parse hands it a fresh list through this variable.
_comment_sink: contextvars.ContextVar[list[lark.Token]] = contextvars.ContextVar("_comment_sink")


def _collect_comment(token: lark.Token) -> lark.Token:
    _comment_sink.get().append(token)
    return token


@cache
def _parser() -> lark.Lark:
    return grammar.parser(
        "forgefile.lark",
        propagate_positions=True,
        keep_all_tokens=True,
        lexer_callbacks={"COMMENT": _collect_comment},
    )


def _parse_keeping_comments(text: str, path: str) -> tuple[Node, list[_Comment]]:
    found: list[lark.Token] = []
    reset = _comment_sink.set(found)
    try:
        tree = _parser().parse(text)
    except lark.exceptions.UnexpectedInput as exc:
        raise DiagnosticError([syntax_diagnostic(exc, text, path)]) from None
    finally:
        _comment_sink.reset(reset)
    # Trailing spaces after a `#` or `//` comment are not part of what it says.
    comments = [
        _Comment(str(t) if str(t).startswith("/*") else str(t).rstrip(), _at(t)) for t in found
    ]
    return tree, comments


@dataclass(frozen=True)
class _Source:
    """What the layout and the weaving ask of the original text."""

    tokens: list[lark.Token]
    token_starts: list[int]
    comments: list[_Comment]
    comment_starts: list[int]
    blank_lines: list[int]

    @classmethod
    def of(cls, text: str, tree: Node, comments: list[_Comment]) -> _Source:
        tokens = sorted(tree.scan_values(lambda v: isinstance(v, lark.Token)), key=_at)
        spans = [_at(t) for t in tokens] + [c.at for c in comments]
        blank = {n for n, content in enumerate(text.split("\n"), start=1) if not content.strip()}
        for at in spans:
            # An empty line inside a heredoc or a block comment is its text, not a blank line.
            blank.difference_update(range(at.line + 1, at.end_line))
        return cls(
            tokens,
            [_at(t).start for t in tokens],
            comments,
            [c.at.start for c in comments],
            sorted(blank),
        )

    def blank_between(self, after: int, before: int) -> bool:
        """Whether an empty line lies strictly between lines `after` and `before`."""
        i = bisect.bisect_right(self.blank_lines, after)
        return i < len(self.blank_lines) and self.blank_lines[i] < before

    def comments_within(self, start: int, end: int) -> bool:
        i = bisect.bisect_left(self.comment_starts, start)
        return i < len(self.comment_starts) and self.comment_starts[i] < end

    def code_before(self, comment: _Comment) -> bool:
        """Whether a token ends on the line where the comment starts, before it."""
        i = bisect.bisect_left(self.token_starts, comment.at.start)
        return i > 0 and _at(self.tokens[i - 1]).end_line == comment.at.line


# -- layout -------------------------------------------------------------------------------------


@dataclass
class _Piece:
    text: str
    at: _At | None  # None for what the layout adds: spaces, padding, commas
    inline: list[str] = field(default_factory=list)  # `/* */` comments written just before it
    ends_flat: bool = False  # closes a sequence kept on one line, which must end within WIDTH


@dataclass
class _Line:
    indent: int
    closing: bool  # holds a closing bracket, so comments before it belong one level in
    apart: bool  # a blank line must come before it and its comments: top-level blocks
    pieces: list[_Piece] = field(default_factory=list)
    name_width: int | None = None  # set on an attribute that stayed on one line: it may align
    before: list[tuple[_Comment, bool]] = field(default_factory=list)  # (comment, moved here)
    trailing: list[_Comment] = field(default_factory=list)

    @property
    def room(self) -> int:
        """How far padding may push this line before a one-line sequence on it passes WIDTH."""
        column, ends = self.indent, [WIDTH * WIDTH]  # no sequence: room to spare
        for piece in self.pieces:
            column += len(piece.text)
            if piece.ends_flat:
                ends.append(WIDTH - column)
        return min(ends)


class _Layout:
    """Lays a tree out as lines of pieces; handlers are named after the grammar's rules."""

    def __init__(self, source: _Source) -> None:
        self.source = source
        self.lines: list[_Line] = []

    # Lines and pieces.

    def newline(self, indent: int, closing: bool = False, apart: bool = False) -> None:
        self.lines.append(_Line(indent, closing, apart))

    def token(self, token: lark.Token) -> None:
        self.lines[-1].pieces.append(_Piece(str(token), _at(token)))

    def text(self, text: str) -> None:
        self.lines[-1].pieces.append(_Piece(text, None))

    def part(self, node: Node) -> None:
        if isinstance(node, lark.Token):
            self.token(node)
        else:
            self.expr(node)

    @property
    def indent(self) -> int:
        return self.lines[-1].indent

    @property
    def column(self) -> int:
        line = self.lines[-1]
        *above, last = "".join(p.text for p in line.pieces).split("\n")
        return len(last) + (0 if above else line.indent)

    def mark(self) -> tuple[int, int]:
        return len(self.lines), len(self.lines[-1].pieces) if self.lines else 0

    def rollback(self, mark: tuple[int, int]) -> None:
        lines, pieces = mark
        del self.lines[lines:]
        if self.lines:
            del self.lines[-1].pieces[pieces:]

    def stayed_on_one_line(self, mark: tuple[int, int]) -> bool:
        lines, pieces = mark
        added = self.lines[-1].pieces[pieces:]
        return len(self.lines) == lines and not any("\n" in p.text for p in added)

    # Structure.

    def body(self, tree: Node, indent: int, top: bool = False) -> None:
        items = tree.children
        for i, item in enumerate(items):
            apart = top and i > 0 and "block" in (item.data, items[i - 1].data)
            self.newline(indent, apart=apart)
            if item.data == "attribute":
                self.attribute(item)
            else:
                self.block(item, indent)

    def attribute(self, tree: Node) -> None:
        name, equals, value = tree.children
        line, mark = self.lines[-1], self.mark()
        self.token(name)
        self.text(" ")  # the padding that `_align` widens
        self.token(equals)
        self.text(" ")
        self.expr(value)
        if self.stayed_on_one_line(mark):
            line.name_width = len(name)

    def block(self, tree: Node, indent: int) -> None:
        name, *labels, open_, body, close = tree.children
        self.token(name)
        for label in labels:
            self.text(" ")
            self.token(label.children[0])
        self.text(" ")
        self.token(open_)
        if body.children or self.source.comments_within(_at(open_).end, _at(close).start):
            self.body(body, indent + INDENT)
            self.newline(indent, closing=True)
        self.token(close)

    # Expressions.

    def expr(self, tree: Node) -> None:
        handler: Callable[[Node], None] = getattr(
            self, "_" + tree.data.removeprefix("expressions__")
        )
        handler(tree)

    def _atom(self, tree: Node) -> None:
        self.token(tree.children[0])

    _string = _heredoc = _duration = _size = _float = _int = _atom
    _true = _false = _null = _variable = _atom

    def _tight(self, tree: Node) -> None:
        """`a.b`, `a[0]`, `(a)`, `!a`, `-a`: the tokens with nothing between them."""
        for child in tree.children:
            self.part(child)

    _get_attr = _index = _paren = _not_op = _negate = _tight

    def _spaced(self, tree: Node) -> None:
        """`a + b`, `a && b`, `a ? b : c`: one space around each operator."""
        for i, child in enumerate(tree.children):
            if i:
                self.text(" ")
            self.part(child)

    _expr = _conditional = _spaced

    def _for_list(self, tree: Node) -> None:
        """`[for k, v in xs : v if k]` and `{for k in m : k => 1}`, always on one line."""
        open_, *words, close = (c for c in tree.children if c is not None)
        self.token(open_)
        for i, word in enumerate(words):
            if i and not (isinstance(word, lark.Token) and word in (",", "...")):
                self.text(" ")
            self.part(word)
        self.token(close)

    _for_map = _for_list

    def _call(self, tree: Node) -> None:
        name, open_, *args, close = tree.children
        self.token(name)
        self.sequence(open_, _items(args), close, self.expr, spaced=False)

    def _list_expr(self, tree: Node) -> None:
        open_, *items, close = tree.children
        self.sequence(open_, _items(items), close, self.expr, spaced=False)

    def _map_expr(self, tree: Node) -> None:
        open_, *items, close = tree.children
        self.sequence(open_, _items(items), close, self.map_item, spaced=True)

    def map_item(self, tree: Node) -> None:
        *key, _separator, value = tree.children
        for part in key:
            self.part(part)
        self.text(" = ")
        self.expr(value)

    def sequence(
        self,
        open_: lark.Token,
        items: list[Node],
        close: lark.Token,
        item: Callable[[Node], None],
        spaced: bool,
    ) -> None:
        """Items between brackets: on one line if they were and still fit, else one a line."""
        indent = self.indent
        self.token(open_)
        if not items and not self.source.comments_within(_at(open_).end, _at(close).start):
            self.token(close)
            return
        if _at(open_).line == _at(close).line:
            mark = self.mark()
            self.flat(items, item, spaced)
            self.token(close)
            if self.stayed_on_one_line(mark) and self.column <= WIDTH:
                self.lines[-1].pieces[-1].ends_flat = True
                return
            self.rollback(mark)
        for node in items:
            self.newline(indent + INDENT)
            item(node)
            self.text(",")
        self.newline(indent, closing=True)
        self.token(close)

    def flat(self, items: list[Node], item: Callable[[Node], None], spaced: bool) -> None:
        pad = " " if spaced and items else ""
        self.text(pad)
        for i, node in enumerate(items):
            if i:
                self.text(", ")
            item(node)
        self.text(pad)


def _items(children: list[Node]) -> list[Node]:
    """The items of a bracketed sequence, without its commas and empty placeholders."""
    return [c for c in children if c is not None and not isinstance(c, lark.Token)]


# -- comments and text --------------------------------------------------------------------------


def _weave(lines: list[_Line], source: _Source) -> str:
    """Hang each comment on the line of the token beside it, align the `=`, write the text."""
    at_end = _hang(lines, source)
    for run in _runs(lines, source):
        _align(run)
    writer = _Writer(source)
    for line in lines:
        writer.line(line)
    for comment in at_end:
        writer.emit(comment.text, comment.at.line, comment.at.end_line, writer.gap(comment.at.line))
    return "".join(text + "\n" for text in writer.out)


def _hang(lines: list[_Line], source: _Source) -> list[_Comment]:
    """Attach each comment to a line or a piece; return those that come after every token."""
    printed = sorted(
        (piece.at.start, n, k)
        for n, line in enumerate(lines)
        for k, piece in enumerate(line.pieces)
        if piece.at is not None
    )
    starts = [start for start, _, _ in printed]
    at_end: list[_Comment] = []
    for comment in source.comments:
        before = bisect.bisect_left(starts, comment.at.start)
        after = bisect.bisect_left(starts, comment.at.end)
        _, n, k = printed[after] if after < len(printed) else (0, -1, -1)
        following = lines[n].pieces[k] if n >= 0 else None
        if following is not None and _stays_inline(comment, following):
            following.inline.append(comment.text)
        elif before > 0 and source.code_before(comment):
            lines[printed[before - 1][1]].trailing.append(comment)
        elif following is None:
            at_end.append(comment)
        else:
            lines[n].before.append((comment, k > 0))
    for line in lines:
        line.trailing, moved = _split_trailing(line.trailing)
        line.before += [(c, True) for c in moved]
    return at_end


def _stays_inline(comment: _Comment, following: _Piece) -> bool:
    """A one-line `/* */` followed on its line by a written token stays just before that token.

    Before a closing bracket it ends the line instead, so `{ /* none */ }` is not an empty block.
    """
    return (
        comment.fits_inline
        and following.at is not None
        and following.at.line == comment.at.line
        and following.text not in _CLOSERS
    )


def _runs(lines: list[_Line], source: _Source) -> list[list[_Line]]:
    """Consecutive single-line attributes with no blank line or comment line between them."""
    runs: list[list[_Line]] = []
    previous: _Line | None = None
    for line in lines:
        if line.name_width is None or line.pieces[0].inline:
            previous = None
            continue
        if (
            previous is not None
            and not line.before
            and not source.blank_between(_last_line(previous), _first_line(line))
        ):
            runs[-1].append(line)
        else:
            runs.append([line])
        previous = line
    return runs


def _align(run: list[_Line]) -> None:
    """Pad the names of a run so that their `=` line up, starting a new run where padding would
    push a one-line sequence past WIDTH."""
    start = 0
    while start < len(run):
        width = _name_width(run[start])
        limit = width + run[start].room
        end = start + 1
        while end < len(run):
            limit = min(limit, _name_width(run[end]) + run[end].room)
            if max(width, _name_width(run[end])) > limit:
                break
            width = max(width, _name_width(run[end]))
            end += 1
        for line in run[start:end]:
            line.pieces[1].text = " " * (width - _name_width(line) + 1)
        start = end


def _name_width(line: _Line) -> int:
    return line.name_width or 0


class _Writer:
    """Writes lines and comments, keeping one blank line where the author left any."""

    def __init__(self, source: _Source) -> None:
        self.source = source
        self.out: list[str] = []
        self.last_line = 0  # the source line the text written so far ends on
        self.after_opener = True  # no blank line at the start of a file or a body

    def gap(self, line: int) -> bool:
        return self.source.blank_between(self.last_line, line)

    def emit(self, text: str, first: int, last: int, blank: bool) -> None:
        if blank and self.out and not self.after_opener:
            self.out.append("")
        self.out.append(text)
        self.last_line = last
        self.after_opener = False

    def line(self, line: _Line) -> None:
        first = _first_line(line)
        blank = line.apart
        indent = " " * (line.indent + (INDENT if line.closing else 0))
        for comment, was_moved in line.before:
            # A comment moved here from inside the line counts as written where the line starts.
            start, end = (first, first) if was_moved else (comment.at.line, comment.at.end_line)
            self.emit(indent + comment.text, start, end, blank or self.gap(start))
            blank = False
        text = _render(line)
        self.emit(text, first, _last_line(line), blank or (not line.closing and self.gap(first)))
        self.after_opener = line.pieces[-1].text in _OPENERS


def _split_trailing(comments: list[_Comment]) -> tuple[list[_Comment], list[_Comment]]:
    """The comments that can share the end of a line, and those that must move above it."""
    for i, comment in enumerate(comments):
        if not comment.fits_inline:
            return comments[: i + 1], comments[i + 1 :]
    return comments, []


def _render(line: _Line) -> str:
    text = ""
    for piece in line.pieces:
        for comment in piece.inline:
            if text and text[-1] not in _OPENERS and not text.endswith(" "):
                text += " "
            text += comment + " "
        text += piece.text
    if line.trailing:
        text += "  " + " ".join(c.text for c in line.trailing)
    return (" " * line.indent + text).rstrip()


def _first_line(line: _Line) -> int:
    return min(p.at.line for p in line.pieces if p.at is not None)


def _last_line(line: _Line) -> int:
    ends = [p.at.end_line for p in line.pieces if p.at is not None]
    return max(ends + [c.at.end_line for c in line.trailing])
