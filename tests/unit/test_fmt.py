"""The formatter: the canonical layout of a Forgefile, keeping its meaning and every comment."""

from __future__ import annotations

import dataclasses
from functools import cache
from pathlib import Path

import lark
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from forgefile.diagnostics import DiagnosticError
from forgefile.fmt import format_source
from forgefile.syntax import normalise, parse

HELLO = Path(__file__).resolve().parents[2] / "examples" / "hello" / "Forgefile"

# Bad indentation, `=` aligned wrongly, comments of every kind everywhere, runs of blank lines,
# one-line blocks, a list too long for its line; written with a BOM and CRLF line endings below.
MESSY = r"""

# Hello, messy.
variable "title" { type = string   default="Hi \"there\"" }   # one-line block
image "site" {
      from=image.busybox   // the parent
    /* why it is copied */
  copy { dst = "/srv/index.html"
     content = <<-HTML
      <h1>${var.title}</h1>

      HTML
  }



  link { target = "busybox"  links = ["/bin/sh",
    # the shell first
    "/bin/ls" # then ls
  ] }
}
volume "data" {   }
service "web" {
  image =    image.site
     command = [ "httpd" , "-f", ]
       # a comment line ends the aligned run
  env = { HOME : "/root"  USER = "www" }


  networks = [network.front]   # only one
  x = (1+2)*-3 ? !true : max( 1 ,2 )
  y = var.a +   # joined
     var.b
args = ["--title", "a fairly long title that will not fit on its line at all", "--subtitle", "more"]
  resources { memory = 32MiB
  pids = 32 }
  /* before the end */
}
output "url" { value = "http://${service.web.address}/" }
top_a = 1
longer_b = [/* none yet */ 2]
# the end
"""

CANONICAL = r"""# Hello, messy.
variable "title" {
  type    = string
  default = "Hi \"there\""
}  # one-line block

image "site" {
  from = image.busybox  // the parent
  /* why it is copied */
  copy {
    dst = "/srv/index.html"
    content = <<-HTML
      <h1>${var.title}</h1>

      HTML
  }

  link {
    target = "busybox"
    links = [
      "/bin/sh",
      # the shell first
      "/bin/ls",  # then ls
    ]
  }
}

volume "data" {}

service "web" {
  image   = image.site
  command = ["httpd", "-f"]
  # a comment line ends the aligned run
  env = { HOME = "/root", USER = "www" }

  networks = [network.front]  # only one
  x        = (1 + 2) * -3 ? !true : max(1, 2)
  y        = var.a + var.b  # joined
  args = [
    "--title",
    "a fairly long title that will not fit on its line at all",
    "--subtitle",
    "more",
  ]
  resources {
    memory = 32MiB
    pids   = 32
  }
  /* before the end */
}

output "url" {
  value = "http://${service.web.address}/"
}

top_a    = 1
longer_b = [/* none yet */ 2]
# the end
"""

# Where examples/hello/Forgefile is not canonical; each pair is (what it has, what fmt writes).
HELLO_CHANGES = [
    (
        '  copy { src = "busybox"  dst = "/bin/busybox"  mode = "0755" }\n',
        '  copy {\n    src  = "busybox"\n    dst  = "/bin/busybox"\n    mode = "0755"\n  }\n',
    ),
    ('    dst     = "/srv/www/index.html"\n', '    dst = "/srv/www/index.html"\n'),
    (
        "  image         = image.busybox\n"
        '  command       = ["sh", "-c", "echo \'hello from job.hello\'; echo Forge > '
        '/data/name.txt; exit ${var.job_exit_code}"]\n',
        "  image = image.busybox\n"
        "  command = [\n"
        '    "sh",\n'
        '    "-c",\n'
        "    \"echo 'hello from job.hello'; echo Forge > /data/name.txt; "
        'exit ${var.job_exit_code}",\n'
        "  ]\n",
    ),
]

SPAN_FIELDS = frozenset({"span", "name_span", "type_span", "label_spans"})


