"""The QueueConsumer: reads its share of the queue topics and feeds tasks to the Executor.

It holds at most ``max_in_flight`` messages between poll and settlement, and commits a
partition's offset only up to the first message whose RUNNING write is not yet settled,
so a crash re-delivers every task that was not claimed. Malformed messages go to the
dead-letter topic with the reason, and the consumer keeps running.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable

import ray
from pydantic import ValidationError
from ray.exceptions import RayActorError

from raylane import registry
from raylane.actors.channel import ChannelClosed, Link, or_by_ray
from raylane.actors.common import settle_collector
from raylane.actors.handover import hand_over
from raylane.actors.keepers import Keepers
from raylane.actors.metrics import ConsumerMetrics
from raylane.errors import InvalidSignature, RaylaneError, ServiceUnavailable, UnknownTaskName
from raylane.models import TaskMessage
from raylane.protocol import ActorConfig, HandOff, HandOffResult
from raylane.queue import Consumed, QueueReader, topics_of
from raylane.retrying import backoff_s
from raylane.states import TaskState

log = logging.getLogger("raylane.queue_consumer")

_HAND_OFF_TRIES = 5
_DEAD_LETTER_TRIES = 12  # about a minute of a DLQ write failing
_UNKNOWN_NAME_GRACE_S = 20.0
_EXECUTOR_DOWN_TRIES = 120  # about ten minutes of an Executor that does not come back
_REPORT_EVERY_S = 5.0
_PAUSES_EVERY_S = 1.0
_PREPARED_AT_ONCE_S = 0.05  # a message not ready by then is handed over apart from its batch
_URGENT_ROOM = 32  # messages a consumer takes past its full window when a higher priority waits
# How long the next poll waits for a hand-over to send its batch to the executor. A poll run
# beside the send shares the interpreter with it and held it back by about 2 ms a message.
_SEND_FIRST_S = 0.05
_CONNECT_EVERY_S = 5.0  # how often a consumer without a hand-over socket tries to connect to one
# How often settled offsets are committed. A commit is a Kafka request for the consumer and the
# broker both: made after every hand-over, it was a third of Kafka's requests for tasks submitted
# one at a time. A crash re-delivers at most this much more; the claims of tasks already claimed
# are refused, and they do not run again.
_COMMIT_EVERY_S = 0.25


def _key(item: Consumed) -> tuple[str, int, int]:
    return item.topic, item.partition, item.offset


class _PartitionProgress:
    """Offsets of one partition: which are settled, and how far it is safe to commit."""

    def __init__(self) -> None:
        self.open: dict[int, bool] = {}  # offset -> settled
        self.committable: int | None = None

    def add(self, offset: int) -> None:
        self.open.setdefault(offset, False)

    def settle(self, offset: int) -> None:
        if offset in self.open:
            self.open[offset] = True
        for off in sorted(self.open):
            if not self.open[off]:
                break
            del self.open[off]
            self.committable = off + 1


class QueueConsumer:
    """Reads partitions of every queue topic (its share when several run) and hands their tasks over."""

    def __init__(self, config: ActorConfig, index: int = 0, executor: str | None = None):
        self.config = config
        self.index = index
        self._members = config.consumer_count()  # readers sharing the partitions; grows with the deployment
        self._reader_members = self._members  # the count the reader was opened with, or last told
        # Consumers are spread over the executors; each hands its tasks to one (``executor``, by
        # default the one beside consumer ``index`` when the deployment was made).
        self._executor = ray.get_actor(executor or config.executor_for(index), namespace=config.namespace)
        self._keepers = Keepers(config.namespace, config.keepers)
        self._producer = config.queue()
        self._reader: QueueReader | None = None
        self._store = config.store()
        self._signer = config.signer()
        self._progress: dict[tuple[str, int], _PartitionProgress] = {}
        self._committed: dict[tuple[str, int], int] = {}
        self._commit_at = 0.0  # when offsets were last committed (monotonic)
        self._in_flight: set[asyncio.Task] = set()
        self._held: set[tuple[str, int, int]] = set()  # messages polled and not yet settled
        # Held messages whose task has no definition yet: up to a window's worth of them do not
        # count against the window, so that they cannot keep every other queue's tasks unread.
        self._parked: set[tuple[str, int, int]] = set()
        self._known_names: set[str] = set()
        # One look for each task name not yet known, shared by all its messages; and the names
        # found missing after a whole grace, with when and why, whose messages are set aside at once.
        self._looking: dict[str, asyncio.Future] = {}
        self._missing: dict[str, tuple[float, UnknownTaskName]] = {}
        self._loop_task: asyncio.Task | None = None
        self._paused_topics: set[str] = set()
        self._pauses_task: asyncio.Task | None = None
        self._pauses_read = asyncio.Event()  # set once the paused queues were read from the store
        # Raised by every pause or resume told directly; a reload from the store that began before
        # one is dropped, since the store may have answered from before that change.
        self._pause_generation = 0
        self.metrics = ConsumerMetrics(index)
        self._reported = 0.0
        self.stats = {
            "consumed": 0,
            "dead_lettered": 0,
            "started": 0,
            "skipped": 0,
            "errors": 0,
            "commits": 0,
            "handed_by_socket": 0,
        }
        # The executor of this node is handed batches by its socket (see raylane.actors.handover).
        self._link = Link(
            lambda: self._executor.local_channel.remote(),
            ray.get_runtime_context().get_node_id(),
            f"the executor of consumer {index}",
            _CONNECT_EVERY_S,
        )
        settle_collector()

    async def ensure_running(self, members: int | None = None) -> bool:
        """Start the poll loop if it is not running (idempotent); True when it runs. With ``members``,
        read as one of that many consumers from now on (a node joined, and with it a consumer)."""
        if members is not None:
            self._members = members
            # Compared with the reader's own count: a reader opened while the count changed has the old one.
            if self._reader is not None and self._reader_members != members:
                # What was settled is committed first: the partitions that move are read by
                # their new consumer from their committed offsets.
                await self._commit(at_once=True)
                await asyncio.to_thread(self._reader.resize, members)
                self._reader_members = members
        if self._pauses_task is None or self._pauses_task.done():
            self._pauses_task = asyncio.create_task(self._read_pauses())
        if self._loop_task is None or self._loop_task.done():
            self._loop_task = asyncio.create_task(self._run())
        return True

    async def _run(self) -> None:
        # Nothing is handed over before the paused queues are known: a paused queue stays held
        # across a restart of its consumer.
        await self._pauses_read.wait()
        while True:
            try:
                if self._reader is None:
                    await asyncio.to_thread(self._open_reader)
                await self._step()
            except asyncio.CancelledError:
                raise
            except RaylaneError as e:
                self.stats["errors"] += 1
                log.warning("consumer %d: %s; retrying", self.index, e)
                await asyncio.sleep(backoff_s(3, cap_s=1.0))
            except Exception:
                self.stats["errors"] += 1
                log.exception("consumer %d: unexpected error; retrying", self.index)
                await asyncio.sleep(backoff_s(3, cap_s=1.0))

    async def _step(self) -> None:
        self._link.client()  # connects at start, and again after the executor restarted, say
        window = self.config.max_in_flight
        room = window - len(self._held) + min(len(self._parked), window)
        if room <= 0 and self._reader is not None and await asyncio.to_thread(self._reader.urgent):
            # The window is full of lower priorities and a higher one waits unread: take it anyway
            # (the reader lets the lower ones wait meanwhile), so it need not wait for a whole batch.
            room = _URGENT_ROOM
        if room <= 0:
            # Every held message belongs to a hand-over under way: ``_hand_over`` ends only once
            # each of its messages is settled.
            await asyncio.wait(self._in_flight, timeout=0.1, return_when=asyncio.FIRST_COMPLETED)
        else:
            items = await asyncio.to_thread(self._poll, room, 0.1 if self._in_flight else 0.5)
            read_at = time.time()
            if items:
                self.stats["consumed"] += len(items)
                for item in items:
                    self._progress.setdefault((item.topic, item.partition), _PartitionProgress()).add(item.offset)
                    self._held.add(_key(item))
                sent = asyncio.Event()
                task = asyncio.create_task(self._hand_over(items, read_at, sent))
                self._in_flight.add(task)
                task.add_done_callback(self._in_flight.discard)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(sent.wait(), _SEND_FIRST_S)
            elif self._in_flight:
                await asyncio.wait(self._in_flight, timeout=0.05, return_when=asyncio.FIRST_COMPLETED)
        await self._commit()
        if time.monotonic() - self._reported >= _REPORT_EVERY_S:
            self._reported = time.monotonic()
            self.metrics.held(len(self._held))
            self.metrics.lag(await self.partitions())

    async def pause_changed(self, queue: str, paused: bool) -> None:
        """Take a pause or resume of ``queue`` at once (the request handler tells every consumer
        before ``pause`` returns): a message produced after that is never handed over while the
        queue stays paused. The store is still read every second, for changes made elsewhere."""
        topics = set(topics_of(self.config.topic_prefix, queue))
        self._pause_generation += 1
        self._paused_topics = self._paused_topics | topics if paused else self._paused_topics - topics

    async def _read_pauses(self) -> None:
        """Every second, the paused queues from the store (pauses and resumes made elsewhere). It
        runs beside the poll loop, so no poll waits for a search of the store."""
        while True:
            generation = self._pause_generation
            try:
                paused = await asyncio.to_thread(self._store.paused_queues)
            except Exception as e:  # the store is away: keep the set as it is
                log.warning("consumer %d: reading the paused queues failed: %r", self.index, e)
            else:
                if generation == self._pause_generation:
                    self._paused_topics = {t for q in paused for t in topics_of(self.config.topic_prefix, q)}
                    self._pauses_read.set()
            await asyncio.sleep(_PAUSES_EVERY_S)

    def _poll(self, max_records: int, timeout_s: float) -> list[Consumed]:
        reader = self._open_reader()
        items = reader.poll(max_records, timeout_s)
        # Applied after every poll, with the set as it is now: a refreshed assignment may bring
        # partitions of a paused queue, and a pause may have been told while the poll waited.
        return reader.hold(self._paused_topics, items)

    def _open_reader(self) -> QueueReader:
        if self._reader is None:
            self._reader_members = self._members
            self._reader = self.config.reader(self.index, self._reader_members)
        return self._reader

    async def _commit(self, at_once: bool = False) -> None:
        """Commit the offsets settled since the last commit, at most every ``_COMMIT_EVERY_S``
        unless ``at_once``."""
        if not at_once and time.monotonic() - self._commit_at < _COMMIT_EVERY_S:
            return
        offsets = {
            tp: p.committable
            for tp, p in self._progress.items()
            if p.committable is not None and self._committed.get(tp) != p.committable
        }
        if offsets:
            self._commit_at = time.monotonic()
            gone = await asyncio.to_thread(self._open_reader().commit, offsets)
            for tp in gone:  # its topic was deleted: nothing of it is left to commit
                self._progress.pop(tp, None)
                self._committed.pop(tp, None)
            self._committed.update((tp, o) for tp, o in offsets.items() if tp not in gone)
            self.stats["commits"] += 1

    def _parse(self, item: Consumed) -> TaskMessage:
        if item.value is None:
            raise ValueError("empty message")
        try:
            msg = TaskMessage.model_validate_json(item.value)
        except ValidationError as e:
            problems = "; ".join(
                f"{'.'.join(map(str, err['loc'])) or 'message'}: {err['msg']}" for err in e.errors()[:5]
            )
            raise ValueError(f"not a valid task message: {problems}") from e
        return msg

    def _check_name(self, name: str) -> None:
        if name in self._known_names:
            return
        try:
            registry.load(name)
        except UnknownTaskName:
            # Ray forgets definitions when it restarts; the store keeps a signed copy of each published
            # one. Anyone who can write the store could plant a pickle there, so nothing kept is
            # unpickled unless the cluster's own signature over it holds.
            kept = self._store.load_definition(name)
            if kept is None:
                raise
            digest, blob, signature = kept
            if not self._signer.definition_ok(name, digest, blob, signature):
                raise InvalidSignature(
                    f"the kept definition of task {name!r} is not signed with this cluster's "
                    f"secret (or its digest does not match its pickle); it was not loaded"
                ) from None
            registry.restore(name, digest, blob)
            registry.load(name)
        self._known_names.add(name)

    async def _prepare(self, item: Consumed) -> TaskMessage | None:
        """The message's task, or None once it is dead-lettered: at once if malformed or not signed
        by this cluster (before anything is looked up for it: a forged message costs one HMAC,
        never a store read or a wait), or if its task's kept definition is not signed; if its task
        name is unknown to Ray and to the store's kept definitions, after ``_UNKNOWN_NAME_GRACE_S``
        (a driver may be about to publish it; see ``_definition_of``); after ``_HAND_OFF_TRIES``
        failures of another kind (say, a task definition that cannot be loaded)."""
        try:
            msg = self._parse(item)
        except ValueError as e:
            await self._dead_letter(item, str(e))
            return None
        if not self._signer.message_ok(item.value or b"", item.signature):
            # Not this task's failure either: a forged message says nothing about the task it names.
            await self._dead_letter(
                item,
                "the message is not signed with this cluster's secret "
                f"({'no signature' if item.signature is None else 'bad signature'}); "
                "only raylane may enqueue tasks",
            )
            return None
        attempt = 0
        while True:
            attempt += 1
            try:
                if msg.name not in self._known_names:
                    await self._definition_of(msg.name, _key(item))
                return msg
            except InvalidSignature as e:
                await self._dead_letter(item, str(e), msg, error_type="InvalidSignature")
                return None
            except UnknownTaskName as e:
                await self._dead_letter(item, str(e), msg)
                return None
            except Exception as e:
                self.stats["errors"] += 1
                log.warning(
                    "reading %s[%d]@%d failed (try %d): %r", item.topic, item.partition, item.offset, attempt, e
                )
                if attempt >= _HAND_OFF_TRIES:
                    await self._dead_letter(item, f"reading the message failed {attempt} times: {e!r}", msg)
                    return None
            await asyncio.sleep(backoff_s(attempt, base_s=0.2, cap_s=5.0))

    async def _definition_of(self, name: str, key: tuple[str, int, int]) -> None:
        """Return once task ``name`` is defined here; raise ``UnknownTaskName`` if it was not within
        ``_UNKNOWN_NAME_GRACE_S``. Every message of one name waits on one look (in a thread: it may
        read the store), and meanwhile does not count against the window. A name found missing
        after a whole grace stays so for another grace: its messages read then are not waited for
        again, one by one."""
        now = time.monotonic()
        missing = self._missing.get(name)
        if missing is not None and now - missing[0] < _UNKNOWN_NAME_GRACE_S:
            raise missing[1]
        look = self._looking.get(name)
        if look is None:
            look = self._looking[name] = asyncio.ensure_future(self._look_for(name))
        self._parked.add(key)
        try:
            await asyncio.shield(look)  # one message's hand-over ending early must not end the look
        finally:
            self._parked.discard(key)

    async def _look_for(self, name: str) -> None:
        first_try = time.monotonic()
        try:
            attempt = 0
            while True:
                attempt += 1
                try:
                    await asyncio.to_thread(self._check_name, name)
                    return
                except UnknownTaskName as e:
                    if attempt == 1:
                        # Its tasks wait meanwhile: a long wait here shows as a late start.
                        log.warning(
                            "consumer %d: no definition of task %r yet; waiting up to %gs for it",
                            self.index,
                            name,
                            _UNKNOWN_NAME_GRACE_S,
                        )
                    if time.monotonic() - first_try >= _UNKNOWN_NAME_GRACE_S:
                        now = time.monotonic()
                        self._missing = {n: m for n, m in self._missing.items() if now - m[0] < _UNKNOWN_NAME_GRACE_S}
                        self._missing[name] = (now, e)
                        raise
                await asyncio.sleep(backoff_s(attempt, base_s=0.2, cap_s=5.0))
        finally:
            # Whatever ended it (found, missing, or an error each message retries on its own), the
            # next message of this name that is not yet known looks again.
            self._looking.pop(name, None)

    async def _hand_over(self, items: list[Consumed], read_at: float, sent: asyncio.Event) -> None:
        """Hand ``items`` over until each is settled (claimed, skipped or dead-lettered). An error
        nothing below expects is retried with the messages still held: given up on, they would
        stay in the window with no one to settle them, and once the window is full the consumer
        would read nothing more. A message handed twice is claimed at most once. ``sent`` is set
        once the batch went to the executor, or the hand-over ended."""
        try:
            await self._handle_batch_until_settled(items, read_at, sent)
        finally:
            sent.set()

    async def _handle_batch_until_settled(self, items: list[Consumed], read_at: float, sent: asyncio.Event) -> None:
        attempt = 0
        while True:
            try:
                await self._handle_batch(items, read_at, sent)
            except Exception:
                self.stats["errors"] += 1
                log.exception("consumer %d: handing over %d message(s) failed; retrying", self.index, len(items))
            items = [item for item in items if _key(item) in self._held]
            if not items:
                return
            attempt += 1
            await asyncio.sleep(backoff_s(attempt, base_s=0.2, cap_s=5.0))

    async def _handle_batch(self, items: list[Consumed], read_at: float, sent: asyncio.Event) -> None:
        """Prepare ``items`` and hand their tasks over. Nearly every message is ready at once; one
        that waits (for its task's definition, up to ``_UNKNOWN_NAME_GRACE_S``, or after an error)
        follows on its own once ready, so it never holds back the rest of its batch. Every
        preparation ends before an error of one is raised: a retry must not prepare (and perhaps
        dead-letter) a message whose first preparation still runs."""
        preparing = [asyncio.ensure_future(self._prepare(item)) for item in items]
        # The ones ready by then go over in one call; each later one as soon as it is ready.
        await asyncio.wait(preparing, timeout=_PREPARED_AT_ONCE_S)
        await self._start_prepared(list(zip(items, preparing, strict=True)), read_at, sent)

    async def _start_prepared(
        self, prepared: list[tuple[Consumed, asyncio.Task[TaskMessage | None]]], read_at: float, sent: asyncio.Event
    ) -> None:
        """Hand over the messages of ``prepared`` that are not dead-lettered, those ready together
        at once as they become ready (a message whose task's definition is still being looked up
        must not wait for one that waits out a whole grace for its own); once every hand-over
        ended, raise the first error of a preparation or a hand-over, if any (those messages are
        still held)."""
        pending = {p for _, p in prepared}
        handing: list[asyncio.Future] = []
        errors: list[BaseException] = []
        while pending:
            done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            good = []
            for item, p in prepared:
                if p not in done:
                    continue
                if (e := p.exception()) is not None:
                    errors.append(e)
                elif (msg := p.result()) is not None:
                    good.append((item, msg))
            if good:
                handing.append(asyncio.ensure_future(self._hand_to_executor(good, read_at, sent)))
        for outcome in await asyncio.gather(*handing, return_exceptions=True):
            if isinstance(outcome, BaseException):
                errors.append(outcome)
        if errors:
            raise errors[0]

    async def _hand_to_executor(
        self, good: list[tuple[Consumed, TaskMessage]], read_at: float, sent: asyncio.Event
    ) -> None:
        # The messages as read: parsing the JSON again costs the executor less than a dump and a validation.
        payload = [item.value or b"" for item, _ in good]  # each one parsed: never None
        poison_tries = 0
        outage = 0
        while True:
            try:
                answer = self._send(payload, read_at)
                sent.set()
                outcomes = await answer
                for (item, msg), (outcome, reason) in zip(good, outcomes, strict=True):
                    if outcome is HandOff.REFUSED:
                        # The store will never accept this task's record: retrying cannot help.
                        await self._dead_letter(item, f"the store refused the record of task {msg.id}: {reason}", msg)
                        continue
                    self.stats[outcome.value] += 1
                    self._settle(item)
                return
            except (ServiceUnavailable, RayActorError) as e:
                # Kafka or OpenSearch is down, or the Executor is restarting (its node may have died):
                # hold these messages (which stops further polling once the in-flight window is
                # full) and try again; an outage is not the tasks' fault. An Executor that keeps
                # dying on these messages, though, is: they are dead-lettered after a long while.
                self.stats["errors"] += 1
                outage += 1
                if outage == 1 or outage % 20 == 0:
                    log.warning("waiting for the store/queue/executor to return (%d tasks held): %r", len(good), e)
                if isinstance(e, RayActorError) and outage >= _EXECUTOR_DOWN_TRIES:
                    break
                await asyncio.sleep(backoff_s(outage, base_s=0.2, cap_s=5.0))
            except Exception as e:
                self.stats["errors"] += 1
                poison_tries += 1
                log.warning("handing %d task(s) to the executor failed (try %d): %r", len(good), poison_tries, e)
                if poison_tries >= _HAND_OFF_TRIES:
                    break
                await asyncio.sleep(backoff_s(poison_tries, base_s=0.2, cap_s=5.0))
        for item, msg in good:
            await self._dead_letter(
                item, f"the executor failed to take task {msg.id} {max(poison_tries, outage)} times", msg
            )

    def _send(self, payload: list[bytes], read_at: float) -> Awaitable[list[HandOffResult]]:
        """Send a batch to the executor now, by its socket when connected (see
        raylane.actors.handover), else by an actor call; the answer is to be awaited. A batch
        whose connection ends before its answer is handed over again by the actor call (a
        message handed twice is claimed at most once)."""
        by_ray = lambda: self._executor.start_many.remote(payload, read_at)  # noqa: E731
        client = self._link.client()
        if client is not None:
            with contextlib.suppress(ChannelClosed):
                answer = hand_over(client, payload, read_at)
                self.stats["handed_by_socket"] += len(payload)
                return or_by_ray(answer, by_ray)
        return by_ray()

    async def _dead_letter(
        self, item: Consumed, reason: str, msg: TaskMessage | None = None, error_type: str = "DeadLettered"
    ) -> None:
        """Move a message to the DLQ with the reason; with ``msg``, its task, if still PENDING, is then
        recorded FAILED (``error_type``), so that no accepted task is left waiting forever."""
        log.warning("dead-lettering %s[%d]@%d: %s", item.topic, item.partition, item.offset, reason)
        for attempt in range(1, _DEAD_LETTER_TRIES + 1):
            try:
                await asyncio.to_thread(self._producer.dead_letter, item, reason)
                break
            except RaylaneError as e:
                # Bounded: a message that cannot even be set aside must not hold its partition forever.
                # Its task's record still says why it ended.
                log.warning("dead-letter write failed (try %d of %d): %s", attempt, _DEAD_LETTER_TRIES, e)
                if attempt < _DEAD_LETTER_TRIES:
                    await asyncio.sleep(backoff_s(attempt, base_s=0.2, cap_s=5.0))
        else:
            log.error("giving up on dead-lettering %s[%d]@%d: %s", item.topic, item.partition, item.offset, reason)
        if msg is not None:
            await self._fail_pending(msg, reason, error_type)
        self.stats["dead_lettered"] += 1
        self.metrics.dead_lettered(item.topic)
        self._settle(item)

    async def _fail_pending(self, msg: TaskMessage, reason: str, error_type: str) -> None:
        for attempt in range(1, 6):
            try:
                stored = await asyncio.to_thread(self._store.get, msg.id)
                if stored is None or stored.level != 1 or stored.attempt != msg.attempt:
                    return  # not submitted through raylane, or already past this message
                failed = stored.moved_to(
                    TaskState.FAILED, error_type=error_type, error=f"moved to {self.config.dlq_topic}: {reason}"
                )
                await self._keepers.write([failed])
                return
            except Exception as e:  # the store or the keeper is briefly away
                log.warning("recording dead-lettered task %s as FAILED failed (try %d): %r", msg.id, attempt, e)
                await asyncio.sleep(backoff_s(attempt, base_s=0.25, cap_s=5.0))

    def _settle(self, item: Consumed) -> None:
        key = _key(item)
        if key not in self._held:  # settled before, by an earlier try of its hand-over
            return
        self._held.discard(key)
        progress = self._progress.get((item.topic, item.partition))
        if progress is not None:  # None: the partition's topic was deleted meanwhile
            progress.settle(item.offset)

    async def get_stats(self) -> dict:
        """Counters: consumed, dead-lettered, started, skipped, errors, commits, handed by socket;
        and now: messages in flight, and how batches go to the executor (``hand_over``: "socket"
        or "actor call")."""
        way = "socket" if self._link.connected else "actor call"
        return dict(self.stats, in_flight=len(self._held), hand_over=way)

    async def partitions(self) -> list[dict]:
        """The partitions this consumer reads: topic, partition, position, end, lag, paused."""
        if self._reader is None:
            return []
        states = await asyncio.to_thread(self._reader.partitions)
        return [
            dict(topic=p.topic, partition=p.partition, position=p.position, end=p.end, lag=p.lag, paused=p.paused)
            for p in states
        ]
