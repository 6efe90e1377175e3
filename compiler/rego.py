"""An optional adapter for teams that already have conftest-style Rego policies.

The policies judge the document that `forge show --json` prints, as `input`, with conftest's
conventions: rules named `deny`, `violation` (blocking) and `warn` (advisory), optionally with a
`_suffix`, each a set of strings or of objects with a `msg` field; and `exception` rules naming
the suffixes they except (`rules := ["foo"]` excepts `deny_foo`, `warn_foo`, `violation_foo`).

The engine always runs in a child process with a wall-clock timeout, a CPU limit and a memory
cap: an `opa` or `conftest` binary from PATH when there is one, else regopy (rego-cpp) through
`python -m compiler.rego_worker`. regopy has known crashes, so it is never imported here.
Evaluation is fail-closed: a timeout, a crash, a Rego error or output of the wrong shape is an
error in the result, and any error blocks.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import importlib.util
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

ENGINES = ("opa", "conftest", "regopy")
_FAILURE = re.compile(r"(deny|violation)(_[a-zA-Z0-9]+)*")
_WARNING = re.compile(r"warn(_[a-zA-Z0-9]+)*")
_NAMESPACE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")
_PACKAGE = re.compile(r"^[ \t]*package[ \t]+([A-Za-z_][A-Za-z0-9_.]*)", re.MULTILINE)
_VERSION_TIMEOUT = 10.0
# The folder that holds the `compiler` package, so the child imports this very checkout.
_ROOT = Path(__file__).resolve().parent.parent


class RegoError(Exception):
    """A problem the user must fix before any Rego can run: no engine, a bad policy folder."""


@dataclass(frozen=True)
class RegoResult:
    """What the engine found, which engine it was, and anything that stopped it judging."""

    findings: tuple[dict[str, Any], ...]
    engine: str
    version: str
    errors: tuple[str, ...]
    files: tuple[str, ...]
    digest: str

    @property
    def blocked(self) -> bool:
        """True when an error or a blocking finding stands: errors always block."""
        return bool(self.errors) or any(f["blocking"] for f in self.findings)

    def to_json(self) -> dict[str, Any]:
        """The result as plain data, for the signed plan and `--json` output."""
        return {
            "verdict": "block" if self.blocked else "pass",
            "engine": {"engine": self.engine, "version": self.version},
            "digest": self.digest,
            "files": list(self.files),
            "errors": list(self.errors),
            "findings": [dict(f) for f in self.findings],
        }


class _Run(NamedTuple):
    returncode: int
    stdout: bytes
    stderr: bytes
    timed_out: bool


def find_engine(engine: str | None = None) -> tuple[str, str]:
    """The engine to use and its program: `opa`, else `conftest` from PATH, else regopy."""
    if engine is not None and engine not in ENGINES:
        raise RegoError(f"unknown Rego engine `{engine}`: use one of {', '.join(ENGINES)}")

    for name in ("opa", "conftest"):
        path = shutil.which(name) if engine in (None, name) else None
        if path is not None:
            return name, path
    # find_spec locates the package without importing it.
    if engine in (None, "regopy") and importlib.util.find_spec("regopy") is not None:
        return "regopy", sys.executable

    how = {
        "opa": "put the `opa` binary on PATH",
        "conftest": "put the `conftest` binary on PATH",
        "regopy": "`pip install regopy` into Forge's environment",
    }
    if engine is not None:
        raise RegoError(
            f"the Rego engine `{engine}` is not available: {how[engine]}, "
            "or leave `engine` out to use whichever engine is found"
        )
    raise RegoError(
        "no Rego engine is available: put `opa` or `conftest` on PATH, or `pip install regopy`"
    )


def engine_version(engine: str, program: str) -> str:
    """The version the engine reports; the integrator records it in the signed plan."""
    if engine == "regopy":
        try:
            return importlib.metadata.version("regopy")
        except importlib.metadata.PackageNotFoundError:
            raise RegoError("regopy is not installed: `pip install regopy`") from None

    argv = [program, "version"] if engine == "opa" else [program, "--version"]
    run = _run(_trampoline(512, _VERSION_TIMEOUT) + argv, b"", _VERSION_TIMEOUT)
    fields = dict(_fields(run.stdout.decode(errors="replace")))
    version = fields.get("Version") or fields.get("Conftest")
    if run.timed_out or run.returncode != 0 or not version:
        raise RegoError(f"{program} did not report its version{_tail(run.stderr)}")
    return f"{version} (OPA {fields['OPA']})" if "OPA" in fields else version


def policy_modules(policy_dir: Path, namespace: str = "main") -> list[tuple[str, str]]:
    """The `.rego` files under the folder (tests excluded), as (relative name, text), sorted."""
    if not _NAMESPACE.fullmatch(namespace):
        raise RegoError(f"`{namespace}` is not a Rego package name")
    if policy_dir.is_file():
        raise RegoError(
            f"{policy_dir} is a file: `path` names the folder that holds the .rego files"
        )
    if not policy_dir.is_dir():
        raise RegoError(f"the Rego policy folder {policy_dir} does not exist")

    # `_test.rego` files hold `conftest verify` tests; in `package main` they would be
    # evaluated as rules of the package.
    paths = sorted(p for p in policy_dir.rglob("*.rego") if not p.name.endswith("_test.rego"))
    modules: list[tuple[str, str]] = []
    for path in paths:
        try:
            modules.append((path.relative_to(policy_dir).as_posix(), path.read_text("utf-8")))
        except (OSError, UnicodeDecodeError) as exc:
            raise RegoError(f"cannot read the Rego policy {path}: {exc}") from None

    if not modules:
        tests = any(policy_dir.rglob("*_test.rego"))
        raise RegoError(
            f"the Rego policy folder {policy_dir} holds only tests (`*_test.rego`), which are "
            "not evaluated"
            if tests
            else f"the Rego policy folder {policy_dir} holds no .rego file"
        )
    single = [
        (name, text.count("\n", 0, head.start()) + 1, head.group(1))
        for name, text in modules
        if _package(text) == namespace
        for head in _BOOLEAN_HEAD.finditer(text)
    ]
    if single:
        (name, line, rule), *others = single
        more = "".join(f"; also {n}:{ln} `{r}`" for n, ln, r in others)
        raise RegoError(
            f"{name}:{line}: `{rule}` is a single value, not a set of messages, so a false "
            f"`{rule}` would pass without a word; write `{rule} contains msg if {{ ... }}`{more}"
        )
    if not any(_package(text) == namespace for _, text in modules):
        raise RegoError(
            f"no policy in {policy_dir} declares `package {namespace}`, so no rule would run"
        )
    return modules


def evaluate_rego(
    policy_dir: Path,
    document: dict[str, Any],
    *,
    timeout: float = 10.0,
    memory_mb: int = 512,
    namespace: str = "main",
    engine: str | None = None,
) -> RegoResult:
    """Judge the `forge show --json` document with the Rego policies in the folder, fail-closed."""
    if timeout <= 0 or memory_mb <= 0:
        raise RegoError(f"the Rego limits must be positive, not {timeout:g} s and {memory_mb} MiB")
    modules = policy_modules(policy_dir, namespace)
    name, program = find_engine(engine)
    runner = _Engine(name, program, engine_version(name, program), timeout, memory_mb)
    text = json.dumps(document, allow_nan=False)

    if name == "regopy":
        findings, errors = _run_regopy(runner, modules, text, namespace)
    else:
        with tempfile.TemporaryDirectory(prefix="forge-rego-") as folder:
            # The engine reads copies, so it judges exactly the bytes digested here.
            workdir = _stage(Path(folder), modules, text)
            files = [f"policy/{module}" for module, _ in modules]
            run = _run_opa if name == "opa" else _run_conftest
            findings, errors = run(runner, workdir, files, namespace)

    return RegoResult(
        findings=tuple(sorted(findings, key=lambda f: (f["rule"], f["resource"], f["message"]))),
        engine=name,
        version=runner.version,
        errors=tuple(errors),
        files=tuple(module for module, _ in modules),
        digest=_digest((module, source.encode()) for module, source in modules),
    )


@dataclass(frozen=True)
class _Engine:
    name: str
    program: str
    version: str
    timeout: float
    memory_mb: int

    @property
    def label(self) -> str:
        return f"the Rego engine ({self.name} {self.version})"

    def run(self, argv: list[str], stdin: bytes = b"", cwd: Path | None = None) -> _Run:
        return _run(argv, stdin, self.timeout, cwd)

    def failure(self, run: _Run) -> str:
        """Why the child gave no usable answer, in words an operator can act on."""
        if run.timed_out:
            return f"{self.label} was killed after {self.timeout:g} s"
        if any(s in run.stderr for s in (b"std::bad_alloc", b"MemoryError", b"out of memory")):
            return f"{self.label} ran out of memory: it may use at most {self.memory_mb} MiB"
        if run.returncode == -signal.SIGXCPU:
            return f"{self.label} was stopped at its CPU limit of {_cpu_seconds(self.timeout)} s"
        if run.returncode < 0:
            name = signal.Signals(-run.returncode).name
            return f"{self.label} crashed ({name}){_tail(run.stderr)}"
        if run.returncode != 0:
            return f"{self.label} exited with code {run.returncode}{_tail(run.stderr)}"
        return f"{self.label} answered something other than the JSON expected{_tail(run.stdout)}"


_Judged = tuple[list[dict[str, Any]], list[str]]  # findings, errors


def _run_regopy(
    engine: _Engine, modules: list[tuple[str, str]], document: str, namespace: str
) -> _Judged:
    request = {"namespace": namespace, "modules": modules, "input": document}
    argv = _worker("regopy", engine.memory_mb, engine.timeout)
    run = engine.run(argv, json.dumps(request).encode())
    if run.timed_out or run.returncode != 0:
        return [], [engine.failure(run)]

    try:
        answer = json.loads(run.stdout)
        value, errors = answer["value"], [str(e) for e in answer["errors"]]
    except (ValueError, TypeError, KeyError):
        return [], [engine.failure(run)]
    if errors:
        return [], [f"{engine.label}: {e}" for e in errors]
    return _judge(value, namespace)


def _run_opa(engine: _Engine, workdir: Path, files: list[str], namespace: str) -> _Judged:
    # Untested here: no opa binary can be installed in the development environment.
    loads = [arg for file in files for arg in ("-d", file)]
    argv = [engine.program, "eval", "--format", "json", "--strict-builtin-errors", *loads]
    argv += ["-i", "input.json", f"data.{namespace}"]
    run = engine.run(_trampoline(engine.memory_mb, engine.timeout) + argv, cwd=workdir)
    if run.timed_out or run.returncode < 0:
        return [], [engine.failure(run)]

    try:
        answer = json.loads(run.stdout)
        if "errors" in answer:
            return [], [f"{engine.label}: {_opa_error(e)}" for e in answer["errors"]]
        results = answer.get("result", [])
        value = results[0]["expressions"][0]["value"] if results else None
    except (ValueError, TypeError, KeyError, IndexError):
        return [], [engine.failure(run)]
    return _judge(value, namespace)


def _run_conftest(engine: _Engine, workdir: Path, files: list[str], namespace: str) -> _Judged:
    # Untested here: no conftest binary can be installed in the development environment.
    # conftest applies its own reading: it does not name the rule behind a message, reports an
    # exception once per excepted rule, and skips a rule that is not a set (fail-open).
    loads = [arg for file in files for arg in ("-p", file)]
    argv = [engine.program, "test", "--output", "json", "--no-color", "--namespace", namespace]
    limited = _trampoline(engine.memory_mb, engine.timeout)
    run = engine.run([*limited, *argv, *loads, "input.json"], cwd=workdir)
    # conftest exits 1 when a rule fails, and also when it cannot run at all.
    if run.timed_out or run.returncode not in (0, 1):
        return [], [engine.failure(run)]

    try:
        return _conftest_findings(json.loads(run.stdout), namespace), []
    except (ValueError, TypeError, KeyError, AttributeError):
        return [], [engine.failure(run)]


def _conftest_findings(checks: list[dict[str, Any]], namespace: str) -> list[dict[str, Any]]:
    findings: list[dict[str, Any]] = []
    for check in checks:
        kinds = (("failures", "deny", False), ("warnings", "warn", False))
        for key, verdict, excepted in (*kinds, ("exceptions", "deny", True)):
            rule = f"{namespace}.exception" if excepted else f"{namespace}.{verdict}"
            for result in check.get(key) or []:
                metadata = result.get("metadata") or {}
                message, resource = _message({"msg": result["msg"], **metadata})
                findings.append(_finding(rule, verdict, message or "", resource, excepted))
    return findings


def _judge(value: Any, namespace: str) -> _Judged:
    """Read `data.NAMESPACE` the way conftest does, but fail closed on anything unexpected."""
    if not isinstance(value, dict):
        return [], [f"`data.{namespace}` is {_shape(value)}, not a package of rules"]

    excepted, errors = _exceptions(value.get("exception"), namespace)
    findings: list[dict[str, Any]] = []
    for name in sorted(value):
        verdict = "deny" if _FAILURE.fullmatch(name) else "warn" if _WARNING.fullmatch(name) else ""
        if not verdict:
            continue
        rule, messages = f"{namespace}.{name}", value[name]
        if not isinstance(messages, list):
            hint = _v0_hint(name) if isinstance(messages, dict) else ""
            errors.append(f"`{rule}` is {_shape(messages)}, not a set of messages{hint}")
            continue
        for item in messages:
            message, resource = _message(item)
            if message is None:
                errors.append(
                    f"`{rule}` holds {json.dumps(item)[:80]}: a message must be a string "
                    "or an object with a `msg` string"
                )
                continue
            findings.append(_finding(rule, verdict, message, resource, _suffix(name) in excepted))
    return findings, errors


def _exceptions(value: Any, namespace: str) -> tuple[set[str], list[str]]:
    rule = f"`{namespace}.exception`"
    if value is None:
        return set(), []
    if isinstance(value, dict):
        return set(), [f"{rule} is an object, not a set of rule-name arrays{_v0_hint('exception')}"]
    if not isinstance(value, list) or not all(
        isinstance(names, list) and all(isinstance(n, str) for n in names) for names in value
    ):
        return set(), [f'{rule} must be a set of rule-name arrays, like `rules := ["foo"]`']
    return {name for names in value for name in names}, []


def _suffix(rule: str) -> str:
    # conftest's removeRulePrefix, prefix by prefix in this order: `deny_foo` is excepted by
    # "foo", and a bare `deny` by "deny".
    for prefix in ("violation_", "deny_", "warn_"):
        rule = rule.removeprefix(prefix)
    return rule


def _message(item: Any) -> tuple[str | None, str]:
    if isinstance(item, str):
        return item, ""
    if not isinstance(item, dict) or not isinstance(item.get("msg"), str):
        return None, ""
    for key in ("resource", "address"):
        if isinstance(item.get(key), str):
            return item["msg"], item[key]
    return item["msg"], ""


def _finding(
    rule: str, verdict: str, message: str, resource: str, excepted: bool
) -> dict[str, Any]:
    return {
        "rule": f"rego:{rule}",
        "verdict": verdict,
        "message": message,
        "resource": resource,
        # An excepted deny is kept for the record but no longer blocks, as in conftest.
        "blocking": verdict == "deny" and not excepted,
        "excepted": excepted,
    }


def _v0_hint(name: str) -> str:
    # XXX: regopy 1.5.2 reads the Rego v0 partial set `deny[msg] { ... }` (and `import rego.v0`)
    # as a partial object without a word; OPA 1.x rejects it and OPA 0.x reads a set. The object
    # is caught here; pinned by test_rego.py::test_rego_v0_rule_is_an_error.
    return (
        f"; regopy reads the Rego v0 form `{name}[x] {{ ... }}` as an object, "
        f"so write it in Rego v1: `{name} contains x if {{ ... }}`"
    )


def _shape(value: Any) -> str:
    if value is None:
        return "undefined"
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, bool):
        return f"`{json.dumps(value)}`"
    if isinstance(value, str):
        return "a string"
    return "a number" if isinstance(value, int | float) else "a list"


def _tail(data: bytes) -> str:
    lines = data.decode(errors="replace").strip().splitlines()
    return f": {lines[-1][:300]}" if lines else ""


def _opa_error(error: dict[str, Any]) -> str:
    where = error.get("location") or {}
    file = str(where.get("file", "")).removeprefix("policy/")
    place = f"{file}:{where.get('row')}:{where.get('col')}: " if file else ""
    return f"{place}{error.get('message', error)} ({error.get('code', 'error')})"


def _run(argv: list[str], stdin: bytes, timeout: float, cwd: Path | None = None) -> _Run:
    # A session of its own, so a timeout kills the engine and anything it started.
    with subprocess.Popen(
        argv,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=cwd,
        env=_child_env(),
        start_new_session=True,
    ) as process:
        try:
            stdout, stderr = process.communicate(stdin, timeout=timeout)
        except subprocess.TimeoutExpired:
            # ProcessLookupError: it ended between the timeout and the kill.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            stdout, stderr = process.communicate()
            return _Run(process.returncode, stdout, stderr, timed_out=True)
    return _Run(process.returncode, stdout, stderr, timed_out=False)


def _worker(mode: str, memory_mb: int, timeout: float) -> list[str]:
    # -P: the current folder is not put on sys.path, so a stray `regopy.py` there is not loaded.
    limits = ["--memory-mb", str(memory_mb), "--cpu-seconds", str(_cpu_seconds(timeout))]
    return [sys.executable, "-P", "-m", "compiler.rego_worker", mode, *limits]


def _trampoline(memory_mb: int, timeout: float) -> list[str]:
    """The worker in `exec` mode: it applies the limits, then becomes the engine binary."""
    return [*_worker("exec", memory_mb, timeout), "--"]


def _cpu_seconds(timeout: float) -> int:
    # A backstop for a child the parent can no longer kill; the wall clock normally ends first.
    return math.ceil(timeout) + 1


def _child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(_ROOT), env.get("PYTHONPATH")) if p)
    return env


def _stage(folder: Path, modules: list[tuple[str, str]], document: str) -> Path:
    for name, source in modules:
        target = folder / "policy" / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(source, "utf-8")
    (folder / "input.json").write_text(document, "utf-8")
    return folder


def _fields(text: str) -> Iterable[tuple[str, str]]:
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            yield key.strip(), value.strip()


# A deny, warn or violation rule written as a single value (`deny if {...}`, `deny := x`)
# rather than a set (`deny contains msg if {...}`); Rego v0's `deny[msg] {` is a set too.
_BOOLEAN_HEAD = re.compile(
    r"^((?:deny|warn|violation)(?:_[A-Za-z0-9_]*)?)[ \t]*(?:if\b|\{|:=|=(?!=))", re.M
)


def _package(text: str) -> str | None:
    match = _PACKAGE.search(text)
    return match.group(1) if match else None


def _digest(files: Iterable[tuple[str, bytes]]) -> str:
    # The scheme of compiler.policy.digest_of, so both kinds of policy digest alike.
    h = hashlib.sha256()
    for name, data in sorted(files):
        h.update(f"{name}\0{hashlib.sha256(data).hexdigest()}\n".encode())
    return "sha256:" + h.hexdigest()
