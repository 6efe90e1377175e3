"""The policy engine: rule files that judge the checked IR before anything is planned.

A rule names the kinds it applies to, a `deny when` (or `warn when`, `info when`) condition in
the Forgefile expression language, a severity and a message. Rules are checked against the IR
schema when they load, so a misspelt field is a diagnostic in the rule file, not a rule that
silently never fires. Evaluation is fail-closed: a condition that cannot be evaluated is a
blocking finding, never a pass.

Whether a finding blocks is kept apart from the rule's logic: its enforcement level comes from
the project's `enforce` blocks, else the rule, else its pack's default. `waiver` blocks (in the
Forgefile or a policy file) excuse one rule for one resource until a date; `--override` lets an
identity pass a `soft` finding with a reason. Both are recorded in the verdict, which goes into
the signed plan.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import hashlib
import os
import re
import signal
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import lark

import grammar
import stdlib
from compiler.envelope import canonical_json
from forgefile import collector, ir
from forgefile.diagnostics import Collector, DiagnosticError, Related, Span, suggest
from forgefile.evaluate import Scope, compiled, evaluate
from forgefile.schema import RESOURCE_KINDS, SCHEMAS
from forgefile.syntax import (
    Call,
    Duration,
    Expr,
    ForExpr,
    GetAttr,
    ListExpr,
    Literal,
    Size,
    Variable,
    check_limits,
    expression_from_tree,
    span_of,
    string_from_token,
    subexpressions,
    syntax_diagnostic,
)
from forgefile.values import a_type
from stdlib import functions

SEVERITIES = ("critical", "high", "medium", "low", "info")
LEVELS = ("advisory", "soft", "hard")
_RULE_ATTRIBUTES = (
    "title",
    "applies_to",
    "severity",
    "enforcement",
    "controls",
    "message",
    "remediation",
)
# Top-level blocks besides `rule`, and the attributes each takes (required ones first).
_BLOCKS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "pack": ((), ("title", "enforcement")),
    "param": (("default",), ("description",)),
    "policy": ((), ("packs", "params")),
    "enforce": (("level",), ("warn_until",)),
    "waiver": (("rule", "resource", "reason", "owner", "expires"), ()),
    "test": (("forgefile",), ("fires", "passes", "params")),
    "rego": (("path",), ("namespace", "engine", "enforcement", "timeout", "memory")),
}
_WHOLE = "document"  # `applies_to = document`: one evaluation for the whole Forgefile
_PARAM = "param"  # `param.NAME`: a value a pack declares and the project may set


# -- the loaded policy --------------------------------------------------------------------------


@dataclass(frozen=True)
class Rule:
    id: str
    title: str
    kinds: tuple[str, ...]  # () for a rule that applies to the whole document
    verdict: str  # "deny", "warn" or "info"
    condition: Expr
    message: Expr
    severity: str
    enforcement: str | None  # the rule's own default level, if it sets one
    controls: tuple[str, ...]
    remediation: str
    span: Span
    pack: str = ""  # "" for a project's own rules
    bindings: tuple[tuple[str, Expr], ...] = ()  # `let NAME = EXPR`, once per evaluation

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "title": self.title,
            "pack": self.pack,
            "severity": self.severity,
            "verdict": self.verdict,
            "enforcement": self.enforcement or "",
            "applies_to": list(self.kinds) or [_WHOLE],
            "controls": list(self.controls),
            "remediation": self.remediation,
            "span": self.span.to_json(),
        }


@dataclass(frozen=True)
class Pack:
    """A folder of rule files with a `pack "NAME" { ... }` header, pinned by its digest."""

    name: str
    title: str
    enforcement: str  # the default level of its rules
    digest: str
    span: Span

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "digest": self.digest, "enforcement": self.enforcement}


@dataclass(frozen=True)
class Param:
    """`param "NAME" { default = ... }`: a value rules read as `param.NAME`, which the project
    sets with `policy { params = { NAME = ... } }` (a list of allowed folders, say)."""

    name: str
    default: Any
    description: str
    pack: str
    span: Span


@dataclass(frozen=True)
class Enforce:
    """The project's level for a rule or a whole pack; `warn_until` phases a rule in."""

    target: str
    level: str
    warn_until: dt.date | None
    span: Span


@dataclass(frozen=True)
class Override:
    """`--override RULE[@ADDRESS]=REASON`: an identity lets soft findings pass, for this plan."""

    rule: str
    resource: str  # "" for every resource the rule fires on
    reason: str
    identity: str

    def to_json(self) -> dict[str, Any]:
        return {
            "rule": self.rule,
            "resource": self.resource,
            "reason": self.reason,
            "identity": self.identity,
        }


@dataclass(frozen=True)
class RegoSource:
    """`rego { path = "..." }`: a folder of conftest-style Rego the adapter judges, out of process.

    Its files are read when the policy loads, so their digest is part of the policy digest the
    plan is bound to; the engine runs only when the policy judges.
    """

    folder: Path
    namespace: str
    engine: str | None  # None: opa, else conftest, else regopy, whichever is found first
    level: str  # the enforcement level of its `deny` and `violation` findings
    timeout: float  # seconds
    memory_mb: int
    span: Span
    shown: str = ""  # the folder as the user sees it, for spans in its files

    def span_in(self, message: str) -> Span | None:
        """The place in one of its files that an engine's message names (`x.rego:4:14: ...`)."""
        return _rego_place(self.folder, self.shown, message)


def _rego_place(folder: Path, shown: str, message: str) -> Span | None:
    for name, line, column in _REGO_PLACE.findall(message):
        if (folder / name).is_file():
            at = int(column or 1)
            return Span(str(Path(shown or folder) / name), int(line), at, int(line), at)
    return None


_REGO_PLACE = re.compile(r"([\w./-]+\.rego):(\d+)(?::(\d+))?")


@dataclass(frozen=True)
class PolicyTest:
    """A table-driven case: a Forgefile snippet, the rules that must fire and must not."""

    name: str
    forgefile: str
    fires: tuple[str, ...]
    passes: tuple[str, ...]
    span: Span
    params: tuple[tuple[str, Any], ...] = ()  # param values the case judges with


@dataclass(frozen=True)
class Policy:
    rules: tuple[Rule, ...] = ()
    packs: tuple[Pack, ...] = ()
    enforce: tuple[Enforce, ...] = ()
    waivers: tuple[ir.Waiver, ...] = ()
    tests: tuple[PolicyTest, ...] = ()
    digest: str = ""
    rego: RegoSource | None = None
    # Every declared param, and the values rules read: defaults, then the project's settings.
    declared: tuple[Param, ...] = ()
    params: tuple[tuple[str, Any], ...] = ()

    def rule(self, rule_id: str) -> Rule | None:
        return next((r for r in self.rules if r.id == rule_id), None)


# -- loading ------------------------------------------------------------------------------------


@cache
def _parser() -> lark.Lark:
    return grammar.parser("policy.lark")


def policy_files(paths: Iterable[Path]) -> list[Path]:
    """The `*.policy` files named, or found directly inside the folders named, sorted."""
    found: list[Path] = []
    for path in paths:
        found.extend(sorted(path.glob("*.policy")) if path.is_dir() else [path])
    return found


def digest_of(files: Iterable[tuple[str, bytes]]) -> str:
    h = hashlib.sha256()
    for name, data in sorted(files):
        h.update(f"{name}\0{hashlib.sha256(data).hexdigest()}\n".encode())
    return "sha256:" + h.hexdigest()


def load_policy(paths: Sequence[Path], display: dict[Path, str] | None = None) -> Policy:
    """Load the project's policy files and every pack they use (or that `paths` name).

    A folder holding a `pack` block is a pack; its rules carry the pack's name and default
    level. Other files are the project's: its own rules, `policy { packs = [...] }`,
    `enforce`, `waiver` and `test` blocks. The digest covers every file read.
    """
    out = Collector()
    loader = _Loader(out, display or {})
    for path in paths:
        loader.source(path)
    policy = loader.finish()
    out.raise_if_errors()
    return policy


