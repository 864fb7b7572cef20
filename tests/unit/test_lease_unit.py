"""An executor's own lease (OwnLease) against a store whose heartbeats fail or hang."""

from __future__ import annotations

import asyncio
import threading
import time
import types

import pytest

from raylane.actors import recovery
from raylane.actors.fencing import LEASE_TTL_S
from raylane.actors.recovery import OwnLease
from raylane.errors import StoreUnavailable


class _Beats:
    """A store's heartbeat side: records each beat written; ``hang`` holds the calls of those beats
    until ``release`` is set; ``fail`` makes the next calls fail."""

    def __init__(self, hang: set[int] | None = None, fail: int = 0) -> None:
        self.written: list[int] = []
        self.hang, self.fail = hang or set(), fail
        self.release = threading.Event()

    def heartbeat(self, owner: str, beat: int) -> None:
        if self.fail:
            self.fail -= 1
            raise StoreUnavailable("store away")
        if beat in self.hang:
            self.release.wait(10)
        self.written.append(beat)


def test_beats_are_numbered_from_one_until_one_is_written():
    store = _Beats(fail=2)
    lease = OwnLease(store, "e/1")  # type: ignore[arg-type]

    async def main() -> None:
        for _ in range(2):
            with pytest.raises(StoreUnavailable):
                await lease.renew()
        await lease.renew()
        await lease.renew()

    asyncio.run(main())
    assert store.written == [1, 2]  # the first beat that lands is 1: the store shows it at once


def test_a_hanging_heartbeat_does_not_hold_back_the_next(monkeypatch):
    monkeypatch.setattr(recovery, "HEARTBEAT_EVERY_S", 0.05)
    store = _Beats(hang={2})
    lease = OwnLease(store, "e/1")  # type: ignore[arg-type]

    async def main() -> float:
        await lease.renew()  # beat 1, as an executor starts
        loop = asyncio.create_task(lease.heartbeat_loop())
        try:
            deadline = time.monotonic() + 5
            while 3 not in store.written and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
            return lease.until
        finally:
            loop.cancel()
            store.release.set()

    until = asyncio.run(main())
    assert 3 in store.written and 2 not in store.written[: store.written.index(3)]
    assert until > time.monotonic() + LEASE_TTL_S - 2  # renewed by beat 3 while beat 2 hung


def test_a_lease_says_how_long_it_has_held_without_a_break(monkeypatch):
    """``held_for`` counts from the renewal that ended the last break (or the first one), and is
    0 while the lease does not hold: a worker fence relies on it to know no lapse went unseen."""
    now = [100.0]
    monkeypatch.setattr(recovery, "time", types.SimpleNamespace(monotonic=lambda: now[0]))
    lease = OwnLease(_Beats(), "e/1")  # type: ignore[arg-type]

    def renew_at(t: float) -> None:
        now[0] = t
        asyncio.run(lease.renew())

    assert lease.held_for() == 0.0
    renew_at(100.0)
    now[0] = 105.0
    assert lease.held_for() == 5.0
    renew_at(100.0 + LEASE_TTL_S - 1)  # renewed in time: no break
    now[0] = 100.0 + LEASE_TTL_S + 2
    assert lease.held_for() == LEASE_TTL_S + 2
    now[0] = 100.0 + 3 * LEASE_TTL_S  # past the lease's end: it does not hold
    assert lease.held_for() == 0.0
    renew_at(now[0])
    now[0] += 1.0
    assert lease.held_for() == 1.0  # it holds again, from the renewal after the break