def shape(node: object) -> object:
    """A syntax node as nested tuples without spans, so two layouts of one file compare equal."""
    if dataclasses.is_dataclass(node) and not isinstance(node, type):
        fields = (f.name for f in dataclasses.fields(node) if f.name not in SPAN_FIELDS)
        return (type(node).__name__, *((name, shape(getattr(node, name))) for name in fields))
    if isinstance(node, tuple):
        return tuple(shape(n) for n in node)
    return node


def meaning(text: str) -> object:
    return shape(parse(text, "F").body)


@cache
def _lexer() -> lark.Lark:
    return lark.Lark.open_from_package("grammar", "forgefile.lark", parser="lalr")


def comments(text: str) -> list[str]:
    """The comments of a Forgefile, lexed apart from the formatter; `#` and `//` ones rstripped."""
    found = [str(t) for t in _lexer().lex(normalise(text), dont_ignore=True) if t.type == "COMMENT"]
    return sorted(c if c.startswith("/*") else c.rstrip() for c in found)


# -- generated Forgefiles -----------------------------------------------------------------------

LETTERS = "abcdefghijklmnopqrstuvwxyz"
KEYWORDS = frozenset({"for", "in", "if", "true", "false", "null"})
names = st.builds(
    lambda head, tail: head + tail,
    st.sampled_from(LETTERS),
    st.text(LETTERS + "0123456789_", max_size=11),
).filter(lambda n: n not in KEYWORDS)
words = st.text(LETTERS + " -", max_size=8).map(lambda w: f"x{w}x")
strings = st.one_of(
    st.text(LETTERS + " /.#*", max_size=40).map(lambda s: f'"{s}"'),
    st.sampled_from(['"a \\"quoted\\" word"', '"tab\\there"', '"${var.x}-y"', '"$${not}"']),
)
HEREDOCS = ["<<EOT\n  some text\n\n  ${var.x}\nEOT", "<<-EOT\n    indented\n      more\n    EOT"]
LITERALS = ["0", "42", "1_000", "0.5", "1m30s", "250ms", "64MiB", "1.5GiB", "true", "null"]


def joined(items: list[list[str]], separator: str) -> list[str]:
    out: list[str] = []
    for i, item in enumerate(items):
        out += [separator, *item] if i else item
    return out


def wrap(tokens: list[str]) -> list[str]:
    """An operand in parentheses unless it is one token, so that any nesting parses."""
    return tokens if len(tokens) == 1 else ["(", *tokens, ")"]


def parenthesised(tokens: list[str]) -> list[str]:
    return ["(", *tokens, ")"]


Tokens = st.SearchStrategy[list[str]]


@st.composite
def sequences(draw: st.DrawFn, inner: Tokens) -> list[str]:
    """A list or a call's arguments, with or without a trailing comma."""
    items = draw(st.lists(inner, max_size=4))
    trailing = [","] if draw(st.booleans()) and items else []
    open_, close = draw(st.sampled_from([("[", "]"), (draw(names), ")")]))
    opening = ["["] if open_ == "[" else [open_, "("]
    return [*opening, *joined(items, ","), *trailing, close]


@st.composite
def maps(draw: st.DrawFn, inner: Tokens) -> list[str]:
    out = ["{"]
    for i in range(draw(st.integers(0, 3))):
        key = draw(
            st.one_of(
                names.map(lambda n: [n]), strings.map(lambda s: [s]), inner.map(parenthesised)
            )
        )
        # Without a comma, `b (k) = 1` would read as a call `b(k)`.
        if i and (key[0] == "(" or draw(st.booleans())):
            out.append(",")
        out += [*key, draw(st.sampled_from(["=", ":"])), *draw(inner)]
    return [*out, "}"]


