"""Built-in functions of the Forgefile language.

Each function takes evaluated Python values and returns one; a `FunctionError` carries a message
the evaluator turns into a diagnostic at the call. Functions that read files or the environment
are given a `CallContext` so the front end can record what they read as plan inputs.
"""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import json
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


class FunctionError(Exception):
    """A function was called with values it cannot work with."""


@dataclass
class CallContext:
    """What a call may read: the folder of the calling Forgefile, and a log of files read."""

    base_dir: Path
    files_read: dict[str, str] = field(default_factory=dict)
    environ: dict[str, str] = field(default_factory=lambda: dict(os.environ))


Function = Callable[..., Any]


_TYPE_WORDS = {str: "string", int: "int", float: "number", bool: "bool", list: "list", dict: "map"}


def _expect(value: object, kind: type | tuple[type, ...], what: str) -> Any:
    if type(value) is kind:  # the common case, and the cheapest test
        return value
    if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
        kinds = kind if isinstance(kind, tuple) else (kind,)
        wanted = " or ".join(_TYPE_WORDS.get(k, k.__name__) for k in kinds)
        raise FunctionError(f"{what} must be a {wanted}")
    return value


def _join(sep: str, items: list[Any]) -> str:
    _expect(sep, str, "the separator")
    return sep.join(str(i) for i in _expect(items, list, "the second argument"))


def _file(ctx: CallContext, path: str) -> str:
    _expect(path, str, "the path")
    full = (ctx.base_dir / path).resolve()
    try:
        data = full.read_bytes()
    except OSError as exc:
        raise FunctionError(f"cannot read {path}: {exc.strerror}") from None
    ctx.files_read[str(full)] = "sha256:" + hashlib.sha256(data).hexdigest()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise FunctionError(f"{path} is not UTF-8 text; use filebase64()") from None


def _filebase64(ctx: CallContext, path: str) -> str:
    full = (ctx.base_dir / _expect(path, str, "the path")).resolve()
    try:
        data = full.read_bytes()
    except OSError as exc:
        raise FunctionError(f"cannot read {path}: {exc.strerror}") from None
    ctx.files_read[str(full)] = "sha256:" + hashlib.sha256(data).hexdigest()
    return base64.b64encode(data).decode()


_UNSET = object()


def _env(ctx: CallContext, name: str, default: object = _UNSET) -> object:
    _expect(name, str, "the variable name")
    if name in ctx.environ:
        return ctx.environ[name]
    if default is _UNSET:
        raise FunctionError(
            f"environment variable {name} is not set; set it, or give a default: "
            f'env("{name}", "...")'
        )
    return default


def _cidrhost(prefix: str, host: int) -> str:
    try:
        net = ipaddress.ip_network(_expect(prefix, str, "the prefix"), strict=True)
    except ValueError as exc:
        raise FunctionError(str(exc)) from None
    _expect(host, int, "the host number")
    if not 0 <= host < net.num_addresses:
        raise FunctionError(f"host number {host} is outside {net}")
    return str(net[host])


def _cidrsubnet(prefix: str, newbits: int, netnum: int) -> str:
    try:
        net = ipaddress.ip_network(_expect(prefix, str, "the prefix"), strict=True)
        subnets = list(net.subnets(prefixlen_diff=_expect(newbits, int, "newbits")))
    except ValueError as exc:
        raise FunctionError(str(exc)) from None
    if not 0 <= netnum < len(subnets):
        raise FunctionError(f"network number {netnum} is outside {net} split {newbits} bits")
    return str(subnets[netnum])


def _flatten(value: object) -> list[Any]:
    """Lists of lists, to any depth, as one list (Terraform's flatten)."""
    items = _expect(value, list, "the argument")
    flat: list[Any] = []
    for item in items:
        flat.extend(_flatten(item) if isinstance(item, list) else [item])
    return flat