def load(files: list[Path], display: dict[Path, str] | None = None) -> tuple[list[Rule], str]:
    """Parse and check rule files on their own; returns the rules and the files' digest."""
    policy = load_policy(files, display)
    return list(policy.rules), policy.digest


class _Loader:
    """Reads policy files and packs once each, collecting every problem before raising."""

    def __init__(self, out: Collector, display: dict[Path, str]) -> None:
        self.out = out
        self.display = display
        self.rules: list[Rule] = []
        self.packs: dict[str, Pack] = {}
        self.enforce: list[Enforce] = []
        self.waivers: list[ir.Waiver] = []
        self.tests: list[PolicyTest] = []
        self.rego: RegoSource | None = None
        self.contents: list[tuple[str, bytes]] = []
        self.seen: set[Path] = set()
        self.listed: dict[str, Span] = {}  # pack name -> where a `packs` list names it
        self.policy_block: Span | None = None
        self.declared: dict[str, Param] = {}
        # Values set by the project's `policy` block and by test cases: (name, value, span, by).
        self.settings: list[tuple[str, Any, Span, str]] = []

    def source(self, path: Path) -> None:
        """A file or folder given by the user: a pack if it has a header, else project files.

        A name that is no file but is a pack Forge ships, such as `baseline`, is that pack.
        """
        if not path.exists() and str(path) in stdlib.policy_packs():
            path = Path(str(stdlib.policy_pack(str(path))))
        files = policy_files([path])
        if path.is_dir():
            self.folder(path.resolve(), files)
        else:
            for file in files:
                self.file(file, "")

    def folder(self, folder: Path, files: list[Path]) -> Pack | None:
        if folder in self.seen:
            return None
        self.seen.add(folder)
        parsed = [(f, *self.parse(f)) for f in files]
        headers = [
            (f, node) for f, tree, _ in parsed if tree for node in tree if _is_block(node, "pack")
        ]
        files_data = [(f.name, data) for f, _, data in parsed]
        pack = self.pack_header(folder, headers, files_data)
        # Names in the digest do not depend on where the checkout is: a pack's files by pack.
        group = f"pack:{pack.name}/" if pack else ""
        self.contents.extend((group + name, data) for name, data in files_data)
        for file, tree, _ in parsed:
            if tree is not None:
                self.items(file, tree, pack.name if pack else "")
        return pack

    def pack_header(
        self, folder: Path, headers: list[tuple[Path, Any]], data: list[tuple[str, bytes]]
    ) -> Pack | None:
        if not headers:
            return None
        file, node = headers[0]
        shown = self.shown(file)
        name = _label(node, shown) or folder.name
        attrs = self.attributes(node, shown, "pack")
        level = _string(attrs.get("enforcement"), "hard")
        if level not in LEVELS:
            self.out.error(
                "R0005",
                f"`{level}` is not one of {', '.join(LEVELS)}",
                attrs["enforcement"].span,
                suggest(level, LEVELS),
            )
        for extra, other in headers[1:]:
            self.second(
                f"`pack` header in {folder}",
                span_of(other, self.shown(extra)),
                span_of(node, shown),
                "keep one `pack` block per folder",
            )
        pack = Pack(
            name,
            _string(attrs.get("title"), ""),
            level,
            digest_of(data),
            span_of(node, shown),
        )
        if name in self.packs:
            self.out.error("R0012", f"two packs are named `{name}`", pack.span, "rename one")
        self.packs[name] = pack
        return pack

    def file(self, path: Path, pack: str) -> None:
        tree, data = self.parse(path)
        self.contents.append((path.name, data))
        if tree is not None:
            self.items(path, tree, pack)

    def parse(self, path: Path) -> tuple[list[Any] | None, bytes]:
        shown = self.shown(path)
        try:
            data = path.read_bytes()
        except OSError as exc:
            self.out.error(
                "R0000",
                f"cannot read policy {shown}: {exc.strerror}",
                None,
                suggest(shown, stdlib.policy_packs()) if "/" not in shown else "",
            )
            return None, b""
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            line = data.count(b"\n", 0, exc.start) + 1
            column = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
            self.out.error(
                "R0000",
                f"{shown} is not UTF-8 text (byte {exc.start} is {data[exc.start]:#04x})",
                Span(shown, line, column, line, column),
                "save it as UTF-8",
            )
            return None, data
        try:
            check_limits(text, shown)
            tree = _parser().parse(text)
        except DiagnosticError as exc:
            self.out.items.extend(exc.diagnostics)
            return None, data
        except lark.exceptions.UnexpectedInput as exc:
            self.out.items.append(syntax_diagnostic(exc, text, shown))
            return None, data
        return list(tree.children), data

    def shown(self, path: Path) -> str:
        return self.display.get(path, str(path))

    def items(self, path: Path, tree: list[Any], pack: str) -> None:
        shown = self.shown(path)
        for node in tree:
            try:
                self.item(node, path, shown, pack)
            except DiagnosticError as exc:  # an expression past the limits, say
                self.out.items.extend(exc.diagnostics)

    def item(self, node: Any, path: Path, shown: str, pack: str) -> None:
        if node.data == "rule":
            rule = _rule(node, shown, self.out, pack)
            if rule is not None:
                self.rules.append(rule)
            return
        kind = str(node.children[0])
        if kind not in _BLOCKS:
            self.out.error(
                "R0020",
                f"unknown block `{kind}` in a policy file",
                span_of(node.children[0], shown),
                suggest(kind, ["rule", *_BLOCKS]) or f"blocks: rule, {', '.join(_BLOCKS)}",
            )
            return
        if kind == "pack":
            return  # read by folder()
        if kind == "param":
            self.param(node, shown, pack)
            return
        if pack and kind not in ("test", "param"):
            self.out.error(
                "R0013",
                f"a `{kind}` block belongs to a project's policy, not to pack `{pack}`",
                span_of(node.children[0], shown),
                "move it to the project's policy folder",
            )
            return
        getattr(self, f"_{kind}")(node, path, shown)

    def attributes(self, node: Any, shown: str, kind: str) -> dict[str, Expr]:
        required, optional = _BLOCKS[kind]
        attrs: dict[str, Expr] = {}
        for item in node.children[1:]:
            if not isinstance(item, lark.Tree) or item.data != "attribute":
                continue
            name, expr = item.children
            if str(name) not in required + optional:
                known = required + optional
                self.out.error(
                    "R0001",
                    f"a `{kind}` block has no attribute `{name}`",
                    span_of(name, shown),
                    suggest(str(name), known) or f"its attributes: {', '.join(known)}",
                )
                continue
            attrs[str(name)] = expression_from_tree(expr, shown)
        for needed in required:
            if needed not in attrs:
                self.out.error(
                    "R0003",
                    f"a `{kind}` block needs `{needed}`",
                    span_of(node, shown),
                    f"add `{needed} = ...`",
                )
        return attrs

    def _policy(self, node: Any, path: Path, shown: str) -> None:
        if self.policy_block is not None:
            self.second(
                "`policy` block",
                span_of(node, shown),
                self.policy_block,
                "list every pack in one `policy { packs = [...] }`",
            )
        else:
            self.policy_block = span_of(node, shown)
        attrs = self.attributes(node, shown, "policy")
        if "params" in attrs:
            self.settings += self.values(attrs["params"], "the policy block")
        packs = attrs.get("packs")
        if packs is None:
            return
        for name, span in _strings(packs, self.out, "packs lists pack names or folders"):
            folder = self.pack_folder(name, path.parent)
            if folder is None:
                known = stdlib.policy_packs()
                self.out.error(
                    "R0014",
                    f"no policy pack `{name}`",
                    span,
                    suggest(name, known)
                    or f"Forge ships: {', '.join(known)}; or name a folder of *.policy files",
                )
                continue
            pack = self.folder(folder, policy_files([folder]))
            if pack is not None:
                self.listed.setdefault(pack.name, span)

    def values(self, expr: Expr, by: str) -> list[tuple[str, Any, Span, str]]:
        """`params = { NAME = VALUE }`: each value, with where it was set (for R0024)."""
        try:
            value = evaluate(expr, Scope())
        except DiagnosticError as exc:
            self.out.items.extend(exc.diagnostics)
            return []
        if not isinstance(value, dict):
            self.out.error(
                "R0024",
                f"`params` is a map of param names to values, not {a_type(value)}",
                expr.span,
                'write params = { bind_allow = ["/srv/app"] }',
            )
            return []
        return [(str(name), v, expr.span, by) for name, v in value.items()]

    def param(self, node: Any, shown: str, pack: str) -> None:
        attrs = self.attributes(node, shown, "param")
        name, span = _label(node, shown), span_of(node, shown)
        if "default" not in attrs:
            return
        if not _valid_param(name):
            self.out.error(
                "R0024",
                f"`{name}` is not a param name",
                span,
                "write letters, digits and `_`, starting with a letter, such as bind_allow",
            )
            return
        try:
            default = evaluate(attrs["default"], Scope())
        except DiagnosticError as exc:
            self.out.items.extend(exc.diagnostics)
            return
        param = Param(name, default, _string(attrs.get("description"), ""), pack, span)
        first = self.declared.setdefault(name, param)
        if first is not param and first.default != default:
            # Two packs may declare one knob (baseline and restricted do), alike.
            self.second(
                f'`param "{name}"` with another default',
                span,
                first.span,
                "declare a param once, or with the same default wherever it is declared",
            )

    def second(self, what: str, span: Span, first: Span, hint: str) -> None:
        """R0011: something there may be one of, written again."""
        self.out.error(
            "R0011", f"a second {what}", span, hint, [Related(first, "the first is here")]
        )

    def pack_clash(self, one: str, other: str, ids: list[str]) -> None:
        """Two packs that share rule ids: one error at the `packs` line, not one per rule."""
        whole = sum(r.pack == one for r in self.rules) == len(ids)
        listed = ", ".join(ids[:3]) + (f" and {len(ids) - 3} more" if len(ids) > 3 else "")
        self.out.error(
            "R0010",
            f"packs `{one}` and `{other}` both declare {len(ids)} rule(s): {listed}",
            self.listed.get(other, self.packs[other].span),
            f"`{other}` holds every rule of `{one}`; list only `{other}`"
            if whole
            else "a rule id may come from one pack only; list one of them",
            [Related(self.listed.get(one, self.packs[one].span), f"`{one}` is loaded here")],
        )

    def pack_folder(self, name: str, base: Path) -> Path | None:
        if "/" not in name and name in stdlib.policy_packs():
            return Path(str(stdlib.policy_pack(name))).resolve()
        folder = (base / name).resolve()
        return folder if folder.is_dir() else None

    def _enforce(self, node: Any, path: Path, shown: str) -> None:
        attrs = self.attributes(node, shown, "enforce")
        target = _label(node, shown)
        level = _string(attrs.get("level"), "")
        span = span_of(node, shown)
        if "level" in attrs and level not in LEVELS:
            self.out.error(
                "R0005",
                f"`{level}` is not one of {', '.join(LEVELS)}",
                attrs["level"].span,
                suggest(level, LEVELS),
            )
            return
        until = None
        if "warn_until" in attrs:
            until = _date(attrs["warn_until"], self.out)
        if target and level:
            self.enforce.append(Enforce(target, level, until, span))

    def _waiver(self, node: Any, path: Path, shown: str) -> None:
        attrs = self.attributes(node, shown, "waiver")
        if len(attrs) < len(_BLOCKS["waiver"][0]):
            return
        blank = [k for k in ir.WAIVER_HINTS if not _string(attrs[k], "").strip()]
        for key in blank:
            self.out.error(
                "R0016", f"a waiver's `{key}` is blank", attrs[key].span, ir.WAIVER_HINTS[key]
            )
        expires = _date(attrs["expires"], self.out)
        if expires is None or blank:
            return
        self.waivers.append(
            ir.Waiver(
                span_of(node, shown),
                tuple((k, v.span) for k, v in attrs.items()),
                name=_label(node, shown),
                rule=_string(attrs["rule"], ""),
                resource=_string(attrs["resource"], ""),
                reason=_string(attrs["reason"], ""),
                owner=_string(attrs["owner"], ""),
                expires=expires.isoformat(),
                source="file",
            )
        )

    def _test(self, node: Any, path: Path, shown: str) -> None:
        attrs = self.attributes(node, shown, "test")
        if "forgefile" not in attrs:
            return
        lists = {
            key: tuple(name for name, _ in _strings(attrs[key], self.out, f"{key} lists rule ids"))
            for key in ("fires", "passes")
            if key in attrs
        }
        both = set(lists.get("fires", ())) & set(lists.get("passes", ()))
        if both:
            self.out.error(
                "R0023",
                f"test `{_label(node, shown)}` expects {', '.join(sorted(both))} both to fire "
                "and to pass",
                span_of(node, shown),
                "keep each rule id in one of `fires` and `passes`",
            )
        if not any(lists.values()):
            self.out.error(
                "R0023",
                f"test `{_label(node, shown)}` expects nothing",
                span_of(node, shown),
                'list the rules it must make fire (`fires = ["ID"]`) or pass (`passes = [...]`)',
            )
        params = self.values(attrs["params"], "a test") if "params" in attrs else []
        self.settings += params
        self.tests.append(
            PolicyTest(
                _label(node, shown),
                _string(attrs["forgefile"], ""),
                lists.get("fires", ()),
                lists.get("passes", ()),
                span_of(node, shown),
                tuple((name, value) for name, value, _, _ in params),
            )
        )

    def _rego(self, node: Any, path: Path, shown: str) -> None:
        from compiler import rego  # the adapter only: regopy itself is never imported here

        attrs = self.attributes(node, shown, "rego")
        span = span_of(node, shown)
        if self.rego is not None:
            self.second(
                "`rego` block",
                span,
                self.rego.span,
                "keep one; put every Rego file under its folder",
            )
            return
        if "path" not in attrs:
            return
        folder = (path.parent / _string(attrs["path"], "")).resolve()
        shown_folder = os.path.normpath(Path(shown).parent / _string(attrs["path"], ""))
        namespace = _string(attrs.get("namespace"), "main")
        engine = _string(attrs.get("engine"), "") or None
        if engine is not None and engine not in rego.ENGINES:
            self.out.error(
                "R0005",
                f"`{engine}` is not one of {', '.join(rego.ENGINES)}",
                attrs["engine"].span,
                suggest(engine, rego.ENGINES) or "leave `engine` out to use what is found",
            )
        level = _string(attrs.get("enforcement"), "hard")
        if level not in LEVELS:
            self.out.error(
                "R0005",
                f"`{level}` is not one of {', '.join(LEVELS)}",
                attrs["enforcement"].span,
                suggest(level, LEVELS),
            )
        timeout = _quantity(attrs.get("timeout"), Duration, self.out, "a duration, like `10s`")
        memory = _quantity(attrs.get("memory"), Size, self.out, "a size, like `512MiB`")
        try:
            modules = rego.policy_modules(folder, namespace)
        except rego.RegoError as exc:
            place = _rego_place(folder, shown_folder, str(exc))
            self.out.error(
                "R0030",
                str(exc),
                place or attrs["path"].span,
                ""
                if place
                else "`path` is relative to this policy file's folder and must hold `.rego` "
                f"files in `package {namespace}`",
            )
            return
        self.contents.extend((f"rego:{name}", text.encode()) for name, text in modules)
        self.rego = RegoSource(
            folder,
            namespace,
            engine,
            level,
            timeout.seconds if isinstance(timeout, Duration) else 10.0,
            max(1, memory.bytes >> 20) if isinstance(memory, Size) else 512,
            span,
            shown_folder,
        )

    def finish(self) -> Policy:
        seen: dict[str, Rule] = {}
        clashes: dict[tuple[str, str], list[str]] = {}
        for rule in self.rules:
            first = seen.setdefault(rule.id, rule)
            if first is rule:
                continue
            if first.pack and rule.pack and first.pack != rule.pack:
                clashes.setdefault((first.pack, rule.pack), []).append(rule.id)
                continue
            self.out.error(
                "R0010",
                f"rule `{rule.id}` is declared twice",
                rule.span,
                "rename one",
                [Related(first.span, "first declared here")],
            )
        for (one, other), ids in clashes.items():
            self.pack_clash(one, other, ids)
        targets = [*seen, *self.packs]
        rego = self.rego is not None
        enforced: dict[str, Enforce] = {}
        for entry in self.enforce:
            set_first = enforced.setdefault(entry.target, entry)
            if set_first is not entry:
                self.second(
                    f'`enforce "{entry.target}"`',
                    entry.span,
                    set_first.span,
                    "keep one: the level of a rule or pack is set in one place",
                )
            # Rego rules are known only once the engine has run: `rego` and `rego:...` are
            # taken on trust when the project has a rego block.
            if rego and (entry.target == "rego" or entry.target.startswith("rego:")):
                continue
            if entry.target not in targets:
                self.out.error(
                    "R0021",
                    f'`enforce "{entry.target}"` names no loaded rule or pack',
                    entry.span,
                    suggest(entry.target, targets) or "name a rule id or a pack",
                )
        named: dict[str, ir.Waiver] = {}
        for waiver in self.waivers:
            earlier = named.setdefault(waiver.name, waiver)
            if earlier is not waiver:
                self.second(
                    f'`waiver "{waiver.name}"`',
                    waiver.span,
                    earlier.span,
                    "give each waiver its own name",
                )
        for test in self.tests:
            for rule_id in (*test.fires, *test.passes):
                if rule_id not in seen:
                    self.out.error(
                        "R0022",
                        f"test `{test.name}` names no loaded rule `{rule_id}`",
                        test.span,
                        # Rego rules have their own test runners; test blocks judge Forge's.
                        "test blocks run Forge's rules; test Rego rules with `opa test` or "
                        "`conftest verify` beside them"
                        if rule_id.startswith("rego:")
                        else suggest(rule_id, seen) or "name a rule id",
                    )
        return Policy(
            tuple(self.rules),
            tuple(self.packs.values()),
            tuple(self.enforce),
            tuple(self.waivers),
            tuple(self.tests),
            digest_of(self.contents),
            self.rego,
            tuple(self.declared.values()),
            self.check_params(),
        )

    def check_params(self) -> tuple[tuple[str, Any], ...]:
        """R0024 for a param read or set that no file declares, or set to a value of another
        type than its default; the values rules read: each default, then the project's."""
        declared = self.declared
        for rule in self.rules:
            for expr in (rule.condition, rule.message, *(e for _, e in rule.bindings)):
                for node in subexpressions(expr):
                    if (
                        isinstance(node, GetAttr)
                        and isinstance(node.target, Variable)
                        and node.target.name == _PARAM
                        and node.name not in declared
                    ):
                        self.out.error(
                            "R0024",
                            f"rule `{rule.id}` reads `param.{node.name}`, which no loaded file "
                            "declares",
                            node.span,
                            suggest(node.name, declared)
                            or f'declare it: param "{node.name}" {{ default = ... }}',
                        )
        values = {name: param.default for name, param in declared.items()}
        for name, value, span, by in self.settings:
            param = declared.get(name)
            if param is None:
                self.out.error(
                    "R0024",
                    f"{by} sets param `{name}`, which no loaded pack or file declares",
                    span,
                    suggest(name, declared)
                    or (
                        f"declared params: {', '.join(declared)}"
                        if declared
                        else "no pack has params"
                    ),
                )
            elif a_type(value) != a_type(param.default):
                self.out.error(
                    "R0024",
                    f"param `{name}` is {a_type(param.default)} (its default is "
                    f"{jsonable(param.default)}), not {a_type(value)}",
                    span,
                    param.description or f"give {a_type(param.default)}",
                )
            elif by == "the policy block":
                values[name] = value
        return tuple(sorted(values.items()))


