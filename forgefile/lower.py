"""Lowering: a parsed Forgefile to the typed IR, checked against the block schemas.

Every problem found is collected, so one run shows them all: unknown blocks and attributes with
"did you mean", wrong types showing both the declaration and the value, missing required
attributes, duplicate addresses and unset variables.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import ipaddress
import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stdlib.functions import CallContext

from . import collector, ir
from .diagnostics import Collector, DiagnosticError, Related, Severity, Span, suggest
from .evaluate import FAILED, Deferred, EvalError, Scope, evaluate
from .schema import (
    CAPABILITIES,
    ENV_NAME,
    RESOURCE_KINDS,
    SCHEMAS,
    ULIMITS,
    Attr,
    BlockSpec,
    Mismatch,
    RefTo,
    coerce,
)
from .syntax import (
    MAX_FILE_BYTES,
    Attribute,
    Block,
    File,
    GetAttr,
    Literal,
    Variable,
    parse,
    subexpressions,
)
from .values import (
    AttributeRef,
    Key,
    ResourceRef,
    instance_address,
    instance_name,
    type_name,
)

FORGEFILE = "Forgefile"


def load(
    path: Path,
    variables: Mapping[str, str] | None = None,
    environ: Mapping[str, str] | None = None,
) -> ir.Document:
    """Read, parse and lower the Forgefile at `path` (a file, or a folder holding `Forgefile`).

    `variables` are values given on the command line as text; `FORGE_VAR_<name>` in `environ`
    is read for the others.
    """
    path = path / FORGEFILE if path.is_dir() else path
    data = _read(path)
    text = _decode(data, path)
    # Spans name the file by its absolute path, so that what is made of them (plans, policy
    # findings, digests) does not depend on where forge runs; the terminal shows it shorter.
    shown = str(path.resolve())
    env = dict(os.environ if environ is None else environ)
    # Without the collector's walks, ~40% less time (docs/performance.md).
    with collector.paused():
        parsed = parse(text, shown)
        return Lowering(parsed, path.parent.resolve(), dict(variables or {}), env).run(
            digest="sha256:" + hashlib.sha256(data).hexdigest()
        )


def _read(path: Path) -> bytes:
    try:
        with path.open("rb") as stream:
            # One byte past the limit is enough to refuse it; never read /dev/zero to the end.
            return stream.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise DiagnosticError(
            [
                _diag(
                    "F0000",
                    f"cannot read {path}: {exc.strerror}",
                    None,
                    "pass a Forgefile or a folder holding one with --file",
                )
            ]
        ) from None


def _decode(data: bytes, path: Path) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DiagnosticError(
            [_diag("F0005", f"{path} is not UTF-8 text (byte {exc.start})", None)]
        ) from None


def _literal(value: Any) -> str:
    """A value as the Forgefile writes it: true, not True."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return _show(value) or repr(value)


