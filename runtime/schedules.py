"""Schedules: a task submitted on every tick of a cron expression or a fixed interval.

Exactly one task per tick, however many schedulers run and however often they restart:
the task id of a tick is derived from the schedule and the tick's time, and the tick's
first record is a versioned write of version 1. The store accepts the first such write
and rejects every later one, so a second scheduler (or the same one after a restart)
that fires the same tick only meets a conflict. No scheduler is a leader.

Missed ticks (every scheduler was down, or the schedule was created in the past) follow
the schedule's ``catch_up`` policy. A tick is *missed* when no scheduler fired it within
``MISSED_AFTER_S`` of its time:

- ``"none"`` (default): missed ticks are skipped; the schedule goes on with the next one;
- ``"last"``: the most recent missed tick runs once, the others are skipped;
- ``"all"``: every missed tick runs, oldest first (at most ``MAX_CATCH_UP`` per pass of a
  scheduler, so a long outage is caught up over several passes, never in one burst).

Ticks that fall while a schedule is paused are skipped, whatever the policy.
``every`` ticks fall on multiples of the interval since the Unix epoch (``every=300``: on
the five-minute marks); cron ticks follow the schedule's ``timezone``, daylight saving included.
"""

from __future__ import annotations

import hashlib
import math
from datetime import UTC, datetime, timedelta
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, field_validator, model_validator

from raylane.models import (
    MAX_DELAY_S,
    NAME_PATTERN,
    QUEUE_PATTERN,
    SCHEDULE_ID_PATTERN,
    TENANT_PATTERN,
    TaskMessage,
    TaskRecord,
    utcnow,
)
from raylane.states import TaskState, version_of

MISSED_AFTER_S = 5.0  # a tick not fired this long after its time counts as missed
MAX_CATCH_UP = 1000  # missed ticks one pass of a scheduler fires under catch_up="all"
MIN_EVERY_S = 1.0


