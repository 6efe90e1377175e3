"""Host bind mounts and `runtime = "crun"`, for real: a service reads a host file through a
read-only bind and cannot change it; policy gates binds; a missing or linked source is refused
at apply; crun runs services and jobs, records exit codes, stops them and leaves nothing."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import pytest

from executor import runtimes
from executor.paths import ProjectPaths
from tests.conftest import needs
from tests.integration.test_container_options import BUSYBOX
from tests.integration.test_example import force_cleanup, forge_in, leftovers

pytestmark = needs("runc")

LIMITS = "  resources {\n    memory = 64MiB\n    pids   = 32\n  }\n"

READER = """
service "reader" {
  image   = image.busybox
  runtime = "RUNTIME"
  command = ["sh", "-c", <<-SH
    cat /etc/app/app.conf
    echo changed > /etc/app/app.conf && echo wrote || echo write-refused
    touch /etc/app/new && echo made || echo create-refused
    echo done
    exec sleep 3600
    SH
  ]
LIMITS  bind {
    source = "SOURCE"
    target = "/etc/app"
  }
}
"""


def crun_works() -> bool:
    """crun is installed and starts a container here (probed once, as Forge does)."""
    if os.geteuid() != 0 or shutil.which("crun") is None:
        return False
    try:
        runtimes.runtime("crun")
    except (runtimes.RuntimeUnavailable, OSError):
        return False
    return True


needs_crun = pytest.mark.skipif(
    not crun_works(),
    reason="needs root and a crun that starts containers here (apt-get install crun)",
)


def project(tmp_path: Path, text: str, allow: str = "") -> tuple[Path, ProjectPaths]:
    """A project judged by the baseline pack, binds allowed under `allow` (none if empty)."""
    folder = tmp_path / "project"
    (folder / "policy").mkdir(parents=True)
    (folder / "Forgefile").write_text(BUSYBOX + text)
    params = f'\n  params = {{ bind_allow = ["{allow}"] }}' if allow else ""
    (folder / "policy" / "project.policy").write_text(
        f'policy {{\n  packs = ["baseline"]{params}\n}}\n'
    )
    assert forge_in(folder, "key", "generate").returncode == 0
    return folder, ProjectPaths.for_state_dir(folder / ".forge")


def host_folder(tmp_path: Path) -> Path:
    """A host folder (no symbolic link on its path) holding app.conf."""
    conf = tmp_path.resolve() / "host" / "conf"
    conf.mkdir(parents=True)
    (conf / "app.conf").write_text("hello-from-the-host\n")
    return conf


def wait_for_log(folder: Path, address: str, last: str, seconds: float = 20) -> list[str]:
    deadline = time.monotonic() + seconds
    while True:
        lines = forge_in(folder, "logs", address).stdout.splitlines()
        if last in lines or time.monotonic() > deadline:
            return lines
        time.sleep(0.2)


@pytest.mark.parametrize(
    "runtime", ["runc", pytest.param("crun", marks=needs_crun)], ids=["runc", "crun"]
)
def test_a_service_reads_through_a_read_only_bind_and_cannot_write(
    tmp_path: Path, runtime: str
) -> None:
    """The file is read; writing it and creating beside it fail; the host file is unchanged."""
    conf = host_folder(tmp_path)
    text = READER.replace("RUNTIME", runtime).replace("SOURCE", str(conf)).replace("LIMITS", LIMITS)
    folder, paths = project(tmp_path, text, allow=str(conf.parent))
    try:
        applied = forge_in(folder, "apply", "--auto-approve")
        assert applied.returncode == 0, applied.stdout + applied.stderr
        lines = wait_for_log(folder, "service.reader", "done")
        record = next(
            r
            for r in json.loads(forge_in(folder, "state", "export").stdout)["resources"]
            if r["address"] == "service.reader"
        )
        config = json.loads(forge_in(folder, "inspect", "service.reader").stdout)["config"]
    finally:
        forge_in(folder, "destroy", "--auto-approve")
        left = leftovers(paths)
        force_cleanup(paths)
    # stdout and stderr are two pipes: lines keep their order within a stream, not across.
    assert [line for line in lines if "Read-only" not in line] == [
        "hello-from-the-host",
        "write-refused",
        "create-refused",
        "done",
    ]
    assert [line for line in lines if "Read-only" in line] == [
        "sh: can't create /etc/app/app.conf: Read-only file system",
        "touch: /etc/app/new: Read-only file system",
    ]
    assert (conf / "app.conf").read_text() == "hello-from-the-host\n"
    assert sorted(p.name for p in conf.iterdir()) == ["app.conf"]
    assert record["spec"]["binds"] == [
        {"source": str(conf), "target": "/etc/app", "read_only": True}
    ]
    [mounted] = record["runtime"]["binds"]
    assert (mounted["source"], mounted["inode"]) == (str(conf), conf.stat().st_ino)
    [mount] = [m for m in config["mounts"] if m["destination"] == "/etc/app"]
    assert mount["options"] == ["bind", "rprivate", "nosuid", "nodev", "ro"]
    assert left == []


def test_policy_blocks_a_bind_outside_the_allow_list_before_anything_runs(
    tmp_path: Path,
) -> None:
    """With no bind_allow, the plan is blocked (exit 3, FRG-C036) and nothing is created."""
    conf = host_folder(tmp_path)
    text = READER.replace("RUNTIME", "runc").replace("SOURCE", str(conf)).replace("LIMITS", LIMITS)
    folder, paths = project(tmp_path, text)
    try:
        blocked = forge_in(folder, "apply", "--auto-approve")
        left = leftovers(paths)
    finally:
        force_cleanup(paths)
    assert blocked.returncode == 3
    assert "FRG-C036" in blocked.stdout + blocked.stderr
    assert left == []


@pytest.mark.parametrize("problem", ["missing", "symlink"])
def test_a_bind_source_that_is_gone_or_a_link_is_refused_at_apply(
    tmp_path: Path, problem: str
) -> None:
    """Planned with a good source, applied after it changed: ActionFailed, nothing changed."""
    conf = host_folder(tmp_path)
    text = READER.replace("RUNTIME", "runc").replace("SOURCE", str(conf)).replace("LIMITS", LIMITS)
    folder, paths = project(tmp_path, text, allow=str(conf.parent))
    try:
        assert forge_in(folder, "plan", "-o", "release.plan").returncode == 0
        moved = conf.with_name("elsewhere")
        conf.rename(moved)
        if problem == "symlink":
            conf.symlink_to(moved)
        refused = forge_in(folder, "apply", "release.plan", "--auto-approve")
        state = json.loads(forge_in(folder, "state", "export").stdout)
        left = leftovers(paths)
    finally:
        forge_in(folder, "destroy", "--auto-approve")
        force_cleanup(paths)
    assert refused.returncode == 4, refused.stdout + refused.stderr
    said = refused.stdout + refused.stderr
    assert "Traceback" not in said
    if problem == "missing":
        assert f"the bind source {conf} cannot be mounted: No such file or directory" in said
    else:
        assert f"it leads to {moved}" in said
    assert "nothing was changed" in said
    assert state["resources"] == []
    assert left == []


CRUN = """
job "once" {
  image         = image.busybox
  runtime       = "crun"
  command       = ["sh", "-c", "echo from-crun; exit 3"]
  success_codes = [3]
LIMITS}

