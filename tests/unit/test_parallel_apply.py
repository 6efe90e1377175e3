"""The apply's scheduler: each action after what it waits for, at most N at once, and after a
failure nothing new starts."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from executor.apply import _dependencies, _dependents, _in_parallel
from executor.drivers import ActionFailed


def action(address: str, *depends_on: str) -> dict[str, Any]:
    return {"address": address, "depends_on": list(depends_on)}


class Recorder:
    """Runs actions slowly enough to overlap, noting order and how many ran at once."""

    def __init__(self, fail: str = "", error: type[Exception] = ActionFailed) -> None:
        self.started: list[str] = []
        self.finished: list[str] = []
        self.most = 0
        self._now = 0
        self._lock = threading.Lock()
        self.fail, self.error = fail, error

    def __call__(self, act: dict[str, Any]) -> None:
        with self._lock:
            self.started.append(act["address"])
            self._now += 1
            self.most = max(self.most, self._now)
        time.sleep(0.02)
        with self._lock:
            self._now -= 1
            self.finished.append(act["address"])
        if act["address"] == self.fail:
            if self.error is ActionFailed:
                raise ActionFailed(act["address"], "it broke")
            raise self.error("a bug")


def test_dependencies_go_first_and_the_bound_holds() -> None:
    actions = [action(f"service.s{i}", "network.n") for i in range(12)]
    actions.insert(0, action("network.n"))
    actions.append(action("job.last", *(a["address"] for a in actions)))
    run = Recorder()
    _in_parallel(actions, run, _dependencies(actions), workers=4)
    assert run.started[0] == "network.n" and run.finished[0] == "network.n"
    assert run.started[-1] == "job.last"
    assert sorted(run.finished) == sorted(a["address"] for a in actions)
    assert 1 < run.most <= 4


def test_one_worker_keeps_the_plans_order() -> None:
    actions = [action("a"), action("b"), action("c", "a")]
    run = Recorder()
    _in_parallel(actions, run, _dependencies(actions), workers=1)
    assert run.started == ["a", "b", "c"] and run.most == 1


def test_a_teardown_removes_dependents_first() -> None:
    actions = [action("service.web", "network.n"), action("network.n")]
    run = Recorder()
    _in_parallel(actions, run, _dependents(actions), workers=8)
    assert run.finished == ["service.web", "network.n"]


def test_after_a_failure_nothing_new_starts_and_the_failure_is_raised() -> None:
    actions = [action("a"), action("b", "a"), action("c")]
    run = Recorder(fail="a")
    with pytest.raises(ActionFailed) as failed:
        _in_parallel(actions, run, _dependencies(actions), workers=1)
    assert failed.value.address == "a"
    assert run.started == ["a"]  # b waited on a; c came after a in the only worker


def test_an_unexpected_error_names_its_action() -> None:
    from executor.apply import _Broken

    actions = [action("a"), action("b")]
    run = Recorder(fail="b", error=KeyError)
    with pytest.raises(_Broken) as broken:
        _in_parallel(actions, run, _dependencies(actions), workers=2)
    assert broken.value.action["address"] == "b" and isinstance(broken.value.error, KeyError)
