"""The `forge` command: reads arguments, runs the pipeline's phases, renders what they return.

Exit codes: 0 success; 1 a diagnostic (bad Forgefile, bad policy file, bad input); 2 `plan
--detailed-exitcode` found changes; 3 policy blocked the plan; 4 an action failed during apply;
5 the user declined; 6 `audit verify` found the audit log's chain broken; 10-17 `apply` refused
a plan (see docs/plan-format.md); 70 an internal error, which is a bug.
"""

import functools
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer

from compiler.version import VERSION

from . import render

if TYPE_CHECKING:
    from executor.state import State

app = typer.Typer(
    name="forge",
    help="Build, plan, sign and apply Forgefiles: images, containers, WASM and networks on "
    "one host.",
    no_args_is_help=True,
    add_completion=False,
    # Plain help, as git and terraform print it: typer's rich help imports markdown-it and
    # rich.traceback, which doubles the start of every `--help`.
    rich_markup_mode=None,
    context_settings={"max_content_width": 100},
    pretty_exceptions_enable=False,
)
key_app = typer.Typer(
    help="Manage the keys that sign plans and the keys `apply` trusts.", no_args_is_help=True
)
app.add_typer(key_app, name="key")
policy_app = typer.Typer(
    help="Judge, test and explain policy: rules, packs, waivers and overrides.",
    no_args_is_help=True,
)
app.add_typer(policy_app, name="policy")
audit_app = typer.Typer(
    help="Read and verify the audit log: every plan applied, by whom, and what came of it.",
    no_args_is_help=True,
)
app.add_typer(audit_app, name="audit")
state_app = typer.Typer(
    help="Inspect the recorded state: its serials, what each held, and an export for tools.",
    no_args_is_help=True,
)
app.add_typer(state_app, name="state")
image_app = typer.Typer(
    help="Manage the project's image store: import OCI and docker archives, list, remove, export.",
    no_args_is_help=True,
)
app.add_typer(image_app, name="image")


class _LazyConsole:
    """A rich Console made on first use: `forge version` should not wait for rich to import."""

    def __init__(self, **options: Any) -> None:
        self._options = options
        self._console: Any = None

    def __getattr__(self, name: str) -> Any:
        if self._console is None:
            from rich.console import Console

            self._console = Console(**self._options)
        return getattr(self._console, name)


class _Stream:
    """Standard output or error that outlives its reader: once a pipe's reader has gone
    (`forge apply | head`), what is printed goes nowhere, and the command carries on to its end.
    An apply stopped halfway by a closed pipe would leave a service torn down and not yet
    replaced. A stream closed before forge started (`>&-`) takes nothing, from the start."""

    def __init__(self, name: str) -> None:
        self.name = name

    def _file(self) -> Any:
        return getattr(sys, self.name)

    def write(self, text: str) -> int:
        stream = self._file()
        if stream is None:
            return len(text)
        try:
            return int(stream.write(text))
        except BrokenPipeError:
            _silence(stream)
            return len(text)

    def flush(self) -> None:
        stream = self._file()
        try:
            if stream is not None:
                stream.flush()
        except BrokenPipeError:
            _silence(stream)

    def isatty(self) -> bool:
        stream = self._file()
        return stream is not None and stream.isatty()

    def fileno(self) -> int:
        return int(self._file().fileno())


def _silence(stream: Any) -> None:
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, stream.fileno())
    os.close(devnull)


def _silence_stdout() -> None:
    if sys.stdout is not None:
        _silence(sys.stdout)


# Piped output is read by scripts and people's pagers: don't squeeze tables into 80 columns.
out: Any = _LazyConsole(
    file=_Stream("stdout"),
    highlight=False,
    soft_wrap=True,
    emoji=False,
    width=None if sys.stdout is not None and sys.stdout.isatty() else 160,
)
err: Any = _LazyConsole(
    file=_Stream("stderr"), stderr=True, highlight=False, soft_wrap=True, emoji=False
)


def e(value: object) -> str:
    """User text inside rich markup: `[/]` in a name must print, not close a style."""
    return render.escape(str(value))


EXIT_DIAGNOSTIC = 1
EXIT_CHANGES = 2
EXIT_POLICY = 3
EXIT_ACTION_FAILED = 4
EXIT_DECLINED = 5
EXIT_AUDIT_BROKEN = 6
EXIT_INTERNAL = 70
MAX_INT = 2**63 - 1  # SQLite's integers: a serial or a count past it is a usage error


# Where the project is: every command takes these, so `forge apply --var x=1` reads as it should.
FileOption = Annotated[Path, typer.Option("--file", "-f", help="The Forgefile, or its folder.")]
StateOption = Annotated[
    Path | None,
    typer.Option(
        "--state-dir",
        envvar="FORGE_STATE_DIR",
        help="Where state, images and keys live [default: .forge beside the Forgefile].",
    ),
]
PolicyOption = Annotated[
    list[Path] | None,
    typer.Option(
        "--policy",
        help="A policy file or folder of *.policy files; repeatable "
        "[default: policy/ beside the Forgefile].",
    ),
]
VarOption = Annotated[
    list[str] | None, typer.Option("--var", help="Set a variable: --var NAME=VALUE; repeatable.")
]
OverrideOption = Annotated[
    list[str] | None,
    typer.Option(
        "--override",
        help="Let a soft policy finding pass: --override RULE=REASON, or RULE@ADDRESS=REASON for "
        "one resource; repeatable. Recorded in the plan with your identity.",
    ),
]
IdentityOption = Annotated[
    str | None,
    typer.Option(
        "--identity",
        envvar="FORGE_IDENTITY",
        help="Who gives the overrides [default: the login user].",
    ),
]
HERE = Path(".")
JsonOutputOption = Annotated[
    Path | None, typer.Option("--output", "-o", help="Write to FILE [default: stdout].")
]
DEFAULT_PARALLELISM = 8
ParallelismOption = Annotated[
    int,
    typer.Option(
        "--parallelism",
        min=1,
        max=64,
        envvar="FORGE_PARALLELISM",
        help="How many resources are created or removed at once; each still waits for what it "
        "depends on. 1 works through the plan in order.",
    ),
]
KeyOption = Annotated[
    list[str] | None,
    typer.Option(
        "--key",
        help="The signing key's name; repeat to sign with several (for a trust threshold).",
    ),
]


F = TypeVar("F", bound=Callable[..., Any])


