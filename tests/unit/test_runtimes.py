"""Choosing how an OCI runtime runs here: runc as it is; crun plainly, or wrapped in a private
mount namespace without the cgroup2 mount where a hybrid cgroup layout makes it refuse."""

from __future__ import annotations

from pathlib import Path

import pytest

from executor import runtimes
from executor.runtimes import Runtime, RuntimeUnavailable, choose, wrapped

HYBRID = "cgroups in hybrid mode not supported, drop all controllers from cgroupv2"


class Probe:
    """A fake probe: answers by whether the argv is wrapped, and remembers what it was asked."""

    def __init__(self, plain: str | None, inside: str | None = None) -> None:
        self.answers = {False: plain, True: inside}
        self.asked: list[tuple[str, ...]] = []

    def __call__(self, argv: tuple[str, ...]) -> str | None:
        self.asked.append(argv)
        return self.answers[argv[0] != "/usr/bin/crun"]


def test_runc_runs_as_it_is_without_a_probe() -> None:
    probe = Probe("never asked")

    assert choose("runc", "/usr/sbin/runc", probe, True) == Runtime("runc", ("/usr/sbin/runc",))
    assert probe.asked == []


def test_crun_that_works_plainly_is_not_wrapped() -> None:
    probe = Probe(None)

    found = choose("crun", "/usr/bin/crun", probe, True)

    assert found == Runtime("crun", ("/usr/bin/crun",))
    assert probe.asked == [("/usr/bin/crun",)]


def test_crun_on_a_hybrid_host_runs_wrapped_when_that_works() -> None:
    """The wrapper unshares the mount namespace, unmounts cgroup2 and execs crun itself."""
    probe = Probe(HYBRID, None)

    found = choose("crun", "/usr/bin/crun", probe, True)

    assert found.wrapped
    assert found.argv == wrapped("/usr/bin/crun")
    assert found.argv[1:4] == ("-m", "--propagation", "private")
    assert found.argv[-1] == "/usr/bin/crun"
    assert found.command(Path("/run/forge/p/crun"), "state", "c1")[-4:] == [
        "--root",
        "/run/forge/p/crun",
        "state",
        "c1",
    ]


def test_crun_that_fails_both_ways_says_both_reasons() -> None:
    probe = Probe(HYBRID, "permission denied")

    with pytest.raises(RuntimeUnavailable) as caught:
        choose("crun", "/usr/bin/crun", probe, True)

    assert str(caught.value) == (
        f"crun cannot start containers on this host: {HYBRID}; in a private mount namespace "
        "without /sys/fs/cgroup/unified: permission denied"
    )
    assert 'runtime = "runc"' in caught.value.hint


def test_without_a_cgroup2_mount_the_wrapper_is_not_tried() -> None:
    probe = Probe("some other failure")

    with pytest.raises(RuntimeUnavailable, match=r"some other failure$"):
        choose("crun", "/usr/bin/crun", probe, False)
    assert probe.asked == [("/usr/bin/crun",)]


@pytest.mark.parametrize("name", ["runc", "crun"])
def test_a_missing_runtime_names_what_to_install(name: str) -> None:
    with pytest.raises(RuntimeUnavailable, match=f"^{name} is not installed on this host$") as c:
        choose(name, None, Probe(None), True)
    assert f"apt-get install {name}" in c.value.hint


def test_an_unknown_runtime_is_refused() -> None:
    with pytest.raises(RuntimeUnavailable, match="unknown OCI runtime 'kata'"):
        choose("kata", "/usr/bin/kata", Probe(None), True)


def test_what_worked_is_cached_for_the_boot(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The probe's answer is kept under the run root, keyed by the binary and the boot."""
    monkeypatch.setattr(runtimes, "RUN_ROOT", tmp_path)
    found = Runtime("crun", wrapped("/usr/bin/crun"), wrapped=True)

    runtimes._write_cache("key-1", found)

    assert runtimes._read_cache("key-1") == found
    assert runtimes._read_cache("key-2") is None


@pytest.mark.skipif(not Path("/bin/busybox").is_file(), reason="needs busybox-static")
def test_the_probe_runs_a_container_then_deletes_it_with_the_runner_given(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The monitor hands in its own runner (only its reaper may wait): the probe uses it for
    `run` and, whatever happened, `delete`; a failure is the runtime's last line."""
    monkeypatch.setattr(runtimes, "RUN_ROOT", tmp_path)
    calls: list[list[str]] = []

    def runner(command: list[str]) -> tuple[int, str]:
        calls.append(command)
        return (1, "starting\n" + HYBRID + "\n") if "run" in command else (0, "")

    said = runtimes.run_probe(("/usr/bin/crun",), run=runner)

    assert said == HYBRID
    assert [c[c.index("--root") + 2] for c in calls] == ["run", "delete"]
    assert list(tmp_path.iterdir()) == []  # the bundle and state root are gone


def test_apply_refuses_crun_it_cannot_run_before_changing_anything(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Preflight: ActionFailed naming the workload, what is missing and what to do."""
    from executor import apply
    from executor.drivers import ActionFailed

    monkeypatch.setattr(runtimes, "_FOUND", {})
    monkeypatch.setattr("executor.runtimes.shutil.which", lambda name: None)
    action = {"action": "create", "kind": "job", "address": "job.once", "spec": {"runtime": "crun"}}

    with pytest.raises(ActionFailed) as caught:
        apply._preflight([action], host=None)  # type: ignore[arg-type]

    assert caught.value.address == "job.once"
    assert str(caught.value) == "crun is not installed on this host"
    assert caught.value.hint.startswith("nothing was changed; install it (apt-get install crun")
