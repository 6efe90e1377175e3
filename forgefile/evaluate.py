"""Evaluate expressions to values, with diagnostics that point at the sub-expression at fault."""

from __future__ import annotations

import dataclasses
import math
import operator
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from stdlib import functions

from .diagnostics import Diagnostic, DiagnosticError, Span, suggest
from .schema import RESOURCE_KINDS
from .syntax import (
    MAX_INT,
    Binary,
    Call,
    Conditional,
    Duration,
    Expr,
    ForExpr,
    GetAttr,
    Index,
    ListExpr,
    Literal,
    MapExpr,
    Size,
    Template,
    Unary,
    Variable,
)
from .values import AttributeRef, ResourceRef, a_type


class EvalError(DiagnosticError):
    def __init__(self, code: str, message: str, span: Span, hint: str = "") -> None:
        super().__init__([Diagnostic(code, message, span, hint)])


@dataclass
class Scope:
    """What names mean while evaluating: variables, locals, resources and loop variables."""

    variables: Mapping[str, Any] = field(default_factory=dict)
    locals: Mapping[str, Any] = field(default_factory=dict)
    resources: Mapping[str, set[str]] = field(default_factory=dict)  # kind -> declared names
    # Resources with `count` or `for_each`: group address -> the keys of its instances.
    instances: Mapping[str, Any] = field(default_factory=dict)  # or FAILED
    context: functions.CallContext | None = None
    bindings: Mapping[str, Any] = field(default_factory=dict)
    # Resolves `kind.name.attr...` when the caller knows computed attributes (the planner does).
    attributes: Callable[[AttributeRef], Any] | None = None
    # Names that a lazily evaluated local may still need: name -> resolver.
    lazy_local: Callable[[str, Span], Any] | None = None
    # The import path of the module being evaluated: resources it names live there.
    namespace: str = ""
    # Imported modules by name: their outputs, read as `NAME.OUTPUT`.
    modules: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)

    def child(self, bindings: Mapping[str, Any]) -> Scope:
        # Made once per iteration of every `for`: a plain copy, not dataclasses.replace.
        inner = Scope.__new__(Scope)
        inner.__dict__ = {**self.__dict__, "bindings": {**self.bindings, **bindings}}
        return inner

    def reading(self, attributes: Callable[[AttributeRef], Any] | None) -> Scope:
        return dataclasses.replace(self, attributes=attributes)


class _Failed:
    """The value of a variable that could not be set: its error was reported already."""

    def __repr__(self) -> str:
        return "<failed>"


FAILED = _Failed()


@dataclasses.dataclass(frozen=True)
class Deferred:
    """A module output that reads a computed attribute (`service.web.address`): evaluated again,
    in the module's own scope, wherever the importer reads it, with the reader's way of knowing
    computed attributes (the planner knows them; lowering only checks them)."""

    expr: Expr
    scope: Scope


class _Kind:
    """The value of a bare kind name such as `service`: indexing it by name gives a reference."""

    def __init__(self, kind: str) -> None:
        self.kind = kind


class _Namespace:
    """`var` or `local`: a map whose missing keys are diagnostics, not KeyErrors."""

    def __init__(
        self,
        prefix: str,
        values: Mapping[str, Any],
        lazy: Callable[[str, Span], Any] | None = None,
        what: str = "",
    ) -> None:
        self.prefix = prefix
        self.values = values
        self.lazy = lazy
        self.what = what or ("variable" if prefix == "var" else "local value")


_ARITHMETIC: dict[str, Callable[[Any, Any], Any]] = {
    "+": operator.add,
    "-": operator.sub,
    "*": operator.mul,
    "/": operator.truediv,
    "%": operator.mod,
}
_COMPARE: dict[str, Callable[[Any, Any], bool]] = {
    "==": operator.eq,
    "!=": operator.ne,
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
}