@st.composite
def compounds(draw: st.DrawFn, inner: Tokens) -> list[str]:
    """Operators, conditionals, indexing and `for` expressions over smaller expressions."""
    a, b, c = wrap(draw(inner)), wrap(draw(inner)), wrap(draw(inner))
    k, v = draw(names), draw(names)
    return draw(
        st.sampled_from(
            [
                [*a, draw(st.sampled_from(["+", "-", "*", "/", "%", "==", "<=", "&&", "||"])), *b],
                [draw(st.sampled_from(["!", "-"])), *a],
                [*a, "?", *b, ":", *c],
                [*a, "[", *b, "]"],
                ["[", "for", k, ",", v, "in", *a, ":", *b, "if", *c, "]"],
                ["{", "for", k, "in", *a, ":", *b, "=>", *c, "}"],
            ]
        )
    )


atoms = st.one_of(
    st.sampled_from(LITERALS).map(lambda t: [t]),
    strings.map(lambda s: [s]),
    st.lists(names, min_size=1, max_size=3).map(lambda ns: joined([[n] for n in ns], ".")),
    st.sampled_from(HEREDOCS).map(lambda h: [h]),
)
expressions = st.recursive(
    atoms,
    lambda inner: st.one_of(sequences(inner), maps(inner), compounds(inner)),
    max_leaves=8,
)


def bodies(depth: int) -> Tokens:
    attribute = st.tuples(names, expressions).map(lambda a: [a[0], "=", *a[1]])
    items = attribute if depth == 0 else st.one_of(attribute, blocks(depth - 1))
    return st.lists(items, max_size=4).map(lambda xs: [t for x in xs for t in x])


def blocks(depth: int) -> Tokens:
    labels = st.lists(st.text(LETTERS, min_size=1, max_size=8).map(lambda s: f'"{s}"'), max_size=2)
    return st.tuples(names, labels, bodies(depth)).map(lambda b: [b[0], *b[1], "{", *b[2], "}"])


@st.composite
def gaps(draw: st.DrawFn) -> str:
    """What may sit between two tokens: whitespace, blank lines, comments of each kind."""
    text = draw(words)
    return draw(
        st.sampled_from(
            [
                *[" ", " ", " ", "  ", "\n", "\n", "\n\n", "\n\n\n\t ", "\t"],
                *[f" # {text}\n", f"\n// {text}\n", f" /* {text} */ ", f"\n/* {text} */\n"],
                *[f"\n# {text}\n\n# {text}\n", f" /* {text}\n   {text} */\n"],
            ]
        )
    )


@st.composite
def forgefiles(draw: st.DrawFn) -> str:
    """A valid Forgefile laid out at random, with comments between any two tokens."""
    tokens = draw(bodies(2))
    text = draw(st.sampled_from(["", "\ufeff", "\n\n", "# head\n\n"]))
    for i, token in enumerate(tokens):
        text += (draw(gaps()) if i else "") + token
    text += draw(st.sampled_from(["", "\n", "\n# tail\n", " // end", "\n\n/* end */"]))
    return text.replace("\n", "\r\n") if draw(st.booleans()) else text


generated = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# -- tests --------------------------------------------------------------------------------------


def test_golden_messy_file() -> None:
    """A messy file (BOM, CRLF, bad indents and alignment, comments everywhere) gets one layout."""
    messy = ("\ufeff" + MESSY).replace("\n", "\r\n")
    assert format_source(messy) == CANONICAL


def test_canonical_text_is_left_alone() -> None:
    """The canonical form of the golden file formats to itself, byte for byte."""
    assert format_source(CANONICAL) == CANONICAL


def test_hello_example_differs_only_where_known() -> None:
    """examples/hello formats to itself but for an expanded one-line block, an over-long list and
    the `=` of an attribute beside a heredoc."""
    text = HELLO.read_text()
    expected = text
    for before, after in HELLO_CHANGES:
        expected = expected.replace(before, after)
    formatted = format_source(text, str(HELLO))
    assert formatted == expected
    assert format_source(formatted) == formatted


