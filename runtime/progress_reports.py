"""``raylane.progress``: a running task says how far it has got.

The worker running the task sends what it says to the task's executor, at most every
``SEND_EVERY_S`` (the latest value wins; a thread sends one said in between); the executor
keeps it in the store beside the record, in one bulk write for all its tasks every
``FLUSH_EVERY_S``. A read of the task by id (``get``, the CLI, HTTP, the web page) shows it
while the attempt runs. The record itself is never written for it, so versions are as ever.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from raylane.errors import InvalidTaskInput
from raylane.limits import check_text

SEND_EVERY_S = 0.2  # a worker sends one task's progress at most this often
FLUSH_EVERY_S = 0.3  # an executor writes what its tasks said at most this often
MESSAGE_CHARS = 200


class _Reporter:
    """The progress of the attempt running in this worker, and its way to the executor."""

    def __init__(self, executor: Any, task_id: str, attempt: int):
        self.executor, self.task_id, self.attempt = executor, task_id, attempt
        self.sent_at = 0.0
        self.unsent: tuple[float, str | None, float] | None = None

    def say(self, fraction: float, message: str | None) -> None:
        with _lock:
            now = time.monotonic()
            if now - self.sent_at >= SEND_EVERY_S:
                self._send(fraction, message, time.time(), now)
            else:
                self.unsent = (fraction, message, time.time())
                _wake.set()

    def flush(self) -> None:
        """Send what was said since the last send (called with ``_lock`` held)."""
        if self.unsent is not None and time.monotonic() - self.sent_at >= SEND_EVERY_S:
            self._send(*self.unsent, time.monotonic())

    def _send(self, fraction: float, message: str | None, at: float, now: float) -> None:
        self.executor.progress.remote(self.task_id, self.attempt, fraction, message, at)
        self.sent_at, self.unsent = now, None


_lock = threading.Lock()
_wake = threading.Event()
_current: _Reporter | None = None
_sender: threading.Thread | None = None


def _send_unsent() -> None:
    while True:
        _wake.wait()
        time.sleep(SEND_EVERY_S)
        with _lock:
            _wake.clear()
            if _current is not None:
                _current.flush()
                if _current.unsent is not None:
                    _wake.set()


def running(executor: Any, task_id: str, attempt: int) -> None:
    """Called by the worker as an attempt starts: ``progress`` reports for it from now."""
    global _current, _sender
    with _lock:
        _current = _Reporter(executor, task_id, attempt)
        if _sender is None:
            _sender = threading.Thread(target=_send_unsent, daemon=True, name="raylane-progress")
            _sender.start()


def ended() -> None:
    """Called by the worker as the attempt ends (what is unsent is of no use any more)."""
    global _current
    with _lock:
        _current = None


def progress(fraction: float, message: str | None = None) -> bool:
    """Say, from inside a running task, how far it has got: ``fraction`` from 0.0 to 1.0, and
    optionally a short ``message`` (up to 200 characters are kept). It shows in ``get()``, the
    CLI, the HTTP API and the web page within about a second. Cheap to call often: at most five
    reports a second leave the worker. Outside a task (a function called directly) it does
    nothing and returns False; inside one it returns True. A fraction that is not a number
    from 0 to 1 raises ``InvalidTaskInput``."""
    if isinstance(fraction, bool) or not isinstance(fraction, int | float) or not 0.0 <= fraction <= 1.0:
        raise InvalidTaskInput(f"progress must be a number from 0.0 to 1.0, got {fraction!r}")  # NaN too
    if message is not None and not isinstance(message, str):
        raise InvalidTaskInput(f"a progress message must be text, got {type(message).__name__}")
    try:
        check_text(message or "")
    except ValueError as e:
        raise InvalidTaskInput(f"a progress message must be text: {e}") from None
    reporter = _current
    if reporter is None:
        return False
    reporter.say(float(fraction), message[:MESSAGE_CHARS] if message else None)
    return True
