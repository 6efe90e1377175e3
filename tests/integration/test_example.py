"""The hello example, end to end and for real: runc, a bridge and netns, wasmtime, SQLite.

One copy of examples/hello is applied once for the module; the tests then change it and check
that only what changed is replaced, that tampered and stale plans are refused, and finally that
destroy leaves nothing behind on the host.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from executor import network, rootfs
from executor.paths import ProjectPaths
from tests.conftest import REPO, free_subnet, needs

pytestmark = needs("runc", "clang")


@dataclass
class Example:
    folder: Path
    subnet: str

    def forge(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "forge", *args]
        if args and args[0] in ("validate", "build", "plan", "apply", "destroy", "show"):
            command += ["--var", f"subnet={self.subnet}"]
        done = subprocess.run(command, cwd=self.folder, capture_output=True, text=True, timeout=120)
        if check and done.returncode != 0:
            raise AssertionError(
                f"forge {' '.join(args)} exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
            )
        return done

    def plan_json(self, *args: str) -> dict[str, Any]:
        plan: dict[str, Any] = json.loads(self.forge("plan", "--json", *args).stdout)
        return plan

    def changes(self, *args: str) -> dict[str, str]:
        plan = self.plan_json(*args)
        return {a["address"]: a["action"] for a in plan["actions"] if a["action"] != "no-op"}

    @property
    def paths(self) -> ProjectPaths:
        return ProjectPaths.for_state_dir(self.folder / ".forge")

    def ps(self) -> dict[str, dict[str, Any]]:
        rows = json.loads(self.forge("ps", "--json").stdout)["workloads"]
        return {r["address"]: r for r in rows}

    def page(self) -> str:
        return fetch(json.loads(self.forge("output", "web_url", "--json").stdout))


def fetch(url: str) -> str:
    """The body at `url`, retried briefly: a service that just started may not listen yet."""
    for _ in range(50):
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                return str(response.read().decode())
        except OSError:
            time.sleep(0.1)
    raise AssertionError(f"nothing answered at {url}")


def forge_in(
    folder: Path, *args: str, timeout: float = 180, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run `forge ARGS` in `folder` as a user would, capturing its output; `env` adds to the
    environment."""
    return subprocess.run(
        [sys.executable, "-m", "forge", *args],
        cwd=folder,
        text=True,
        capture_output=True,
        timeout=timeout,
        env={**os.environ, **env} if env else None,
    )


