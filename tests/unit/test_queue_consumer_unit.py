"""Unit tier (no services): the QueueConsumer's window over the in-memory queue and store."""

from __future__ import annotations

import asyncio
import time
import uuid

import ray

from raylane.actors import queue_consumer
from raylane.actors.queue_consumer import QueueConsumer
from raylane.backends import memory_broker
from raylane.errors import UnknownTaskName
from raylane.models import TaskMessage, new_task_id, utcnow
from raylane.protocol import HandOff
from raylane.queue import topic_of
from tests.memory_actors import NoMetrics, memory_config


def _consumer(monkeypatch, name: str, max_in_flight: int) -> QueueConsumer:
    monkeypatch.setattr(ray, "get_actor", lambda *args, **kwargs: object())
    config = memory_config(name, max_in_flight=max_in_flight, max_running=1)
    consumer = QueueConsumer(config, 0, executor="Executor")
    consumer.metrics = NoMetrics()  # type: ignore[assignment]
    return consumer


def _drive(consumer: QueueConsumer, body) -> None:
    """Run the consumer's loops while the coroutine function ``body`` runs, then stop them."""

    async def scenario() -> None:
        consumer._pauses_read.set()
        await consumer.ensure_running()
        try:
            await body()
        finally:
            for task in (consumer._loop_task, consumer._pauses_task):
                assert task is not None
                task.cancel()

    asyncio.run(scenario())


async def _until(condition, timeout_s: float) -> bool:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not condition():
        if asyncio.get_running_loop().time() > deadline:
            return False
        await asyncio.sleep(0.02)
    return True


def test_a_hand_over_that_fails_unexpectedly_is_retried_and_the_window_does_not_stay_full(monkeypatch):
    """A hand-over that raised what nothing expected used to leave its messages held with no one to
    settle them; with the window full, the consumer then read nothing more, for good."""
    name = f"consumer-{uuid.uuid4().hex}"
    consumer = _consumer(monkeypatch, name, max_in_flight=1)
    real_dead_letter = consumer._producer.dead_letter
    calls = []

    def dead_letter_failing_once(item, reason):
        calls.append(item.offset)
        if len(calls) == 1:
            raise RuntimeError("a failure no one planned for")
        real_dead_letter(item, reason)

    monkeypatch.setattr(consumer._producer, "dead_letter", dead_letter_failing_once)
    topic = consumer._producer.ensure_queue("default")
    assert topic == topic_of("raylane.tasks.", "default")
    broker = memory_broker(name)
    for n in range(3):  # not task messages: each is dead-lettered
        broker.append(topic, f"k{n}".encode(), b"not json", None)

    async def all_dead_lettered() -> None:
        done = await _until(lambda: len(consumer._producer.dead_letters(10)) == 3, timeout_s=10)
        assert done, f"dead letters: {consumer._producer.dead_letters(10)}; stats {await consumer.get_stats()}"
        assert await _until(lambda: broker.committed.get(("raylane-workers", topic, 0)) == 3, timeout_s=5)
        stats = await consumer.get_stats()
        assert stats["in_flight"] == 0 and stats["dead_lettered"] == 3

    _drive(consumer, all_dead_lettered)
    assert sorted(calls) == [0, 0, 1, 2]  # the first message was set aside on the second try


class _Executor:
    """Takes every task handed over, and notes which, in order."""

    def __init__(self, events: list):
        self.events = events
        self.start_many = self  # called as ``executor.start_many.remote(payload, read_at)``

    def remote(self, payload, read_at):
        async def started():
            self.events += [("handed", TaskMessage.model_validate_json(m).name) for m in payload]
            return [(HandOff.STARTED, None)] * len(payload)

        return started()


