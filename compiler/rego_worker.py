"""The child side of the Rego adapter: the only Forge module that may import regopy.

`compiler.rego` starts this module as `python -P -m compiler.rego_worker MODE ...` and never
imports it. regopy wraps a C++ engine that can crash the process it runs in, so it must stay
out of the compiler and the executor; here a crash costs one child process, which the parent
reports as a blocking error.

`regopy` mode reads a request from stdin, `{"namespace": "main", "modules": [[name, source],
...], "input": "<the document as JSON text>"}`, and writes one JSON object to stdout:
`{"value": <data.NAMESPACE, or null when undefined>, "errors": ["...", ...]}`.
`exec` mode applies the limits and then becomes the `opa` or `conftest` program named after
`--`, so the parent needs no `preexec_fn` (which is unsafe in a threaded process).

The CPU limit is set first; the memory cap as soon as regopy's allocator has started (see
`_evaluate`), before any policy is read.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import sys
from typing import Any, BinaryIO

# The C++ engine reports errors as s-expressions with length-prefixed strings:
# `(error 8:syn.rego|82|2 (errormsg 24:Invalid boolean operator) ...)`.
_ERROR_AT = re.compile(rb"\(error (\d+):")
_MESSAGE = re.compile(rb"\(errormsg (\d+):")
_CODE = re.compile(rb"\(rego-errorcode (\d+):")


def main(argv: list[str] | None = None) -> int:
    """Run one evaluation (`regopy`) or become an engine binary (`exec`) under the limits."""
    words = sys.argv[1:] if argv is None else argv
    # Everything after `--` is the program to become, flags and all.
    split = words.index("--") if "--" in words else len(words)
    parser = argparse.ArgumentParser(prog="python -m compiler.rego_worker")
    parser.add_argument("mode", choices=("regopy", "exec"))
    parser.add_argument("--memory-mb", type=int, required=True)
    parser.add_argument("--cpu-seconds", type=int, required=True)
    args = parser.parse_args(words[:split])
    program = words[split + 1 :]

    _limit(resource.RLIMIT_CPU, args.cpu_seconds)
    if args.mode == "exec":
        if not program:
            parser.error("exec needs a program after --")
        return _exec(program, args.memory_mb)

    # rego-cpp prints its diagnostics on stdout; keep stdout for the one JSON answer.
    answer = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    request = json.loads(sys.stdin.buffer.read())
    _write(answer, _evaluate(request, args.memory_mb))
    return 0


def _exec(program: list[str], memory_mb: int) -> int:
    # opa and conftest are Go programs: the Go runtime reserves address space it never touches,
    # so RLIMIT_AS would kill them at start-up. RLIMIT_DATA counts only the mappings it writes.
    # Untested here: neither binary can be installed in the development environment.
    _limit(resource.RLIMIT_DATA, memory_mb << 20)
    os.execv(program[0], program)
    return 127  # not reached: execv either replaces this process or raises


def _evaluate(request: dict[str, Any], memory_mb: int) -> dict[str, Any]:
    answer: dict[str, Any] = {"value": None, "errors": []}
    try:
        import regopy
    except ImportError as exc:
        answer["errors"] = [f"regopy cannot be imported: {exc}"]
        return answer

    interpreter = regopy.Interpreter()
    # snmalloc, rego-cpp's allocator, reserves about 256 GiB of address space for its page map
    # when the first interpreter is made, so a plain RLIMIT_AS (or RLIMIT_DATA) of any useful size
    # stops it starting. Capping the growth past that point still caps what a policy can use.
    _limit(resource.RLIMIT_AS, _address_space() + (memory_mb << 20))
    # Without strict errors a failing built-in (division by zero, a bad sprintf) makes its rule
    # silently undefined: a deny that never fires. Fail closed instead.
    interpreter.strict_built_in_errors = True

    sources = {name: source for name, source in request["modules"]}
    try:
        for name, source in request["modules"]:
            interpreter.add_module(name, source)
        interpreter.set_input_term(request["input"])
    except regopy.RegoError as exc:
        answer["errors"] = _parse_errors(str(exc).encode(), sources) or [str(exc)]
        return answer

    value, errors = _query(interpreter, f"data.{request['namespace']}", sources)
    answer["value"], answer["errors"] = value, errors
    return answer


def _query(interpreter: Any, query: str, sources: dict[str, str]) -> tuple[Any, list[str]]:
    from regopy.rego_shared import rego_output_ok, rego_output_string, rego_query

    # The low-level calls, because regopy's Output parses the text as JSON unchecked and some
    # errors come back as an s-expression with ok set.
    output = rego_query(interpreter._impl, query)
    if not rego_output_ok(output):
        return None, _error_nodes(output) or ["the engine failed without a message"]

    text = rego_output_string(output)
    if text == "undefined":
        return None, []
    try:
        result = json.loads(text)
    except ValueError:
        return None, _parse_errors(text.encode(), sources) or [f"unreadable output: {text[:200]}"]
    if isinstance(result, list):
        result = result[0] if result else {}
    expressions = result.get("expressions", []) if isinstance(result, dict) else []
    if len(expressions) != 1:
        return None, [f"unexpected output: {text[:200]}"]
    return expressions[0], []


def _error_nodes(output: Any) -> list[str]:
    from regopy import Node
    from regopy.rego_shared import rego_node_value, rego_output_node

    # An error sequence holds (error (errormsg) (errorast) (errorcode)) nodes; the message and
    # the code are the only parts with text.
    errors: list[str] = []
    sequence = Node(rego_output_node(output))
    for i in range(len(sequence)):
        error = sequence.at(i)
        parts = [_text(rego_node_value, error.at(j)) for j in range(len(error))]
        message = parts[0] if parts else ""
        code = parts[-1] if len(parts) > 1 else ""
        errors.append(f"{message} ({code})" if code else message)
    return errors


def _text(read: Any, node: Any) -> str:
    try:
        return str(read(node._impl))
    except Exception:  # a node without text: regopy raises its own error type for that
        return ""


def _parse_errors(text: bytes, sources: dict[str, str]) -> list[str]:
    errors: list[str] = []
    for chunk in re.split(rb"(?=\(error[ \n])", text):
        message = _string_after(_MESSAGE, chunk)
        if message is None:
            continue
        code = _string_after(_CODE, chunk)
        where = _location(chunk, sources)
        errors.append(f"{where}{message}" + (f" ({code})" if code else ""))
    return errors


def _string_after(pattern: re.Pattern[bytes], text: bytes) -> str | None:
    match = pattern.search(text)
    if match is None:
        return None
    length = int(match.group(1))
    return text[match.end() : match.end() + length].decode("utf-8", errors="replace")


def _location(chunk: bytes, sources: dict[str, str]) -> str:
    name = _string_after(_ERROR_AT, chunk)
    match = _ERROR_AT.search(chunk)
    if name is None or match is None or name not in sources:
        return ""
    span = re.match(rb"\|(\d+)\|", chunk[match.end() + len(name.encode()) :])
    if span is None:
        return f"{name}: "
    before = sources[name].encode()[: int(span.group(1))]
    line = before.count(b"\n") + 1
    column = len(before[before.rfind(b"\n") + 1 :].decode("utf-8", errors="replace")) + 1
    return f"{name}:{line}:{column}: "


def _address_space() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    raise OSError("no VmSize in /proc/self/status")


def _limit(which: int, value: int) -> None:
    # Soft and hard alike, so nothing the engine runs can raise it again; never above a hard
    # limit already set, which an unprivileged process cannot raise.
    _, hard = resource.getrlimit(which)
    if hard != resource.RLIM_INFINITY:
        value = min(value, hard)
    resource.setrlimit(which, (value, value))


def _write(stream: BinaryIO, answer: dict[str, Any]) -> None:
    stream.write(json.dumps(answer).encode())
    stream.flush()


if __name__ == "__main__":
    sys.exit(main())