service "web" {
  image    = image.busybox
  runtime  = "crun"
  networks = [network.net]
  command  = ["sh", "-c", "trap 'exit 0' TERM; echo up; while true; do sleep 0.1; done"]
LIMITS}

network "net" {
  subnet = "SUBNET"
}
"""


@needs_crun
def test_crun_runs_records_exit_codes_stops_and_leaves_nothing(tmp_path: Path) -> None:
    """A crun job's exit code is recorded; a crun service on a network runs, answers exec,
    stops, starts again, and is gone after destroy with its crun state and cgroups."""
    from tests.conftest import free_subnet

    text = CRUN.replace("LIMITS", LIMITS).replace("SUBNET", free_subnet(range(180, 200)))
    folder, paths = project(tmp_path, text)
    try:
        applied = forge_in(folder, "apply", "--auto-approve")
        assert applied.returncode == 0, applied.stdout + applied.stderr
        records = {
            r["address"]: r
            for r in json.loads(forge_in(folder, "state", "export").stdout)["resources"]
        }
        lines = wait_for_log(folder, "service.web", "up")
        inside = forge_in(folder, "exec", "service.web", "--", "echo", "inside")
        crun_ids = [c.name for c in paths.runtime_root("crun").iterdir()]
        runc_ids = list(paths.runc_root.iterdir()) if paths.runc_root.exists() else []
        stopped = forge_in(folder, "stop", "service.web")
        after_stop = [c.name for c in paths.runtime_root("crun").iterdir()]
        started = forge_in(folder, "start", "service.web")
        ps = forge_in(folder, "ps").stdout
    finally:
        destroyed = forge_in(folder, "destroy", "--auto-approve")
        left = leftovers(paths)
        force_cleanup(paths)
    assert records["job.once"]["runtime"]["exit_code"] == 3
    assert records["service.web"]["runtime"]["runtime"] == "crun"
    assert records["service.web"]["spec"]["runtime"] == "crun"
    assert lines == ["up"]
    assert inside.stdout == "inside\n", inside.stderr
    assert crun_ids == [records["service.web"]["runtime"]["container_id"]]
    assert runc_ids == []
    assert stopped.returncode == 0, stopped.stderr
    assert after_stop == []
    assert started.returncode == 0, started.stderr
    assert "running" in ps
    assert destroyed.returncode == 0, destroyed.stderr
    assert left == []
    cgroups = list(Path("/sys/fs/cgroup/memory").glob(f"**/forge-{paths.project_id}-*"))
    assert cgroups == []