def evaluate(expr: Expr, scope: Scope) -> Any:
    """The value of `expr` in `scope`; raises `EvalError` with the span of the part at fault."""
    match expr:
        case Literal(value=value):
            return value
        case Template(parts=parts):
            return _bounded(
                "".join(
                    p if isinstance(p, str) else _to_text(evaluate(p, scope), p.span) for p in parts
                ),
                expr.span,
            )
        case Variable(name=name):
            return _variable(name, expr.span, scope)
        case GetAttr(target=target, name=name):
            return _get(evaluate(target, scope), name, expr.span, scope)
        case Index(target=target, key=key):
            found = evaluate(target, scope)
            if isinstance(found, ResourceRef):
                return _instance(found, evaluate(key, scope), expr.span, scope)
            return _get(found, evaluate(key, scope), expr.span, scope)
        case Call():
            return _bounded(_call(expr, scope), expr.span)
        case ListExpr(items=items):
            return [evaluate(i, scope) for i in items]
        case MapExpr(items=items):
            return _map(items, scope)
        case Binary():
            return _binary(expr, scope)
        case Unary(op="!", operand=operand):
            return not _bool(evaluate(operand, scope), operand.span)
        case Unary(op="-", operand=operand):
            value = evaluate(operand, scope)
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise EvalError("E0201", f"cannot negate {a_type(value)}", operand.span)
            return -value
        case Conditional(condition=condition, then=then, otherwise=otherwise):
            chosen = then if _bool(evaluate(condition, scope), condition.span) else otherwise
            return evaluate(chosen, scope)
        case ForExpr():
            return _bounded(_for(expr, scope), expr.span)
    raise EvalError("E0200", "this expression cannot be evaluated", expr.span)  # pragma: no cover


MAX_STRING = 1 << 20
MAX_ITEMS = 100_000


def _bounded(value: Any, span: Span) -> Any:
    """Refuse values that grew without bound: a string doubled in a loop of locals, say."""
    if isinstance(value, str) and len(value) > MAX_STRING:
        raise EvalError(
            "E0225",
            f"a string grew to {len(value)} characters, past the limit of {MAX_STRING}",
            span,
            "look for a value that is doubled repeatedly",
        )
    if isinstance(value, list | dict) and len(value) > MAX_ITEMS:
        raise EvalError(
            "E0225",
            f"a collection grew to {len(value)} items, past the limit of {MAX_ITEMS}",
            span,
            "look for a value that is doubled repeatedly",
        )
    return value


def _variable(name: str, span: Span, scope: Scope) -> Any:
    if name in scope.bindings:
        return scope.bindings[name]
    if name == "var":
        return _Namespace("var", scope.variables)
    if name == "local":
        return _Namespace("local", scope.locals, scope.lazy_local)
    if name in RESOURCE_KINDS:
        return _Kind(name)
    if name in scope.modules:
        return _Namespace(name, scope.modules[name], what="output of module")
    known = ["var", "local", *RESOURCE_KINDS, *scope.bindings, *scope.modules]
    raise EvalError(
        "E0202",
        f"unknown name `{name}`",
        span,
        suggest(name, known) or "references start with var., local. or a kind such as service.",
    )


