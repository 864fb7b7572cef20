"""The scheduler: fires the ticks of schedules (see ``raylane.schedules``).

Any number of schedulers may run over the same schedules; the store lets one task per tick
through (the tick's task id is fixed, and only its first record is accepted), so none is a
leader and none needs to know of the others. Each StatusKeeper runs one over its share of the
schedules; a keeper that dies is restarted by Ray, and its scheduler takes up from the
schedules' ``last_tick`` in the store.

A scheduler passes over its schedules four times a second but reads them from the store only
every ``REREAD_EVERY_S``, or at its next pass once told that they changed (``changed``: the
RequestHandler tells every keeper when it saves, pauses or deletes one). Between reads it keeps
the cursors it moved itself; a tick another scheduler fired meets a conflict, as ever.
"""

from __future__ import annotations

import asyncio
import logging
import zlib
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime

from raylane.models import TaskRecord, WriteOutcome, utcnow
from raylane.schedules import MISSED_AFTER_S, Schedule
from raylane.signing import Signer
from raylane.store import StatusStore

log = logging.getLogger("raylane.scheduler")

Write = Callable[[Sequence[TaskRecord]], Awaitable[list[WriteOutcome]]]
PASS_EVERY_S = 0.25
# A schedule changed in the store by anything that does not tell the keepers (another
# deployment's handler, an operator's script) is seen within this long.
REREAD_EVERY_S = 5.0


def shard_of(schedule: Schedule, shards: int) -> int:
    """Which of ``shards`` schedulers looks after ``schedule`` when they split the work."""
    return zlib.crc32(schedule.key.encode()) % shards


class Scheduler:
    """Fires due ticks of the schedules in ``store`` through ``write`` (versioned first records:
    a tick another scheduler fired already comes back as a conflict, and is not fired again).

    With ``shard=(i, n)`` it looks after the schedules of shard ``i`` of ``n`` only. A schedule
    whose task message does not bear the cluster's seal (one planted in the store, or changed
    there) is never fired."""

    def __init__(
        self,
        store: StatusStore,
        write: Write,
        signer: Signer,
        shard: tuple[int, int] = (0, 1),
        missed_after_s: float = MISSED_AFTER_S,
        clock: Callable[[], datetime] = utcnow,
        reread_every_s: float = REREAD_EVERY_S,
    ):
        self.store = store
        self.write = write
        self.signer = signer
        self.shard = shard
        self.missed_after_s = missed_after_s
        self.clock = clock
        self.reread_every_s = reread_every_s
        self.stats = {"passes": 0, "reads": 0, "fired": 0, "already_fired": 0, "errors": 0, "forged": 0}
        self._schedules: dict[str, Schedule] = {}  # this shard's, by key, as last read and moved on
        self._read_at: datetime | None = None  # None: read at the next pass
        self._forged: set[str] = set()  # keys of the schedules without a seal at the last read
        self._never: set[str] = set()  # keys of the schedules no date matches, at the last read

    def changed(self) -> None:
        """The schedules in the store changed: read them again at the next pass."""
        self._read_at = None

    async def run_once(self) -> int:
        """One pass over the schedules: fire what is due; returns the ticks this pass fired."""
        now = self.clock()
        if self._read_at is None or (now - self._read_at).total_seconds() >= self.reread_every_s:
            # Marked read before the read: a change told meanwhile marks it for the next pass.
            self._read_at = now
            try:
                found = await asyncio.to_thread(self.store.list_schedules)
            except BaseException:
                self._read_at = None
                raise
            index, shards = self.shard
            mine = [s for s in found if shards == 1 or shard_of(s, shards) == index]
            forged = {s.key for s in mine if s.message is None or not self.signer.seal_ok(s.message)}
            if forged - self._forged:  # told once per schedule, not at every read
                self.stats["forged"] += len(forged - self._forged)
                log.warning(
                    "%d schedule(s) do not bear this cluster's seal; not fired: %s (if they are yours and were saved"
                    " before seals existed, `raylane migrate --seal-schedules` seals them)",
                    len(forged - self._forged),
                    min(forged - self._forged),
                )
            self._forged = forged
            # A rule no date matches (30 February), saved before such rules were refused, has no
            # tick to fire: left out, so it is not tried (and told of) at every pass.
            never = {s.key for s in mine if s.key not in forged and s.never_due()}
            for key in sorted(never - self._never):
                log.warning("schedule %s matches no date; it never fires", key)
            self._never = never
            self._schedules = {s.key: s for s in mine if s.key not in forged and s.key not in never}
            self.stats["reads"] += 1
        fired = 0
        for s in list(self._schedules.values()):
            try:
                fired += await self._fire(s)
            except Exception as e:  # one schedule's trouble (or an outage) must not stop the others
                self.stats["errors"] += 1
                log.warning("firing schedule %s failed: %r; will retry", s.key, e)
        self.stats["passes"] += 1
        return fired

    async def _fire(self, s: Schedule) -> int:
        now = self.clock()
        ticks, newest = s.due(now, self.missed_after_s)
        fired = 0
        if ticks:
            outcomes = await self.write([self.signer.sealed(s.tick_record(t, now)) for t in ticks])
            failed = [o for o in outcomes if not o.accepted and o.reason != "conflict"]
            if failed:
                # The ticks stay due: last_tick does not move, and the next pass fires them again
                # (those that did get through meet a conflict then).
                raise RuntimeError(f"{len(failed)} tick record(s) not written: {failed[0].reason}")
            fired = sum(o.accepted for o in outcomes)
            self.stats["fired"] += fired
            self.stats["already_fired"] += len(outcomes) - fired
        if newest is not None:
            await asyncio.to_thread(self.store.advance_schedule, s.key, newest)
            if self._schedules.get(s.key) is s:  # not read again meanwhile
                self._schedules[s.key] = s.model_copy(update={"last_tick": newest})
        return fired

    async def loop(self, every_s: float = PASS_EVERY_S) -> None:
        """Pass over the schedules every ``every_s`` seconds, for ever."""
        while True:
            try:
                await self.run_once()
            except Exception as e:  # the store is away: try again on the next pass
                self.stats["errors"] += 1
                log.warning("scheduler pass failed: %r", e)
            await asyncio.sleep(every_s)