def _display_path(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def _diag(code: str, message: str, span: Span | None, hint: str = "") -> Any:
    from .diagnostics import Diagnostic

    return Diagnostic(code, message, span, hint)


@dataclass
class _Declared:
    block: Block
    spec: BlockSpec


class Lowering:
    """One pass over one parsed file; `run()` returns the Document or raises all diagnostics."""

    def __init__(
        self,
        parsed: File,
        base_dir: Path,
        given: dict[str, str],
        environ: dict[str, str],
        namespace: str = "",
        chain: tuple[Path, ...] = (),
        inputs: dict[str, tuple[Any, Span]] | None = None,
    ) -> None:
        self.file = parsed
        # Block spans a per-block diagnostic was given for, so count instances repeat none.
        self._said_once: set[Span] = set()
        # For an imported module: its import path, the files that imported it (to refuse
        # cycles), and the values its import block gave its variables.
        self.namespace = namespace
        self.chain = chain
        self.inputs = inputs
        self.modules: dict[str, Any] = {}
        self.imported: list[ir.Document] = []
        self.output_values: dict[str, Any] = {}
        self.base_dir = base_dir
        self.given = given
        self.environ = environ
        self.errors = Collector()
        self.context = CallContext(base_dir=base_dir, environ=environ)
        self.resources: dict[str, set[str]] = {}
        self.local_exprs: dict[str, Any] = {}
        self.local_values: dict[str, Any] = {}
        self.local_stack: list[str] = []
        self.variable_values: dict[str, Any] = {}
        self.instances: dict[str, Any] = {}  # group address -> keys, or FAILED

    def run(self, digest: str) -> ir.Document:
        blocks = self._declarations()
        variables = [self._variable(b) for b in blocks.get("variable", [])]
        for lb in blocks.get("locals", []):
            for attr in lb.attributes:
                if attr.name in self.local_exprs:
                    first = self.local_exprs[attr.name]
                    self.errors.error(
                        "E0121",
                        f"local `{attr.name}` is set twice",
                        attr.span,
                        "remove one; locals are one namespace across every locals block",
                        [Related(first.span, "first set here")],
                    )
                    continue
                self.local_exprs[attr.name] = attr
        for block in blocks.get("import", []):
            self._import(block)
        scope = self._scope()
        for name in list(self.local_exprs):
            self._local(name, self.local_exprs[name].span)
        self._unknown_variables(blocks.get("variable", []))
        self._pending_kinds(blocks)
        resource_blocks = [b for kind in RESOURCE_KINDS for b in blocks.get(kind, [])]
        expansions = {id(b): self._expansion(b, scope) for b in resource_blocks}
        scope = self._scope()
        resources = [
            self._resource(block, scope.child(bindings), key)
            for block in resource_blocks
            for key, bindings in expansions[id(block)]
        ]
        resources = [self._resolve_groups(r) for r in resources if r is not None]
        outputs = [self._output(b) for b in blocks.get("output", [])]
        waivers = [self._waiver(b, scope) for b in blocks.get("waiver", [])]
        if self.inputs is not None:
            self._module_outputs(blocks.get("output", []))
        self._unused(variables)
        self.errors.raise_if_errors()
        inputs = {self.file.path: digest, **self.context.files_read}
        for child in self.imported:
            resources.extend(child.resources)
            inputs.update(dict(child.inputs))
            self.instances.update(dict(child.groups))
        return ir.Document(
            path=self.file.path,
            resources=tuple(r for r in resources if r is not None),
            variables=tuple(v for v in variables if v is not None),
            outputs=tuple(o for o in outputs if o is not None),
            inputs=tuple(sorted(inputs.items())),
            variable_values=tuple(sorted(self.variable_values.items())),
            groups=tuple(self.instances.items()),
            local_values=tuple(sorted(self.local_values.items())),
            module_outputs=tuple(sorted(self.modules.items())),
            warnings=tuple(d for d in self.errors.items if d.severity is Severity.WARNING)
            + tuple(w for child in self.imported for w in child.warnings),
            waivers=tuple(w for w in waivers if w is not None)
            + tuple(w for child in self.imported for w in child.waivers),
        )

    def _waiver(self, block: Block, scope: Scope) -> ir.Waiver | None:
        """A `waiver` block: which rule and resource, until when, who and why."""
        values = self._attributes(block, SCHEMAS["waiver"], scope)
        if values is None:
            return None
        target = values["resource"]
        if isinstance(target, ResourceRef):
            address = target.address
        elif isinstance(target, str) and target:
            address = target
        else:
            self.errors.error(
                "E0160",
                "a waiver's `resource` is a reference, such as service.web",
                dict(self._attr_spans(block)).get("resource", block.span),
                "write resource = service.NAME (or the address as a string)",
            )
            return None
        spans = dict(self._attr_spans(block))
        blank = [key for key in ("rule", "reason", "owner") if not str(values[key]).strip()]
        for key in blank:
            self.errors.error(
                "E0162",
                f"a waiver's `{key}` is blank",
                spans.get(key, block.span),
                ir.WAIVER_HINTS[key],
            )
        if blank:
            return None
        expires = str(values["expires"])
        try:
            datetime.date.fromisoformat(expires)
        except ValueError:
            self.errors.error(
                "E0161",
                f"`{expires}` is not a date",
                spans.get("expires", block.span),
                'write the last day the waiver holds as "YYYY-MM-DD"',
            )
            return None
        return ir.Waiver(
            block.span,
            self._attr_spans(block),
            name=block.labels[0] if block.labels else "",
            rule=str(values["rule"]),
            resource=address,
            reason=str(values["reason"]),
            owner=str(values["owner"]),
            expires=expires,
        )

    # -- modules --------------------------------------------------------------------------------

    def _import(self, block: Block) -> None:
        """Lower the module an `import` block names, with its inputs; keep its outputs."""
        alias = block.labels[0]
        self.modules[alias] = _FailedModule()
        if alias in _RESERVED_NAMES:
            self.errors.error(
                "E0154",
                f"`{alias}` cannot name a module: it is a reserved name",
                block.label_spans[0],
                "choose another name for the import",
            )
            return
        source_attr = block.attribute("source")
        if source_attr is None:
            self.errors.error(
                "E0122",
                f'`import "{alias}"` needs `source`',
                block.span,
                'add source = "./path/to/module"',
            )
            return
        literal = source_attr.value
        if not (isinstance(literal, Literal) and isinstance(literal.value, str)):
            self.errors.error(
                "E0155",
                "`source` must be a plain string: modules are found before anything is evaluated",
                literal.span,
                'e.g. source = "./modules/db"',
            )
            return
        path = (self.base_dir / literal.value).resolve()
        path = path / FORGEFILE if path.is_dir() else path
        if not path.is_file():
            self.errors.error(
                "E0150",
                f"no Forgefile at {path}",
                literal.span,
                "source names a folder holding a Forgefile, relative to this file",
            )
            return
        own = (self.base_dir / FORGEFILE).resolve()
        if path in self.chain or path == own:
            cycle = " -> ".join(_display_path(p) for p in (*self.chain, own, path))
            self.errors.error(
                "E0151",
                f"modules import each other in a cycle: {cycle}",
                source_attr.span,
                "break the cycle",
            )
            return
        if len(self.chain) >= MAX_IMPORT_DEPTH:
            self.errors.error(
                "E0152",
                f"imports nest deeper than {MAX_IMPORT_DEPTH}",
                source_attr.span,
                "flatten the modules",
            )
            return
        scope = self._scope()
        values: dict[str, tuple[Any, Span]] = {}
        for attr in block.attributes:
            if attr.name in ("source", *META_ARGUMENTS):
                continue
            try:
                values[attr.name] = (evaluate(attr.value, scope), attr.span)
            except DiagnosticError as exc:
                self.errors.items.extend(exc.diagnostics)
                return
        try:
            data = _read(path)
            parsed = parse(_decode(data, path), _display_path(path))
            namespace = f"{self.namespace}.{alias}" if self.namespace else alias
            child = Lowering(
                parsed,
                path.parent,
                {},
                self.environ,
                namespace,
                (*self.chain, (self.base_dir / FORGEFILE).resolve()),
                values,
            )
            document = child.run(digest="sha256:" + hashlib.sha256(data).hexdigest())
        except DiagnosticError as exc:
            self.errors.items.extend(exc.diagnostics)
            return
        self.modules[alias] = child.output_values
        self.imported.append(document)

    def _module_outputs(self, blocks: list[Block]) -> None:
        """What the importing file may read as NAME.OUTPUT: values, references, or (for an
        output that reads a computed attribute) the expression, to evaluate where it is read."""
        needs_plan = False

        def planned(ref: AttributeRef) -> Any:
            nonlocal needs_plan
            needs_plan = True
            return _stand_in(ref)

        scope = dataclasses.replace(self._scope(), context=None)
        for block in blocks:
            value = block.attribute("value")
            if value is None:
                continue
            needs_plan = False
            try:
                result = evaluate(value.value, scope.reading(planned))
            except DiagnosticError:
                result = FAILED  # reported where the module lowers its own outputs
            self.output_values[block.labels[0]] = (
                Deferred(value.value, scope) if needs_plan and result is not FAILED else result
            )

    def _unused(self, variables: list[ir.Variable | None]) -> None:
        """Variables and locals that nothing reads are usually a typo on one side."""
        read = _names_read(self.file.body)
        for variable in variables:
            if variable is not None and ("var", variable.name) not in read:
                self.errors.warning(
                    "W0101",
                    f"variable `{variable.name}` is declared but never used",
                    variable.span,
                    "remove it, or use it as var." + variable.name,
                )
        for name, attr in self.local_exprs.items():
            if ("local", name) not in read:
                self.errors.warning(
                    "W0102",
                    f"local `{name}` is declared but never used",
                    attr.span,
                    "remove it, or use it as local." + name,
                )

    def _unknown_variables(self, declared: list[Block]) -> None:
        """A --var for a variable the Forgefile does not declare is a typo, not a no-op."""
        names = [b.labels[0] for b in declared]
        for name, (_value, span) in (self.inputs or {}).items():
            if name not in names:
                self.errors.error(
                    "E0153",
                    f"module {self.namespace} has no input `{name}`",
                    span,
                    suggest(name, names) or f"its inputs are: {', '.join(names) or 'none'}",
                )
        for name in self.given:
            if name not in names:
                self.errors.error(
                    "E0141",
                    f"--var {name}=... sets a variable the Forgefile does not declare",
                    None,
                    suggest(name, names) or f'declare it with variable "{name}" {{ ... }}',
                )

    def _pending_kinds(self, blocks: dict[str, list[Block]]) -> None:
        for kind, spec in SCHEMAS.items():
            for block in blocks.get(kind, []) if spec.pending else []:
                self._attributes(block, spec, self._scope())  # checked, though not carried out
                self.errors.error(
                    "E0307",
                    f"{spec.pending} ({kind} blocks) are not carried out by this version of "
                    "Forge yet",
                    block.type_span,
                    f"remove the `{kind}` block for now",
                )

    # -- count and for_each ---------------------------------------------------------------------

    def _expansion(self, block: Block, scope: Scope) -> list[tuple[Key | None, dict[str, Any]]]:
        """The instances a block stands for: (key, bindings) pairs; one unkeyed if plain."""
        count, for_each = block.attribute("count"), block.attribute("for_each")
        if count is None and for_each is None:
            return [(None, {})]
        address = instance_address(block.type, block.labels[0], None, self.namespace)
        if block.type == "image" or (count is not None and for_each is not None):
            meta = count or for_each
            assert meta is not None
            self.errors.error(
                "E0130",
                "an image cannot have count or for_each"
                if block.type == "image"
                else f"{address} has both count and for_each",
                meta.name_span,
                "build one image and use it from many workloads"
                if block.type == "image"
                else "keep one of them",
            )
            return []
        try:
            if count is not None:
                value = evaluate(count.value, scope)
                pairs = self._count(value, count)
            else:
                assert for_each is not None
                value = evaluate(for_each.value, scope)
                pairs = self._for_each(value, for_each)
        except DiagnosticError as exc:
            self.errors.items.extend(exc.diagnostics)
            self.instances[address] = FAILED
            return []
        self.instances[address] = tuple(key for key, _ in pairs)
        return list(pairs)

    def _count(self, value: Any, attr: Attribute) -> list[tuple[Key, dict[str, Any]]]:
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_COUNT:
            raise EvalError(
                "E0131",
                f"count must be an int from 0 to {MAX_COUNT}, found {type_name(value)} "
                f"{_show(value)}",
                attr.value.span,
                "count is how many instances to make, e.g. count = 3",
            )
        return [(i, {"count": {"index": i}}) for i in range(value)]

    def _for_each(self, value: Any, attr: Attribute) -> list[tuple[Key, dict[str, Any]]]:
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            if len(set(value)) != len(value):
                raise EvalError(
                    "E0132",
                    f"for_each lists `{next(v for v in value if value.count(v) > 1)}` twice",
                    attr.value.span,
                    "each key names one instance; remove the duplicate",
                )
            items = [(v, v) for v in value]
        elif isinstance(value, dict):
            items = list(value.items())
        else:
            raise EvalError(
                "E0133",
                f"for_each takes a map or a list of strings, found {type_name(value)}",
                attr.value.span,
                'e.g. for_each = { eu = "10.213.1.0/24" } or for_each = ["a", "b"]',
            )
        if len(items) > MAX_COUNT:
            raise EvalError(
                "E0131",
                f"for_each makes more than {MAX_COUNT} instances",
                attr.value.span,
                "split the resource",
            )
        bad = next((k for k, _ in items if not _valid_name(k)), None)
        if bad is not None:
            raise EvalError(
                "E0134",
                f"for_each key {bad!r} is not a valid instance name",
                attr.value.span,
                "keys name instances: letters, digits, _ and -, starting with a letter",
            )
        return [(k, {"each": {"key": k, "value": v}}) for k, v in items]

    def _resolve_groups(self, resource: ir.Resource) -> ir.Resource:
        """`depends_on = [service.web]` means every instance; elsewhere one must be chosen."""
        for ref in resource.references():
            if (
                ref.key is None
                and self.instances.get(ref.address, FAILED) is not FAILED
                and not self._in_depends_on(resource, ref)
            ):
                keys = self.instances[ref.address]
                example = f"{ref.address}[{keys[0]!r}]" if keys else ref.address
                self.errors.error(
                    "E0135",
                    f"{ref.address} has count or for_each; name one instance",
                    ref.span,
                    f"write {example.replace(chr(39), chr(34))}",
                )
        depends_on = getattr(resource, "depends_on", None)
        if not depends_on:
            return resource
        expanded: list[ResourceRef] = []
        for ref in depends_on:
            group = self.instances.get(ref.address) if ref.key is None else None
            if group is None:
                expanded.append(ref)
            elif group is not FAILED:
                expanded.extend(
                    ResourceRef(ref.kind, ref.name, ref.span, k, ref.namespace) for k in group
                )
        return dataclasses.replace(resource, depends_on=tuple(expanded))  # type: ignore[call-arg]

    def _in_depends_on(self, resource: ir.Resource, ref: ResourceRef) -> bool:
        return any(r is ref for r in getattr(resource, "depends_on", ()))

    # -- declarations ---------------------------------------------------------------------------

    def _declarations(self) -> dict[str, list[Block]]:
        """Top-level blocks by type, with unknown types and duplicate addresses reported."""
        by_type: dict[str, list[Block]] = {}
        seen: dict[str, Block] = {}
        for attr in self.file.body.attributes:
            self.errors.error(
                "E0101",
                f"attribute `{attr.name}` outside any block",
                attr.span,
                "put it inside a block, or in a `locals { ... }` block",
            )
        for block in self.file.body.blocks:
            spec = SCHEMAS.get(block.type)
            if spec is None:
                self.errors.error(
                    "E0102",
                    f"unknown block type `{block.type}`",
                    block.type_span,
                    suggest(block.type, SCHEMAS) or f"the block types are: {', '.join(SCHEMAS)}",
                )
                continue
            if len(block.labels) != len(spec.labels):
                want = " ".join(f'"{label}"' for label in spec.labels) or "no label"
                self.errors.error(
                    "E0103",
                    f"`{block.type}` takes {want}, found {len(block.labels)} label(s)",
                    block.type_span,
                    f"write it as `{block.type} {want} {{ ... }}`"
                    if spec.labels
                    else f"write it as `{block.type} {{ ... }}`",
                )
                continue
            if spec.labels and not _valid_name(block.labels[0]):
                self.errors.error(
                    "E0104",
                    f"`{block.labels[0]}` is not a valid name",
                    block.label_spans[0],
                    "names start with a letter and hold letters, digits, _ and -",
                )
                continue
            if spec.labels:
                address = f"{block.type}.{block.labels[0]}"
                if address in seen:
                    self.errors.error(
                        "E0105",
                        f"`{address}` is declared twice",
                        block.span,
                        "rename one of them",
                        [Related(seen[address].span, "first declared here")],
                    )
                    continue
                seen[address] = block
                self.resources.setdefault(block.type, set()).add(block.labels[0])
            by_type.setdefault(block.type, []).append(block)
        return by_type

    def _scope(self) -> Scope:
        return Scope(
            variables=self.variable_values,
            locals=self.local_values,
            resources=self.resources,
            instances=self.instances,
            context=self.context,
            lazy_local=self._local,
            namespace=self.namespace,
            modules=self.modules,
        )

    def _local(self, name: str, span: Span) -> Any:
        """Evaluate a local on first use, so locals may refer to each other in any order."""
        if name in self.local_values:
            return self.local_values[name]
        attr = self.local_exprs.get(name)
        if attr is None:
            raise EvalError(
                "E0203",
                f"unknown local value `local.{name}`",
                span,
                suggest(name, self.local_exprs) or "declare it in a locals block",
            )
        if name in self.local_stack:
            cycle = " -> ".join(f"local.{n}" for n in [*self.local_stack, name])
            raise EvalError(
                "E0106", f"local values refer to each other in a cycle: {cycle}", attr.span
            )
        self.local_stack.append(name)
        try:
            value = evaluate(attr.value, self._scope())
        except DiagnosticError as exc:
            self.errors.items.extend(exc.diagnostics)
            value = FAILED  # reported; whatever reads it stays quiet
        finally:
            self.local_stack.pop()
        self.local_values[name] = value
        return value

    # -- variables and outputs ------------------------------------------------------------------

    def _variable(self, block: Block) -> ir.Variable | None:
        # `type = string` names a type, so the type names evaluate to themselves here.
        type_names = {t: t for t in (*_TYPES, "any")}
        values = self._attributes(
            block, SCHEMAS["variable"], Scope(context=self.context, bindings=type_names)
        )
        name = block.labels[0]
        # Until the value is known good, references to it are quiet: one error per variable.
        self.variable_values[name] = FAILED
        if values is None:
            return None
        type_ = values["type"]
        has_default = block.attribute("default") is not None
        value: Any
        if self.inputs is not None and name in self.inputs:
            value, span = self.inputs[name]
            if type_ != "any":
                try:
                    coerce(value, _TYPES[type_])
                except Mismatch:
                    self.errors.error(
                        "E0123",
                        f"input `{name}` of module {self.namespace} must be {type_}, found "
                        f"{type_name(value)} {_show(value)}",
                        span,
                        f"the module declares variable `{name}` as {type_}",
                    )
                    return None
        elif self.inputs is None and (name in self.given or f"FORGE_VAR_{name}" in self.environ):
            text = self.given.get(name, self.environ.get(f"FORGE_VAR_{name}", ""))
            try:
                value = _from_text(text, type_)
            except ValueError as exc:
                self.errors.error(
                    "E0107", f"variable `{name}`: {exc}", block.span, f"give a {type_} value"
                )
                return None
        elif has_default:
            value = values["default"]
            if type_ != "any":
                try:
                    coerce(value, _TYPES[type_])
                except Mismatch as exc:
                    self.errors.error(
                        "E0108",
                        f"the default of `var.{name}` is a "
                        f"{type_name(value)}, but the variable is declared {type_}",
                        dict(self._attr_spans(block)).get("default", block.span),
                        "change the default or the type",
                        [Related(block.span, f"declared type {exc.expected}")],
                    )
                    return None
        else:
            self.errors.error(
                "E0109",
                f"variable `{name}` is not set and has no default",
                block.span,
                f"give `{name} = ...` in the block that imports {self.namespace}"
                if self.inputs is not None
                else f"pass --var {name}=VALUE, set FORGE_VAR_{name}, or give the variable a "
                "default",
            )
            return None
        # TODO(#9): a sensitive variable's value is hidden in outputs only; where a resource
        # uses it, it still shows in `forge show`, plan diffs and the plan's specs.
        if not self._validate(block, name, value):
            return None
        self.variable_values[name] = value
        return ir.Variable(
            block.span,
            self._attr_spans(block),
            name=name,
            type=type_,
            default=values["default"],
            has_default=has_default,
            description=values["description"],
            sensitive=values["sensitive"],
        )

    def _validate(self, block: Block, name: str, value: Any) -> bool:
        """Run the variable's `validation` blocks against its value; False if one fails."""
        spec, _ = SCHEMAS["variable"].blocks["validation"]
        scope = Scope(variables={name: value}, context=None)
        ok = True
        for child in block.blocks:
            if child.type != "validation":
                self.errors.error(
                    "E0125",
                    f"`variable` has no block `{child.type}`",
                    child.type_span,
                    "its blocks are: validation",
                )
                ok = False
                continue
            self._unknown_attributes(child, spec)
            condition, message = child.attribute("condition"), child.attribute("message")
            if condition is None or message is None:
                self.errors.error(
                    "E0122",
                    "a validation block needs `condition` and `message`",
                    child.span,
                    'add condition = <bool> and message = "..."',
                )
                ok = False
                continue
            try:
                passed = evaluate(condition.value, scope)
                if not isinstance(passed, bool):
                    raise EvalError(
                        "E0217",
                        f"a condition must be a bool, found {type_name(passed)}",
                        condition.value.span,
                    )
                text = "" if passed else str(evaluate(message.value, scope))
            except DiagnosticError as exc:
                self.errors.items.extend(exc.diagnostics)
                ok = False
                continue
            if not passed:
                shown = "(sensitive)" if block.attribute("sensitive") else _show(value)
                self.errors.error(
                    "E0140",
                    f"var.{name} = {shown}: {text}",
                    condition.value.span,
                    "give the variable a value that meets its validation",
                )
                ok = False
        return ok

    def _output(self, block: Block) -> ir.Output | None:
        spec = SCHEMAS["output"]
        self._unknown_attributes(block, spec)
        value = block.attribute("value")
        if value is None:
            self.errors.error(
                "E0110",
                f"output `{block.labels[0]}` has no `value`",
                block.span,
                "add `value = ...`",
            )
            return None
        rest = {a.name: a for a in block.attributes if a.name != "value"}
        # Computed attributes get a stand-in here; the planner evaluates the output for real.
        # No CallContext: env() and file() belong in locals, whose values the plan records.
        scope = dataclasses.replace(self._scope(), attributes=_stand_in, context=None)
        try:
            evaluate(value.value, scope)
            description = (
                evaluate(rest["description"].value, scope) if "description" in rest else ""
            )
            sensitive = evaluate(rest["sensitive"].value, scope) if "sensitive" in rest else False
        except DiagnosticError as exc:
            context = f"while evaluating output.{block.labels[0]}"
            self.errors.items.extend(
                dataclasses.replace(d, context=context) for d in exc.diagnostics
            )
            return None
        return ir.Output(
            block.span,
            self._attr_spans(block),
            name=block.labels[0],
            value=value.value,
            description=str(description),
            sensitive=bool(sensitive),
        )

    # -- resources ------------------------------------------------------------------------------

    def _resource(self, block: Block, scope: Scope, key: Key | None) -> ir.Resource | None:
        spec = SCHEMAS[block.type]
        if spec.pending:
            return None  # reported once per block by _pending_kinds
        values = self._attributes(block, spec, scope)
        nested = self._nested(block, spec, scope)
        if values is None or nested is None:
            return None
        if not self._consistent(block, values):
            return None
        # What is only parsed (or only carried out at its default) has no place in the IR yet.
        values = {
            k: v
            for k, v in values.items()
            if not (a := spec.attribute(k)) or not (a.pending or a.ready)
        }
        name = block.labels[0]
        lifecycle = nested.get("lifecycle", [{}])[0]
        if block.type == "network" and lifecycle.get("create_before_destroy"):
            if block.span in self._said_once:
                return None  # said for the block, not again for each of its instances
            self._said_once.add(block.span)
            self.errors.error(
                "E0310",
                f'network "{block.labels[0]}" cannot be created before it is destroyed: its '
                "bridge is named by the network, and two of one name cannot exist at once",
                next(
                    marked.span
                    for b in block.blocks
                    if b.type == "lifecycle" and (marked := b.attribute("create_before_destroy"))
                ),
                "remove create_before_destroy; the workloads on it may keep theirs",
            )
            return None
        common: dict[str, Any] = {
            "span": block.span,
            "spans": self._attr_spans(block),
            "name": name,
            "key": key,
            "namespace": self.namespace,
            "lifecycle": ir.Lifecycle(
                prevent_destroy=bool(lifecycle.get("prevent_destroy", False)),
                ignore_changes=tuple(lifecycle.get("ignore_changes", ())),
                create_before_destroy=bool(lifecycle.get("create_before_destroy", False)),
            ),
        }
        match block.type:
            case "image":
                return self._image(block, values, nested, common)
            case "network":
                return self._network(block, values, common)
            case "volume":
                return ir.Volume(**common)
            case "service" | "job":
                limits = nested.get("resources", [{}])[0]
                problems = _limit_problems(limits)
                spans = {
                    a.name: a.span
                    for b in block.blocks
                    if b.type == "resources"
                    for a in b.attributes
                }
                for problem, attribute in problems:
                    self.errors.error(
                        "E0119",
                        problem,
                        spans.get(attribute, block.span),
                        "change it to a value in range; runc would refuse this one at apply",
                    )
                if problems:
                    return None
                values["resources"] = ir.Limits(**limits)
                binds = self._binds(block, nested.get("bind", []), values)
                if binds is None:
                    return None
                values["binds"] = binds
                if binds:
                    # Policy findings on binds point at the first bind block.
                    first = next(b for b in block.blocks if b.type == "bind")
                    common["spans"] = (*common["spans"], ("binds", first.span))
                values["hostname"] = values["hostname"] or instance_name(name, key)[:63]
                values.update(_health_and_conditions(nested, values.get("depends_on", ())))
                cls = ir.Service if block.type == "service" else ir.Job
                return cls(**common, **values)
            case "wasm":
                limits = nested.get("limits", [{}])[0]
                values["limits"] = ir.WasmLimits(**{**_WASM_LIMIT_DEFAULTS, **limits})
                values["module"] = str((self.base_dir / values["module"]).resolve())
                return ir.Wasm(**common, **values)
        return None  # pragma: no cover - every schema kind is handled above

    def _binds(
        self, block: Block, written: list[dict[str, Any]], values: dict[str, Any]
    ) -> tuple[ir.Bind, ...] | None:
        """The `bind` blocks, each path checked; None when one is wrong (reported)."""
        children = [b for b in block.blocks if b.type == "bind"]
        taken = {target: "a volume" for target, _ in values.get("volumes", ())}
        taken.update({path: "a tmpfs" for path in values.get("tmpfs", ())})
        binds: list[ir.Bind] = []
        ok = True
        for child, bind in zip(children, written, strict=True):
            spans = {a.name: a.span for a in child.attributes}
            problems = [(key, _path_problem(bind[key])) for key in ("source", "target")]
            for key, problem in problems:
                if not problem:
                    continue
                side = "host path" if key == "source" else "path in the container"
                self.errors.error(
                    "E0314",
                    f"bind {key} `{bind[key]}` {problem}",
                    spans.get(key, child.span),
                    f"write the {side} as it is, from / (it is not relative to the Forgefile)"
                    if not bind[key].startswith("/")
                    else f"write it with no `.`, `..`, `//` or trailing `/`: "
                    f'"{_normal(bind[key])}"',
                )
            if any(problem for _, problem in problems):
                ok = False
                continue
            target = bind["target"]
            clash = (
                "would hide what the runtime mounts at /, /proc, /sys or /dev"
                if target == "/" or _hides_runtime_mount(target)
                else f"is also {taken[target]}"
                if target in taken
                else ""
            )
            if clash:
                self.errors.error(
                    "E0119",
                    f"bind target `{target}` {clash}",
                    spans.get("target", child.span),
                    "mount it somewhere else in the container",
                )
                ok = False
                continue
            taken[target] = "a bind"
            binds.append(ir.Bind(bind["source"], target, bool(bind["read_only"])))
        return tuple(binds) if ok else None

    def _image_source(self, text: str, span: Span) -> ir.ImageSource | None:
        """`"oci:PATH[:TAG]"` or `"archive:PATH[:TAG]"`, PATH relative to the Forgefile."""
        kind, _, rest = text.partition(":")
        if kind not in ("oci", "archive") or not rest:
            self.errors.error(
                "E0311",
                f'"{text}" is not an image: write image.NAME, "oci:PATH:TAG" (an OCI layout '
                'folder) or "archive:PATH" (an OCI or docker archive)',
                span,
                'e.g. image = "oci:./images:web" or image = "archive:build/web.tar"',
            )
            return None
        path, tag = rest, ""
        if not (self.base_dir / path).exists() and ":" in rest:
            head, _, tail = rest.rpartition(":")
            if tail and "/" not in tail:
                path, tag = head, tail
        found = self.base_dir / path
        wanted = "folder" if kind == "oci" else "file"
        if not (found.is_dir() if kind == "oci" else found.is_file()):
            self.errors.error(
                "E0312",
                f"the image {wanted} {path} does not exist"
                + (f" (read from {found.resolve()})" if not Path(path).is_absolute() else ""),
                span,
                "build or fetch it first (e.g. skopeo copy ... oci:PATH:TAG), or fix the path",
            )
            return None
        return ir.ImageSource(kind, str(found.resolve()), tag, span)

    def _consistent(self, block: Block, values: dict[str, Any]) -> bool:
        """Attributes that are fine alone but contradict each other."""
        spans = dict(self._attr_spans(block))
        if values.get("network_mode") == "none" and values.get("networks"):
            self.errors.error(
                "E0308",
                'network_mode = "none" but networks are listed',
                spans.get("network_mode", block.span),
                "remove one of them",
                [Related(spans.get("networks", block.span), "networks listed here")],
            )
            return False
        for problem, attribute in _value_problems(values):
            self.errors.error(
                "E0119",
                problem,
                spans.get(attribute, block.span),
                "the value would be refused when the workload starts",
            )
            return False
        if isinstance(values.get("image"), str):
            source = self._image_source(values["image"], spans.get("image", block.span))
            if source is None:
                return False
            values["image"] = source
        user = values.get("user", "")
        if user and not _NUMERIC_USER.fullmatch(user):
            self.errors.error(
                "E0307",
                f'user names ("{user}") are not carried out by this version of Forge yet',
                spans.get("user", block.span),
                'give a numeric uid or uid:gid, e.g. "1000:1000"',
            )
            return False
        return True

    def _image(
        self,
        block: Block,
        values: dict[str, Any],
        nested: dict[str, list[dict[str, Any]]],
        common: dict[str, Any],
    ) -> ir.Image | None:
        if isinstance(values["from"], str) and values["from"] != "scratch":
            self.errors.error(
                "E0111",
                f'`from` must be "scratch" or an image reference, found "{values["from"]}"',
                dict(common["spans"]).get("from"),
                "write from = image.NAME for a parent built here",
            )
            return None
        steps: list[ir.CopyStep | ir.LinkStep] = []
        step_blocks = [b for b in block.blocks if b.type in ("copy", "link")]
        copies, links = iter(nested.get("copy", [])), iter(nested.get("link", []))
        for step_block in step_blocks:
            if step_block.type == "copy":
                steps.append(self._copy(step_block, next(copies)))
            else:
                step = next(links)
                steps.append(
                    ir.LinkStep(step_block.span, target=step["target"], links=step["links"])
                )
        context = (self.base_dir / values.pop("context")).resolve()
        return ir.Image(
            **common, from_=values.pop("from"), context=str(context), steps=tuple(steps), **values
        )

    def _copy(self, block: Block, values: dict[str, Any]) -> ir.CopyStep:
        if (values["src"] is None) == (values["content"] is None):
            self.errors.error(
                "E0112",
                "a copy step needs exactly one of `src` and `content`",
                block.span,
                "src copies from the context; content writes inline text",
            )
        if not str(values["dst"]).startswith("/"):
            self.errors.error(
                "E0113",
                f'`dst` must be an absolute path, found "{values["dst"]}"',
                block.span,
                f'write "/{values["dst"]}"',
            )
        mode = None
        if values["mode"] is not None:
            try:
                mode = int(values["mode"], 8)
            except ValueError:
                self.errors.error(
                    "E0114",
                    f'`mode` must be octal such as "0644", found "{values["mode"]}"',
                    block.span,
                )
        return ir.CopyStep(
            block.span, dst=values["dst"], src=values["src"], content=values["content"], mode=mode
        )

    def _network(
        self, block: Block, values: dict[str, Any], common: dict[str, Any]
    ) -> ir.Network | None:
        spans = dict(common["spans"])
        try:
            subnet = ipaddress.IPv4Network(values["subnet"], strict=True)
        except ValueError as exc:
            self.errors.error(
                "E0115",
                f"`{values['subnet']}` is not an IPv4 subnet: {exc}",
                spans.get("subnet", block.span),
                'write a CIDR with the host bits zero, e.g. "10.213.47.0/24"',
            )
            return None
        if (
            subnet.is_loopback
            or subnet.is_multicast
            or subnet.is_link_local
            or subnet.is_unspecified
            or subnet.is_reserved
            or subnet.overlaps(_THIS_NETWORK)
        ):
            self.errors.error(
                "E0118",
                f"{subnet} is a special-purpose range (loopback, link-local, multicast or "
                "reserved)",
                spans.get("subnet", block.span),
                'use a private range, e.g. "10.213.47.0/24"',
            )
            return None
        if not 8 <= subnet.prefixlen <= 30:
            self.errors.error(
                "E0116",
                f"subnet {subnet} is too "
                + ("small for a gateway and a workload" if subnet.prefixlen > 30 else "large"),
                spans.get("subnet", block.span),
                "a network's prefix is from /8 to /30; a /24 holds 253 workloads",
            )
            return None
        gateway = values["gateway"] or str(subnet[1])
        try:
            address = ipaddress.IPv4Address(gateway)
            inside = address in subnet and address not in (
                subnet.network_address,
                subnet.broadcast_address,
            )
        except ValueError:
            inside = False
        if not inside:
            self.errors.error(
                "E0117",
                f"gateway `{gateway}` is not a host address of {subnet}",
                spans.get("gateway", block.span),
                f'for example "{subnet[1]}"',
            )
            return None
        return ir.Network(**common, subnet=str(subnet), gateway=gateway)

    # -- attributes -----------------------------------------------------------------------------

    def _attr_spans(self, block: Block) -> tuple[tuple[str, Span], ...]:
        return tuple((a.name, a.span) for a in block.attributes)

    def _unknown_attributes(self, block: Block, spec: BlockSpec) -> None:
        names = [a.name for a in spec.attributes]
        for attr in block.attributes:
            if spec.kind in RESOURCE_KINDS and attr.name in META_ARGUMENTS:
                continue
            if spec.attribute(attr.name) is None and not spec.open:
                hint = suggest(attr.name, names) or (
                    f"`{spec.kind}` takes: {', '.join(names)}"
                    if names
                    else f"`{spec.kind}` takes no attributes"
                )
                self.errors.error(
                    "E0120", f"`{spec.kind}` has no attribute `{attr.name}`", attr.name_span, hint
                )
        seen: dict[str, Span] = {}
        for attr in block.attributes:
            if attr.name in seen:
                self.errors.error(
                    "E0121",
                    f"attribute `{attr.name}` is set twice",
                    attr.span,
                    "remove one",
                    [Related(seen[attr.name], "first set here")],
                )
            seen[attr.name] = attr.span

    def _attributes(self, block: Block, spec: BlockSpec, scope: Scope) -> dict[str, Any] | None:
        """Evaluate and type-check a block's attributes; fill defaults. None if any failed."""
        self._unknown_attributes(block, spec)
        values: dict[str, Any] = {}
        ok = True
        # A misspelt required attribute was reported with "did you mean"; don't also call it
        # missing.
        misspelt = {_closest(a.name, spec) for a in block.attributes} - {None}
        for attr_spec in spec.attributes:
            attr = block.attribute(attr_spec.name)
            key = attr_spec.name
            if attr is None:
                if attr_spec.required and key in misspelt:
                    ok = False
                elif attr_spec.required:
                    where = (
                        f'`{block.type} "{block.labels[0]}"`'
                        if block.labels
                        else f"this `{block.type}` block"
                    )
                    self.errors.error(
                        "E0122",
                        f"{where} needs `{key}`",
                        block.span,
                        f"add `{key} = ...` ({attr_spec.doc or attr_spec.type})",
                    )
                    ok = False
                values[key] = attr_spec.default if not attr_spec.required else None
                continue
            try:
                raw = evaluate(attr.value, scope)
            except DiagnosticError as exc:
                where = f"{block.type}.{block.labels[0]}" if block.labels else f"`{block.type}`"
                context = f"while evaluating `{key}` of {where}"
                self.errors.items.extend(
                    d if d.context else dataclasses.replace(d, context=context)
                    for d in exc.diagnostics
                )
                ok = False
                continue
            checked = self._check(attr_spec, raw, attr.value.span, block)
            if checked is _INVALID:
                ok = False
            values[key] = checked
        ok = self._not_pending(block, spec, values) and ok
        return values if ok else None

    def _not_pending(self, block: Block, spec: BlockSpec, values: dict[str, Any]) -> bool:
        """Refuse what is parsed but not carried out yet, rather than silently ignore it."""
        ok = True
        for attr_spec in spec.attributes:
            attr = block.attribute(attr_spec.name)
            if attr is None or attr_spec.name not in values:
                continue
            value = values[attr_spec.name]
            if value is _INVALID:
                continue  # its type error is reported already
            if attr_spec.pending or (attr_spec.ready and value not in attr_spec.ready):
                what = attr_spec.pending or f"{attr_spec.name} = {_literal(value)}"
                allowed = ", ".join(_literal(v) for v in attr_spec.ready)
                self.errors.error(
                    "E0307",
                    f"{what} is not carried out by this version of Forge yet",
                    attr.span,
                    f"remove `{attr_spec.name}` for now"
                    if attr_spec.pending
                    else f"the values carried out today: {allowed}",
                )
                ok = False
        return ok

    def _check(self, spec: Attr, raw: Any, span: Span, block: Block) -> Any:
        try:
            value = coerce(raw, spec.type)
        except Mismatch as exc:
            shown = _show(exc.value)
            where = f"`{spec.name}`{' ' + exc.path if exc.path else ''}"
            self.errors.error(
                "E0123",
                f"{where} of `{block.type}` must be {exc.expected}, "
                f"found {type_name(exc.value)} {shown}",
                span,
                _fix_hint(exc)
                or f"`{spec.name}` is declared as {spec.type}"
                + (f": {spec.doc}" if spec.doc else ""),
            )
            return _INVALID
        if spec.choices and value not in spec.choices:
            self.errors.error(
                "E0124",
                f"`{spec.name}` must be one of "
                f"{', '.join(repr(c) for c in spec.choices)}, found {value!r}",
                span,
                suggest(str(value), spec.choices),
            )
            return _INVALID
        return value

    def _nested(
        self, block: Block, spec: BlockSpec, scope: Scope
    ) -> dict[str, list[dict[str, Any]]] | None:
        out: dict[str, list[dict[str, Any]]] = {}
        ok = True
        for child in block.blocks:
            entry = spec.blocks.get(child.type)
            if entry is None:
                allowed = ", ".join(spec.blocks) or "none"
                self.errors.error(
                    "E0125",
                    f"`{block.type}` has no block `{child.type}`",
                    child.type_span,
                    suggest(child.type, spec.blocks) or f"its blocks are: {allowed}",
                )
                ok = False
                continue
            child_spec, repeats = entry
            if child.labels:
                self.errors.error(
                    "E0126",
                    f"`{child.type}` takes no label",
                    child.label_spans[0],
                    f"write `{child.type} {{ ... }}`",
                )
                ok = False
                continue
            if not repeats and child.type in out:
                self.errors.error(
                    "E0127",
                    f"`{child.type}` may appear once in `{block.type}`",
                    child.span,
                    "merge the two blocks",
                )
                ok = False
                continue
            if child_spec.pending:
                self._attributes(child, child_spec, scope)  # checked even though not carried out
                self.errors.error(
                    "E0307",
                    f"{child_spec.pending} ({child.type} blocks) are not carried out by this "
                    "version of Forge yet",
                    child.type_span,
                    f"remove the `{child.type}` block for now",
                )
                ok = False
                continue
            values = self._attributes(child, child_spec, scope)
            if values is None:
                ok = False
                continue
            out.setdefault(child.type, []).append(values)
        return out if ok else None


_INVALID = object()
MAX_IMPORT_DEPTH = 8
_RESERVED_NAMES = {"var", "local", "count", "each", *SCHEMAS}


class _FailedModule(dict[str, Any]):
    """The outputs of a module that failed to load: every read is quiet, already reported."""

    def __contains__(self, key: object) -> bool:
        return True

    def __getitem__(self, key: str) -> Any:
        return FAILED


_THIS_NETWORK = ipaddress.IPv4Network("0.0.0.0/8")
_NUMERIC_USER = re.compile(r"[0-9]+(:[0-9]+)?")
META_ARGUMENTS = ("count", "for_each")
MAX_COUNT = 10_000
_WASM_LIMIT_DEFAULTS = {"memory": ir.WASM_MEMORY, "fuel": None, "timeout": ir.WASM_TIMEOUT}


def _valid_name(name: str) -> bool:
    return (
        bool(name)
        and (name[0].isalpha() or name[0] == "_")
        and all(c.isalnum() or c in "_-" for c in name)
    )


COMPUTED = {"service": ("address",), "job": ("address",)}


def _stand_in(ref: AttributeRef) -> str:
    """A placeholder for a computed attribute, after checking the attribute exists."""
    known = COMPUTED.get(ref.resource.kind, ())
    if len(ref.path) == 1 and ref.path[0] in known:
        return "0.0.0.0"
    raise EvalError(
        "E0226",
        f"`{ref}` is not an attribute known when planning",
        ref.span,
        "computed attributes: "
        + ", ".join(f"{k}.NAME.{a}" for k, v in COMPUTED.items() for a in v),
    )


def _names_read(body: Block) -> set[tuple[str, str]]:
    """Every `var.X` and `local.X` the file reads, anywhere."""
    found: set[tuple[str, str]] = set()
    blocks = [body]
    while blocks:
        block = blocks.pop()
        blocks.extend(block.blocks)
        for attr in block.attributes:
            for node in subexpressions(attr.value):
                if isinstance(node, GetAttr) and isinstance(node.target, Variable):
                    found.add((node.target.name, node.name))
    return found


MIN_MEMORY = 4 << 20  # below this the kernel and runc refuse to start a container
# runc's own init (Go) makes its threads inside the container's cgroup before the workload
# starts: with fewer pids it fails at random, "pthread_create failed" (opencontainers/runc#1914).
MIN_PIDS = 16
MIN_LOG_SIZE = 4 << 10  # smaller files would hold a few lines each
MAX_LOG_FILES = 100
MIN_CPUS, MAX_CPUS = 0.01, 65536  # a quota of 1 ms per 100 ms period, and far beyond any host
MAX_PIDS = 4_194_304  # PID_MAX_LIMIT: runc fails with "pids.max: invalid argument" above it


def _path_problem(path: str) -> str:
    """Why `path` is not an absolute, normalised path ("" when it is one)."""
    if not path.startswith("/"):
        return "is not an absolute path"
    if any(c in path for c in "\0\n"):
        return "holds a NUL or newline character"
    if path != _normal(path):
        return "is not normalised"
    return ""


def _normal(path: str) -> str:
    """`path` with `.`, `..`, repeated and trailing slashes resolved, as the kernel reads it."""
    parts: list[str] = []
    for part in path.split("/"):
        if part == "..":
            if parts:
                parts.pop()
        elif part not in ("", "."):
            parts.append(part)
    return "/" + "/".join(parts)


def _hides_runtime_mount(path: str) -> bool:
    """/proc and /sys in any part, or /dev as a whole; a tmpfs below /dev (/dev/shm) is fine."""
    parts = [p for p in path.split("/") if p]
    return parts[0] in ("proc", "sys") or parts == ["dev"]


def _value_problems(values: dict[str, Any]) -> list[tuple[str, str]]:
    """Values of the right type that no workload can start with: (message, attribute)."""
    problems = []
    for cap in values.get("cap_add", ()):
        name = cap.strip().upper()
        if (name if name.startswith("CAP_") else "CAP_" + name) not in CAPABILITIES:
            problems.append((f"`{cap}` is not a Linux capability", "cap_add"))
    for key, _ in values.get("env", ()):
        if not ENV_NAME.fullmatch(key):
            problems.append((f"`{key}` is not a valid environment variable name", "env"))
    for target, _ in (*values.get("volumes", ()), *values.get("mounts", ())):
        if not target.startswith("/"):
            problems.append((f"mount point `{target}` is not an absolute path", "volumes"))
    working_dir = values.get("working_dir", "")
    if working_dir and not working_dir.startswith("/"):
        problems.append((f"working_dir `{working_dir}` is not an absolute path", "working_dir"))
    for code in values.get("success_codes", ()):
        if not 0 <= code <= 255:
            problems.append((f"exit code {code} is outside 0 to 255", "success_codes"))
    for cap in values.get("cap_drop", ()):
        name = cap.strip().upper()
        if (
            name != "ALL"
            and (name if name.startswith("CAP_") else "CAP_" + name) not in CAPABILITIES
        ):
            problems.append((f'`{cap}` is not a Linux capability (nor "ALL")', "cap_drop"))
    mounted = {target for target, _ in values.get("volumes", ())}
    for path in values.get("tmpfs", ()):
        if not path.startswith("/") or path.rstrip("/") == "":
            problems.append((f"tmpfs `{path}` is not an absolute path below /", "tmpfs"))
        elif _hides_runtime_mount(path):
            problems.append(
                (
                    f"tmpfs `{path}` would hide what the runtime mounts at /proc, /sys or /dev",
                    "tmpfs",
                )
            )
        elif path in mounted:
            problems.append((f"`{path}` is both a tmpfs and a volume", "tmpfs"))
    for name, _ in values.get("sysctls", ()):
        if not name.startswith(NAMESPACED_SYSCTLS):
            problems.append(
                (
                    f"sysctl `{name}` is not namespaced: setting it would change the host's; "
                    "net.*, kernel.shm*, kernel.msg*, kernel.sem and fs.mqueue.* are",
                    "sysctls",
                )
            )
    for name, limit in values.get("ulimits", ()):
        if name not in ULIMITS:
            problems.append(
                (f"`{name}` is not a resource limit ({', '.join(sorted(ULIMITS))})", "ulimits")
            )
        elif limit < 0:
            problems.append((f"ulimit {name} = {limit} is negative", "ulimits"))
    restart = values.get("restart", "no")
    policy, _, count = restart.partition(":")
    if policy not in ("no", "on-failure", "always", "unless-stopped") or (
        count and (policy != "on-failure" or not count.isdigit())
    ):
        problems.append(
            (
                f'restart "{restart}" is not a policy: no, on-failure, on-failure:N, always '
                "or unless-stopped",
                "restart",
            )
        )
    log_size = values.get("log_max_size")
    if log_size is not None and log_size.bytes < MIN_LOG_SIZE:
        problems.append((f"log_max_size {log_size} is below the smallest, 4KiB", "log_max_size"))
    files = values.get("log_max_files")
    if files is not None and not 0 <= files <= MAX_LOG_FILES:
        problems.append((f"log_max_files {files} is outside 0 to {MAX_LOG_FILES}", "log_max_files"))
    stop = values.get("stop_signal")
    if stop is not None and signal_name(stop) is None:
        problems.append((f"`{stop}` is not a signal name, e.g. TERM, INT or QUIT", "stop_signal"))
    return problems


# Kernel parameters that belong to a container's own network or IPC namespace (as Docker's).
NAMESPACED_SYSCTLS = ("net.", "kernel.shm", "kernel.msg", "kernel.sem", "fs.mqueue.")


def signal_name(name: str) -> str | None:
    """`TERM`, `sigterm` or `SIGTERM` as `SIGTERM`; None for what is not a signal's name."""
    import signal

    canonical = name.strip().upper()
    canonical = canonical if canonical.startswith("SIG") else "SIG" + canonical
    return canonical if canonical in signal.Signals.__members__ else None


def _health_and_conditions(
    nested: dict[str, list[dict[str, Any]]], depends_on: tuple[Any, ...]
) -> dict[str, Any]:
    """The healthcheck block, and the `depends` blocks: each one's workload joins depends_on
    (it orders the graph like any reference), its condition beyond "started" is kept apart."""
    out: dict[str, Any] = {}
    health = nested.get("healthcheck")
    if health:
        h = health[0]
        out["healthcheck"] = ir.Healthcheck(  # every attribute has its default filled in
            command=tuple(h["command"]),
            interval=h["interval"],
            timeout=h["timeout"],
            retries=int(h["retries"]),
            start_period=h["start_period"],
        )
    waits = nested.get("depends", [])
    if waits:
        known = {ref.address for ref in depends_on}
        extra = tuple(w["on"] for w in waits if w["on"].address not in known)
        out["depends_on"] = (*depends_on, *dict.fromkeys(extra))
        out["conditions"] = tuple(
            (w["on"].address, w["condition"]) for w in waits if w["condition"] != "started"
        )
    return out


def _limit_problems(limits: dict[str, Any]) -> list[tuple[str, str]]:
    """Limits no container starts with: (message, attribute)."""
    problems = []
    memory = limits.get("memory")
    if memory is not None and memory.bytes < MIN_MEMORY:
        problems.append(
            (f"memory {memory} is below the smallest limit a container starts with, 4MiB", "memory")
        )
    cpus = limits.get("cpus")
    if cpus is not None and not MIN_CPUS <= cpus <= MAX_CPUS:
        problems.append(
            (f"cpus {cpus} is outside {MIN_CPUS} to {MAX_CPUS}, what a CFS quota can hold", "cpus")
        )
    pids = limits.get("pids")
    if pids is not None and pids > MAX_PIDS:
        problems.append((f"pids {pids} is above the kernel's own limit, {MAX_PIDS}", "pids"))
    if pids is not None and pids < MIN_PIDS:
        problems.append(
            (
                f"pids {pids} is below {MIN_PIDS}, too few for runc to start the container (its "
                "own init makes several threads in the container's cgroup before the workload "
                "runs)",
                "pids",
            )
        )
    return problems


def _closest(name: str, spec: BlockSpec) -> str | None:
    if spec.attribute(name) is not None:
        return None
    import difflib

    close = difflib.get_close_matches(name, [a.name for a in spec.attributes], n=1, cutoff=0.6)
    return close[0] if close else None


def _fix_hint(exc: Mismatch) -> str:
    """For the mismatches people make most, the value written the way it should be."""
    expected, value = exc.expected, exc.value
    if str(expected) == "list(string)" and isinstance(value, str):
        return f"write a list: {json.dumps(value.split())}"
    if expected.name == "size" and isinstance(value, int) and not isinstance(value, bool):
        return f"give a unit: {value}MiB, {value}KiB or {value}B"
    if expected.name == "duration" and isinstance(value, int) and not isinstance(value, bool):
        return f"give a unit: {value}s, {value}ms or {value}m"
    if expected.name == "bool" and value in ("yes", "no", "true", "false"):
        return f"write {str(value in ('yes', 'true')).lower()} without quotes"
    if isinstance(expected, RefTo) and isinstance(value, str):
        return f"refer to the block: {expected.kinds[0]}.NAME, not a string"
    return ""


def _show(value: Any) -> str:
    if isinstance(value, str):
        return f'"{value}"' if len(value) < 40 else f'"{value[:37]}..."'
    if isinstance(value, ResourceRef):
        return f"`{value.address}`"
    text = repr(value)
    return f"`{text}`" if len(text) < 40 else ""


from .schema import BOOL, DURATION, INT, NUMBER, SIZE, STRING  # noqa: E402

_TYPES = {
    "string": STRING,
    "int": INT,
    "number": NUMBER,
    "bool": BOOL,
    "duration": DURATION,
    "size": SIZE,
}


def _from_text(text: str, type_: str) -> Any:
    """A variable's value given on the command line, read as its declared type."""
    from .syntax import parse_expression

    if type_ in ("string", "any"):
        return text
    if type_ == "bool":
        if text not in ("true", "false"):
            raise ValueError(f'expected true or false, found "{text}"')
        return text == "true"
    try:
        expr = parse_expression(text, "<command line>")
        value = evaluate(expr, Scope())
        return coerce(value, _TYPES[type_])
    except (DiagnosticError, Mismatch):
        raise ValueError(f'"{text}" is not a {type_}') from None