def _valid_param(name: str) -> bool:
    return bool(re.fullmatch(r"[A-Za-z][A-Za-z0-9_]*", name))


def jsonable(value: Any) -> str:
    """A param value as the policy language writes it, for messages."""
    import json

    return json.dumps(value)


def _is_block(node: Any, kind: str) -> bool:
    return bool(node.data == "block" and str(node.children[0]) == kind)


def _label(node: Any, shown: str) -> str:
    label = node.children[1]
    if label is None or isinstance(label, lark.Tree) or label.type != "STRING":
        return ""
    return _literal_string(string_from_token(label, shown))


def _string(expr: Expr | None, default: str) -> str:
    if expr is None:
        return default
    return str(evaluate(expr, Scope()))


def _strings(expr: Expr, out: Collector, hint: str) -> list[tuple[str, Span]]:
    if not isinstance(expr, ListExpr):
        out.error("R0008", "expected a list of strings", expr.span, hint)
        return []
    found = []
    for item in expr.items:
        if isinstance(item, Literal) and isinstance(item.value, str):
            found.append((item.value, item.span))
        else:
            out.error("R0008", "expected a string", item.span, hint)
    return found


def _quantity(expr: Expr | None, kind: type, out: Collector, wanted: str) -> Any:
    if expr is None:
        return None
    try:
        value = evaluate(expr, Scope())
    except DiagnosticError as exc:
        out.items.extend(exc.diagnostics)
        return None
    if not isinstance(value, kind):
        out.error("R0008", f"expected {wanted}", expr.span, f"write {wanted}")
        return None
    if value == kind(0):
        out.error("R0008", "a limit of 0 allows nothing: it must be more than 0", expr.span, wanted)
        return None
    return value