def runc_containers(paths: ProjectPaths) -> list[str]:
    """The ids of the project's containers runc knows about."""
    if not paths.runc_root.exists():
        return []
    return subprocess.run(
        ["runc", "--root", str(paths.runc_root), "list", "-q"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.split()


def leftovers(paths: ProjectPaths) -> list[str]:
    """Everything of this project's that the kernel or runc still holds."""
    found = [f"{k}: {v}" for k, v in network.list_owned(paths.project_id).items() if v]
    found += [f"runc container {c}" for c in runc_containers(paths)]
    crun_root = paths.runtime_root("crun")
    if crun_root.exists():  # crun keeps a folder per container it knows
        found += [f"crun container {c.name}" for c in crun_root.iterdir()]
    if paths.bundles.exists():
        found += [f"bundle {b.name}" for b in paths.bundles.iterdir()]
    found += [f"mount {point}" for point in mounts_under(paths.run_dir)]
    processes = subprocess.run(
        ["ps", "-eo", "args"], capture_output=True, text=True, check=True
    ).stdout
    found += [
        f"process {line}" for line in processes.splitlines() if f"forge-{paths.project_id}-" in line
    ]
    return found


def force_cleanup(paths: ProjectPaths) -> None:
    """Remove what a failed test may have left, so the host stays clean for the next run."""
    if paths.runc_root.exists():
        for cid in subprocess.run(
            ["runc", "--root", str(paths.runc_root), "list", "-q"], capture_output=True, text=True
        ).stdout.split():
            subprocess.run(
                ["runc", "--root", str(paths.runc_root), "delete", "-f", cid], capture_output=True
            )
    crun_root = paths.runtime_root("crun")
    if crun_root.exists():
        from executor import runtimes

        for container in crun_root.iterdir():
            argv = runtimes.runtime("crun").command(crun_root, "delete", "-f", container.name)
            subprocess.run(argv, capture_output=True)
    for netns in network.list_owned(paths.project_id)["netns"]:
        subprocess.run(["ip", "netns", "del", netns], capture_output=True)
    for bridge in network.list_owned(paths.project_id)["bridges"]:
        subprocess.run(["ip", "link", "del", bridge], capture_output=True)
    rootfs.release_under(paths.run_dir)
    shutil.rmtree(paths.run_dir, ignore_errors=True)


def mounts_under(folder: Path) -> list[str]:
    """The host's mount points below `folder`: a container's rootfs overlay, say."""
    prefix = str(folder.resolve()) + "/"
    with open("/proc/self/mountinfo") as info:
        return [f for f in (line.split()[4] for line in info) if f.startswith(prefix)]


@pytest.fixture(scope="module")
def example(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Example]:
    folder = tmp_path_factory.mktemp("hello")
    shutil.copytree(
        REPO / "examples" / "hello",
        folder,
        dirs_exist_ok=True,
        ignore=shutil.ignore_patterns(".forge", "build"),
    )
    (folder / "build").mkdir()
    subprocess.run(
        ["clang", "--target=wasm32-wasi", "-O2", "-o", "build/greet.wasm", "wasm/greet.c"],
        cwd=folder,
        check=True,
    )
    ex = Example(folder, free_subnet(range(90, 100)))
    ex.forge("key", "generate")
    ex.forge("build")
    ex.forge("plan", "-o", "build/hello.forgeplan")
    applied = ex.forge("apply", "build/hello.forgeplan")
    assert "Applied" in applied.stdout
    try:
        yield ex
    finally:
        ex.forge("destroy", "--auto-approve", check=False)
        left = leftovers(ex.paths)
        force_cleanup(ex.paths)
        assert not left, f"destroy left {left}"


def test_the_service_serves_the_page_from_the_forgefile(example: Example) -> None:
    """service.web answers on its planned address with the page the Forgefile wrote."""
    assert "<h1>Hello from Forge</h1>" in example.page()
    assert example.ps()["service.web"]["status"] == "running"


def test_the_service_bundle_validates_against_the_runtime_spec(
    example: Example, runtime_spec_validator: jsonschema.Draft4Validator
) -> None:
    """The config.json runc runs service.web with is valid against the official schema."""
    container = example.ps()["service.web"]["id"]
    config = json.loads((example.paths.bundles / container / "config.json").read_text())
    errors = [
        f"{list(e.absolute_path)}: {e.message}" for e in runtime_spec_validator.iter_errors(config)
    ]
    assert errors == []
    [net] = [ns for ns in config["linux"]["namespaces"] if ns["type"] == "network"]
    assert net["path"].startswith("/var/run/netns/forge-")


def test_the_job_printed_its_line_and_its_exit_code_was_recorded(example: Example) -> None:
    """job.hello ran to completion under the monitor; its exit code 3 is in state."""
    assert example.forge("logs", "job.hello").stdout == "hello from job.hello\n"
    job = example.ps()["job.hello"]
    assert (job["status"], job["detail"]) == ("completed", "exit 3")


def test_the_wasm_module_read_its_inputs_and_wrote_its_result(example: Example) -> None:
    """wasm.greet got its argument, its env var and the job's file from the shared volume."""
    expected = "Hello, Forge (asked by examples/hello)"
    assert example.forge("logs", "wasm.greet").stdout.strip() == expected
    result = example.paths.volumes / "shared" / "result.txt"
    assert result.read_text().strip() == expected


def test_applying_again_changes_nothing(example: Example) -> None:
    """With nothing changed the plan is all no-op and --detailed-exitcode says 0."""
    assert example.changes() == {}
    assert example.forge("plan", "--detailed-exitcode").returncode == 0


def test_changing_the_page_replaces_only_the_service(example: Example) -> None:
    """A new title rebuilds image.site and replaces service.web; nothing else moves."""
    assert example.changes("--var", "title=Changed") == {
        "image.site": "update",
        "service.web": "replace",
    }
    example.forge("apply", "--auto-approve", "--var", "title=Changed")
    assert "<h1>Changed</h1>" in example.page()


def test_changing_the_jobs_command_replaces_only_the_job(example: Example) -> None:
    """A new exit code changes job.hello's command: only the job runs again."""
    vars_ = ("--var", "title=Changed", "--var", "job_exit_code=0")
    assert example.changes(*vars_) == {"job.hello": "replace"}
    example.forge("apply", "--auto-approve", *vars_)
    assert example.ps()["job.hello"]["detail"] == "exit 0"


def test_a_partial_apply_leaves_the_rest_for_later(example: Example) -> None:
    """--exclude service.web: the image is rebuilt, the running service is not touched."""
    vars_ = ("--var", "title=Partial", "--var", "job_exit_code=0")  # as the test before left it
    plan = example.plan_json(*vars_, "--exclude", "service.web")
    assert plan["selection"] == {"targets": [], "excludes": ["service.web"]}
    assert {a["address"]: a["action"] for a in plan["actions"] if a["action"] != "no-op"} == {
        "image.site": "update"
    }
    example.forge("apply", "--auto-approve", *vars_, "--exclude", "service.web")
    assert "<h1>Partial</h1>" not in example.page()
    assert example.changes(*vars_) == {"service.web": "replace"}
    assert "service.web" in example.changes(*vars_, "--target", "service.web")


def test_a_plan_with_one_byte_changed_is_refused(example: Example) -> None:
    """Flipping one byte of a signed plan makes apply refuse it before acting."""
    plan = example.folder / "build" / "tampered.forgeplan"
    example.forge("plan", "-o", str(plan), "--var", "title=Tampered")
    data = bytearray(plan.read_bytes())
    middle = data.index(b'"payload":"') + 40
    data[middle] = ord("A") if data[middle] != ord("A") else ord("B")
    plan.write_bytes(bytes(data))
    refused = example.forge("apply", str(plan), check=False)
    assert refused.returncode in (10, 11), refused.stderr
    assert "plan refused" in refused.stderr


def test_a_plan_made_before_another_apply_is_refused_as_stale(example: Example) -> None:
    """A plan bound to an older state serial is refused with exit code 14."""
    old = example.folder / "build" / "old.forgeplan"
    example.forge("plan", "-o", str(old), "--var", "title=Old")
    fresh = json.loads(example.forge("show", str(old), "--json").stdout)
    assert fresh["accepted"] == "yes"
    example.forge("apply", "--auto-approve", "--var", "title=Newer")
    shown = json.loads(example.forge("show", str(old), "--json").stdout)
    assert shown["accepted"].startswith("no (stale check): the state changed since")
    refused = example.forge("apply", str(old), check=False)
    assert refused.returncode == 14, refused.stderr
    assert "stale" in refused.stderr
    assert "<h1>Newer</h1>" in example.page()


def test_policy_blocks_a_privileged_service_before_anything_runs(example: Example) -> None:
    """Setting privileged = true makes plan fail with the rule's diagnostic and exit 3."""
    forgefile = example.folder / "Forgefile"
    original = forgefile.read_text()
    try:
        forgefile.write_text(
            original.replace("image    = image.site", "image    = image.site\n  privileged = true")
        )
        blocked = example.forge("plan", check=False)
    finally:
        forgefile.write_text(original)
    assert blocked.returncode == 3
    assert "FRG-C001" in blocked.stderr
    assert "service.web runs privileged" in blocked.stderr
    line = original[: original.index("image    = image.site")].count("\n") + 2
    assert f"Forgefile:{line}:3:" in blocked.stderr


@pytest.mark.skipif(
    importlib.util.find_spec("regopy") is None, reason="needs regopy (pip install regopy)"
)
def test_a_plan_records_the_rego_engine_and_is_bound_to_the_rego_files(example: Example) -> None:
    """A `rego` block's engine and version go into the plan; editing a .rego voids the plan."""
    rules = example.folder / "rego"
    shutil.copytree(REPO / "tests" / "fixtures" / "rego" / "rules", rules)
    config = example.folder / "policy" / "rego.policy"
    config.write_text('rego {\n  path = "../rego"\n  enforcement = "advisory"\n}\n')
    plan = example.folder / "build" / "rego.forgeplan"
    try:
        judged = example.plan_json()["policy"]
        assert judged["rego"]["engine"] == {
            "engine": "regopy",
            "version": importlib.metadata.version("regopy"),
        }
        assert judged["rego"]["files"] == ["lib/helpers.rego", "policy.rego"]
        # Every service of the example runs as root: the Rego rule fires, advisory here. The
        # plan keeps warnings as a count and a digest; `policy check` lists them.
        assert "rego:main.violation_root" in judged["rules"]
        checked = json.loads(example.forge("policy", "check", "--json").stdout)
        fired = {(f["rule"], f["resource"], f["status"]) for f in checked["findings"]}
        assert ("rego:main.violation_root", "service.web", "warning") in fired
        advisory = [f for f in checked["findings"] if f["status"] in ("warning", "info")]
        assert judged["advisories"]["count"] == len(advisory)

        example.forge("plan", "-o", str(plan))
        policy_rego = rules / "policy.rego"
        policy_rego.write_text(policy_rego.read_text() + "\n# edited after planning\n")
        refused = example.forge("apply", str(plan), check=False)
        assert refused.returncode == 15, refused.stderr
        assert "policy files changed" in refused.stderr
    finally:
        config.unlink()
        shutil.rmtree(rules)


def test_a_container_that_died_is_replaced_by_the_next_apply(example: Example) -> None:
    """Drift: a service killed from outside shows as not running, and apply restarts it."""
    web = example.ps()["service.web"]
    subprocess.run(
        ["runc", "--root", str(example.paths.runc_root), "kill", web["id"], "KILL"], check=True
    )
    for _ in range(50):
        if example.ps()["service.web"]["status"] != "running":
            break
        time.sleep(0.1)
    drift = json.loads(example.forge("plan", "--refresh-only", "--json").stdout)["drift"]
    assert [(d["address"], d["kind"]) for d in drift] == [("service.web", "service")]
    refreshed = example.forge("plan", "--refresh-only", "--detailed-exitcode", check=False)
    assert refreshed.returncode == 2 and "service.web" in refreshed.stdout
    changes = example.changes("--var", "title=Newer")
    assert changes == {"service.web": "replace"}
    example.forge("apply", "--auto-approve", "--var", "title=Newer")
    assert "<h1>Newer</h1>" in example.page()
    assert example.forge("plan", "--refresh-only", "--detailed-exitcode").returncode == 0


def test_a_bridge_deleted_from_outside_is_recreated(example: Example) -> None:
    """Drift: `ip link del` of the network's bridge; the next apply restores it and the service."""
    [bridge] = network.list_owned(example.paths.project_id)["bridges"]
    subprocess.run(["ip", "link", "del", bridge], check=True)
    assert example.changes("--var", "title=Newer") == {
        "network.front": "replace",
        "service.web": "replace",
    }
    example.forge("apply", "--auto-approve", "--var", "title=Newer")
    assert "<h1>Newer</h1>" in example.page()


def test_a_rollback_brings_back_the_first_serial_and_is_refused_once_the_policy_changed(
    example: Example,
) -> None:
    """`forge state rollback 1`: the page and the job of the first apply run again, under the
    first plan's verdict; after a policy edit the same rollback is refused (exit 15)."""
    kept = json.loads(example.forge("state", "list", "--json").stdout)["serials"]
    assert kept[-1]["serial"] == 1 and kept[-1]["plan"].startswith("sha256:")
    plan = example.folder / "build" / "rollback.forgeplan"
    made = example.forge("state", "rollback", "1", "-o", str(plan))
    assert "Rolling back to serial 1" in made.stdout
    shown = example.forge("show", str(plan), "--json")
    document = json.loads(shown.stdout)["plan"]
    assert document["rollback"]["serial"] == 1
    assert document["rollback"]["plan"] == kept[-1]["plan"]
    changed = {a["address"]: a["action"] for a in document["actions"] if a["action"] != "no-op"}
    # The first apply's page comes back (the job's exit code already is the first one's).
    assert changed == {"image.site": "update", "service.web": "replace"}
    example.forge("apply", str(plan))
    assert "<h1>Hello from Forge</h1>" in example.page()
    assert example.ps()["job.hello"]["detail"] == "exit 3"
    assert example.forge("state", "rollback", "1", "--json").returncode == 0  # nothing to do

    rules = example.folder / "policy" / "edited.policy"
    rules.write_text("# a new policy file: the first serial's verdict no longer stands\n")
    try:
        refused = example.forge("state", "rollback", "2", "--auto-approve", check=False)
    finally:
        rules.unlink()
    assert refused.returncode == 15, refused.stderr
    assert "policy files changed since serial 2" in refused.stderr

    # The state database is not signed: an edited copy of a serial is caught against the state
    # digest a signed plan recorded for it, before anything runs.
    database = example.folder / ".forge" / "state.db"
    with sqlite3.connect(database) as db:
        [(body,)] = db.execute("SELECT body FROM snapshots WHERE serial = 1")
        edited = json.loads(body)
        web = next(r for r in edited["resources"] if r["address"] == "service.web")
        web["spec"]["privileged"] = True
        db.execute("UPDATE snapshots SET body = ? WHERE serial = 1", [json.dumps(edited)])
    tampered = example.forge("state", "rollback", "1", "--auto-approve", check=False)
    assert tampered.returncode == 1
    assert "not the state signed plans recorded for it" in tampered.stderr

    # Without its variables the Forgefile does not load: the rollback waits for it, since it
    # reads the prevent_destroy marks there.
    forgefile = example.folder / "Forgefile"
    original = forgefile.read_text()
    forgefile.write_text(original + '\nvariable "needed" {\n  type = string\n}\n')
    try:
        unread = example.forge("state", "rollback", "2", "--auto-approve", check=False)
    finally:
        forgefile.write_text(original)
    assert unread.returncode == 1 and "P0010" in unread.stderr


def test_an_apply_whose_reader_goes_away_still_finishes(example: Example) -> None:
    """`forge apply | head -1`: stdout closes after a line, and the apply runs to its end."""
    command = (
        f"{sys.executable} -m forge apply --auto-approve --var subnet={example.subnet} "
        "--var title=Piped | head -1"
    )
    subprocess.run(["sh", "-c", command], cwd=example.folder, capture_output=True, timeout=120)
    assert example.changes("--var", "title=Piped") == {}
    assert "<h1>Piped</h1>" in example.page()


def test_destroy_leaves_nothing_behind(example: Example) -> None:
    """destroy removes every container, bundle, netns, veth, bridge and process."""
    example.forge("destroy", "--auto-approve")
    assert leftovers(example.paths) == []
    assert example.ps() == {}