def _get(target: Any, key: Any, span: Span, scope: Scope) -> Any:
    if isinstance(target, _Namespace):
        if key in target.values:
            value = target.values[key]
            if value is FAILED:
                raise DiagnosticError([])  # already reported where it was declared
            if isinstance(value, Deferred):
                return evaluate(value.expr, value.scope.reading(scope.attributes))
            return value
        if target.lazy is not None:
            return target.lazy(key, span)
        what = target.what
        fallback = (
            f"module {target.prefix} declares no such output; its outputs: "
            f"{', '.join(target.values) or 'none'}"
            if what.startswith("output")
            else f"declare it with a {what.split()[0]} block"
        )
        raise EvalError(
            "E0203",
            f"unknown {what} `{target.prefix}.{key}`",
            span,
            suggest(str(key), target.values) or fallback,
        )
    if isinstance(target, _Kind):
        declared = scope.resources.get(target.kind, set())
        if key not in declared:
            raise EvalError(
                "E0204",
                f"unknown resource `{target.kind}.{key}`",
                span,
                suggest(str(key), declared)
                or f'declare it with a `{target.kind} "{key}" {{ ... }}` block',
            )
        return ResourceRef(target.kind, str(key), span, namespace=scope.namespace)
    if isinstance(target, ResourceRef) and target.key is None and target.address in scope.instances:
        keys = scope.instances[target.address]
        if keys is FAILED:
            raise DiagnosticError([])  # its count or for_each failed, and said so
        raise EvalError(
            "E0222",
            f"{target.address} has {len(keys)} instances; choose one",
            span,
            f"write {ResourceRef(target.kind, target.name, span, keys[0]).address}.{key}"
            if keys
            else f"{target.address} has no instances (its count is 0)",
        )
    if isinstance(target, ResourceRef | AttributeRef):
        ref = (
            AttributeRef(target, (key,), span)
            if isinstance(target, ResourceRef)
            else AttributeRef(target.resource, (*target.path, key), span)
        )
        if scope.attributes is None:
            raise EvalError(
                "E0205",
                f"`{ref}` is known only when planning",
                span,
                "computed attributes such as an address can be used in outputs",
            )
        return scope.attributes(ref)
    if isinstance(target, dict):
        if key in target:
            return target[key]
        raise EvalError(
            "E0206",
            f"the map has no key `{key}`",
            span,
            suggest(str(key), [str(k) for k in target]),
        )
    if isinstance(target, list):
        if isinstance(key, bool) or not isinstance(key, int):
            raise EvalError("E0207", f"a list is indexed by an int, not {a_type(key)}", span)
        if not -len(target) <= key < len(target):
            raise EvalError(
                "E0208", f"index {key} is out of range for a list of {len(target)}", span
            )
        return target[key]
    raise EvalError("E0209", f"{a_type(target)} has no attributes or elements", span)


def _instance(ref: ResourceRef, key: Any, span: Span, scope: Scope) -> ResourceRef:
    """`service.web[0]`: one instance of a resource with `count` or `for_each`."""
    keys = scope.instances.get(ref.address)
    if keys is FAILED:
        raise DiagnosticError([])  # its count or for_each failed, and said so
    if ref.key is not None or keys is None:
        raise EvalError(
            "E0223",
            f"{ref.address} has no count or for_each, so it cannot be indexed",
            span,
            f"refer to it as {ref.address}",
        )
    if key not in keys or isinstance(key, bool):
        shown = ", ".join(repr(k) for k in keys[:5]) + (" ..." if len(keys) > 5 else "")
        raise EvalError(
            "E0224",
            f"{ref.address} has no instance [{key!r}]",
            span,
            f"its instances are: {shown}" if keys else "its count is 0",
        )
    return ResourceRef(ref.kind, ref.name, span, key, ref.namespace)


def _call(expr: Call, scope: Scope) -> Any:
    if expr.name not in functions.NAMES:
        raise EvalError(
            "E0210",
            f"unknown function `{expr.name}`",
            expr.span,
            suggest(expr.name, functions.NAMES) or "see the function reference in docs/language.md",
        )
    if expr.name in functions.CONTEXTUAL and scope.context is None:
        raise EvalError(
            "E0220",
            f"`{expr.name}()` reads the host, which is not allowed here",
            expr.span,
            'in an output, read it into a local (locals { x = env("X") }) and use local.x; '
            "policy rules cannot read the host at all",
        )
    return _call_with(expr, [evaluate(a, scope) for a in expr.args], scope)


def _call_with(expr: Call, args: list[Any], scope: Scope) -> Any:
    try:
        return functions.call(expr.name, args, scope.context)
    except functions.FunctionError as exc:
        raise EvalError("E0211", str(exc), expr.span) from None