def _date(expr: Expr, out: Collector) -> dt.date | None:
    text = _string(expr, "")
    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        out.error("R0015", f"`{text}` is not a date", expr.span, 'write it as "YYYY-MM-DD"')
        return None


def _rule(node: Any, path: str, out: Collector, pack: str) -> Rule | None:
    _keyword, label, _open, *items, _close = node.children
    span = span_of(node, path)
    rule_id = _literal_string(string_from_token(label, path))
    if not _RULE_ID.fullmatch(rule_id) or rule_id.startswith("rego:"):
        out.error(
            "R0009",
            f"`{rule_id}` is not a rule id",
            span_of(label, path),
            "write letters, digits, `-`, `_`, `.` and `:`, starting with a letter or digit, "
            "such as ACME-C001 (`rego:` is kept for Rego findings)",
        )
    attrs: dict[str, tuple[Expr, Span]] = {}
    conditions: list[tuple[str, Expr]] = []
    bindings: list[tuple[str, Expr]] = []
    for item in items:
        if item.data == "condition":
            verdict, expr = item.children
            conditions.append((str(verdict), expression_from_tree(expr, path)))
            continue
        if item.data == "binding":
            _let, name, expr = item.children
            if str(name) in (n for n, _ in bindings):
                out.error(
                    "R0010",
                    f"`let {name}` is bound twice in rule `{rule_id}`",
                    span_of(name, path),
                    "rename one",
                )
            bindings.append((str(name), expression_from_tree(expr, path)))
            continue
        name, expr = item.children
        item_span = span_of(name, path)
        if str(name) not in _RULE_ATTRIBUTES:
            out.error(
                "R0001",
                f"a rule has no attribute `{name}`",
                item_span,
                suggest(str(name), _RULE_ATTRIBUTES)
                or f"rule attributes are: {', '.join(_RULE_ATTRIBUTES)}",
            )
            continue
        attrs[str(name)] = (expression_from_tree(expr, path), item_span)
    if len(conditions) != 1:
        out.error(
            "R0002",
            f"rule `{rule_id}` needs exactly one `deny when`, `warn when` or `info when`",
            span,
            "add `deny when <condition>`",
        )
    for needed in ("applies_to", "message", "severity"):
        if needed not in attrs:
            out.error("R0003", f"rule `{rule_id}` needs `{needed}`", span, f"add `{needed} = ...`")
    # What can be checked is checked even when something else is wrong, so one mistake does
    # not hide the next; a check that would only echo an earlier error is skipped.
    kinds: tuple[str, ...] | None = None
    if "applies_to" in attrs:
        kinds = _kinds(attrs["applies_to"], out)
    # No CallContext: a verdict must not depend on the host's files or environment.
    scope = Scope()
    severity = _choice(attrs.get("severity"), SEVERITIES, scope, out) or "info"
    enforcement = _choice(attrs.get("enforcement"), LEVELS, scope, out) or None
    if "message" in attrs:
        _check_message(attrs["message"][0], out)
    lets: set[str] = {_WHOLE, _PARAM}
    for name, expr in bindings:
        _check_names(expr, lets, out, rule_id, in_let=True)
        lets.add(name)
    readable = lets | {"resource"}
    checked = [e for _, e in conditions[:1]] + ([attrs["message"][0]] if "message" in attrs else [])
    for expr in checked:
        _check_names(expr, readable, out, rule_id)
    if kinds is not None:
        for expr in [*(e for _, e in bindings), *checked]:
            _check_fields(expr, kinds, out)
    if len(conditions) != 1 or kinds is None or "message" not in attrs:
        return None  # (with errors of its own, the rule still counts for duplicate ids)
    verdict, condition = conditions[0]
    controls = evaluate(attrs["controls"][0], scope) if "controls" in attrs else []
    return Rule(
        id=rule_id,
        title=_plain(attrs.get("title"), scope),
        kinds=kinds,
        verdict=verdict,
        condition=condition,
        message=attrs["message"][0],
        severity=severity,
        enforcement=enforcement,
        controls=tuple(str(c) for c in controls),
        remediation=_plain(attrs.get("remediation"), scope),
        span=span,
        pack=pack,
        bindings=tuple(bindings),
    )


