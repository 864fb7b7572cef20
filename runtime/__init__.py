"""raylane: asynchronous tasks on Ray, queued in Kafka, tracked in OpenSearch.

import raylane

@raylane.task(name="demo.add", timeout=5)
def add(a: int, b: int) -> int:
    return a + b

raylane.init()
h = add.submit(1, 2)
h.result(timeout=30)  # 3
"""

from raylane.client import (
    TaskHandle,
    aas_completed,
    aget,
    as_completed,
    await_all,
    cancel,
    cancel_matching,
    counts,
    dead_letters,
    get,
    init,
    is_initialized,
    pause,
    pause_schedule,
    purge,
    refresh,
    replay,
    replay_dead_letters,
    resume,
    resume_schedule,
    retry,
    schedule,
    schedules,
    search,
    search_page,
    shutdown,
    submit,
    unschedule,
    wait,
    wait_all,
)
from raylane.config import Settings
from raylane.errors import (
    ConfigError,
    InvalidTaskInput,
    NotInitialized,
    PayloadTooLarge,
    QueueUnavailable,
    RaylaneError,
    ScheduleNotFound,
    ServiceUnavailable,
    SoftTimeLimitExceeded,
    StackError,
    StoreUnavailable,
    TaskAlreadyFinished,
    TaskCancelled,
    TaskFailed,
    TaskNotFinished,
    TaskNotFound,
    TaskTimedOut,
    UnknownTaskName,
    WaitTimeout,
)
from raylane.models import TaskRecord
from raylane.progress_reports import progress
from raylane.schedules import Schedule
from raylane.states import TaskState
from raylane.tasks import TaskFunction, task

__all__ = [
    "ConfigError",
    "InvalidTaskInput",
    "NotInitialized",
    "PayloadTooLarge",
    "QueueUnavailable",
    "RaylaneError",
    "Schedule",
    "ScheduleNotFound",
    "ServiceUnavailable",
    "Settings",
    "SoftTimeLimitExceeded",
    "StackError",
    "StoreUnavailable",
    "TaskAlreadyFinished",
    "TaskCancelled",
    "TaskFailed",
    "TaskFunction",
    "TaskHandle",
    "TaskNotFinished",
    "TaskNotFound",
    "TaskRecord",
    "TaskState",
    "TaskTimedOut",
    "UnknownTaskName",
    "WaitTimeout",
    "aas_completed",
    "aget",
    "as_completed",
    "await_all",
    "cancel",
    "cancel_matching",
    "counts",
    "dead_letters",
    "get",
    "init",
    "is_initialized",
    "pause",
    "pause_schedule",
    "progress",
    "purge",
    "refresh",
    "replay",
    "replay_dead_letters",
    "resume",
    "resume_schedule",
    "retry",
    "schedule",
    "schedules",
    "search",
    "search_page",
    "shutdown",
    "submit",
    "task",
    "unschedule",
    "wait",
    "wait_all",
]
