"""The parser and the syntax tree: what each construct of the language parses to, with spans."""

from __future__ import annotations

from pathlib import Path

import pytest

from forgefile.diagnostics import DiagnosticError
from forgefile.evaluate import Scope, evaluate
from forgefile.syntax import (
    MAX_NESTING,
    Binary,
    Call,
    Conditional,
    Duration,
    ForExpr,
    GetAttr,
    Index,
    Literal,
    Size,
    Template,
    Variable,
    parse,
    parse_expression,
)


def value(text: str) -> object:
    return evaluate(parse_expression(text, "t"), Scope())


def test_blocks_labels_and_attributes_without_newlines() -> None:
    """`a { x = 1  y = 2 }` on one line is two attributes; nested blocks keep their order."""
    f = parse('image "web" { x = 1  y = "a"  copy { dst = "/a" }  link { target = "b" } }', "F")
    block = f.body.blocks[0]
    assert (block.type, block.labels) == ("image", ("web",))
    assert [a.name for a in block.attributes] == ["x", "y"]
    assert [b.type for b in block.blocks] == ["copy", "link"]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1m30s", Duration(90 * 10**9)),
        ("250ms", Duration(250 * 10**6)),
        ("64MiB", Size(64 << 20)),
        ("1GB", Size(10**9)),
        ("1.5KiB", Size(1536)),
        ("50_000_000", 50_000_000),
        ("0.5", 0.5),
        ("true", True),
        ("null", None),
    ],
)
def test_literals(text: str, expected: object) -> None:
    """Durations and sizes carry their units; ints may hold underscores."""
    assert value(text) == expected


def test_interpolation_and_its_escape() -> None:
    """`${}` interpolates, even holding quoted strings; `$${` is a literal `${`."""
    assert value('"a ${join(",", ["x", "y"])} $${b}"') == "a x,y ${b}"


def test_interpolation_spans_point_inside_the_string() -> None:
    """An expression inside `${}` has the span of where it is written in the file."""
    f = parse('x "y" {\n  s = "ab ${var.name}"\n}', "F")
    template = f.body.blocks[0].attributes[0].value
    assert isinstance(template, Template)
    inner = template.parts[1]
    assert isinstance(inner, GetAttr)
    assert (inner.span.line, inner.span.column) == (2, 13)


def test_heredoc_strips_common_indent() -> None:
    """`<<-TAG` removes the indentation common to its lines and interpolates."""
    f = parse('x "y" {\n  h = <<-EOT\n    one ${1 + 1}\n      two\n    EOT\n}', "F")
    h = f.body.blocks[0].attributes[0].value
    assert evaluate(h, Scope()) == "one 2\n  two\n"


def test_operators_precedence_and_conditional() -> None:
    """Arithmetic binds tighter than comparison, comparison than logic; `?:` is last."""
    assert value("1 + 2 * 3 == 7 && !false ? 10 / 2 : 0") == 5
    expr = parse_expression("a ? b : c", "t")
    assert isinstance(expr, Conditional)
    assert isinstance(parse_expression("a + b", "t"), Binary)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("10 - 4 - 3", 3),
        ("100 / 10 / 5", 2),
        ("2 + 3 * 4 - 1", 13),
        ("(2 + 3) * 4", 20),
        ("-2 * -3", 6),
        ("(1 < 2) == true", True),
        ("true || false && false", True),
        ("!true || true", True),
        ("1 + 1 == 2 ? 7 % 4 : 0", 3),
    ],
)
def test_binary_operators_group_by_precedence_from_the_left(text: str, expected: object) -> None:
    """The grammar reads an operator chain flat; the builder groups it as the docs say."""
    assert value(text) == expected


def test_a_binary_span_covers_its_operands_and_their_parentheses() -> None:
    """`(a + b) * c`: the product's span starts at the parenthesis, the sum's inside it."""
    expr = parse_expression("(a + b) * c", "t")
    assert isinstance(expr, Binary) and expr.op == "*"
    assert (expr.span.column, expr.span.end_column) == (1, 11)
    assert isinstance(expr.left, Binary)
    assert (expr.left.span.column, expr.left.span.end_column) == (2, 6)


@pytest.mark.parametrize("text", ["a < b < c", "a == b != c", "1 <= 2 >= 1"])
def test_comparisons_do_not_chain(text: str) -> None:
    """`a < b < c` would compare a boolean with c: refused, with how to write it."""
    with pytest.raises(DiagnosticError) as caught:
        parse_expression(text, "t")
    [diagnostic] = caught.value.diagnostics
    assert diagnostic.code == "F0112"
    assert diagnostic.hint is not None and "&&" in diagnostic.hint


