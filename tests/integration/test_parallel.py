"""Independent resources are created side by side, for real: two jobs that each wait for the
other to have started can only both succeed when they run at once; what depends on them runs
after both."""

from __future__ import annotations

from pathlib import Path

from executor.paths import ProjectPaths
from tests.conftest import needs
from tests.integration.test_container_options import BUSYBOX
from tests.integration.test_example import force_cleanup, forge_in, leftovers

pytestmark = needs("runc")

MEET = """
volume "meet" {}

job "left" {
  image   = image.busybox
  volumes = { "/meet" = volume.meet }
  command = ["sh", "-c", <<-SH
    touch /meet/left
    for i in $(seq 100); do test -e /meet/right && exit 0; sleep 0.1; done
    exit 1
    SH
  ]
}

job "right" {
  image   = image.busybox
  volumes = { "/meet" = volume.meet }
  command = ["sh", "-c", <<-SH
    touch /meet/right
    for i in $(seq 100); do test -e /meet/left && exit 0; sleep 0.1; done
    exit 1
    SH
  ]
}

job "after" {
  image      = image.busybox
  volumes    = { "/meet" = volume.meet }
  depends_on = [job.left, job.right]
  command    = ["sh", "-c", "test -e /meet/left && test -e /meet/right && echo both-done"]
}
"""


def project(tmp_path: Path) -> tuple[Path, ProjectPaths]:
    (tmp_path / "Forgefile").write_text(BUSYBOX + MEET)
    assert forge_in(tmp_path, "key", "generate").returncode == 0
    return tmp_path, ProjectPaths.for_state_dir(tmp_path / ".forge")


def test_independent_jobs_run_at_once_and_dependents_after(tmp_path: Path) -> None:
    folder, paths = project(tmp_path)
    try:
        applied = forge_in(folder, "apply", "--auto-approve", "--parallelism", "4")
        after = forge_in(folder, "logs", "job.after").stdout
    finally:
        forge_in(folder, "destroy", "--auto-approve")
        left = leftovers(paths)
        force_cleanup(paths)
    assert applied.returncode == 0, applied.stdout + applied.stderr
    assert after == "both-done\n"
    assert left == []


def test_parallelism_one_runs_one_at_a_time(tmp_path: Path) -> None:
    """The same jobs one after another: the first waits in vain for the other and fails."""
    folder, paths = project(tmp_path)
    try:
        applied = forge_in(folder, "apply", "--auto-approve", "--parallelism", "1")
        state = forge_in(folder, "state", "export").stdout
    finally:
        forge_in(folder, "destroy", "--auto-approve")
        left = leftovers(paths)
        force_cleanup(paths)
    assert applied.returncode == 4
    assert "job.left failed" in applied.stderr and "exited with code 1" in applied.stderr
    assert "job.after" not in state
    assert left == []