_RULE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]*")


def _check_message(expr: Expr, out: Collector) -> None:
    """A message is text: a string, with interpolations, that says something."""
    if isinstance(expr, Literal) and (not isinstance(expr.value, str) or not expr.value.strip()):
        out.error(
            "R0008",
            "a rule's message is text that says what broke the rule"
            if isinstance(expr.value, str)
            else f"a rule's message is text, not {a_type(expr.value)}",
            expr.span,
            'write message = "${resource.address} ..."',
        )


def _literal_string(expr: Expr) -> str:
    return expr.value if isinstance(expr, Literal) and isinstance(expr.value, str) else "?"


def _plain(entry: tuple[Expr, Span] | None, scope: Scope) -> str:
    return str(evaluate(entry[0], scope)) if entry else ""


def _kinds(entry: tuple[Expr, Span], out: Collector) -> tuple[str, ...] | None:
    """The kinds a rule applies to, () for the whole document, None when they are wrong."""
    expr, _ = entry
    names = [i for i in getattr(expr, "items", (expr,))]
    if any(isinstance(i, Variable) and i.name == _WHOLE for i in names):
        if len(names) > 1:
            out.error(
                "R0004",
                "a rule applies to resource kinds or to the whole document, not both",
                expr.span,
                "write `applies_to = document`, or list kinds only",
            )
            return None
        return ()
    if not names:
        out.error(
            "R0004",
            "applies_to lists no kinds, so the rule would judge nothing",
            expr.span,
            "list kinds, such as [service, job], or write `applies_to = document`",
        )
        return None
    kinds = []
    for item in names:
        name = item.name if isinstance(item, Variable) else None
        if name is not None and name in RESOURCE_KINDS:
            kinds.append(name)
            continue
        known = list(RESOURCE_KINDS)
        quoted = isinstance(item, Literal) and item.value in RESOURCE_KINDS
        out.error(
            "R0004",
            "applies_to lists resource kinds, such as [service, job], or is `document`",
            item.span,
            f'write kinds bare: {item.value}, not "{item.value}"'
            if quoted and isinstance(item, Literal)
            else suggest(str(name), [*known, _WHOLE]) or f"kinds: {', '.join(known)}",
        )
    return tuple(kinds) if len(kinds) == len(names) else None


def _choice(
    entry: tuple[Expr, Span] | None,
    allowed: tuple[str, ...],
    scope: Scope,
    out: Collector,
) -> str:
    if entry is None:
        return ""
    value = evaluate(entry[0], scope)
    if value not in allowed:
        out.error(
            "R0005",
            f"`{value}` is not one of {', '.join(allowed)}",
            entry[0].span,
            suggest(str(value), allowed),
        )
        return ""
    return str(value)


def _check_fields(expr: Expr, kinds: tuple[str, ...], out: Collector) -> None:
    """`resource.X` must name a field of every kind the rule applies to (and `resource.X.Y` a
    field of that block); calls must name pure functions."""
    each = {kind: _fields(kind) for kind in kinds}
    fields = set.intersection(*each.values()) if kinds else set()
    for node in subexpressions(expr):
        if isinstance(node, GetAttr) and _reads_resource(node.target):
            _check_nested(node, kinds, out)
        if (
            isinstance(node, GetAttr)
            and isinstance(node.target, Variable)
            and node.target.name == "resource"
            and (node.name not in fields or not kinds)
        ):
            having = [kind for kind in kinds if node.name in each[kind]]
            if not kinds:
                message, hint = (
                    "a rule that applies to the document has no `resource`; read `document`",
                    "",
                )
            elif having:
                lacking = [kind for kind in kinds if kind not in having]
                message = (
                    f"`{node.name}` is a field of {', '.join(having)} but not of "
                    f"{', '.join(lacking)}: a rule over several kinds reads only the fields they "
                    "all have"
                )
                hint = f'read it as lookup(resource, "{node.name}", DEFAULT), or split the rule'
            else:
                message = f"resources of kind {', '.join(kinds)} have no field `{node.name}`"
                hint = suggest(node.name, fields)
            out.error("R0006", message, node.span, hint)
        if isinstance(node, Call) and node.name not in functions.PURE:
            known = node.name in functions.NAMES
            out.error(
                "R0007",
                f"`{node.name}()` reads the machine it runs on, and a verdict must not depend on "
                "that"
                if known
                else f"unknown function `{node.name}`",
                node.span,
                "write the value into the rule instead"
                if known
                else suggest(node.name, functions.PURE),
            )


def _reads_resource(expr: Expr) -> bool:
    return (
        isinstance(expr, GetAttr)
        and isinstance(expr.target, Variable)
        and (expr.target.name == "resource")
    )


def _check_nested(node: GetAttr, kinds: tuple[str, ...], out: Collector) -> None:
    """`resource.resources.memry`: a field of a block the IR holds as a record."""
    assert isinstance(node.target, GetAttr)
    block = node.target.name
    known = [_record_fields(kind, block) for kind in kinds]
    if not known or any(k is None for k in known):
        return
    fields = set.intersection(*(k for k in known if k is not None))
    if node.name not in fields:
        out.error(
            "R0006",
            f"`resource.{block}` has no field `{node.name}`",
            node.span,
            suggest(node.name, fields) or f"its fields: {', '.join(sorted(fields))}",
        )


def _record_fields(kind: str, block: str) -> set[str] | None:
    """The fields of a block the IR keeps as a record (`resources`, `limits`), else None."""
    cls = ir.RESOURCE_CLASSES.get(kind)
    if cls is None:
        return None
    found = {f.name: f.type for f in dataclasses.fields(cls)}.get(block)
    record = {"Limits": ir.Limits, "WasmLimits": ir.WasmLimits}.get(str(found))
    return {f.name for f in dataclasses.fields(record)} if record else None