def _map(items: tuple[tuple[Expr, Expr], ...], scope: Scope) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key_expr, value_expr in items:
        key = _key(evaluate(key_expr, scope), key_expr.span)
        if key in result:
            raise EvalError(
                "E0228",
                f"the map sets `{key}` twice",
                key_expr.span,
                "remove one; the last would silently win",
            )
        result[key] = evaluate(value_expr, scope)
    return result


def _binary(expr: Binary, scope: Scope) -> Any:
    if expr.op == "&&":
        return _bool(evaluate(expr.left, scope), expr.left.span) and _bool(
            evaluate(expr.right, scope), expr.right.span
        )
    if expr.op == "||":
        return _bool(evaluate(expr.left, scope), expr.left.span) or _bool(
            evaluate(expr.right, scope), expr.right.span
        )
    return _apply(expr, evaluate(expr.left, scope), evaluate(expr.right, scope))


def _apply(expr: Binary, left: Any, right: Any) -> Any:
    """A binary operator other than `&&` and `||`, on values already evaluated."""
    if expr.op in ("==", "!="):
        return _COMPARE[expr.op](left, right)
    if expr.op in _COMPARE:
        if not _comparable(left, right):
            raise EvalError(
                "E0212",
                f"cannot compare {a_type(left)} with {a_type(right)} using `{expr.op}`",
                expr.span,
            )
        return _COMPARE[expr.op](_magnitude(left), _magnitude(right))
    return _arithmetic(expr, left, right)


def _arithmetic(expr: Binary, left: Any, right: Any) -> Any:
    try:
        result = _arithmetic_of(expr, left, right)
    except (OverflowError, ValueError):  # int() of an infinite float
        result = math.inf
    number = getattr(result, "nanoseconds", getattr(result, "bytes", result))
    if (isinstance(number, float) and not math.isfinite(number)) or (
        isinstance(number, int) and abs(number) > MAX_INT
    ):
        raise EvalError(
            "E0229",
            "the result is too large to be a number",
            expr.span,
            "plans and state hold finite numbers only; check the values this multiplies",
        )
    return result


def _arithmetic_of(expr: Binary, left: Any, right: Any) -> Any:
    numbers = (int, float)
    if isinstance(left, bool) or isinstance(right, bool):
        pass
    elif isinstance(left, numbers) and isinstance(right, numbers):
        if expr.op in ("/", "%") and right == 0:
            raise EvalError("E0213", "division by zero", expr.right.span)
        result = _ARITHMETIC[expr.op](left, right)
        if (
            expr.op == "/"
            and isinstance(left, int)
            and isinstance(right, int)
            and left % right == 0
        ):
            return left // right
        return result
    elif isinstance(left, Size) and isinstance(right, Size) and expr.op in "+-":
        return Size(_ARITHMETIC[expr.op](left.bytes, right.bytes))
    elif isinstance(left, Size) and isinstance(right, int | float) and expr.op in "*/":
        return Size(int(_ARITHMETIC[expr.op](left.bytes, right)))
    elif isinstance(left, int | float) and isinstance(right, Size) and expr.op == "*":
        return Size(int(left * right.bytes))
    elif isinstance(left, int | float) and isinstance(right, Duration) and expr.op == "*":
        return Duration(int(left * right.nanoseconds))
    elif isinstance(left, Duration) and isinstance(right, Duration) and expr.op in "+-":
        return Duration(_ARITHMETIC[expr.op](left.nanoseconds, right.nanoseconds))
    elif isinstance(left, Duration) and isinstance(right, int | float) and expr.op in "*/":
        return Duration(int(_ARITHMETIC[expr.op](left.nanoseconds, right)))
    hint = 'join strings with interpolation: "${a}${b}"' if isinstance(left, str) else ""
    raise EvalError(
        "E0214",
        f"cannot apply `{expr.op}` to {a_type(left)} and {a_type(right)}",
        expr.span,
        hint,
    )