class Schedule(BaseModel):
    """A task run on every tick of ``cron`` or of ``every_s`` seconds."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(pattern=SCHEDULE_ID_PATTERN, description="the schedule's name, unique per tenant")
    task: str = Field(pattern=NAME_PATTERN, description="registered task name")
    args: list[Any] = Field(default_factory=list)
    kwargs: dict[str, Any] = Field(default_factory=dict)
    cron: str | None = Field(None, max_length=200, description='five-field cron expression, e.g. "*/5 * * * *"')
    every_s: float | None = Field(None, ge=MIN_EVERY_S, le=MAX_DELAY_S, description="seconds between ticks")
    timezone: str = Field("UTC", max_length=64, description="IANA time zone of the cron expression")
    catch_up: Literal["none", "last", "all"] = "none"
    queue: str | None = Field(None, pattern=QUEUE_PATTERN)
    timeout_s: float | None = Field(None, gt=0)
    tags: list[str] | None = None
    paused: bool = False
    tenant: str | None = Field(None, pattern=TENANT_PATTERN)
    created_at: AwareDatetime | None = None
    last_tick: AwareDatetime | None = Field(None, description="the newest tick handled (fired or skipped)")
    # The message of a tick, as the RequestHandler resolved it from the task's definition when the
    # schedule was saved (queue, timeout, retries, resources): schedulers need no task code.
    message: TaskMessage | None = None

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, v: str) -> str:
        try:
            ZoneInfo(v)
        except (ZoneInfoNotFoundError, ValueError) as e:
            raise ValueError(f"unknown time zone {v!r}") from e
        return v

    @field_validator("cron")
    @classmethod
    def _valid_cron(cls, v: str | None) -> str | None:
        if v is None:
            return v
        from croniter import croniter

        if len(v.split()) != 5 or not croniter.is_valid(v):
            raise ValueError(f"{v!r} is not a five-field cron expression (minute hour day month weekday)")
        return v

    @model_validator(mode="after")
    def _one_rule(self) -> Schedule:
        if (self.cron is None) == (self.every_s is None):
            raise ValueError("give exactly one of cron and every")
        return self

    @property
    def key(self) -> str:
        """The schedule's key in the store: its id within its tenant."""
        return f"{self.tenant or '-'}:{self.id}"

    def next_tick(self, after: datetime) -> datetime:
        """The first tick strictly after ``after``."""
        if self.every_s is not None:
            k = math.floor(after.timestamp() / self.every_s + 1e-9) + 1
            return datetime.fromtimestamp(k * self.every_s, UTC)
        from croniter import croniter

        zone = ZoneInfo(self.timezone)
        nxt = croniter(self.cron, after.astimezone(zone)).get_next(datetime)
        return nxt.astimezone(UTC)

    def last_tick_by(self, now: datetime) -> datetime:
        """The newest tick at or before ``now``."""
        if self.every_s is not None:
            k = math.floor(now.timestamp() / self.every_s + 1e-9)
            return datetime.fromtimestamp(k * self.every_s, UTC)
        from croniter import croniter

        zone = ZoneInfo(self.timezone)
        # get_prev is strict: start a microsecond later so a tick exactly at ``now`` counts.
        prev = croniter(self.cron, (now + timedelta(microseconds=1)).astimezone(zone)).get_prev(datetime)
        return prev.astimezone(UTC)

    def due(self, now: datetime, missed_after_s: float = MISSED_AFTER_S) -> tuple[list[datetime], datetime | None]:
        """The ticks to fire at ``now`` under the catch-up policy, oldest first, and the new
        ``last_tick`` (None: unchanged). See the module's docstring for the policy."""
        start = self.last_tick or self.created_at or now
        newest = self.last_tick_by(now)
        if newest <= start:
            return [], None
        if self.paused:
            return [], newest
        ticks: list[datetime] = []
        if self.catch_up == "all":
            t = self.next_tick(start)
            while t <= now and len(ticks) < MAX_CATCH_UP:
                ticks.append(t)
                t = self.next_tick(t)
            return ticks, ticks[-1]
        on_time_from = now - timedelta(seconds=missed_after_s)
        t = self.next_tick(max(start, on_time_from - timedelta(microseconds=1)))
        while t <= now:
            ticks.append(t)
            t = self.next_tick(t)
        if not ticks and self.catch_up == "last":
            ticks = [newest]
        return ticks, newest

    def tick_task_id(self, tick: datetime) -> str:
        """The task id of ``tick``: the same for every scheduler, so the store keeps only one."""
        ms = round(tick.timestamp() * 1000)
        return hashlib.sha256(f"raylane-schedule\0{self.key}\0{ms}".encode()).hexdigest()[:32]

    def tick_record(self, tick: datetime, now: datetime) -> TaskRecord:
        """The first record of ``tick``'s task: SCHEDULED at the tick, so its keeper sends its
        message (at once when the tick has come)."""
        if self.message is None:
            raise ValueError(f"schedule {self.id!r} has no resolved task message")
        msg = self.message.model_copy(
            update={
                "id": self.tick_task_id(tick),
                "created_at": now,
                "not_before": tick,
                "attempt": 0,
                "schedule_id": self.id,
            }
        )
        rec = TaskRecord.pending(msg)
        return rec.model_copy(update={"state": TaskState.SCHEDULED, "version": version_of(TaskState.SCHEDULED, 0)})

    def never_due(self) -> bool:
        """Whether the rule matches no date at all (a cron of 30 February): such a schedule never fires."""
        from croniter import CroniterBadDateError

        try:
            self.next_tick(utcnow())
        except CroniterBadDateError:
            return True
        return False

    def upcoming(self) -> datetime | None:
        """When the next tick falls (None while paused, or if it never falls)."""
        from croniter import CroniterBadDateError

        if self.paused:
            return None
        now = utcnow()
        try:
            return self.next_tick(max(self.last_tick or now, now))
        except CroniterBadDateError:  # a rule no date matches (see ``never_due``)
            return None