def _check_names(
    expr: Expr, allowed: set[str], out: Collector, rule_id: str, in_let: bool = False
) -> None:
    """Every name an expression reads must be bound: `resource`, `document`, a `let` of the
    rule, or a `for` variable around it. A name that is not is an error at load, not a
    finding for every resource later."""
    stack: list[tuple[object, frozenset[str]]] = [(expr, frozenset())]
    while stack:
        node, bound = stack.pop()
        if isinstance(node, Variable):
            if node.name in allowed or node.name in bound:
                continue
            if in_let and node.name == "resource":
                message = (
                    f"a `let` of rule `{rule_id}` is worked out once per run, before any "
                    "resource, so it cannot read `resource`"
                )
                hint = "move that part into the condition or the message"
            elif node.name in ("var", "local", "each", "count", "module"):
                message = f"a rule cannot read `{node.name}`: it judges the Forgefile's result"
                hint = "read `resource` or `document`"
            else:
                message = f"rule `{rule_id}` reads `{node.name}`, which nothing binds"
                hint = suggest(node.name, [*allowed, *bound]) or (
                    "a rule reads `resource`, `document`, its `let`s and `for` variables"
                )
            out.error("R0017", message, node.span, hint)
        elif isinstance(node, ForExpr):
            inner = bound | {node.value_var} | ({node.key_var} if node.key_var else set())
            stack.append((node.collection, bound))
            stack.extend((part, inner) for part in (node.body, node.key, node.condition) if part)
        elif isinstance(node, Expr):
            stack.extend((child, bound) for child in vars(node).values())
        elif isinstance(node, tuple):
            stack.extend((child, bound) for child in node)


def _fields(kind: str) -> set[str]:
    """The fields `resource` has for one kind, as `Resource.to_document()` writes them."""
    spec = SCHEMAS[kind]
    fields = {"address", "kind", "name"} | {a.name for a in spec.attributes} | set(spec.blocks)
    if kind == "image":  # its copy and link blocks appear as one ordered `steps` list
        fields = (fields - {"copy", "link", "run"}) | {"steps"}
    if "bind" in fields:  # `bind` blocks appear as the `binds` list
        fields = (fields - {"bind"}) | {"binds"}
    return fields


# -- evaluation ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Finding:
    rule: Rule
    address: str
    message: str
    span: Span
    status: str = "blocking"  # blocking, warning, info, waived or overridden
    level: str = "hard"  # the enforcement level that applied
    waiver: ir.Waiver | None = None
    override: Override | None = None
    rollout: str = ""  # "advisory until 2027-01-31, then hard"
    error: bool = False  # the rule could not be evaluated: it blocks, whatever its level

    @property
    def blocking(self) -> bool:
        return self.status == "blocking"

    def to_json(self) -> dict[str, Any]:
        return {
            "rule": self.rule.id,
            "pack": self.rule.pack,
            "severity": self.rule.severity,
            "verdict": self.rule.verdict,
            "enforcement": self.level,
            "status": self.status,
            "blocking": self.blocking,
            "resource": self.address,
            "message": self.message,
            "span": self.span.to_json(),
            "rule_span": self.rule.span.to_json(),
            "controls": list(self.rule.controls),
            "remediation": self.rule.remediation,
            "waiver": self.waiver.to_json() if self.waiver else None,
            "override": self.override.to_json() if self.override else None,
            "rollout": self.rollout,
        }


@dataclass(frozen=True)
class Problem:
    """Something wrong with the policy's own state: an expired waiver, an orphaned one."""

    kind: str  # expired-waiver, orphaned-waiver, unused-override, nothing-evaluated
    severity: str  # error (blocks) or warning
    message: str
    span: Span | None

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "severity": self.severity,
            "message": self.message,
            "span": self.span.to_json() if self.span else None,
        }


@dataclass(frozen=True)
class Verdict:
    findings: tuple[Finding, ...]
    evaluated: int
    digest: str
    problems: tuple[Problem, ...] = ()
    packs: tuple[Pack, ...] = ()
    rules: tuple[Rule, ...] = field(default=(), repr=False)
    rego: dict[str, Any] | None = None  # the Rego engine's run: engine, version, digest, files
    params: tuple[tuple[str, Any], ...] = ()  # the param values the rules read

    @property
    def blocked(self) -> bool:
        return any(f.blocking for f in self.findings) or any(
            p.severity == "error" for p in self.problems
        )

    def count(self, status: str) -> int:
        return sum(1 for f in self.findings if f.status == status)

    def to_json(self, compact: bool = False) -> dict[str, Any]:
        """The verdict as JSON.

        `compact` is the form plans hold, which grows with what decided the verdict rather than
        with resources times rules: the findings that block, were waived or were overridden,
        each rule's metadata once (under `rules`), and the advisory findings (warning, info)
        only as their count and the digest of their full JSON, in the order `forge policy
        check --json` lists them. 3,200 warnings of 1,000 services were 57 % of such a plan.
        """
        document = {
            "verdict": "block" if self.blocked else "pass",
            "digest": self.digest,
            "evaluated": self.evaluated,
            "counts": {
                "blocking": self.count("blocking"),
                "warnings": self.count("warning"),
                "info": self.count("info"),
                "waived": self.count("waived"),
                "overridden": self.count("overridden"),
                # Problems that block though no finding does: an expired waiver, say.
                "errors": sum(1 for p in self.problems if p.severity == "error"),
            },
            "packs": [p.to_json() for p in self.packs],
            "findings": [
                _compact(f) if compact else f.to_json()
                for f in self.findings
                if not (compact and f.status in ADVISORY)
            ],
            "problems": [p.to_json() for p in self.problems],
            "waivers": [f.waiver.to_json() for f in self.findings if f.waiver],
            # One per finding let pass, with the resource it was found on (`finding`): an
            # override for a whole rule lets several pass.
            "overrides": [
                {**f.override.to_json(), "finding": f.address} for f in self.findings if f.override
            ],
            "rego": self.rego,
            "params": dict(self.params),
        }
        if compact:
            document["rules"] = {f.rule.id: _rule_facts(f.rule) for f in self.findings}
            advisory = [f.to_json() for f in self.findings if f.status in ADVISORY]
            document["advisories"] = {
                "count": len(advisory),
                "digest": "sha256:" + hashlib.sha256(canonical_json(advisory)).hexdigest(),
            }
        return document


# Findings that neither block nor were let pass by someone: what a plan keeps only as a digest.
ADVISORY = frozenset({"warning", "info"})


# What a finding says of its rule, the same for every finding of it: written once in a plan.
_RULE_FACTS = ("pack", "severity", "verdict", "rule_span", "controls", "remediation")


def _compact(finding: Finding) -> dict[str, Any]:
    full = finding.to_json()
    return {k: v for k, v in full.items() if k not in _RULE_FACTS}


def _rule_facts(rule: Rule) -> dict[str, Any]:
    return {
        "pack": rule.pack,
        "severity": rule.severity,
        "verdict": rule.verdict,
        "span": rule.span.to_json(),
        "controls": list(rule.controls),
        "remediation": rule.remediation,
    }


def judge(
    policy: Policy,
    doc: ir.Document,
    today: dt.date,
    overrides: Sequence[Override] = (),
    *,
    rego: bool = True,
) -> Verdict:
    """Evaluate every rule, then apply enforcement levels, waivers and overrides.

    With a `rego` block in the policy (and `rego` true), the Rego adapter also judges the
    document in a child process; its findings are settled like any other rule's.
    """
    packs = {p.name: p for p in policy.packs}
    # A rule's level today, worked out once per rule; findings are made with it already applied.
    levels = {rule.id: level_of(rule, policy, packs, today) for rule in policy.rules}
    with collector.paused():  # the documents and findings live until the verdict is made
        raw, evaluated = _evaluate(policy.rules, doc, levels, dict(policy.params))
    rules = policy.rules
    run: dict[str, Any] | None = None
    if policy.rego is not None and rego:
        found, rules_run, run = _judge_rego(policy.rego, doc)
        raw += found
        rules += rules_run
        # The engine is handed every resource at once: each counts as evaluated.
        evaluated += len(doc.resources)
    waivers = [*doc.waivers, *policy.waivers]
    live = [w for w in waivers if dt.date.fromisoformat(w.expires) >= today]
    problems = [
        Problem(
            "expired-waiver",
            "error",
            f"waiver `{w.name}` of rule {w.rule} for {w.resource} expired on {w.expires}",
            w.span,
        )
        for w in waivers
        if w not in live
    ]
    # Only a finding a waiver or an override may touch, or one from Rego, is settled again.
    touched = {w.rule for w in live} | {o.rule for o in overrides}
    for f in raw:
        if f.rule.id not in levels:
            levels[f.rule.id] = level_of(f.rule, policy, packs, today)
    findings = [
        _settle(f, levels[f.rule.id], live, overrides)
        if f.rule.id in touched or f.rule.pack == "rego"
        else f
        for f in raw
    ]
    used = {id(f.waiver) for f in findings if f.waiver}
    problems += [
        Problem("orphaned-waiver", "warning", _orphan(w, policy, rules, doc, findings), w.span)
        for w in live
        if id(w) not in used
    ]
    problems += [
        Problem(
            "unused-override",
            "warning",
            f"--override {o.rule}{'@' + o.resource if o.resource else ''} matched no soft finding"
            + (
                ""
                if policy.rule(o.rule)
                else f"; no loaded rule is {o.rule}{_did_you_mean(o.rule, rules)}"
            ),
            None,
        )
        for o in overrides
        if not any(f.override is o for f in findings)
    ]
    rego_skipped = policy.rego is not None and not rego
    if evaluated == 0 and not rego_skipped:
        problems.append(
            Problem(
                "nothing-evaluated",
                "error",
                "the policy evaluated no resource: its rules apply to kinds this Forgefile does "
                "not declare, so a pass would mean nothing"
                if rules or policy.rego is not None
                else "the policy holds no rules, so a pass would mean nothing: add rules, or "
                'use a pack (policy { packs = ["baseline"] })',
                None,
            )
        )
    return Verdict(
        tuple(findings),
        evaluated,
        policy.digest,
        tuple(problems),
        policy.packs,
        rules,
        run,
        policy.params,
    )