def _comparable(left: Any, right: Any) -> bool:
    if isinstance(left, bool) or isinstance(right, bool):
        return False
    if isinstance(left, int | float) and isinstance(right, int | float):
        return True
    return type(left) is type(right) and isinstance(left, str | Size | Duration)


def _magnitude(value: Any) -> Any:
    if isinstance(value, Size):
        return value.bytes
    if isinstance(value, Duration):
        return value.nanoseconds
    return value


def _for(expr: ForExpr, scope: Scope) -> Any:
    def run(part: Expr) -> Callable[[Scope], Any]:
        return lambda inner: evaluate(part, inner)

    condition = run(expr.condition) if expr.condition is not None else None
    key = run(expr.key) if expr.key is not None else None
    return _for_with(expr, scope, evaluate(expr.collection, scope), condition, key, run(expr.body))


def _for_with(
    expr: ForExpr,
    scope: Scope,
    collection: Any,
    condition: Callable[[Scope], Any] | None,
    key_of: Callable[[Scope], Any] | None,
    body: Callable[[Scope], Any],
) -> Any:
    if isinstance(collection, dict):
        pairs = list(collection.items())
    elif isinstance(collection, list):
        pairs = list(enumerate(collection))
    else:
        raise EvalError(
            "E0215",
            f"`for` iterates over a list or a map, not {a_type(collection)}",
            expr.collection.span,
        )
    results_list: list[Any] = []
    results_map: dict[str, Any] = {}
    condition_span = expr.condition.span if expr.condition is not None else expr.span
    key_span = expr.key.span if expr.key is not None else expr.span
    for key, value in pairs:
        names = {expr.value_var: value}
        if expr.key_var:
            names[expr.key_var] = key
        inner = scope.child(names)
        if condition is not None and not _bool(condition(inner), condition_span):
            continue
        if key_of is None:
            results_list.append(body(inner))
        else:
            out_key = _key(key_of(inner), key_span)
            if expr.group:
                results_map.setdefault(out_key, []).append(body(inner))
                continue
            if out_key in results_map:
                raise EvalError(
                    "E0216",
                    f"the `for` expression makes the key `{out_key}` twice",
                    key_span,
                    "to gather the values of one key into a list, end the value with `...`",
                )
            results_map[out_key] = body(inner)
    return results_list if key_of is None else results_map


def _bool(value: Any, span: Span) -> bool:
    if isinstance(value, bool):
        return value
    raise EvalError("E0217", f"expected a bool, found {a_type(value)}", span)


def _key(value: Any, span: Span) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    raise EvalError("E0218", f"a map key must be a string, not {a_type(value)}", span)


def _to_text(value: Any, span: Span) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str | int | float | Size | Duration):
        return str(value)
    raise EvalError(
        "E0219",
        f"cannot interpolate {a_type(value)} into a string",
        span,
        "interpolate one of its elements, or use jsonencode()",
    )


# -- compiled evaluation ------------------------------------------------------------------------