def test_a_message_waiting_for_its_definition_does_not_hold_back_the_rest_of_its_batch(monkeypatch):
    """A message whose task has no definition yet waits for one (up to a grace period). The
    messages read with it used to wait as long: after a keeper restart, a leftover task of a
    vanished definition released beside a due task delayed that task by the whole grace."""
    monkeypatch.setattr(queue_consumer, "_UNKNOWN_NAME_GRACE_S", 1.0)
    name = f"consumer-{uuid.uuid4().hex}"
    consumer = _consumer(monkeypatch, name, max_in_flight=8)
    events: list = []
    consumer._executor = _Executor(events)

    def check_name(task_name):
        if task_name == "unit.vanished":
            raise UnknownTaskName(task_name)

    monkeypatch.setattr(consumer, "_check_name", check_name)
    real_dead_letter = consumer._producer.dead_letter

    def dead_letter(item, reason):
        events.append(("dead-lettered", TaskMessage.model_validate_json(item.value).name))
        real_dead_letter(item, reason)

    monkeypatch.setattr(consumer._producer, "dead_letter", dead_letter)
    # One partition: both are read in one poll, the vanished one first.
    consumer._producer.produce_many(
        [
            TaskMessage(id=new_task_id(), name=n, queue="default", created_at=utcnow())
            for n in ("unit.vanished", "unit.known")
        ]
    )

    async def both_settled() -> None:
        assert await _until(lambda: len(events) == 2, timeout_s=10), events
        assert await _until(lambda: not consumer._held, timeout_s=5)

    _drive(consumer, both_settled)
    assert events == [("handed", "unit.known"), ("dead-lettered", "unit.vanished")]
    assert consumer.stats["consumed"] == 2 and consumer.stats["dead_lettered"] == 1


def _message(task_name: str) -> TaskMessage:
    return TaskMessage(id=new_task_id(), name=task_name, queue="default", created_at=utcnow())


def _looked_up(consumer: QueueConsumer, monkeypatch, defined: set[str]) -> list[str]:
    """Make ``consumer`` know the task names in ``defined`` (which may grow) and no others; the
    names it looked up, in order, each time it looked one up."""
    looked: list[str] = []

    def check_name(task_name: str) -> None:
        looked.append(task_name)
        if task_name not in defined:
            raise UnknownTaskName(task_name)

    monkeypatch.setattr(consumer, "_check_name", check_name)
    return looked


def test_an_unsigned_message_is_set_aside_at_once_and_nothing_is_looked_up_for_it(monkeypatch):
    """A forged message naming a task that has no definition used to wait out the whole grace for
    that definition (looking it up in the store again and again, and holding a place in the
    window all along) before it was dead-lettered as unsigned: a few hundred of them kept every
    queue's tasks unread for 20 s."""
    name = f"consumer-{uuid.uuid4().hex}"
    consumer = _consumer(monkeypatch, name, max_in_flight=8)
    looked = _looked_up(consumer, monkeypatch, defined=set())
    topic = consumer._producer.ensure_queue("default")
    memory_broker(name).append(topic, b"k", _message("unit.forged").model_dump_json().encode(), None)

    async def dead_lettered() -> None:
        assert await _until(lambda: consumer._producer.dead_letters(10), timeout_s=5), await consumer.get_stats()
        assert await _until(lambda: not consumer._held, timeout_s=5)

    _drive(consumer, dead_lettered)
    [letter] = consumer._producer.dead_letters(10)
    assert "not signed with this cluster's secret (no signature)" in letter["reason"], letter
    assert looked == []


def test_messages_waiting_for_a_definition_leave_the_window_to_other_tasks(monkeypatch):
    """Messages whose task has no definition yet used to fill the window while they waited for it
    (up to the 20 s grace), so that nothing more was read, of any queue. They now wait outside
    it, on one look for their name, not one each."""
    name = f"consumer-{uuid.uuid4().hex}"
    consumer = _consumer(monkeypatch, name, max_in_flight=4)
    events: list = []
    consumer._executor = _Executor(events)
    defined = {"unit.known"}
    looked = _looked_up(consumer, monkeypatch, defined)
    # One partition, read in order: six that wait, then one that can start.
    consumer._producer.produce_many([_message("unit.late") for _ in range(6)] + [_message("unit.known")])

    async def all_handed() -> None:
        assert await _until(lambda: ("handed", "unit.known") in events, timeout_s=5), (events, consumer.stats)
        defined.add("unit.late")  # its driver publishes it
        assert await _until(lambda: len(events) == 7, timeout_s=10), events
        assert await _until(lambda: not consumer._held, timeout_s=5)

    _drive(consumer, all_handed)
    assert events[0] == ("handed", "unit.known")
    assert events.count(("handed", "unit.late")) == 6
    assert looked.count("unit.late") < 6, looked