def _did_you_mean(rule_id: str, rules: Sequence[Rule]) -> str:
    near = suggest(rule_id, [r.id for r in rules])
    return f" ({near})" if near else ""


def _judge_rego(
    source: RegoSource, doc: ir.Document
) -> tuple[list[Finding], tuple[Rule, ...], dict[str, Any]]:
    """Findings from the Rego adapter, each under a rule of its own; errors block (fail-closed)."""
    from compiler import rego

    rules: dict[str, Rule] = {}

    def rule(rule_id: str, verdict: str) -> Rule:
        if rule_id not in rules:
            rules[rule_id] = _rego_rule(source, rule_id, verdict)
        return rules[rule_id]

    document = {"version": 1, **doc.to_document()}
    try:
        result = rego.evaluate_rego(
            source.folder,
            document,
            timeout=source.timeout,
            memory_mb=source.memory_mb,
            namespace=source.namespace,
            engine=source.engine,
        )
    except rego.RegoError as exc:
        failed = _failed(rule("rego:error", "deny"), "", str(exc), source.span)
        return [failed], tuple(rules.values()), {"engine": None, "errors": [str(exc)]}

    spans = {r.address: r.span for r in doc.resources}
    findings = [
        _failed(
            rule("rego:error", "deny"),
            "",
            f"the Rego engine failed: {error}",
            source.span_in(error) or source.span,
        )
        for error in result.errors
    ]
    for item in result.findings:
        address = item["resource"] or _named_address(item["message"], spans)
        message = item["message"]
        if address and address not in spans:
            # A typo in the policy, or a resource since renamed: say so, not just place it.
            message += f" (it names `{address}`, which this Forgefile does not declare)"
            address = ""
        found = Finding(
            rule(item["rule"], item["verdict"]),
            address,
            message,
            spans.get(address, source.span),
        )
        if item["excepted"]:
            # conftest's `exception`: the finding is kept for the record, and does not count.
            found = Finding(
                found.rule,
                found.address,
                f"{found.message} (excepted by the Rego `exception` rule)",
                found.span,
                "waived",
            )
        findings.append(found)
    run = result.to_json()
    del run["findings"], run["verdict"]  # they are the verdict's own findings now
    return findings, tuple(rules.values()), run


def _rego_rule(source: RegoSource, rule_id: str, verdict: str) -> Rule:
    """The stand-in for a Rego rule: it carries the id, level and span a Finding needs."""
    blocking = verdict == "deny"
    title = (
        "The Rego policy could not be judged"
        if rule_id == "rego:error"
        else f"Rego rule `{rule_id.removeprefix('rego:')}`"
    )
    return Rule(
        id=rule_id,
        title=title,
        kinds=(),
        verdict=verdict,
        condition=Literal(source.span, True),
        message=Literal(source.span, ""),
        severity="high" if blocking else "medium",
        enforcement=source.level if blocking else "advisory",
        controls=(),
        remediation="",
        span=source.span,
        pack="rego",
    )


def _named_address(message: str, spans: dict[str, Span]) -> str:
    """The one resource address a string message names, as in `sprintf("%s ...", [r.address])`."""
    named = {word for word in _ADDRESS.findall(message) if word in spans}
    return named.pop() if len(named) == 1 else ""


_ADDRESS = re.compile(r"[a-z]+\.[A-Za-z0-9_-]+(?:\[[^\]]*\])?")


def evaluate_rules(
    rules: list[Rule], doc: ir.Document, digest: str, params: dict[str, Any] | None = None
) -> Verdict:
    """Judge with the rules alone: their own levels, no waivers or overrides (for tests); the
    rules read `params` (their defaults, as the caller gives them)."""
    given = tuple(sorted((params or {}).items()))
    policy = Policy(rules=tuple(rules), digest=digest, params=given)
    return judge(policy, doc, dt.date.min)


def level_of(rule: Rule, policy: Policy, packs: dict[str, Pack], today: dt.date) -> tuple[str, str]:
    """The enforcement level that applies to `rule` today, and the rollout it is in, if any."""
    entry = next((e for e in policy.enforce if e.target == rule.id), None) or next(
        (e for e in policy.enforce if rule.pack and e.target == rule.pack), None
    )
    pack = packs.get(rule.pack)
    level = (
        (entry.level if entry else None)
        or rule.enforcement
        or (pack.enforcement if pack else "hard")
    )
    if entry is not None and entry.warn_until is not None:
        rollout = f"advisory until {entry.warn_until.isoformat()}, then {level}"
        if today <= entry.warn_until:
            return "advisory", rollout
        return level, rollout
    return level, ""


def _settle(
    found: Finding,
    level_today: tuple[str, str],
    waivers: list[ir.Waiver],
    overrides: Sequence[Override],
) -> Finding:
    """The finding's status: what its level, a waiver or an override makes of it."""
    rule = found.rule
    level, rollout = level_today
    if found.error:
        return Finding(
            rule, found.address, found.message, found.span, "blocking", level, error=True
        )
    if found.status == "waived":  # excepted before it got here, by a Rego `exception` rule
        return Finding(rule, found.address, found.message, found.span, "waived", level)
    waiver = next((w for w in waivers if _waives(w, rule.id, found.address)), None)
    if waiver is not None:
        status = "waived"
    elif rule.verdict == "info":
        status = "info"
    elif rule.verdict == "warn" or level == "advisory":
        status = "warning"
    elif level == "soft" and (override := _override_for(found, overrides)) is not None:
        return Finding(
            rule,
            found.address,
            found.message,
            found.span,
            "overridden",
            level,
            None,
            override,
            rollout,
        )
    else:
        status = "blocking"
    return Finding(
        rule, found.address, found.message, found.span, status, level, waiver, None, rollout
    )


def _waives(waiver: ir.Waiver, rule_id: str, address: str) -> bool:
    """A waiver names a rule and a resource; `document` names a whole-document rule's finding."""
    return waiver.rule == rule_id and (
        waiver.resource == address or (waiver.resource == _WHOLE and address == "")
    )


