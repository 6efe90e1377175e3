"""When a workload fails or an input changed after planning, apply says so and state stays true."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

from executor.paths import ProjectPaths
from tests.conftest import REPO, needs
from tests.integration.test_example import force_cleanup, forge_in, leftovers

pytestmark = needs("runc", "clang")

FORGEFILE = """
variable "code" {
  type    = int
  default = 5
}

image "busybox" {
  context = "/bin"
  copy { src = "busybox"  dst = "/bin/busybox"  mode = "0755" }
  link {
    target = "busybox"
    links  = ["/bin/sh"]
  }
}

job "flaky" {
  image   = image.busybox
  command = ["sh", "-c", "echo trying; exit ${var.code}"]
}

"""
MODULE = """
wasm "greet" {
  module = "greet.wasm"
  args   = ["Hi"]
}
"""


def test_a_failed_job_is_recorded_and_run_again(tmp_path: Path) -> None:
    """A job exiting outside success_codes fails apply (4), shows as failed, reruns next time."""
    paths = ProjectPaths.for_state_dir(tmp_path / ".forge")
    (tmp_path / "Forgefile").write_text(FORGEFILE)
    subprocess.run(
        [
            "clang",
            "--target=wasm32-wasi",
            "-O2",
            "-o",
            str(tmp_path / "greet.wasm"),
            str(REPO / "examples" / "hello" / "wasm" / "greet.c"),
        ],
        check=True,
    )
    try:
        forge_in(tmp_path, "key", "generate")
        # By default a failed apply removes what it created: nothing of it is left in state.
        rolled = forge_in(tmp_path, "apply", "--auto-approve")
        assert rolled.returncode == 4 and "Rolled back: removed the" in rolled.stderr
        assert json.loads(forge_in(tmp_path, "ps", "--json").stdout)["workloads"] == []

        failed = forge_in(tmp_path, "apply", "--auto-approve", "--no-rollback")
        assert failed.returncode == 4, failed.stderr
        assert "exited with code 5" in failed.stderr
        assert "Forgefile:" in failed.stderr  # the line that declared it

        rows = json.loads(forge_in(tmp_path, "ps", "--json").stdout)["workloads"]
        job = next(r for r in rows if r["address"] == "job.flaky")
        assert (job["status"], job["detail"]) == ("failed", "exit 5")

        plan = json.loads(forge_in(tmp_path, "plan", "--json").stdout)
        [again] = [a for a in plan["actions"] if a["address"] == "job.flaky"]
        assert again["action"] == "replace" and "failed last time" in again["reason"]

        fixed = forge_in(tmp_path, "apply", "--auto-approve", "--var", "code=0")
        assert fixed.returncode == 0, fixed.stderr
        assert forge_in(tmp_path, "logs", "job.flaky").stdout.count("trying") == 3
    finally:
        forge_in(tmp_path, "destroy", "--auto-approve")
        left = leftovers(paths)
        force_cleanup(paths)
    assert left == []


def test_a_module_changed_after_planning_changes_nothing(tmp_path: Path) -> None:
    """apply refuses a plan whose WASM module bytes changed, before it touches anything."""
    paths = ProjectPaths.for_state_dir(tmp_path / ".forge")
    (tmp_path / "Forgefile").write_text(FORGEFILE + MODULE)
    shutil.copy(REPO / "examples" / "hello" / "wasm" / "greet.c", tmp_path / "greet.c")
    subprocess.run(
        ["clang", "--target=wasm32-wasi", "-O2", "-o", "greet.wasm", "greet.c"],
        cwd=tmp_path,
        check=True,
    )
    try:
        forge_in(tmp_path, "key", "generate")
        planned = forge_in(tmp_path, "plan", "-o", "p.forgeplan", "--var", "code=0")
        assert planned.returncode == 0, planned.stderr
        with (tmp_path / "greet.wasm").open("ab") as module:
            module.write(b"\0")  # a custom section's worth of change
        refused = forge_in(tmp_path, "apply", "p.forgeplan")
        assert refused.returncode == 4
        assert "changed since planning" in refused.stderr
        assert json.loads(forge_in(tmp_path, "ps", "--json").stdout)["workloads"] == []
    finally:
        forge_in(tmp_path, "destroy", "--auto-approve")
        left = leftovers(paths)
        force_cleanup(paths)
    assert left == []
