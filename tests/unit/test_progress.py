"""The apply's progress: a live table on a terminal, ending as one line per resource; one line
per step elsewhere."""

from __future__ import annotations

import io

from rich.console import Console

from forge.render import ApplyProgress


def steps(progress: ApplyProgress) -> None:
    progress("delete", "service.old", "removing")
    progress("deleted", "service.old", "removed")
    progress("create", "network.n", "create")
    progress("done", "network.n", "ready")
    progress("delete", "service.web", "replacing")
    progress("deleted", "service.web", "removed, to replace")
    progress("create", "service.web", "replace")
    progress("recover", "service.gone", "finished deleting service.gone")
    progress("create", "job.once", "create")
    progress("failed", "job.once", "exited with code 3")
    progress("rolled back", "network.n", "removed, as the apply failed")


def test_without_a_terminal_each_step_is_a_line_in_order() -> None:
    text = io.StringIO()
    with ApplyProgress(Console(file=text, width=120, force_terminal=False)) as progress:
        steps(progress)
    assert text.getvalue().splitlines() == [
        "  - service.old: removing",
        "  ✓ service.old: removed",
        "  … network.n: create",
        "  ✓ network.n: ready",
        "  - service.web: replacing",
        "  ✓ service.web: removed, to replace",
        "  … service.web: replace",
        "  ↺ finished deleting service.gone",
        "  … job.once: create",
        "  ✗ job.once: exited with code 3",
        "  ↩ network.n: removed, as the apply failed",
    ]


def test_on_a_terminal_a_live_table_gives_way_to_one_line_per_resource() -> None:
    text = io.StringIO()
    console = Console(file=text, width=120, force_terminal=True, color_system=None)
    with ApplyProgress(console) as progress:
        assert progress.live is not None
        steps(progress)
    shown = text.getvalue()
    live, after = shown.rsplit("\x1b[?25h", 1)  # the cursor comes back when the table goes
    assert "3 done, 1 at work" in live and "↺ finished deleting service.gone" in live
    # What stays: each resource once, as it ended, then what was still at work.
    assert after.split("\x1b[2K")[-1].splitlines() == [
        "  ✓ service.old: removed",
        "  ✗ job.once: exited with code 3",
        "  ↩ network.n: removed, as the apply failed",
        "  … service.web: replace",
    ]