def _regexall(pattern: str, text: str) -> list[Any]:
    # Policy rules match untrusted values: a pattern is compiled once per call and Python's re
    # has no catastrophic-backtracking guard, so patterns stay simple; MAX_STRING bounds input.
    try:
        found = re.findall(_expect(pattern, str, "the pattern"), _expect(text, str, "the string"))
    except re.error as exc:
        raise FunctionError(f"the pattern is not a regular expression: {exc}") from None
    return [list(m) if isinstance(m, tuple) else m for m in found]


def _length(value: object) -> int:
    if isinstance(value, str | list | dict):
        return len(value)
    raise FunctionError("length() takes a string, a list or a map")


PURE: dict[str, Function] = {
    "upper": lambda s: _expect(s, str, "the argument").upper(),
    "lower": lambda s: _expect(s, str, "the argument").lower(),
    "trimspace": lambda s: _expect(s, str, "the argument").strip(),
    "replace": lambda s, old, new: _expect(s, str, "the string").replace(old, new),
    "join": _join,
    "split": lambda sep, s: _expect(s, str, "the string").split(_expect(sep, str, "sep")),
    "format": lambda fmt, *args: _expect(fmt, str, "the format") % tuple(args),
    "length": _length,
    "concat": lambda *lists: [x for lst in lists for x in _expect(lst, list, "each argument")],
    "keys": lambda m: sorted(_expect(m, dict, "the argument")),
    "values": lambda m: [m[k] for k in sorted(_expect(m, dict, "the argument"))],
    "lookup": lambda m, k, *default: (
        _expect(m, dict, "the map").get(k, *default) if default else _expect(m, dict, "the map")[k]
    ),
    "contains": lambda lst, v: v in _expect(lst, (list, dict), "the collection"),
    "flatten": _flatten,
    "distinct": lambda lst: list(dict.fromkeys(_expect(lst, list, "the argument"))),
    "alltrue": lambda lst: all(_expect(v, bool, "each item") for v in _expect(lst, list, "it")),
    "anytrue": lambda lst: any(_expect(v, bool, "each item") for v in _expect(lst, list, "it")),
    "startswith": lambda s, p: _expect(s, str, "the string").startswith(_expect(p, str, "prefix")),
    "endswith": lambda s, p: _expect(s, str, "the string").endswith(_expect(p, str, "suffix")),
    "regexall": _regexall,
    "tostring": lambda v: str(v),
    "jsonencode": lambda v: json.dumps(v, sort_keys=True, separators=(",", ":")),
    "base64encode": lambda s: base64.b64encode(_expect(s, str, "the string").encode()).decode(),
    "base64decode": lambda s: base64.b64decode(_expect(s, str, "the string")).decode(),
    "sha256": lambda s: hashlib.sha256(_expect(s, str, "the string").encode()).hexdigest(),
    "cidrhost": _cidrhost,
    "cidrsubnet": _cidrsubnet,
}

CONTEXTUAL: dict[str, Function] = {
    "file": _file,
    "filebase64": _filebase64,
    "env": _env,
}

NAMES = sorted([*PURE, *CONTEXTUAL])


def call(name: str, args: list[Any], ctx: CallContext | None) -> Any:
    """Call a built-in by name; raises `KeyError` for an unknown name, `FunctionError` otherwise.

    The functions that read the host (`file`, `env`) need the caller's context; pure ones do not.
    """
    if name in CONTEXTUAL:
        if ctx is None:
            raise FunctionError(f"{name}() reads the host, which is not allowed here")
        fn: Function = CONTEXTUAL[name]
        try:
            return fn(ctx, *args)
        except TypeError as exc:
            raise FunctionError(f"{name}(): {exc}") from None
    fn = PURE[name]
    try:
        return fn(*args)
    except FunctionError:
        raise
    except (TypeError, ValueError, KeyError) as exc:
        raise FunctionError(f"{name}(): {exc}") from None