def test_a_name_found_missing_is_not_waited_for_again_at_once(monkeypatch):
    """Once a task name stayed unknown for a whole grace, a message of it read soon after is set
    aside at once: waiting again, message by message, would only hold each one as long again."""
    monkeypatch.setattr(queue_consumer, "_UNKNOWN_NAME_GRACE_S", 0.5)
    name = f"consumer-{uuid.uuid4().hex}"
    consumer = _consumer(monkeypatch, name, max_in_flight=8)
    looked = _looked_up(consumer, monkeypatch, defined=set())
    seen: list[int] = []

    async def both_dead_lettered() -> None:
        consumer._producer.produce_many([_message("unit.vanished")])
        assert await _until(lambda: len(consumer._producer.dead_letters(10)) == 1, timeout_s=5)
        seen.append(len(looked))
        consumer._producer.produce_many([_message("unit.vanished")])
        assert await _until(lambda: len(consumer._producer.dead_letters(10)) == 2, timeout_s=5)
        assert await _until(lambda: not consumer._held, timeout_s=5)

    _drive(consumer, both_dead_lettered)
    assert seen[0] >= 1 and len(looked) == seen[0], looked
    assert all("no task named 'unit.vanished'" in d["reason"] for d in consumer._producer.dead_letters(10))


def test_a_message_whose_definition_is_being_loaded_does_not_wait_for_one_waiting_a_whole_grace(monkeypatch):
    """The messages of a batch not ready at once were handed over together, once the last of them
    was: a task whose definition took a moment to load waited as long as a message of a task
    that has none (the whole grace). Each is now handed over as soon as it is ready."""
    monkeypatch.setattr(queue_consumer, "_UNKNOWN_NAME_GRACE_S", 30.0)
    name = f"consumer-{uuid.uuid4().hex}"
    consumer = _consumer(monkeypatch, name, max_in_flight=8)
    events: list = []
    consumer._executor = _Executor(events)

    def check_name(task_name: str) -> None:
        if task_name == "unit.vanished":
            raise UnknownTaskName(task_name)
        time.sleep(0.2)  # loading it from the store takes a moment

    monkeypatch.setattr(consumer, "_check_name", check_name)
    consumer._producer.produce_many([_message("unit.vanished"), _message("unit.loading")])

    async def handed() -> None:
        assert await _until(lambda: events, timeout_s=5), consumer.stats

    _drive(consumer, handed)
    assert events == [("handed", "unit.loading")]


def test_offsets_settled_one_at_a_time_share_commits(monkeypatch):
    """Each commit is a Kafka request for the consumer and the broker: tasks that come one at a
    time, each settled before the next is read, used to commit once each."""
    name = f"consumer-{uuid.uuid4().hex}"
    consumer = _consumer(monkeypatch, name, max_in_flight=4)
    topic = consumer._producer.ensure_queue("default")
    broker = memory_broker(name)
    n = 8

    async def one_at_a_time() -> None:
        for k in range(n):
            broker.append(topic, f"k{k}".encode(), b"not json", None)
            assert await _until(lambda k=k: len(consumer._producer.dead_letters(n)) == k + 1, timeout_s=10)
        assert await _until(lambda: broker.committed.get(("raylane-workers", topic, 0)) == n, timeout_s=5)
        commits = (await consumer.get_stats())["commits"]
        assert 1 <= commits < n / 2, f"{commits} commits for {n} messages settled one after another"

    _drive(consumer, one_at_a_time)
