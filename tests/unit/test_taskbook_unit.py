"""A keeper's book of its tasks, without services: waits on tasks it saw written need no read of
the store, and what it does not know, or no longer holds, is named for the caller to read."""

from __future__ import annotations

import asyncio

from raylane.actors.taskbook import TaskBook, Waiter
from raylane.models import PackedRecord, TaskRecord
from raylane.states import TaskState

from contracts import pending


def _ended(rec: TaskRecord, state: TaskState = TaskState.SUCCEEDED, **kw) -> PackedRecord:
    return PackedRecord.of(rec.moved_to(TaskState.RUNNING).moved_to(state, **kw))


def _watch(book: TaskBook, ids: list[str], tenant: str | None = None, unknown_first: bool = True):
    """``book.watch`` from a waiter of its own (a waiter belongs to an event loop)."""

    async def go():
        waiter = Waiter(gather_s=0.0, expected=len(ids))
        return waiter, book.watch(ids, waiter, tenant, unknown_first)

    return asyncio.run(go())


def test_a_task_written_here_is_waited_for_without_the_store_and_its_end_wakes_the_wait():
    book = TaskBook()
    rec = pending()
    book.opened(PackedRecord.of(rec))
    waiter, seen = _watch(book, [rec.id])
    assert seen is None  # open and known: nothing to look up, the wait is held here
    assert book.waited_for() == 1
    end = _ended(rec)
    assert book.ended(end) == [waiter]
    assert book.waited_for() == 0


def test_a_task_that_ended_here_comes_back_at_once_with_its_final_record():
    book = TaskBook()
    rec = pending()
    book.opened(PackedRecord.of(rec))
    end = _ended(rec, TaskState.FAILED, error="boom")
    book.ended(end)
    _, seen = _watch(book, [rec.id])
    assert seen is not None and seen.records == [end] and seen.unread == [] and seen.unknown == []
    assert seen.records[0].unpack().error == "boom"


def test_tasks_not_known_here_are_named_for_the_store_unless_the_caller_knows_them():
    book = TaskBook()
    known, unknown = pending(), pending()
    book.opened(PackedRecord.of(known))
    _, seen = _watch(book, [known.id, unknown.id])
    assert seen is not None and seen.unknown == [unknown.id] and seen.records == []
    assert book.waited_for() == 0  # nothing is held when the caller is to look first
    # Once the caller found it open in the store, it waits for it here as for the rest.
    _, seen = _watch(book, [known.id, unknown.id], unknown_first=False)
    assert seen is None and book.waited_for() == 2


def test_another_tenants_task_is_unknown_to_a_tenants_wait():
    book = TaskBook()
    rec = pending(tenant="acme")
    book.opened(PackedRecord.of(rec))
    assert _watch(book, [rec.id], tenant="acme")[1] is None
    _, seen = _watch(book, [rec.id], tenant="other")
    assert seen is not None and seen.unknown == [rec.id]


def test_a_new_attempt_opens_an_ended_task_again_and_an_older_write_does_not():
    book = TaskBook()
    rec = pending()
    first_end = rec.moved_to(TaskState.RUNNING).moved_to(TaskState.FAILED)
    book.ended(PackedRecord.of(first_end))
    book.opened(PackedRecord.of(rec.moved_to(TaskState.RUNNING)))  # of the attempt that ended
    assert book.ended_as(rec.id) == (0, TaskState.FAILED)
    nxt, _ = first_end.retried(0.0)
    book.opened(PackedRecord.of(nxt))
    assert book.ended_as(rec.id) is None
    assert _watch(book, [rec.id])[1] is None  # a wait on it is for the new attempt's end


def test_final_records_are_kept_within_their_byte_budget_and_ends_beyond_it_by_id():
    first, second = pending(), pending()
    one, two = _ended(first), _ended(second)
    book = TaskBook(finals_bytes=len(two.doc) + len(one.doc) // 2)
    book.ended(one)
    book.ended(two)
    assert book.sizes()["finals"] == 1 and book.sizes()["finals_bytes"] == len(two.doc)
    _, seen = _watch(book, [first.id, second.id])
    assert seen is not None and seen.records == [two] and seen.unread == [first.id]


def test_the_oldest_tasks_are_forgotten_beyond_the_counts_kept():
    book = TaskBook(ended_kept=2, open_kept=2)
    ends = [_ended(pending()) for _ in range(3)]
    for end in ends:
        book.ended(end)
    opened = [pending() for _ in range(3)]
    for rec in opened:
        book.opened(PackedRecord.of(rec))
    assert book.ended_as(ends[0].id) is None and book.ended_as(ends[2].id) is not None
    assert book.sizes() == {"open": 2, "ended": 2, "finals": 2, "finals_bytes": sum(len(e.doc) for e in ends[1:])}
    _, seen = _watch(book, [opened[0].id, ends[0].id])
    assert seen is not None and seen.unknown == [opened[0].id, ends[0].id]