def test_references_and_calls_parse_to_their_nodes() -> None:
    """`service.api[0].address` is attribute and index access; `f(x)` is a call."""
    expr = parse_expression("service.api[0].address", "t")
    assert isinstance(expr, GetAttr) and expr.name == "address"
    assert isinstance(expr.target, Index)
    assert isinstance(expr.target.target, GetAttr)
    assert isinstance(expr.target.target.target, Variable)
    assert isinstance(parse_expression("upper(x)", "t"), Call)


def test_for_expressions() -> None:
    """List and map comprehensions, with a filter."""
    assert value("[for x in [1, 2, 3] : x * 2 if x > 1]") == [4, 6]
    assert value("{for k, v in {a = 1, b = 2} : upper(k) => v}") == {"A": 1, "B": 2}
    assert isinstance(parse_expression("[for x in xs : x]", "t"), ForExpr)


def test_string_escapes() -> None:
    """`\\n`, `\\"`, `\\u00e9` decode; an unknown escape is a diagnostic, not a crash."""
    assert value('"a\\n\\"\\u00e9"') == 'a\n"é'
    with pytest.raises(DiagnosticError) as caught:
        value('"\\q"')
    assert caught.value.diagnostics[0].code == "F0004"


def test_nesting_limit_is_a_diagnostic() -> None:
    """Deeply nested input is refused with a diagnostic instead of exhausting the stack."""
    deep = "x = " + "[" * (MAX_NESTING + 1) + "]" * (MAX_NESTING + 1)
    with pytest.raises(DiagnosticError) as caught:
        parse(f"locals {{ {deep} }}", "F")
    assert caught.value.diagnostics[0].code == "F0002"


@pytest.mark.parametrize(
    ("text", "code"),
    [
        ('service "a" {\n  x = "open\n}', "F0101"),
        ("service 'a' {}", "F0102"),
        ('service "a" {\n  x = [1, 2\n', "F0100"),
        ('service "a" { x 1 }', "F0104"),
    ],
)
def test_syntax_errors_are_diagnostics(text: str, code: str) -> None:
    """Each kind of malformed input gets its own friendly diagnostic with a position."""
    with pytest.raises(DiagnosticError) as caught:
        parse(text, "F")
    diagnostic = caught.value.diagnostics[0]
    assert diagnostic.code == code
    assert diagnostic.span is not None and diagnostic.span.file == "F"
    assert diagnostic.hint


def test_literal_keeps_its_span() -> None:
    """A literal's span covers exactly its characters."""
    f = parse('a "b" {\n  n = 12345\n}', "F")
    lit = f.body.blocks[0].attributes[0].value
    assert isinstance(lit, Literal)
    assert (lit.span.line, lit.span.column, lit.span.end_column) == (2, 7, 11)


def test_bom_crlf_and_missing_final_newline_give_the_same_tree() -> None:
    """A UTF-8 BOM, CRLF endings and no final newline parse exactly like clean input."""
    clean = 'service "a" {\n  x = <<EOT\nline\nEOT\n  y = [1, 2]\n}\n'
    messy = "\ufeff" + clean.replace("\n", "\r\n").rstrip("\r\n")
    assert parse(messy, "F").body == parse(clean, "F").body


@pytest.mark.parametrize(
    ("char", "name"),
    [("\u00a0", "no-break space"), ("\u201c", "left double quotation mark"), ("\u2212", "minus")],
)
def test_confusable_characters_are_named(char: str, name: str) -> None:
    """A no-break space or a typographic quote is named, with its code point, not just shown."""
    with pytest.raises(DiagnosticError) as caught:
        parse(f'service "a" {{\n  x ={char}1\n}}', "F")
    diagnostic = caught.value.diagnostics[0]
    assert diagnostic.code == "F0108"
    assert name in diagnostic.message and f"U+{ord(char):04X}" in diagnostic.message
    assert diagnostic.span is not None and (diagnostic.span.line, diagnostic.span.column) == (2, 6)


def test_non_ascii_names_are_refused_with_the_rule() -> None:
    """Names are ASCII; a non-ASCII letter outside a string says so."""
    with pytest.raises(DiagnosticError) as caught:
        parse('service "a" {\n  café = 1\n}', "F")
    assert caught.value.diagnostics[0].code == "F0109"