def test_long_one_line_list_expands_and_blank_line_splits_alignment() -> None:
    """A list past column 100 takes one item a line; a blank line starts a new aligned run."""
    long = ", ".join(f'"item-{n:02}"' for n in range(9))
    text = f"a = 1\nbbb = [{long}]\n\ncc = 2\nd = 3\n"
    items = "".join(f'  "item-{n:02}",\n' for n in range(9))
    assert format_source(text) == f"a = 1\nbbb = [\n{items}]\n\ncc = 2\nd  = 3\n"


def test_padding_never_pushes_a_one_line_list_past_100_columns() -> None:
    """An attribute whose one-line list would overflow once padded starts a new aligned run."""
    text = 'longname = 1\na = ["' + "x" * 90 + '"]\nb = 2\n'
    assert format_source(text) == text
    assert format_source(text.replace("x" * 90, "x" * 80)).startswith("longname = 1\na        = [")


def test_comment_of_a_joined_line_moves_above_it() -> None:
    """Two end-of-line comments that land on one joined line keep apart: the second moves up."""
    text = 'x "y" {\n  a = 1 + # one\n    2 # two\n}\n'
    assert format_source(text) == 'x "y" {\n  # two\n  a = 1 + 2  # one\n}\n'


def test_block_comment_before_a_closing_bracket_ends_the_line() -> None:
    """A `/* */` just before `}` or `]` moves to the end of the line instead of opening it."""
    text = 'volume "x" { /* none yet */ }\nb = [1, 2 /* two */]\n'
    expected = 'volume "x" {  /* none yet */\n}\n\nb = [1, 2]  /* two */\n'
    assert format_source(text) == expected


def test_empty_file_and_comment_only_file() -> None:
    """An empty file stays empty; a file of comments keeps them, ending in one newline."""
    assert format_source("") == ""
    assert format_source("\n\n# only\n\n\n// this\n\n") == "# only\n\n// this\n"


def test_syntax_error_raises_diagnostic_with_position() -> None:
    """A file that does not parse raises DiagnosticError pointing at the bad token."""
    with pytest.raises(DiagnosticError) as caught:
        format_source('service "web" {\r\n  image = = 1\r\n}\r\n', "Forgefile")
    span = caught.value.diagnostics[0].span
    assert span is not None
    assert (span.file, span.line, span.column) == ("Forgefile", 2, 11)


def test_unclosed_block_raises_diagnostic() -> None:
    """A block left open is reported at the end of the file, not formatted."""
    with pytest.raises(DiagnosticError) as caught:
        format_source('service "web" {\n  image = image.web\n')
    assert caught.value.diagnostics[0].code == "F0100"


def test_shape_tells_different_files_apart() -> None:
    """The span-free dump the meaning tests compare still sees a changed value or name."""
    assert meaning("a = 1") == meaning("\n\n   a   =   1  # same")
    assert meaning("a = 1") != meaning("a = 2")
    assert meaning("a = [1]") != meaning("b = [1]")


@pytest.mark.parametrize("name", ["messy", "hello"])
def test_meaning_and_comments_kept_on_known_files(name: str) -> None:
    """Formatting the golden file or the example keeps its syntax tree and all its comments."""
    text = ("\ufeff" + MESSY).replace("\n", "\r\n") if name == "messy" else HELLO.read_text()
    formatted = format_source(text)
    assert meaning(formatted) == meaning(text)
    assert comments(formatted) == comments(text)
    assert len(comments(text)) > 3


@generated
@given(forgefiles())
def test_formatting_is_idempotent(text: str) -> None:
    """Formatting a formatted file changes nothing."""
    once = format_source(text)
    assert format_source(once) == once


@generated
@given(forgefiles())
def test_formatting_preserves_meaning(text: str) -> None:
    """The formatted file parses to the same tree as the original, spans aside."""
    assert meaning(format_source(text)) == meaning(text)


@generated
@given(forgefiles())
def test_every_comment_survives(text: str) -> None:
    """Every comment of the input is in the output, as many times and with the same text."""
    assert comments(format_source(text)) == comments(text)