def _orphan(
    waiver: ir.Waiver,
    policy: Policy,
    rules: Sequence[Rule],
    doc: ir.Document,
    findings: Sequence[Finding],
) -> str:
    """Why a live waiver excused nothing: the most likely reason first."""
    if not policy.rule(waiver.rule) and not any(r.id == waiver.rule for r in rules):
        return (
            f"waiver `{waiver.name}` names rule {waiver.rule}, which no loaded policy has"
            + _did_you_mean(waiver.rule, rules)
        )
    other = next(
        (
            f.waiver
            for f in findings
            if f.waiver is not None and _waives(waiver, f.rule.id, f.address)
        ),
        None,
    )
    if other is not None:
        return (
            f"waiver `{waiver.name}` repeats waiver `{other.name}` ({other.span}) for rule "
            f"{waiver.rule} and {waiver.resource}; remove one"
        )
    addresses = [r.address for r in doc.resources]
    if waiver.resource != _WHOLE and waiver.resource not in addresses:
        near = suggest(waiver.resource, addresses)
        return (
            f"waiver `{waiver.name}` names {waiver.resource}, which this Forgefile does not "
            f"declare" + (f" ({near})" if near else "")
        )
    return (
        f"waiver `{waiver.name}` excuses {waiver.resource} from rule {waiver.rule}, which it "
        "does not break"
    )


def _override_for(found: Finding, overrides: Sequence[Override]) -> Override | None:
    """The override for this finding: one naming its resource before one for the whole rule."""
    matching = [o for o in overrides if o.rule == found.rule.id]
    return next((o for o in matching if o.resource == found.address), None) or next(
        (o for o in matching if o.resource == ""), None
    )


def _evaluate(
    rules: Sequence[Rule],
    doc: ir.Document,
    levels: dict[str, tuple[str, str]],
    params: dict[str, Any],
) -> tuple[list[Finding], int]:
    """Every rule over every resource it applies to: linear in rules times resources.

    Findings carry the status their rule's level gives them; waivers and overrides come later.
    """
    findings: list[Finding] = []
    evaluated = 0
    whole = doc.to_document()
    documents = list(zip(doc.resources, whole["resources"], strict=True))
    for rule in rules:
        level, rollout = levels[rule.id]
        try:
            base = _bindings(rule, whole, params)
        except (DiagnosticError, TypeError) as exc:
            why = f"its `let` bindings failed: {exc}"
            findings.append(_failed(rule, "", why, rule.span, level))
            continue
        judged = _judge(rule, level, rollout, _document_span(doc), findings)
        current: ir.Resource | None = None
        try:
            with _time_limit(RULE_TIME_LIMIT):
                if not rule.kinds:
                    evaluated += 1
                    judged(Scope(bindings=base), "", None)
                    continue
                # One scope per rule, its `resource` rebound for each resource: scopes are not
                # free.
                bindings = dict(base)
                scope = Scope(bindings=bindings)
                kinds = rule.kinds
                for current, document in documents:
                    if current.kind in kinds:
                        evaluated += 1
                        bindings["resource"] = document
                        judged(scope, document["address"], current)
        except _Overran:
            # Fail closed: the rule blocks, and says where it was when time ran out.
            where = current.address if current else "the document"
            why = (
                f"it ran past {RULE_TIME_LIMIT:g} s, at {where} (a regular expression that "
                "backtracks on this value, such as (a+)+, does that)"
            )
            span = current.span if current else _document_span(doc)
            findings.append(_failed(rule, current.address if current else "", why, span, level))
    return findings, evaluated


# A rule over every resource takes milliseconds; one that runs for seconds is stuck, usually in
# a regular expression backtracking on a value the Forgefile chose.
RULE_TIME_LIMIT = 5.0


class _Overran(BaseException):
    """Raised by the timer inside a rule that ran too long. A BaseException, so that no
    `except Exception` on the way (a function call retried for its diagnostic) can swallow it."""


@contextlib.contextmanager
def _time_limit(seconds: float) -> Iterator[None]:
    """Interrupt the block after `seconds`, with a timer signal (Python's `re` checks for
    signals while it matches). Only the main thread gets signals: elsewhere, no limit."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def expire(signum: int, frame: object) -> None:
        raise _Overran

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _judge(
    rule: Rule, level: str, rollout: str, whole_span: Span, findings: list[Finding]
) -> Callable[[Scope, str, ir.Resource | None], None]:
    """One rule, compiled once: a call judges one resource (None: the document) into findings."""
    condition, message = compiled(rule.condition), compiled(rule.message)
    status = _status(rule, level)
    first = _first_field(rule.condition) or ""

    def judged(scope: Scope, address: str, resource: ir.Resource | None) -> None:
        try:
            fired = condition(scope)
            if fired is False:
                return
            if fired is not True:
                raise TypeError(f"the condition gave {a_type(fired)}, not a bool")
            text = str(message(scope))
            # The span is looked up only for what fired: most resources pass.
            where = resource.span_of(first) if resource else whole_span
            findings.append(Finding(rule, address, text, where, status, level, None, None, rollout))
        except (DiagnosticError, TypeError) as exc:
            # Fail closed: a rule that cannot be evaluated blocks like one that fired.
            where = resource.span if resource else whole_span
            findings.append(_failed(rule, address, str(exc), where, level))

    return judged


def _status(rule: Rule, level: str) -> str:
    """A finding's status from its rule and level alone, as `_settle` gives it unwaived."""
    if rule.verdict == "info":
        return "info"
    if rule.verdict == "warn" or level == "advisory":
        return "warning"
    return "blocking"


def _bindings(rule: Rule, whole: dict[str, Any], params: dict[str, Any]) -> dict[str, Any]:
    bound: dict[str, Any] = {_WHOLE: whole, _PARAM: params}
    for name, expr in rule.bindings:
        bound[name] = compiled(expr)(Scope(bindings=bound))
    return bound


def _failed(rule: Rule, address: str, why: str, span: Span, level: str = "hard") -> Finding:
    message = f"rule `{rule.id}` could not be evaluated: {why}"
    return Finding(rule, address, message, span, "blocking", level, error=True)


def _document_span(doc: ir.Document) -> Span:
    return Span(doc.path, 1, 1, 1, 1)


def _first_field(expr: Expr) -> str | None:
    for node in subexpressions(expr):
        if (
            isinstance(node, GetAttr)
            and isinstance(node.target, Variable)
            and node.target.name == "resource"
        ):
            return node.name
    return None


def explain_bindings(
    rule: Rule, doc: ir.Document, address: str, params: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The values a rule read for one resource: each `resource.X` and `param.X` it names, and
    its `let`s."""
    resource = doc.resource(address)
    document = resource.to_document() if resource else {}
    read = sorted(
        {
            (node.target.name, node.name)
            for expr in (rule.condition, rule.message, *(e for _, e in rule.bindings))
            for node in subexpressions(expr)
            if isinstance(node, GetAttr)
            and isinstance(node.target, Variable)
            and node.target.name in ("resource", _PARAM)
        }
    )
    given = params or {}
    values: dict[str, Any] = {
        f"{where}.{name}": (document if where == "resource" else given).get(name)
        for where, name in read
    }
    try:
        bound = _bindings(rule, doc.to_document(), params or {})
        values.update({name: bound[name] for name, _ in rule.bindings})
    except (DiagnosticError, TypeError) as exc:
        values["(let bindings)"] = f"failed: {exc}"
    return values


def pack_reference() -> str:
    """The packs Forge ships, rule by rule, as the markdown tables of docs/policy.md."""
    parts = []
    for name in stdlib.policy_packs():
        loaded = load_policy([Path(str(stdlib.policy_pack(name)))])
        [pack] = loaded.packs
        parts.append(f"### `{name}`: {pack.title} (default level `{pack.enforcement}`)\n")
        parts.append("| rule | title | applies to | severity | level | controls |")
        parts.append("|---|---|---|---|---|---|")
        for rule in loaded.rules:
            kinds = ", ".join(rule.kinds) or _WHOLE
            level = rule.enforcement or pack.enforcement
            controls = ", ".join(rule.controls)
            parts.append(
                f"| {rule.id} | {rule.title} | {kinds} | {rule.severity} | {level} | {controls} |"
            )
        parts.append("")
        if loaded.declared:
            parts.append("| param | default | what it is |")
            parts.append("|---|---|---|")
            for param in loaded.declared:
                default = jsonable(param.default)
                parts.append(f"| `{param.name}` | `{default}` | {param.description} |")
            parts.append("")
    return "\n".join(parts)