def reports(fn: F) -> F:
    """Turn Forge's errors into rendered diagnostics and exit codes; never a traceback."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from forgefile.diagnostics import DiagnosticError, ForgeError

        try:
            return fn(*args, **kwargs)
        except DiagnosticError as exc:
            for d in exc.diagnostics:
                render.diagnostic(err, d)
            errors = sum(1 for d in exc.diagnostics if str(d.severity) == "error")
            err.print(f"[red]{e(errors)} error(s).[/]")
            raise typer.Exit(EXIT_DIAGNOSTIC) from None
        except ForgeError as exc:
            err.print(f"[bold red]{e(exc.headline)}:[/] {e(str(exc))}")
            if exc.hint:
                err.print(f"  [green]hint:[/] {e(exc.hint)}")
            raise typer.Exit(exc.exit_code) from None
        except BrokenPipeError:
            # Whoever read our output went away (`| head`): nothing is left to tell them.
            _silence_stdout()
            raise typer.Exit(EXIT_DIAGNOSTIC) from None
        except OSError as exc:
            # The host refused a file operation: a path that is a file, a full disk, permissions.
            where = f" ({exc.filename})" if exc.filename else ""
            err.print(f"[bold red]error:[/] {e(exc.strerror or exc)}{e(where)}")
            raise typer.Exit(EXIT_DIAGNOSTIC) from None
        except KeyboardInterrupt:
            err.print("[yellow]interrupted[/]")
            raise typer.Exit(130) from None
        except (typer.Exit, typer.Abort, SystemExit):
            raise
        except Exception as exc:
            if os.environ.get("FORGE_DEBUG"):
                raise
            err.print(f"[bold red]internal error:[/] {e(type(exc).__name__)}: {e(exc)}")
            err.print("  this is a bug in Forge; run again with FORGE_DEBUG=1 for the traceback")
            raise typer.Exit(EXIT_INTERNAL) from None

    return wrapper  # type: ignore[return-value]


def _project(
    file: Path,
    state_dir: Path | None,
    policy: list[Path] | None = None,
    var: list[str] | None = None,
    override: list[str] | None = None,
    identity: str | None = None,
) -> Any:
    import dataclasses

    from .project import Project

    variables = {}
    for item in var or []:
        name, sep, value = item.partition("=")
        if not sep or not name:
            err.print(f"[bold red]error:[/] --var {e(repr(item))} is not NAME=VALUE")
            raise typer.Exit(EXIT_DIAGNOSTIC)
        variables[name] = value
    project = Project.locate(file, state_dir, list(policy or []), variables)
    if override:
        project = dataclasses.replace(project, overrides=_overrides(override, identity))
    return project


def _overrides(items: list[str], identity: str | None) -> tuple[Any, ...]:
    import getpass

    from compiler.policy import Override

    if identity is not None and not identity.strip():
        err.print("[bold red]error:[/] --identity is blank; name who gives the overrides")
        raise typer.Exit(EXIT_DIAGNOSTIC)
    from forgefile.diagnostics import visible

    if identity is not None and visible(identity) != identity:
        err.print(f"[bold red]error:[/] --identity {e(repr(identity))} holds control characters")
        raise typer.Exit(EXIT_DIAGNOSTIC)
    try:
        who = (identity or getpass.getuser()).strip()
    except (OSError, KeyError):  # no login name: an override must still say who gave it
        err.print("[bold red]error:[/] no login user to record; give --identity NAME")
        raise typer.Exit(EXIT_DIAGNOSTIC) from None
    found: list[Override] = []
    for item in items:
        target, sep, reason = item.partition("=")
        rule, _, address = target.partition("@")
        problem = (
            "is not RULE=REASON (a reason is required)"
            if not sep or not reason.strip()
            else "names no rule: write RULE=REASON, such as FRG-C001=REASON"
            if not rule.strip()
            else ""
        )
        if problem:
            err.print(f"[bold red]error:[/] --override {e(repr(item))} {problem}")
            raise typer.Exit(EXIT_DIAGNOSTIC)
        if any((o.rule, o.resource) == (rule.strip(), address.strip()) for o in found):
            err.print(f"[bold red]error:[/] --override {e(target.strip())} is given twice")
            raise typer.Exit(EXIT_DIAGNOSTIC)
        found.append(Override(rule.strip(), address.strip(), reason.strip(), who))
    return tuple(found)


@app.callback()
def main_options(
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log each step.")] = False,
) -> None:
    """Forge: a compiled toolchain for the Forgefile."""
    import logging

    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )


# -- validate, build, plan ------------------------------------------------------------------------


@app.command()
@reports
def validate(
    file: FileOption = HERE,
    state_dir: StateOption = None,
    policy: PolicyOption = None,
    var: VarOption = None,
    override: OverrideOption = None,
    identity: IdentityOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print diagnostics as JSON.")] = False,
) -> None:
    """Check the Forgefile and judge it against policy, without building or planning.

    Every problem is reported at once with file:line:col, a code frame and a hint.
    """
    from forgefile.diagnostics import DiagnosticError

    from .project import check

    project = _project(file, state_dir, policy, var, override, identity)
    try:
        checked = check(project)
    except DiagnosticError as exc:
        if as_json:
            out.print_json(
                data={
                    "version": 1,
                    "valid": False,
                    "diagnostics": render.diagnostics_json(exc.diagnostics),
                }
            )
            raise typer.Exit(EXIT_DIAGNOSTIC) from None
        raise
    blocked = bool(checked.verdict and checked.verdict.blocked)
    if as_json:
        out.print_json(
            data={
                "version": 1,
                "valid": not blocked,
                "diagnostics": render.diagnostics_json(checked.warnings),
                "policy": checked.verdict.to_json() if checked.verdict else None,
            }
        )
    else:
        for d in checked.warnings:
            render.diagnostic(err, d)
        if checked.verdict:
            render.findings(err, checked.verdict)
        if not blocked:
            out.print(
                f"[green]Valid:[/] {len(checked.doc.resources)} resources in "
                f"{e(project.forgefile)}."
            )
    if blocked:
        raise typer.Exit(EXIT_POLICY)


@app.command()
@reports
def build(
    file: FileOption = HERE,
    state_dir: StateOption = None,
    policy: PolicyOption = None,
    var: VarOption = None,
) -> None:
    """Build every image block into the project's image store, and import the images that
    workloads name as "oci:PATH:TAG" or "archive:PATH".

    Builds are reproducible: the same Forgefile and context give the same image digests.
    """
    from .project import build as build_images
    from .project import check

    project = _project(file, state_dir, policy, var)
    checked = check(project)
    started = time.monotonic()
    images = build_images(project, checked.doc)
    for address, facts in images.items():
        verb = "built" if address.startswith(("image.", "module.")) else "imported"
        out.print(f"[green]{verb}[/] {e(address)} [dim]{e(facts.digest)}[/]")
    out.print(f"{e(len(images))} image(s) in {time.monotonic() - started:.1f}s.")


TargetOption = Annotated[
    list[str] | None,
    typer.Option(
        "--target",
        help="Plan only this resource and what it depends on; repeatable. The plan records it.",
    ),
]
ExcludeOption = Annotated[
    list[str] | None,
    typer.Option(
        "--exclude",
        help="Leave out this resource and everything that depends on it; repeatable.",
    ),
]


def _planned(
    project: Any,
    destroy: bool,
    targets: list[str] | None = None,
    excludes: list[str] | None = None,
) -> dict[str, Any]:
    from forgefile import ir

    from .project import Checked, check, make_plan

    if destroy:
        # Destroying reads only state: a broken or deleted Forgefile must not keep things
        # running. A Forgefile that does load is read for its prevent_destroy marks.
        from forgefile.diagnostics import DiagnosticError
        from forgefile.lower import load

        try:
            declared = load(project.forgefile, project.variables)
        except (DiagnosticError, OSError):
            declared = ir.Document(path=str(project.forgefile), resources=())
        return make_plan(
            project,
            Checked(declared, [], None),
            destroy=True,
            targets=targets or (),
            excludes=excludes or (),
        )
    checked = check(project)
    if checked.verdict:
        render.findings(err, checked.verdict)
        if checked.verdict.blocked:
            blocking = sum(1 for f in checked.verdict.findings if f.blocking)
            errors = sum(1 for p in checked.verdict.problems if p.severity == "error")
            what = ", ".join(
                text
                for count, text in (
                    (blocking, f"{blocking} finding(s)"),
                    (errors, f"{errors} policy error(s)"),
                )
                if count
            )
            err.print(f"[bold red]Policy blocked the plan:[/] {what} must be fixed first.")
            raise typer.Exit(EXIT_POLICY)
    for d in checked.warnings:
        render.diagnostic(err, d)
    return make_plan(
        project, checked, destroy=destroy, targets=targets or (), excludes=excludes or ()
    )


@app.command()
@reports
def plan(
    file: FileOption = HERE,
    state_dir: StateOption = None,
    policy: PolicyOption = None,
    var: VarOption = None,
    override: OverrideOption = None,
    identity: IdentityOption = None,
    output: Annotated[
        Path | None,
        typer.Option("--out", "-o", help="Write the signed plan here, for `forge apply FILE`."),
    ] = None,
    destroy: Annotated[bool, typer.Option("--destroy", help="Plan to remove everything.")] = False,
    key: KeyOption = None,
    detailed_exitcode: Annotated[
        bool,
        typer.Option(
            "--detailed-exitcode", help="Exit 2 when the plan has changes, 0 when it has none."
        ),
    ] = False,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the plan document as JSON.")
    ] = False,
    target: TargetOption = None,
    exclude: ExcludeOption = None,
    refresh_only: Annotated[
        bool,
        typer.Option(
            "--refresh-only",
            help="Only show drift: what changed on the host since the last apply, not what "
            "the Forgefile would change. With --detailed-exitcode, exit 2 when there is drift.",
        ),
    ] = False,
) -> None:
    """Compute what apply would do: build images, judge policy, diff against state.

    With -o, the plan is signed (Ed25519, DSSE) and written for `forge apply FILE`, which refuses
    it if it was changed, expired, or the state moved on since.
    """

    project = _project(file, state_dir, policy, var, override, identity)
    if refresh_only:
        if output is not None or destroy or target or exclude:
            err.print(
                "[bold red]error:[/] --refresh-only shows drift; it makes no plan, so it takes "
                "no -o, --destroy, --target or --exclude"
            )
            raise typer.Exit(EXIT_DIAGNOSTIC)
        _show_drift(project, as_json, detailed_exitcode)
        return
    document = _planned(project, destroy, target, exclude)
    if as_json:
        out.print_json(data=document)
    else:
        render.plan(out, document)
        selection = document.get("selection") or {}
        if not (selection.get("targets") or selection.get("excludes")):
            render.outputs(out, document["outputs"])
    if output is not None:
        _write_plan(project, document, key, output, as_json)
    changes = _has_changes(document)
    if detailed_exitcode and changes:
        raise typer.Exit(EXIT_CHANGES)


def _write_plan(
    project: Any, document: dict[str, Any], key: list[str] | None, to: Path, as_json: bool
) -> None:
    from .project import sign

    try:
        to.write_bytes(sign(project, document, key))
    except OSError as exc:
        err.print(f"[bold red]error:[/] cannot write the plan to {e(to)}: {e(exc.strerror)}")
        raise typer.Exit(EXIT_DIAGNOSTIC) from None
    # With --json, stdout holds the plan document alone.
    (err if as_json else out).print(
        f"Signed plan written to [bold]{e(to)}[/]; apply it with `forge apply {e(to)}`."
    )


# -- apply, destroy ---------------------------------------------------------------------------


def _progress(phase: str, address: str, message: str) -> None:
    """Steps told one per line (recovery, which has no live table)."""
    render.ApplyProgress(out)(phase, address, message)


def _run(
    project: Any,
    envelope: bytes,
    json_on_stdout: bool = False,
    rollback: bool = True,
    workers: int = DEFAULT_PARALLELISM,
) -> None:
    """Apply a signed plan, telling how it goes; where stdout already holds JSON (`--json`),
    the telling goes to stderr, so that stdout stays one document."""
    from .project import apply as apply_envelope

    to = err if json_on_stdout else out
    started = time.monotonic()
    with render.ApplyProgress(to) as progress:
        verified, result = apply_envelope(project, envelope, progress, rollback, workers)
    if result.failed is not None:
        action = result.failed_action
        where = ""
        if action and action.get("span"):
            span = action["span"]
            from forgefile.diagnostics import Span

            declared = Span(span["file"], span["line"], span["column"], span["line"], 0)
            where = f" (declared at {render.shown(declared)})"
        err.print(f"[bold red]{e(result.failed.address)} failed{e(where)}:[/] {e(result.failed)}")
        if result.failed.hint:
            err.print(f"  [green]hint:[/] {e(result.failed.hint)}")
        if result.rolled_back:
            err.print(
                f"Rolled back: removed the {len(result.rolled_back)} resource(s) this apply had "
                "created; what it replaced stays replaced. (--no-rollback keeps them.)"
            )
        kept = set(result.changed) - set(result.rolled_back)
        if kept:
            err.print(
                f"{len(kept)} resource(s) changed before the failure and stay changed; run "
                "`forge plan` to see where things stand."
            )
        raise typer.Exit(EXIT_ACTION_FAILED)
    verb = "Destroyed" if verified.document.get("destroy") else "Applied"
    to.print(
        f"[green]{e(verb)}:[/] {len(set(result.changed))} resource(s) changed in "
        f"{time.monotonic() - started:.1f}s (state serial {e(result.serial or 'unchanged')})."
    )
    render.outputs(to, verified.document.get("outputs", {}))


def _confirm(auto_approve: bool, question: str) -> None:
    if auto_approve:
        return
    if not sys.stdin.isatty():
        err.print(
            "[bold red]error:[/] confirmation needed, but standard input is not a "
            "terminal; pass --auto-approve"
        )
        raise typer.Exit(EXIT_DECLINED)
    if not typer.confirm(question):
        err.print("Nothing was changed.")
        raise typer.Exit(EXIT_DECLINED)


@app.command()
@reports
def apply(
    plan_file: Annotated[
        Path | None,
        typer.Argument(
            help="A signed plan from `forge plan -o`; without it, plan now and ask first.",
            show_default=False,
        ),
    ] = None,
    auto_approve: Annotated[
        bool, typer.Option("--auto-approve", help="Apply without asking.")
    ] = False,
    key: KeyOption = None,
    file: FileOption = HERE,
    state_dir: StateOption = None,
    policy: PolicyOption = None,
    var: VarOption = None,
    override: OverrideOption = None,
    identity: IdentityOption = None,
    target: TargetOption = None,
    exclude: ExcludeOption = None,
    resume: Annotated[
        bool,
        typer.Option(
            "--resume",
            help="Only finish or roll back what an interrupted apply left, then stop.",
        ),
    ] = False,
    no_rollback: Annotated[
        bool,
        typer.Option(
            "--no-rollback",
            help="When an action fails, keep what this apply created (by default it is removed).",
        ),
    ] = False,
    parallelism: ParallelismOption = DEFAULT_PARALLELISM,
) -> None:
    """Carry out a plan: verify its signature, expiry, state and policy, then act.

    Re-running with nothing changed does nothing; a change replaces only what it touches. Every
    step is journalled first: an apply that was killed is finished or rolled back by the next
    one (or by --resume alone) before it does anything else.
    """
    from .project import sign

    if resume and (plan_file is not None or target or exclude):
        err.print(
            "[bold red]error:[/] --resume only finishes an interrupted apply; it takes no plan"
        )
        raise typer.Exit(EXIT_DIAGNOSTIC)
    if resume:
        from .project import resume as resume_apply

        done = resume_apply(_project(file, state_dir), _progress)
        out.print(
            f"[green]Resumed:[/] {len(done)} step(s) of an interrupted apply finished or rolled "
            "back."
            if done
            else "[green]Nothing to resume:[/] no apply was interrupted."
        )
        return

    if plan_file is not None and (target or exclude):
        err.print("[bold red]error:[/] --target and --exclude shape a new plan, not a saved one")
        raise typer.Exit(EXIT_DIAGNOSTIC)
    if plan_file is not None:
        try:
            envelope = plan_file.read_bytes()
        except OSError as exc:
            err.print(f"[bold red]error:[/] cannot read {e(plan_file)}: {e(exc.strerror)}")
            raise typer.Exit(EXIT_DIAGNOSTIC) from None
        _run(
            _project(file, state_dir, policy, var),
            envelope,
            rollback=not no_rollback,
            workers=parallelism,
        )
        return
    project = _project(file, state_dir, policy, var, override, identity)
    _finish_interrupted(project)
    document = _planned(project, False, target, exclude)
    render.plan(out, document)
    if not _has_changes(document):
        if not (target or exclude):
            _save_outputs(project, document)
        render.outputs(out, document["outputs"])
        return
    _confirm(auto_approve, "Apply this plan?")
    _run(project, sign(project, document, key), rollback=not no_rollback, workers=parallelism)


def _finish_interrupted(project: Any) -> None:
    """Finish what an interrupted apply left before planning: its last steps (a replaced
    container's removal, say) leave state as the Forgefile wants it, so a plan would find
    nothing to do and the leftover would stay."""
    from .project import resume as resume_apply

    resume_apply(project, _progress)


def _show_drift(project: Any, as_json: bool, detailed_exitcode: bool) -> None:
    from .project import drift

    found = drift(project)
    if as_json:
        out.print_json(data={"version": 1, "drift": found})
    elif not found:
        out.print("[green]No drift.[/] The host matches what the last apply recorded.")
    else:
        for item in found:
            out.print(f"[yellow]~ {e(item['address'])}[/] [dim]({e(item['drift'])})[/]")
        out.print(
            f"{len(found)} resource(s) drifted; `forge apply` replaces them as the Forgefile says."
        )
    if detailed_exitcode and found:
        raise typer.Exit(EXIT_CHANGES)


def _would_accept(project: Any, data: bytes) -> str:
    """What `forge apply FILE` would say, every check made but nothing done: "yes", or "no"
    with the check that fails."""
    from datetime import UTC, datetime

    from executor.verify import PlanRejected, verify

    from .project import policy_digest

    state = project.existing_state()
    if state is None:
        return "no: there is no state here to apply it to (nothing was ever planned here)"
    try:
        verify(data, project.keys(), state, datetime.now(UTC), policy_digest(project))
    except PlanRejected as exc:
        return f"no ({exc.check} check): {exc}"
    finally:
        state.close()
    return "yes"


def _show_plan(plan_file: Path, project: Any, as_json: bool) -> None:
    from compiler.envelope import open_envelope

    try:
        data = plan_file.read_bytes()
    except OSError as exc:
        err.print(f"[bold red]error:[/] cannot read {e(plan_file)}: {e(exc.strerror)}")
        raise typer.Exit(EXIT_DIAGNOSTIC) from None
    keys = project.keys()
    # Decoded with no signature required, but every trusted signature on it must verify.
    opened = open_envelope(data, keys.trusted(), threshold=0, revoked=keys.revoked())
    signers = [s["keyid"] for s in json.loads(data)["signatures"]]
    accepted = _would_accept(project, data)
    if as_json:
        out.print_json(
            data={
                "version": 1,
                "signers": signers,
                "trusted_signers": list(opened.signers),
                "accepted": accepted,
                "payload_digest": opened.payload_digest,
                "plan": opened.document,
            }
        )
        return
    document = opened.document
    out.print(
        f"[bold]{e(plan_file)}[/]: made {e(document.get('created_at'))}, expires "
        f"{e(document.get('expires_at'))}, against state serial "
        f"{e(document.get('prior_state', {}).get('serial'))}"
    )
    out.print(
        f"  signed by {len(signers)} key(s), {len(opened.signers)} trusted here; "
        f"apply would accept it: {e(accepted)}"
    )
    out.print(f"  policy: {e(document.get('policy', {}).get('verdict'))}")
    rollback = document.get("rollback")
    if rollback:
        out.print(
            f"  a rollback to serial {e(rollback['serial'])}, under the verdict of plan "
            f"{e(rollback['plan'])}"
        )
    render.plan(out, document)


def _has_changes(document: dict[str, Any]) -> bool:
    return any(a["action"] != "no-op" for a in document["actions"])


def _save_outputs(project: Any, document: dict[str, Any]) -> None:
    state = project.state()
    try:
        state.set_outputs(document["outputs"])
    finally:
        state.close()


@app.command()
@reports
def destroy(
    auto_approve: Annotated[
        bool, typer.Option("--auto-approve", help="Destroy without asking.")
    ] = False,
    key: KeyOption = None,
    file: FileOption = HERE,
    state_dir: StateOption = None,
    policy: PolicyOption = None,
    var: VarOption = None,
    parallelism: ParallelismOption = DEFAULT_PARALLELISM,
) -> None:
    """Remove everything this project created: containers, bundles, netns, veths, bridges."""
    from .project import sign

    project = _project(file, state_dir, policy, var)
    if not project.paths.database.is_file():
        out.print(f"[green]Nothing to destroy.[/] Nothing was applied with {e(project.state_dir)}.")
        return
    _finish_interrupted(project)
    document = _planned(project, destroy=True)
    render.plan(out, document)
    if not _has_changes(document):
        # Nothing in state, but a create that failed may have left its (empty) run folder.
        from .project import forget_run_dir

        forget_run_dir(project)
        return
    _confirm(auto_approve, "Destroy all of these?")
    _run(project, sign(project, document, key), workers=parallelism)


# -- one workload: stop, start, restart, exec, inspect ---------------------------------------

AddressArgument = Annotated[
    str, typer.Argument(help="A service's address, e.g. service.web.", show_default=False)
]


def _control(file: Path, state_dir: Path | None, operation: str) -> Any:
    """The project, its host and its state, under the lock, for a command on one workload."""
    import contextlib

    from executor.state import locked

    project = _project(file, state_dir)
    if project.existing_state() is None:
        from executor.control import ControlError

        raise ControlError("nothing has been applied here", hint="forge apply first")
    stack = contextlib.ExitStack()
    stack.enter_context(locked(project.state_dir, operation))
    state = project.state()
    stack.callback(state.close)
    return stack, project.host(), state


@app.command()
@reports
def stop(address: AddressArgument, file: FileOption = HERE, state_dir: StateOption = None) -> None:
    """Stop a service: its stop_signal, then KILL after its grace period.

    State keeps the service: `forge plan` shows it stopped, and the next apply (or `forge
    start`) starts it again.
    """
    from executor import control

    stack, host, state = _control(file, state_dir, "stop")
    with stack:
        stopped = control.stop(host, state, address)
    out.print(f"[green]Stopped[/] {e(address)}." if stopped else f"{e(address)} was not running.")


@app.command()
@reports
def start(address: AddressArgument, file: FileOption = HERE, state_dir: StateOption = None) -> None:
    """Start a stopped service again, as the last apply left it (same spec, same address)."""
    from executor import control

    stack, host, state = _control(file, state_dir, "start")
    with stack:
        runtime = control.start(host, state, address)
    if runtime is None:
        out.print(f"{e(address)} is running already.")
    else:
        out.print(f"[green]Started[/] {e(address)} as {e(runtime['container_id'])}.")


@app.command()
@reports
def restart(
    address: AddressArgument, file: FileOption = HERE, state_dir: StateOption = None
) -> None:
    """Stop a service (stop_signal, then KILL after its grace period) and start it again."""
    from executor import control

    stack, host, state = _control(file, state_dir, "restart")
    with stack:
        control.stop(host, state, address)
        runtime = control.start(host, state, address)
    assert runtime is not None
    out.print(f"[green]Restarted[/] {e(address)} as {e(runtime['container_id'])}.")


@app.command(
    name="exec",
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
)
@reports
def exec_(
    address: AddressArgument,
    command: Annotated[list[str], typer.Argument(help="The command and its arguments, after --.")],
    tty: Annotated[
        bool | None,
        typer.Option("--tty/--no-tty", "-t", help="Give it a terminal [default: if stdin is one]."),
    ] = None,
    file: FileOption = HERE,
    state_dir: StateOption = None,
) -> None:
    """Run a command inside a running service, as its own process, with its user, environment,
    capabilities and seccomp profile; exit with the command's code.

    forge exec service.web -- cat /etc/hostname
    """
    from executor import control

    project = _project(file, state_dir)
    state = _open_state(project, "nothing has been applied here")
    try:
        argv = control.exec_argv(
            project.host(), state, address, command, sys.stdin.isatty() if tty is None else tty
        )
    finally:
        state.close()
    raise typer.Exit(control.run_exec(argv))


@app.command()
@reports
def inspect(
    address: Annotated[str, typer.Argument(help="A workload's address.", show_default=False)],
    file: FileOption = HERE,
    state_dir: StateOption = None,
) -> None:
    """Print what runs for a workload, as JSON: its spec, its runtime ids, its status, and the
    OCI config.json runc was given."""
    from executor import control
    from executor.drivers import container_statuses

    project = _project(file, state_dir)
    state = _open_state(project, "nothing has been applied here")
    try:
        records = state.records()
    finally:
        state.close()
    record = records.get(address)
    if record is None:
        from executor.control import ControlError
        from forgefile.diagnostics import suggest

        raise ControlError(
            f"no {address} in this project's state",
            hint=suggest(address, list(records)) or f"workloads: {', '.join(sorted(records))}",
        )
    status = container_statuses(project.host(), {address: record.runtime})[address]
    # TODO(#9): once secrets exist, their values are redacted here as in state export.
    out.print_json(
        data={
            "version": 1,
            "address": address,
            "kind": record.kind,
            "spec": record.spec,
            "spec_digest": record.spec_digest,
            "runtime": record.runtime,
            "status": status.to_json() if status else None,
            "config": control.bundle_config(record),
        }
    )


@app.command("force-unlock")
@reports
def force_unlock(
    lock_id: Annotated[str, typer.Argument(help="The lock id the locked-out command printed.")],
    auto_approve: Annotated[
        bool, typer.Option("--auto-approve", help="Stop it without asking.")
    ] = False,
    file: FileOption = HERE,
    state_dir: StateOption = None,
) -> None:
    """Stop the forge command that holds this project's lock, when it hangs.

    A lock never outlives its process (it is a kernel lock on .forge/lock), so a lock that
    stays is a command still running. This sends it SIGTERM, which a forge command takes as
    Ctrl-C: it stops cleanly, and the next apply picks up from what it finished.
    """
    from executor.state import force_unlock as unlock
    from executor.state import lock_holder

    project = _project(file, state_dir)
    holder = lock_holder(project.state_dir)
    if holder is not None and holder.id == lock_id:
        out.print(f"The lock on {e(project.state_dir)}: {e(holder.describe())}.")
        _confirm(auto_approve, f"Stop process {holder.pid}?")
    stopped = unlock(project.state_dir, lock_id)
    out.print(f"[green]Unlocked:[/] process {stopped.pid} ({e(stopped.operation)}) stopped.")
    out.print(
        "  what it had started (a job's container, say) is finished or rolled back by the next "
        "apply, or now by `forge apply --resume`"
    )


# -- inspecting ------------------------------------------------------------------------------


@app.command()
@reports
def ps(
    as_json: Annotated[bool, typer.Option("--json", help="Print as JSON.")] = False,
    file: FileOption = HERE,
    state_dir: StateOption = None,
) -> None:
    """List the project's workloads and whether they run."""
    from executor.drivers import container_statuses

    project = _project(file, state_dir)
    records = {
        address: record
        for address, record in _records(project).items()
        if record.kind in ("service", "job", "wasm")
    }
    statuses = container_statuses(project.host(), {a: r.runtime for a, r in records.items()})
    rows = []
    for address, record in records.items():
        found = statuses[address]
        status, detail = _status_of(record, found)
        ip = ", ".join(n["address"].split("/")[0] for n in record.spec.get("networks", []))
        last_exit = record.runtime.get("exit_code") if found is None else found.exit_code
        started = found.started_at if found is not None else None
        rows.append(
            {
                "address": address,
                "kind": record.kind,
                "status": status,
                "detail": detail,
                "restarts": found.restarts if found is not None else 0,
                "health": found.health if found is not None else None,
                "exit_code": last_exit,
                # Why exit_code is null after an exit: it could not be known.
                "exit_reason": found.reason if found is not None else None,
                "started_at": started,
                "uptime_seconds": _uptime(started) if status == "running" else None,
                "ip": ip,
                "id": record.runtime.get("container_id", ""),
                "updated": record.updated_at[:19].replace("T", " "),
            }
        )
    if as_json:
        out.print_json(data={"version": 1, "workloads": rows})
        return
    render.table(
        out,
        "Workloads",
        ["ADDRESS", "KIND", "STATUS", "UPTIME", "RESTARTS", "IP", "CONTAINER", "UPDATED"],
        [
            [
                r["address"],
                r["kind"],
                f"{r['status']} {r['detail']}".strip(),
                _duration(r["uptime_seconds"]),
                str(r["restarts"]),
                r["ip"],
                r["id"],
                r["updated"],
            ]
            for r in rows
        ],
    )


def _uptime(started_at: str | None) -> int | None:
    from datetime import UTC, datetime

    if not started_at:
        return None
    try:
        began = datetime.fromisoformat(started_at.replace("Z", "+00:00"))
    except ValueError:
        return None
    return max(0, int((datetime.now(UTC) - began).total_seconds()))


def _duration(seconds: int | None) -> str:
    """3s, 4m05s, 2h07m, 3d04h: the two largest units, as ps and docker show uptime."""
    if seconds is None:
        return ""
    for size, unit, smaller, small_unit in (
        (86400, "d", 3600, "h"),
        (3600, "h", 60, "m"),
        (60, "m", 1, "s"),
    ):
        if seconds >= size:
            return f"{seconds // size}{unit}{seconds % size // smaller:02d}{small_unit}"
    return f"{seconds}s"


def _records(project: Any) -> dict[str, Any]:
    """What state holds, without creating a state database where there is none."""
    state = project.existing_state()
    if state is None:
        return {}
    try:
        records: dict[str, Any] = state.records()
        return records
    finally:
        state.close()


def _status_of(record: Any, status: Any) -> tuple[str, str]:
    if record.kind == "service" and "stopped" in record.runtime:
        # Stopped on request: its exit code is the stop signal's, not a crash.
        return "stopped", f"by forge stop at {record.runtime['stopped'][:19].replace('T', ' ')}"
    if record.kind == "service":
        if status is None or status.state == "unknown":
            return "gone", ""
        if status.state == "running":
            parts = [f"pid {status.pid}" if status.pid else "", status.health or ""]
            return "running", ", ".join(p for p in parts if p)
        code = "unknown" if status.exit_code is None else status.exit_code
        if status.state == "restarting":
            return "restarting", f"after exit {code}"
        return "exited", f"code {code}"
    if "failure" in record.runtime:
        return "failed", record.runtime["failure"]
    code = record.runtime.get("exit_code")
    return "completed", f"exit {code}"


@app.command()
@reports
def logs(
    address: Annotated[str, typer.Argument(help="A workload address, e.g. service.web.")],
    follow: Annotated[
        bool,
        typer.Option(
            "--follow", "-f", help="Keep printing new lines, across rotations, until Ctrl-C."
        ),
    ] = False,
    since: Annotated[
        str | None,
        typer.Option(
            "--since",
            metavar="WHEN",
            help="Only lines from WHEN on: a duration before now (10m, 1h30m, 45s, 2d) or an "
            "RFC 3339 time (2026-12-04T10:00:00Z, or with an offset such as +01:00).",
        ),
    ] = None,
    timestamps: Annotated[
        bool,
        typer.Option("--timestamps", "-t", help="Print each line's time (RFC 3339, UTC) first."),
    ] = False,
    # -f is --follow here, as in `docker logs` and `tail`: --file has no short form.
    file: Annotated[Path, typer.Option("--file", help="The Forgefile, or its folder.")] = HERE,
    state_dir: StateOption = None,
) -> None:
    """Print a workload's stdout and stderr, oldest first, rotated files included.

    Each line is stored with the time the monitor read it and its stream, in the CRI log
    format (TIME STREAM F|P TEXT) in .forge/logs/ADDRESS.log; ADDRESS.log.1 and up are the
    older, rotated files. This prints the text alone unless --timestamps is given.
    """
    from executor import logfile

    since_time = None
    if since is not None:
        try:
            since_time = logfile.timestamp(logfile.parse_since(since, time.time_ns()))
        except ValueError as exc:
            message, _, hint = str(exc).partition(": ")
            err.print(f"[bold red]error:[/] --since {e(message)}")
            err.print(f"  [green]hint:[/] {e(hint)}")
            raise typer.Exit(EXIT_DIAGNOSTIC) from None
    project = _project(file, state_dir)
    path = project.paths.logs / f"{address}.log"
    if not logfile.files(path):
        known = [a for a, r in _records(project).items() if r.kind in ("service", "job", "wasm")]
        from forgefile.diagnostics import suggest

        hint = suggest(address, known) or (
            f"workloads: {', '.join(known)}" if known else "nothing has been applied here"
        )
        err.print(f"[bold red]error:[/] no logs for {e(address)}; {e(hint)}")
        raise typer.Exit(EXIT_DIAGNOSTIC)
    if follow:
        # A monitor that died left its containers' output waiting in their pipes: a new one
        # takes them over and drains them again.
        monitor = project.host().monitor
        if monitor.orphans():
            monitor.ensure_running()
    records = logfile.read(path, since=since_time, follow=follow)
    sink = sys.stdout.buffer
    for text in logfile.render(records, timestamps):
        sink.write(text)
        if follow:
            sink.flush()
    sink.flush()


@app.command()
@reports
def output(
    name: Annotated[str | None, typer.Argument(help="One output's name; all when omitted.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print as JSON.")] = False,
    file: FileOption = HERE,
    state_dir: StateOption = None,
) -> None:
    """Print the outputs of the last apply (`forge output web_url` prints just the value)."""
    project = _project(file, state_dir)
    state = project.existing_state()
    values: dict[str, Any] = {}
    if state is not None:
        try:
            values = state.outputs()
        finally:
            state.close()
    if name is None:
        if as_json:
            out.print_json(data={k: v["value"] for k, v in values.items()})
        else:
            render.outputs(out, values)
        return
    if name not in values:
        from forgefile.diagnostics import suggest

        err.print(
            f"[bold red]error:[/] no output named {e(name)}; "
            f"{e(suggest(name, values) or 'apply first, or check the name')}"
        )
        raise typer.Exit(EXIT_DIAGNOSTIC)
    value = values[name]["value"]
    print(json.dumps(value) if as_json or not isinstance(value, str) else value)


@app.command()
@reports
def show(
    plan_file: Annotated[
        Path | None,
        typer.Argument(
            help="A saved plan (`forge plan -o`) to read instead, without applying it.",
            show_default=False,
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print as JSON.")] = False,
    file: FileOption = HERE,
    state_dir: StateOption = None,
    policy: PolicyOption = None,
    var: VarOption = None,
) -> None:
    """Show the checked IR: every resource with its defaults filled in, as policy sees it.

    With FILE, show a saved plan instead: who signed it, whether this project's trust store
    accepts it, and what it would do, as a second approver reads it before `forge key sign`.
    """
    from forgefile.diagnostics import DiagnosticError

    from .project import check

    if plan_file is not None:
        _show_plan(plan_file, _project(file, state_dir), as_json)
        return

    try:
        checked = check(_project(file, state_dir, policy, var))
    except DiagnosticError as exc:
        if not as_json:
            raise
        out.print_json(
            data={
                "version": 1,
                "valid": False,
                "diagnostics": render.diagnostics_json(exc.diagnostics),
            }
        )
        raise typer.Exit(EXIT_DIAGNOSTIC) from None
    document = checked.doc.to_document()
    if as_json:
        out.print_json(data={"version": 1, **document})
        return
    for resource in document["resources"]:
        out.print(f"[bold]{e(resource['address'])}[/]")
        for key, value in resource.items():
            if key not in ("address", "kind", "name"):
                out.print(f"  {e(key)} = {e(json.dumps(value))}")


@app.command()
@reports
def fmt(
    files: Annotated[
        list[Path] | None,
        typer.Argument(help="Forgefiles or folders holding one [default: the Forgefile here]."),
    ] = None,
    check: Annotated[
        bool, typer.Option("--check", help="Change nothing; exit 1 if a file is not canonical.")
    ] = False,
    diff: Annotated[
        bool, typer.Option("--diff", help="Change nothing; print what would change as a diff.")
    ] = False,
) -> None:
    """Rewrite Forgefiles in the canonical layout, keeping every comment.

    Two-space indent, one attribute a line, aligned `=`, one blank line between blocks.
    Formatting is idempotent; `--check` and `--diff` are for CI.
    """
    import difflib

    from forgefile.fmt import format_source
    from forgefile.lower import FORGEFILE

    paths = [p / FORGEFILE if p.is_dir() else p for p in (files or [HERE])]
    changed = []
    for path in paths:
        text = path.read_text(encoding="utf-8")
        canonical = format_source(text, str(path))
        if canonical == text:
            continue
        changed.append(path)
        if diff:
            sys.stdout.writelines(
                difflib.unified_diff(
                    text.splitlines(keepends=True),
                    canonical.splitlines(keepends=True),
                    f"{path} (as written)",
                    f"{path} (formatted)",
                )
            )
        elif not check:
            path.write_text(canonical, encoding="utf-8")
            out.print(f"formatted {e(path)}")
    if (check or diff) and changed:
        err.print(
            f"{len(changed)} file(s) are not in canonical form: "
            f"{e(', '.join(str(p) for p in changed))}"
        )
        raise typer.Exit(EXIT_DIAGNOSTIC)


@app.command()
@reports
def graph(
    fmt: Annotated[
        str, typer.Option("--format", help="text, or dot for Graphviz (`| dot -Tsvg`).")
    ] = "text",
    file: FileOption = HERE,
    var: VarOption = None,
) -> None:
    """Print the dependency graph: which resource needs which."""
    from compiler import graph as graphs
    from forgefile.lower import load

    if fmt not in ("text", "dot"):
        err.print(f"[bold red]error:[/] --format is text or dot, not {e(fmt)}")
        raise typer.Exit(EXIT_DIAGNOSTIC)
    project = _project(file, None, None, var)
    doc = load(project.forgefile, project.variables)
    sys.stdout.write(graphs.to_dot(doc) if fmt == "dot" else graphs.to_text(doc))


@app.command()
def schema() -> None:
    """Print a JSON Schema of every block and attribute, for editors and linters."""
    from forgefile.schema import json_schema

    sys.stdout.write(json.dumps(json_schema(), indent=2) + "\n")


@app.command()
@reports
def init(
    folder: Annotated[Path, typer.Argument(help="Where to write the starter files.")] = HERE,
    subnet: Annotated[
        str, typer.Option("--subnet", help="The starter network's subnet.")
    ] = "10.213.50.0/28",
) -> None:
    """Write a starter Forgefile and policy folder that validate and apply as they are."""
    import ipaddress

    from stdlib import template

    try:
        ipaddress.IPv4Network(subnet)
    except ValueError as exc:
        err.print(f"[bold red]error:[/] --subnet {e(subnet)}: {e(str(exc))}")
        raise typer.Exit(EXIT_DIAGNOSTIC) from None
    starter = template("init")
    targets = {
        folder / "Forgefile": starter.joinpath("Forgefile").read_text().replace("SUBNET", subnet),
        folder / "policy" / "project.policy": starter.joinpath(
            "policy", "project.policy"
        ).read_text(),
    }
    existing = [str(p) for p in targets if p.exists()]
    if existing:
        err.print(
            f"[bold red]error:[/] {e(', '.join(existing))} already exist; nothing was written"
        )
        raise typer.Exit(EXIT_DIAGNOSTIC)
    for path, text in targets.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        out.print(f"[green]wrote[/] {e(path)}")
    out.print("Next: `forge key generate`, then `forge apply`.")


@app.command()
def version() -> None:
    """Print Forge's version."""
    print(f"forge {VERSION}")


# -- images -----------------------------------------------------------------------------------


def _image_store(project: Any, create: bool = False) -> Any:
    from executor.images import ImageStore

    if not create and not project.paths.images.is_dir():
        return None
    return ImageStore(project.paths.images)


@image_app.command("import")
@reports
def image_import(
    source: Annotated[
        Path,
        typer.Argument(
            help="An OCI archive (skopeo copy ... oci-archive:FILE), an OCI layout folder, or a "
            "docker archive (docker save).",
            show_default=False,
        ),
    ],
    tag: Annotated[
        str | None,
        typer.Option(
            "--tag", "-t", help="Import only the image of this name, or name the only one there."
        ),
    ] = None,
    file: FileOption = HERE,
    state_dir: StateOption = None,
) -> None:
    """Import images into the store, each blob checked against its digest.

    A Forgefile runs them as `image = "oci:PATH:TAG"` or `"archive:PATH"` without importing
    first; importing names them in the store, for `forge image list` and `export`.
    """
    from executor.image_import import import_image

    imported = import_image(_image_store(_project(file, state_dir), create=True), source, tag)
    for image in imported:
        out.print(f"[green]Imported[/] {e(image.tag)} [dim]{e(image.digest)}[/]")


@image_app.command("list")
@reports
def image_list(
    as_json: Annotated[bool, typer.Option("--json", help="Print as JSON.")] = False,
    file: FileOption = HERE,
    state_dir: StateOption = None,
) -> None:
    """List the store's named images: built by `forge build` or imported."""
    store = _image_store(_project(file, state_dir))
    rows = []
    for tag, digest in store.list() if store else []:
        manifest = store.manifest(digest)
        size = sum(int(layer.get("size", 0)) for layer in manifest["layers"])
        rows.append({"tag": tag, "digest": digest, "layers": len(manifest["layers"]), "size": size})
    if as_json:
        out.print_json(data={"version": 1, "images": rows})
        return
    render.table(
        out,
        "Images",
        ["TAG", "DIGEST", "LAYERS", "SIZE"],
        [[r["tag"], r["digest"], str(r["layers"]), _bytes(r["size"])] for r in rows],
    )


def _bytes(size: int) -> str:
    if size < 1000:
        return f"{size} B"
    value = float(size)
    for unit in ("kB", "MB"):
        value /= 1000
        if value < 1000:
            return f"{value:.1f} {unit}"
    return f"{value / 1000:.1f} GB"


@image_app.command("rm")
@reports
def image_rm(
    tag: Annotated[str, typer.Argument(help="The name `forge image list` shows.")],
    file: FileOption = HERE,
    state_dir: StateOption = None,
) -> None:
    """Remove an image's name from the store (its blobs stay until garbage collection)."""
    from executor.images import ImageError

    store = _image_store(_project(file, state_dir))
    if store is None:
        raise ImageError(f"no image is tagged {tag!r}: this project has no image store yet")
    store.remove(tag)
    out.print(f"[green]Removed[/] {e(tag)}.")


@image_app.command("export")
@reports
def image_export(
    ref: Annotated[str, typer.Argument(help="A name from `forge image list`, or a digest.")],
    output: Annotated[
        Path, typer.Option("--out", "-o", help="The OCI archive to write.", show_default=False)
    ],
    file: FileOption = HERE,
    state_dir: StateOption = None,
) -> None:
    """Write an image as an OCI archive, which skopeo and podman read (oci-archive:FILE:NAME)."""
    from executor.image_import import export_image
    from executor.images import ImageError

    store = _image_store(_project(file, state_dir))
    if store is None:
        raise ImageError(f"no image {ref!r}: this project has no image store yet")
    digest = export_image(store, ref, output)
    out.print(f"[green]Exported[/] {e(ref)} [dim]{e(digest)}[/] to {e(output)}.")


# -- keys -------------------------------------------------------------------------------------


@key_app.command("generate")
@reports
def key_generate(
    name: Annotated[str, typer.Argument(help="A name for the key.")] = "default",
    passphrase: Annotated[
        bool,
        typer.Option("--passphrase", help="Encrypt the private key with FORGE_KEY_PASSPHRASE."),
    ] = False,
    file: FileOption = HERE,
    state_dir: StateOption = None,
) -> None:
    """Make an Ed25519 signing key (mode 0600) and trust it for this project's applies."""
    secret = os.environ.get("FORGE_KEY_PASSPHRASE", "").encode() if passphrase else None
    if passphrase and not secret:
        err.print("[bold red]error:[/] --passphrase needs FORGE_KEY_PASSPHRASE to be set")
        raise typer.Exit(EXIT_DIAGNOSTIC)
    info = _project(file, state_dir).keys().generate(name, secret)
    out.print(f"[green]Generated[/] key {e(info.name)} [dim]{e(info.keyid)}[/] (trusted).")


@key_app.command("trust")
@reports
def key_trust(
    public_key: Annotated[Path, typer.Argument(help="A public key file (NAME.pub).")],
    file: FileOption = HERE,
    state_dir: StateOption = None,
) -> None:
    """Trust another signer's public key: apply accepts plans it signed."""
    keyid = _project(file, state_dir).keys().trust(public_key.read_bytes())
    out.print(f"[green]Trusted[/] {e(public_key)} [dim]{e(keyid)}[/].")


@key_app.command("revoke")
@reports
def key_revoke(
    which: Annotated[str, typer.Argument(help="A key's name, or its id (at least 8 hex digits).")],
    reason: Annotated[str, typer.Option("--reason", help="Why: recorded with the revocation.")],
    file: FileOption = HERE,
    state_dir: StateOption = None,
) -> None:
    """Stop trusting a key for good: apply refuses plans that only it signed, and it cannot be
    trusted again. Revoke a key that was lost or leaked; its owner generates a new one."""
    keys = _project(file, state_dir).keys()
    keyid = keys.revoke(which, reason)
    out.print(f"[green]Revoked[/] {e(keyid)}: {e(reason.strip())}")
    trusted, needed = len(keys.trusted()), keys.threshold()
    if needed > trusted:
        err.print(
            f"[bold yellow]warning:[/] apply needs {needed} trusted signatures and {trusted} "
            "key(s) are trusted now, so no plan can pass: trust another key "
            f"(`forge key trust`) or lower the threshold (`forge key threshold {max(trusted, 1)}`)"
        )


@key_app.command("threshold")
@reports
def key_threshold(
    count: Annotated[
        int | None, typer.Argument(help="How many trusted keys must sign [default: show it].")
    ] = None,
    file: FileOption = HERE,
    state_dir: StateOption = None,
) -> None:
    """Require several trusted signatures on a plan before apply accepts it (two of three, say).

    A plan gets more signatures with `forge plan --key A --key B`, or after it is written, by
    another signer's `forge key sign FILE`.
    """
    keys = _project(file, state_dir).keys()
    if count is not None:
        keys.set_threshold(count)
    out.print(
        f"apply accepts a plan signed by {keys.threshold()} of the {len(keys.trusted())} "
        "trusted key(s)."
    )


@key_app.command("sign")
@reports
def key_sign(
    plan_file: Annotated[Path, typer.Argument(help="A plan file written by `forge plan -o`.")],
    key: Annotated[str | None, typer.Option("--key", help="The signing key's name.")] = None,
    file: FileOption = HERE,
    state_dir: StateOption = None,
) -> None:
    """Add your signature to a saved plan, as a second approver: read it first with
    `forge show FILE`. The plan itself is unchanged, so the signatures already on it hold."""
    from compiler.envelope import add_signature, open_envelope

    project = _project(file, state_dir)
    [signer] = project.signers([key] if key else None)
    try:
        data = plan_file.read_bytes()
    except OSError as exc:
        err.print(f"[bold red]error:[/] cannot read {e(plan_file)}: {e(exc.strerror)}")
        raise typer.Exit(EXIT_DIAGNOSTIC) from None
    # Sign only what still holds: a plan changed since its trusted signatures were made is
    # refused here, as apply would refuse it.
    open_envelope(data, project.keys().trusted(), threshold=0)
    signed = add_signature(data, signer)
    temporary = plan_file.with_name(plan_file.name + ".signing")
    temporary.write_bytes(signed)
    temporary.replace(plan_file)  # never a half-written plan file
    count = len(json.loads(signed)["signatures"])
    out.print(f"[green]Signed[/] {e(plan_file)}; it now carries {count} signature(s).")


@key_app.command("list")
@reports
def key_list(
    file: FileOption = HERE,
    state_dir: StateOption = None,
) -> None:
    """List signing keys and whether apply trusts them."""
    keys = _project(file, state_dir).keys().list()
    render.table(
        out,
        "Keys",
        ["NAME", "KEY ID", "TRUSTED", "PRIVATE"],
        [
            [
                k.name or "(another signer)",
                k.keyid,
                "revoked" if k.revoked else "yes" if k.trusted else "no",
                "yes" if k.private else "no",
            ]
            for k in keys
        ],
    )


# -- audit ------------------------------------------------------------------------------------


@audit_app.command("log")
@reports
def audit_log(
    as_json: Annotated[bool, typer.Option("--json", help="Print as JSON.")] = False,
    limit: Annotated[
        int, typer.Option("--limit", min=1, max=MAX_INT, help="Show the last N entries.")
    ] = 100,
    file: FileOption = HERE,
    state_dir: StateOption = None,
) -> None:
    """Show the audit log: plans verified and applied, actions, waivers and overrides used."""
    state = _project(file, state_dir).existing_state()
    entries: list[dict[str, Any]] = []
    if state is not None:
        try:
            entries = state.events(limit)
        finally:
            state.close()
    if as_json:
        out.print_json(data={"version": 1, "entries": entries})
        return
    fixed = ("id", "at", "serial", "kind", "address", "hash")
    render.table(
        out,
        "Audit log",
        ["ID", "AT", "SERIAL", "KIND", "ADDRESS", "DETAIL"],
        [
            [
                str(entry["id"]),
                entry["at"],
                str(entry["serial"]),
                entry["kind"],
                entry["address"] or "",
                ", ".join(f"{k}={v}" for k, v in entry.items() if k not in fixed),
            ]
            for entry in entries
        ],
    )


@audit_app.command("verify")
@reports
def audit_verify(
    as_json: Annotated[bool, typer.Option("--json", help="Print as JSON.")] = False,
    file: FileOption = HERE,
    state_dir: StateOption = None,
) -> None:
    """Check the audit log's hash chain and its signed checkpoints: exit 6 naming the entry
    where an edit, a deletion, an insertion or a move breaks the chain, or the checkpoint that a
    rewrite or a cut tail no longer matches."""
    project = _project(file, state_dir)
    state = _open_state(project, _NO_LOG)
    try:
        check = state.verify_events()
        points = state.checkpoints()
        keys = project.keys()
        problems = state.verify_checkpoints(keys.trusted(), keys.revoked_keys())
        problems += state.verify_plans()
    finally:
        state.close()
    signed = max((p.event_id for p in points), default=0)
    if as_json:
        out.print_json(
            data={
                "version": 1,
                "intact": check.broken_at is None and not problems,
                "checked": check.checked,
                "broken_at": check.broken_at,
                "message": check.message,
                "checkpoints": len(points),
                "signed_through": signed,
                "checkpoint_problems": problems,
            }
        )
    else:
        if check.broken_at is None:
            out.print(f"[green]Intact:[/] {check.checked} entries, each chained to the one before.")
        else:
            err.print(f"[bold red]error:[/] {e(check.message)}")
            err.print(
                f"  [green]hint:[/] entries 1..{check.broken_at - 1} are intact; restore the "
                "state database from a backup, and find out who could write to it"
            )
        for problem in problems:
            err.print(f"[bold red]error:[/] {e(problem)}")
        if points and not problems and check.broken_at is None:
            out.print(
                f"[green]Signed:[/] {len(points)} checkpoint(s) by trusted keys; entries "
                f"1..{signed} are covered by a signature."
            )
        elif not points:
            out.print(
                "[yellow]note:[/] no signed checkpoint yet, so a rewrite of the whole log would "
                "not show; `forge audit checkpoint` signs its head"
            )
    if check.broken_at is not None or problems:
        raise typer.Exit(EXIT_AUDIT_BROKEN)


@audit_app.command("export")
@reports
def audit_export(
    since: Annotated[
        str | None, typer.Option("--since", help="From this day or time (UTC), e.g. 2026-12-01.")
    ] = None,
    until: Annotated[
        str | None, typer.Option("--until", help="Up to this day (inclusive) or time (UTC).")
    ] = None,
    output: JsonOutputOption = None,
    file: FileOption = HERE,
    state_dir: StateOption = None,
) -> None:
    """Write a compliance bundle: each plan applied in the range as its signed envelope and a
    summary (signers, policy verdict, waivers, overrides, actions, outcome), the audit log's
    entries, and whether its chain and signed checkpoints hold."""
    from executor.audit import export

    low, high = _instant(since, "--since", end=False), _instant(until, "--until", end=True)
    if since and until and low > high:
        err.print(f"[bold red]error:[/] --since {e(since)} is after --until {e(until)}")
        raise typer.Exit(EXIT_DIAGNOSTIC)
    project = _project(file, state_dir)
    state = _open_state(project, _NO_LOG)
    try:
        keys = project.keys()
        bundle = export(state, keys.trusted(), low, high, keys.revoked_keys())
        bundle["range"] = {"since": since, "until": until}  # as the user gave them
    finally:
        state.close()
    _write_json(bundle, output)


def _instant(value: str | None, flag: str, end: bool) -> str:
    """A bound for the log's UTC timestamps: a whole day reaches to its end for --until."""
    import datetime as dt

    if value is None:
        return "~" if end else ""
    try:
        if len(value) == 10:
            day = dt.date.fromisoformat(value)
            return day.isoformat() + ("T~" if end else "")
        moment = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        err.print(f"[bold red]error:[/] {flag} {e(value)} is not a date: write YYYY-MM-DD")
        raise typer.Exit(EXIT_DIAGNOSTIC) from None
    if moment.tzinfo is not None:
        moment = moment.astimezone(dt.UTC).replace(tzinfo=None)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@audit_app.command("checkpoint")
@reports
def audit_checkpoint(
    key: Annotated[str | None, typer.Option("--key", help="The signing key's name.")] = None,
    file: FileOption = HERE,
    state_dir: StateOption = None,
) -> None:
    """Sign the audit log's head with a key, so that rewriting the log up to it, or cutting its
    tail, is found by `forge audit verify`. Apply does this by itself when it has a key."""
    project = _project(file, state_dir)
    state = _open_state(project, _NO_LOG)
    try:
        [signer] = project.signers([key] if key else None)
        point = state.checkpoint(signer)
    finally:
        state.close()
    out.print(
        f"[green]Signed[/] entry {point.event_id} [dim]{e(point.head)}[/] with "
        f"{e(point.keyid[:19])}…"
    )


# -- state ------------------------------------------------------------------------------------


_NO_LOG = "nothing was ever planned here, so there is no audit log"


def _open_state(
    project: Any, missing: str = "nothing was ever applied here, so there is no state"
) -> "State":
    """The project's state database, or exit 1 saying `missing` when there is none."""
    state: State | None = project.existing_state()
    if state is None:
        err.print(f"[bold red]error:[/] {e(missing)}")
        raise typer.Exit(EXIT_DIAGNOSTIC)
    return state


def _write_json(data: Any, output: Path | None) -> None:
    """`data` as indented JSON on stdout, or into `output`."""
    text = json.dumps(data, indent=2, sort_keys=True) + "\n"
    if output is None:
        sys.stdout.write(text)
        return
    output.write_text(text)
    out.print(f"[green]Wrote[/] {e(output)}.")


@state_app.command("list")
@reports
def state_list(
    as_json: Annotated[bool, typer.Option("--json", help="Print as JSON.")] = False,
    file: FileOption = HERE,
    state_dir: StateOption = None,
) -> None:
    """List the serials kept: one per apply that changed something, newest first."""
    import dataclasses

    state = _open_state(_project(file, state_dir))
    try:
        kept, current, now = state.snapshots(), state.serial, state.digest()
    finally:
        state.close()
    # An apply interrupted since the last serial changed state without moving it.
    moved = any(k.serial == current and k.digest != now for k in kept)
    here = " (current; changed since by an interrupted apply)" if moved else " (current)"
    if as_json:
        rows = [dataclasses.asdict(k) for k in kept]
        out.print_json(data={"version": 1, "current": current, "serials": rows})
        return
    render.table(
        out,
        "State serials",
        ["SERIAL", "AT", "RESOURCES", "DIGEST"],
        [
            [
                f"{k.serial}{here if k.serial == current else ''}",
                k.at,
                str(k.resources),
                k.digest,
            ]
            for k in kept
        ],
    )


@state_app.command("show")
@reports
def state_show(
    serial: Annotated[
        int | None,
        typer.Argument(
            min=0, max=MAX_INT, help="A serial from `forge state list` [default: current]."
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print as JSON.")] = False,
    file: FileOption = HERE,
    state_dir: StateOption = None,
) -> None:
    """Show what the state held at a serial: each resource, its spec digest, and the outputs."""
    body = _state_body(file, state_dir, serial)
    if as_json:
        out.print_json(data=body)
        return
    out.print(f"[bold]serial {body['serial']}[/] of lineage {e(body['lineage'])}")
    render.table(
        out,
        "Resources",
        ["ADDRESS", "KIND", "SPEC DIGEST", "UPDATED"],
        [[r["address"], r["kind"], r["spec_digest"], r["updated_at"]] for r in body["resources"]],
    )
    for name, output in body["outputs"].items():
        shown = "(sensitive)" if output.get("sensitive") else json.dumps(output.get("value"))
        out.print(f"  output {e(name)} = {e(shown)}")


@state_app.command("rollback")
@reports
def state_rollback(
    serial: Annotated[
        int, typer.Argument(min=0, max=MAX_INT, help="A serial from `forge state list`.")
    ],
    auto_approve: Annotated[
        bool, typer.Option("--auto-approve", help="Roll back without asking.")
    ] = False,
    output: Annotated[
        Path | None,
        typer.Option(
            "--out", "-o", help="Write the signed plan here for `forge apply FILE`; do not apply."
        ),
    ] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the plan document as JSON.")
    ] = False,
    key: KeyOption = None,
    file: FileOption = HERE,
    state_dir: StateOption = None,
    policy: PolicyOption = None,
    var: VarOption = None,
) -> None:
    """Bring the host back to what state held at SERIAL: its resources, specs and outputs.

    The rollback is a plan like any other (signed, bound to the current state, shown before it
    runs), made from the specs that serial ran instead of from the Forgefile. It carries the
    policy verdict of the plan that made that serial, so it is refused if the policy has
    changed since; apply the Forgefile of that time instead, and the policy of today judges it.
    """
    from .project import make_rollback, sign

    project = _project(file, state_dir, policy, var)
    document = make_rollback(project, serial)
    if as_json:
        out.print_json(data=document)
    else:
        out.print(f"[bold]Rolling back to serial {serial}:[/]")
        render.plan(out, document)
    if output is not None:
        _write_plan(project, document, key, output, as_json)
        return
    if not _has_changes(document):
        return
    _confirm(auto_approve, f"Roll back to serial {serial}?")
    _run(project, sign(project, document, key), json_on_stdout=as_json)


@state_app.command("export")
@reports
def state_export(
    serial: Annotated[
        int | None,
        typer.Option(
            "--serial", min=0, max=MAX_INT, help="Export a kept serial [default: current]."
        ),
    ] = None,
    output: JsonOutputOption = None,
    file: FileOption = HERE,
    state_dir: StateOption = None,
) -> None:
    """Write the state as JSON for tools and auditors: no secret values, sensitive outputs
    without their values."""
    _write_json(_state_body(file, state_dir, serial), output)


def _state_body(file: Path, state_dir: Path | None, serial: int | None) -> dict[str, Any]:
    state = _open_state(_project(file, state_dir))
    try:
        if serial is None or serial == state.serial:
            body: dict[str, Any] = state.export()
            return body
        kept = state.snapshot_at(serial)
        if kept is None:
            serials = ", ".join(str(k.serial) for k in state.snapshots()) or "none"
            err.print(f"[bold red]error:[/] no serial {serial} is kept (kept: {serials})")
            raise typer.Exit(EXIT_DIAGNOSTIC)
        return kept
    finally:
        state.close()


# -- policy -----------------------------------------------------------------------------------

FORMATS = ("text", "json", "sarif", "junit")


@policy_app.command("check")
@reports
def policy_check(
    file: FileOption = HERE,
    state_dir: StateOption = None,
    policy: PolicyOption = None,
    var: VarOption = None,
    override: OverrideOption = None,
    identity: IdentityOption = None,
    format: Annotated[
        str, typer.Option("--format", help="text, json, sarif (2.1.0) or junit.")
    ] = "text",
    as_json: Annotated[bool, typer.Option("--json", help="The same as --format json.")] = False,
) -> None:
    """Judge the Forgefile against its policy and print the verdict, for people or for CI.

    Exit 3 when a finding blocks, 1 when the Forgefile or the policy does not load, 0 when the
    policy passes.
    """
    format = "json" if as_json else format
    from compiler import reports

    from .project import check

    if format not in FORMATS:
        err.print(f"[bold red]error:[/] --format is one of {', '.join(FORMATS)}, not {e(format)}")
        raise typer.Exit(EXIT_DIAGNOSTIC)
    from forgefile.diagnostics import DiagnosticError

    project = _project(file, state_dir, policy, var, override, identity)
    try:
        verdict = check(project).verdict
    except DiagnosticError as exc:
        if format != "text":  # CI parses stdout: it gets a report that says nothing was judged
            _load_failure_report(format, exc.diagnostics, project.forgefile.parent)
        raise
    if verdict is None:
        err.print("No policy: add *.policy files to policy/ beside the Forgefile, or --policy.")
        return
    rules = [r.to_json() for r in verdict.rules]
    if format == "json":
        sys.stdout.write(json.dumps({"version": 1, **verdict.to_json(), "rules": rules}, indent=2))
        sys.stdout.write("\n")
    elif format == "sarif":
        log = reports.sarif(verdict.to_json(), rules, VERSION, project.forgefile.parent)
        sys.stdout.write(json.dumps(log, indent=2) + "\n")
    elif format == "junit":
        sys.stdout.write(reports.junit(verdict.to_json(), rules))
    else:
        render.findings(out, verdict)
    if verdict.blocked:
        raise typer.Exit(EXIT_POLICY)


def _load_failure_report(format: str, diagnostics: Any, root: Path) -> None:
    """The report of a check that could not judge: the Forgefile or the policy did not load."""
    from compiler import reports

    if format == "json":
        data = {
            "version": 1,
            "verdict": "error",
            "diagnostics": render.diagnostics_json(diagnostics),
        }
        sys.stdout.write(json.dumps(data, indent=2) + "\n")
        return
    problems = [
        {
            "kind": "load-error",
            "severity": "error",
            "message": f"{d.code}: {d.message}" + (f" ({d.hint})" if d.hint else ""),
            "span": d.span.to_json() if d.span else None,
        }
        for d in diagnostics
        if str(d.severity) == "error"
    ]
    verdict = {"verdict": "error", "findings": [], "problems": problems}
    if format == "sarif":
        sys.stdout.write(json.dumps(reports.sarif(verdict, [], VERSION, root), indent=2) + "\n")
    else:
        sys.stdout.write(reports.junit(verdict, []))


@policy_app.command("test")
@reports
def policy_test(
    paths: Annotated[
        list[Path] | None,
        typer.Argument(help="Policy files, folders or packs [default: the project's policy]."),
    ] = None,
    coverage: Annotated[
        bool, typer.Option("--coverage", help="Report which rules no case makes fire.")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the results as JSON.")] = False,
    file: FileOption = HERE,
) -> None:
    """Run the `test` blocks of policy files: Forgefile snippets and the rules that must fire.

    Exit 1 when a case fails, when there is no case at all, or with --coverage when a rule has
    no case that makes it fire. Try `forge policy test --coverage baseline`.
    """
    from compiler import policy as policies
    from compiler.policy_cases import coverage as measure
    from compiler.policy_cases import run_cases

    project = _project(file, None)
    loaded = policies.load_policy(list(paths or project.policy_paths))
    results = run_cases(loaded)
    covered = measure(loaded, results)
    failed = [r for r in results if not r.passed]
    if as_json:
        data: dict[str, Any] = {"version": 1, "cases": [r.to_json() for r in results]}
        if coverage:
            data["coverage"] = covered.to_json()
        sys.stdout.write(json.dumps(data, indent=2) + "\n")
    else:
        for result in results:
            mark = "[green]pass[/]" if result.passed else "[bold red]FAIL[/]"
            out.print(f"{mark} {e(result.test.name)} [dim]({e(result.test.span)})[/]")
            for problem in result.problems:
                out.print(f"     {e(problem)}")
        out.print(f"{len(results) - len(failed)} passed, {len(failed)} failed.")
        if not results:
            err.print(
                "[bold red]error:[/] the policy has no `test` blocks, so nothing was tested; "
                'write one: test "name" { forgefile = "..." fires = ["RULE"] }'
            )
        if coverage:
            out.print(
                f"coverage: {covered.percent:.0f}% of {len(covered.rules)} rules fire in a case"
                + (f"; never: {e(', '.join(covered.uncovered))}" if covered.uncovered else "")
            )
            without = covered.to_json()["without_passing_case"]
            if without:
                out.print(f"rules without a case where they pass: {e(', '.join(without))}")
    if failed or not results or (coverage and covered.uncovered):
        raise typer.Exit(EXIT_DIAGNOSTIC)


@policy_app.command("explain")
@reports
def policy_explain(
    finding: Annotated[str, typer.Argument(help="RULE@ADDRESS, e.g. FRG-C001@service.web.")],
    file: FileOption = HERE,
    state_dir: StateOption = None,
    policy: PolicyOption = None,
    var: VarOption = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the rule, values and findings as JSON.")
    ] = False,
) -> None:
    """Show a rule, the values it read from one resource, and why it fired or did not.

    RULE alone explains the rule over the whole Forgefile; RULE@ADDRESS one resource.
    """
    from compiler import policy as policies

    from .project import check

    rule_id, _, address = finding.partition("@")
    project = _project(file, state_dir, policy, var)
    checked = check(project)
    verdict = checked.verdict
    rule = next((r for r in verdict.rules if r.id == rule_id), None) if verdict else None
    if verdict is None or rule is None:
        known = [r.id for r in verdict.rules] if verdict else []
        from forgefile.diagnostics import suggest

        err.print(f"[bold red]error:[/] no loaded rule `{e(rule_id)}`")
        if hint := suggest(rule_id, known):
            err.print(f"  [green]hint:[/] {e(hint)}")
        raise typer.Exit(EXIT_DIAGNOSTIC)
    _explainable(rule, address, checked.doc, project.forgefile)
    rego = rule.pack == "rego" and verdict.rego is not None
    if rego:
        address = address if checked.doc.resource(address) else ""
    elif not rule.kinds:
        address = ""
    values = (
        policies.explain_bindings(rule, checked.doc, address, dict(verdict.params))
        if address or (not rule.kinds and not rego)
        else {}
    )
    matching = [
        f
        for f in verdict.findings
        if f.rule.id == rule.id and (not address or f.address == address)
    ]
    if as_json:
        data = {
            "version": 1,
            "rule": rule.to_json(),
            "address": address,
            "values": values,
            "fires": bool(matching),
            "findings": [f.to_json() for f in matching],
            "rego": verdict.rego if rego else None,
        }
        sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")
        return
    out.print(f"[bold]{e(rule.id)}[/] {e(rule.title)} [dim]({e(rule.span)})[/]")
    out.print(
        f"  pack {e(rule.pack or '(project)')}, severity {e(rule.severity)}, "
        f"applies to {e(', '.join(rule.kinds) or 'the document')}"
    )
    for line in render.source_lines(rule.span):
        out.print(f"  [dim]{e(line)}[/]")
    if rego:
        engine = (verdict.rego or {}).get("engine") or {}
        out.print(
            f"  judged by the Rego adapter ({e(engine.get('engine') or 'no engine')} "
            f"{e(engine.get('version') or '')}) over `forge show --json`, from "
            f"{e(', '.join((verdict.rego or {}).get('files') or []))}"
        )
    elif values:
        out.print(f"[bold]values read from {e(address or 'the document')}:[/]")
        for name, value in values.items():
            out.print(f"  {e(name)} = {e(json.dumps(value, default=str))}")
    if not matching:
        out.print(
            "[green]result:[/] the rule does not fire" + (f" on {e(address)}" if address else "")
        )
    for f in matching:
        out.print(
            f"[bold]result:[/] fires on {e(f.address or 'the document')}: {e(f.message)} "
            f"[dim](status {e(f.status)}, level {e(f.level)})[/]"
        )
        if f.rollout:
            out.print(f"  rollout: {e(f.rollout)}")
        if f.waiver:
            out.print(
                f"  waived by {e(f.waiver.name)} until {e(f.waiver.expires)}: {e(f.waiver.reason)}"
            )


def _explainable(rule: Any, address: str, doc: Any, forgefile: Path) -> None:
    """Refuse, before printing anything, an address that is not there or not of the rule's kind."""
    from forgefile.diagnostics import suggest

    if not address or not rule.kinds or rule.pack == "rego":
        return
    resource = doc.resource(address)
    if resource is None:
        err.print(f"[bold red]error:[/] no resource `{e(address)}` in {e(forgefile)}")
        if hint := suggest(address, [r.address for r in doc.resources]):
            err.print(f"  [green]hint:[/] {e(hint)}")
        raise typer.Exit(EXIT_DIAGNOSTIC)
    if resource.kind not in rule.kinds:
        err.print(
            f"[bold red]error:[/] {e(rule.id)} applies to {e(', '.join(rule.kinds))}; "
            f"`{e(address)}` is {'an' if resource.kind[0] in 'aeiou' else 'a'} "
            f"{e(resource.kind)}, which it never judges"
        )
        raise typer.Exit(EXIT_DIAGNOSTIC)


def main() -> None:
    import signal

    main_pid = os.getpid()

    def terminate(signum: int, frame: object) -> None:
        if os.getpid() != main_pid:
            # A child forked without exec (pyroute2 makes some for netns work) must die as it
            # would have without this handler, not run on through our stack.
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGTERM)
            return
        # A service manager's TERM stops an apply the way Ctrl-C does: cleanly, with a report.
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, terminate)
    app()