def test_node_limit_is_a_diagnostic(monkeypatch: pytest.MonkeyPatch) -> None:
    """Input with more syntax nodes than the limit is refused with a diagnostic."""
    import forgefile.syntax as syntax

    monkeypatch.setattr(syntax, "MAX_NODES", 50)
    text = "locals {\n" + "\n".join(f"  v{i} = [{i}, {i}]" for i in range(40)) + "\n}"
    with pytest.raises(DiagnosticError) as caught:
        parse(text, "F")
    assert caught.value.diagnostics[0].code == "F0006"


def test_file_size_limit_is_a_diagnostic() -> None:
    """A Forgefile over the size limit is refused before it is parsed."""
    from forgefile.syntax import MAX_FILE_BYTES

    with pytest.raises(DiagnosticError) as caught:
        parse("#" * (MAX_FILE_BYTES + 1), "F")
    assert caught.value.diagnostics[0].code == "F0001"


def test_interpolation_spans_inside_an_indented_heredoc() -> None:
    """`<<-` strips indent, but an interpolation's span is still where it is in the file."""
    f = parse('x "y" {\n  h = <<-EOT\n      one\n      two ${var.x}\n      EOT\n}', "F")
    template = f.body.blocks[0].attributes[0].value
    assert isinstance(template, Template)
    inner = template.parts[1]
    assert isinstance(inner, GetAttr)
    assert (inner.span.line, inner.span.column) == (4, 13)


@pytest.mark.parametrize(
    ("text", "code"),
    [("locals {\n  x = <<EOT\nhello\n}\n", "F0110"), ("locals {\n  x = 1 /* open\n}\n", "F0111")],
)
def test_unclosed_heredocs_and_comments_say_so(text: str, code: str) -> None:
    """A heredoc or comment that never closes is named as such, not as a stray `<` or `*`."""
    with pytest.raises(DiagnosticError) as caught:
        parse(text, "F")
    assert caught.value.diagnostics[0].code == code


def test_the_language_reference_examples_parse() -> None:
    """Every ```forgefile example in docs/language.md is valid Forgefile syntax."""
    import re
    from pathlib import Path

    doc = (Path(__file__).resolve().parents[2] / "docs" / "language.md").read_text()
    examples = re.findall(r"```forgefile\n(.*?)```", doc, re.S)
    assert len(examples) >= 3
    for example in examples:
        parse(example, "docs/language.md")


@pytest.mark.parametrize(
    "value",
    [
        pytest.param(" + ".join(["1"] * 600), id="long-chain"),
        pytest.param("!" * 3000 + "true", id="unary-run"),
        pytest.param('"${' + "-" * 3000 + '1}"', id="in-an-interpolation"),
    ],
)
def test_an_expression_past_the_depth_limit_is_f0002_not_a_crash(value: str) -> None:
    """No bracket for the nesting limit to count, and still never a RecursionError."""
    with pytest.raises(DiagnosticError) as caught:
        parse(f"locals {{\n  x = {value}\n}}\n", "deep.forge")
    [error] = caught.value.diagnostics
    assert error.code == "F0002"
    assert error.span is not None and error.span.line == 2


def test_an_expression_at_the_depth_limit_still_evaluates() -> None:
    from forgefile.evaluate import Scope, evaluate
    from forgefile.syntax import MAX_DEPTH

    chain = " + ".join(["1"] * (MAX_DEPTH - 1))
    file = parse(f"locals {{\n  x = {chain}\n}}\n", "ok.forge")
    [block] = file.body.blocks
    [attribute] = block.attributes
    assert evaluate(attribute.value, Scope()) == MAX_DEPTH - 1


@pytest.mark.parametrize(
    "value",
    [
        pytest.param("9" * 400 + ".0", id="literal"),
        pytest.param("9" * 300 + ".0 * " + "9" * 300 + ".0", id="product"),
        pytest.param("64MiB * " + "9" * 300 + ".0 * " + "9" * 300 + ".0", id="a-size"),
        pytest.param(str(2**63), id="an-integer-past-64-bits"),
        pytest.param("4294967296 * 4294967296", id="an-integer-product"),
        pytest.param("99999999999TiB", id="a-size-literal"),
        pytest.param("9999999999999h", id="a-duration-literal"),
    ],
)
def test_a_number_past_the_largest_float_is_e0229(tmp_path: Path, value: str) -> None:
    """Plans hold finite numbers only: infinity never reaches one, nor an OverflowError a user."""
    from forgefile.lower import load

    (tmp_path / "Forgefile").write_text(
        f'locals {{\n  x = {value}\n}}\noutput "o" {{\n  value = local.x\n}}\n'
    )
    with pytest.raises(DiagnosticError) as caught:
        load(tmp_path / "Forgefile", {}, environ={})
    assert [d.code for d in caught.value.diagnostics] == ["E0229"]
