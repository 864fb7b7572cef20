"""The gate of a task launched beside its claim, with Ray's calls replaced: the function starts
only if the claim was accepted and the task's keeper has not ended the attempt since."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from raylane.actors import worker
from raylane.actors.worker import ENDED_UNSTARTED, GATE_LATE_S, NOT_CLAIMED, _pass_gate


class _Keeper:
    """A keeper that ends the attempt (a cancel written) once asked ``open_for`` times."""

    def __init__(self, open_for: int):
        self.open_for, self.asked = open_for, 0
        self.attempt_open = self  # ``keeper.attempt_open.remote(task_id, attempt)``

    def remote(self, task_id: str, attempt: int) -> tuple[str, bool]:
        self.asked += 1
        return ("open", self.asked <= self.open_for)


@pytest.fixture
def fake_ray(monkeypatch):
    """``ray.get`` of a claim's answer takes ``clock.answer_s``; of a keeper's answer, no time."""
    clock = SimpleNamespace(now=0.0, answer_s=0.01)

    def get(ref, timeout=None):
        if isinstance(ref, tuple) and ref[0] == "open":
            return ref[1]
        clock.now += clock.answer_s
        return ref

    monkeypatch.setattr(worker.ray, "get", get)
    monkeypatch.setattr(worker.time, "monotonic", lambda: clock.now)
    return clock


def _gate(accepted: bool, keeper: _Keeper | None) -> tuple[list, int, object]:
    return ([[SimpleNamespace(accepted=accepted)]], 0, keeper)


TASK = (object(), "t" * 32, 0)


def test_an_accepted_claim_of_an_open_attempt_starts_after_one_question(fake_ray):
    keeper = _Keeper(open_for=1)
    assert _pass_gate(_gate(True, keeper), TASK) is None
    assert keeper.asked == 1  # asked beside the answer, not after it


def test_a_claim_not_accepted_never_starts(fake_ray):
    assert _pass_gate(_gate(False, _Keeper(open_for=1)), TASK) == NOT_CLAIMED


def test_an_attempt_its_keeper_ended_before_the_worker_came_never_starts(fake_ray):
    # The worker waited for a CPU while its executor was frozen; the cancel was written meanwhile.
    assert _pass_gate(_gate(True, _Keeper(open_for=0)), TASK) == ENDED_UNSTARTED


def test_an_answer_heard_late_is_checked_again(fake_ray):
    # Open when first asked; the cancel is written while the answer takes GATE_LATE_S to come.
    fake_ray.answer_s = GATE_LATE_S
    keeper = _Keeper(open_for=1)
    assert _pass_gate(_gate(True, keeper), TASK) == ENDED_UNSTARTED
    assert keeper.asked == 2


def test_a_gate_without_a_keeper_follows_the_claim_alone(fake_ray):
    assert _pass_gate(_gate(True, None), TASK) is None