def compiled(expr: Expr) -> Callable[[Scope], Any]:
    """`evaluate` specialised to one expression: built once, then called for many scopes.

    Policy rules run the same condition over every resource; walking the tree each time costs
    more than the work. Each closure does what `evaluate` does for its node, with the same
    helpers and so the same values and diagnostics; nodes not specialised here fall back to it.
    """
    span = expr.span
    match expr:
        case Literal(value=value):
            return lambda scope: value
        case Variable(name=name):

            def variable(scope: Scope) -> Any:
                bindings = scope.bindings
                return bindings[name] if name in bindings else _variable(name, span, scope)

            return variable
        case GetAttr(target=target, name=name):
            of = compiled(target)

            def get(scope: Scope) -> Any:
                found = of(scope)
                if type(found) is dict and name in found:
                    return found[name]
                return _get(found, name, span, scope)

            return get
        case Index(target=target, key=key):
            of, index_of = compiled(target), compiled(key)

            def index(scope: Scope) -> Any:
                found, wanted = of(scope), index_of(scope)
                if (
                    type(found) is list
                    and type(wanted) is int
                    and -len(found) <= wanted < len(found)
                ):
                    return found[wanted]
                if isinstance(found, ResourceRef):
                    return _instance(found, wanted, span, scope)
                return _get(found, wanted, span, scope)

            return index
        case Template(parts=parts):
            pieces = [_text(p) for p in parts]
            return lambda scope: _bounded("".join([piece(scope) for piece in pieces]), span)
        case Call(name=name, args=args) if name in functions.PURE:
            runs, function, call = [compiled(a) for a in args], functions.PURE[name], expr

            def pure(scope: Scope) -> Any:
                values = [a(scope) for a in runs]
                try:
                    result = function(*values)
                except Exception:
                    # Pure, so it fails the same way again: through the path `evaluate` takes,
                    # which turns the failure into the same diagnostic.
                    result = _call_with(call, values, scope)
                return result if type(result) in _SCALARS else _bounded(result, span)

            if len(runs) != 1:
                return pure
            (only,) = runs

            def pure_one(scope: Scope) -> Any:  # the common arity, without the argument list
                value = only(scope)
                try:
                    result = function(value)
                except Exception:
                    result = _call_with(call, [value], scope)
                return result if type(result) in _SCALARS else _bounded(result, span)

            return pure_one
        case ListExpr(items=items):
            runs = [compiled(i) for i in items]
            return lambda scope: [i(scope) for i in runs]
        case Binary(op="&&", left=left, right=right):
            a, b, a_span, b_span = compiled(left), compiled(right), left.span, right.span
            return lambda scope: _bool(a(scope), a_span) and _bool(b(scope), b_span)
        case Binary(op="||", left=left, right=right):
            a, b, a_span, b_span = compiled(left), compiled(right), left.span, right.span
            return lambda scope: _bool(a(scope), a_span) or _bool(b(scope), b_span)
        case Binary(op=op, left=left, right=right) if op in ("==", "!="):
            a, b, compare = compiled(left), compiled(right), _COMPARE[op]
            return lambda scope: compare(a(scope), b(scope))
        case Binary(left=left, right=right):
            a, b, binary = compiled(left), compiled(right), expr
            return lambda scope: _apply(binary, a(scope), b(scope))
        case Unary(op="!", operand=operand):
            a, a_span = compiled(operand), operand.span
            return lambda scope: not _bool(a(scope), a_span)
        case Unary(op="-", operand=operand):
            a, a_span = compiled(operand), operand.span

            def negate(scope: Scope) -> Any:
                value = a(scope)
                if isinstance(value, bool) or not isinstance(value, int | float):
                    raise EvalError("E0201", f"cannot negate {a_type(value)}", a_span)
                return -value

            return negate
        case Conditional(condition=condition, then=then, otherwise=otherwise):
            test, yes, no, test_span = (
                compiled(condition),
                compiled(then),
                compiled(otherwise),
                condition.span,
            )
            return lambda scope: yes(scope) if _bool(test(scope), test_span) else no(scope)
        case ForExpr():
            loop = expr
            collection = compiled(expr.collection)
            keep = compiled(expr.condition) if expr.condition is not None else None
            key_of = compiled(expr.key) if expr.key is not None else None
            body = compiled(expr.body)
            return lambda scope: _bounded(
                _for_with(loop, scope, collection(scope), keep, key_of, body), span
            )
    return lambda scope: evaluate(expr, scope)


def _text(part: str | Expr) -> Callable[[Scope], str]:
    """One piece of a template: its text, or its expression's value as text."""
    if isinstance(part, str):
        return lambda scope: part
    run, span = compiled(part), part.span

    def text(scope: Scope) -> str:
        value = run(scope)
        return value if type(value) is str else _to_text(value, span)

    return text


# Values `_bounded` has nothing to check in: they cannot grow.
_SCALARS = frozenset((bool, int, float, type(None)))
