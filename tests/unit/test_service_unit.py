"""Unit tier (no services): the raylane service's supervision rounds."""

from __future__ import annotations

from types import SimpleNamespace

from raylane.actors import service


class _Ref:
    def __init__(self, answers: bool):
        self.answers = answers


class _Actor:
    """An actor whose ``ensure_running`` calls answer, or (``stuck``) never do."""

    def __init__(self, stuck: bool = False):
        self.calls = 0
        self.ensure_running = SimpleNamespace(remote=self._call)
        self._stuck = stuck

    def _call(self, *args):
        self.calls += 1
        return _Ref(answers=not self._stuck)


def test_an_actor_that_does_not_answer_neither_delays_the_others_nor_gets_calls_piled_up(monkeypatch):
    waited = []

    def wait(refs, num_returns, timeout):
        waited.append(timeout)
        return [r for r in refs if r.answers], [r for r in refs if not r.answers]

    monkeypatch.setattr(service.ray, "wait", wait)
    monkeypatch.setattr(service.ray, "get", lambda ref: None)
    stuck, keeper, consumer = _Actor(stuck=True), _Actor(), _Actor()
    deployment = SimpleNamespace(loopers=[stuck, keeper], consumers=[consumer])
    unanswered: dict = {}
    for _ in range(3):
        assert service._ensure_running(deployment, unanswered, wait_s=2.0)
    # Each round calls every answering actor again, and awaits all calls together, once.
    assert (keeper.calls, consumer.calls) == (3, 3)
    assert waited == [2.0, 2.0, 2.0]
    # The unanswered call is awaited again, not sent again, until it is given up on.
    assert stuck.calls == 1 and list(unanswered) == [id(stuck)]
    ref, sent_at = unanswered[id(stuck)]
    unanswered[id(stuck)] = (ref, sent_at - service._CALL_TIMEOUT_S - 1)
    service._ensure_running(deployment, unanswered, wait_s=2.0)
    assert stuck.calls == 2 and unanswered[id(stuck)][0] is not ref


def test_a_round_where_no_actor_answers_says_so(monkeypatch):
    monkeypatch.setattr(service.ray, "wait", lambda refs, num_returns, timeout: ([], refs))
    deployment = SimpleNamespace(loopers=[_Actor(stuck=True)], consumers=[])
    assert not service._ensure_running(deployment, {}, wait_s=0.1)
