"""Interrupts that reach a task blocked in a system call.

Ray's ``ray.cancel(force=False)``, and ``_thread.interrupt_main`` that a group's worker uses,
only simulate SIGINT: they set Python's flag for it, which the main thread acts on between two
bytecodes. A task blocked in ``time.sleep``, a socket read or a lock wait sees the flag only when
that call returns, and a real SIGINT cannot wake it either: Ray starts its workers with SIGINT
blocked. Such a task ran on past its cancel or timeout until its executor killed the worker
process, which Ray then started again (about a second of CPU on a small node) while the task's
slot stayed taken for the grace in between.

``wakeable()`` wraps a task's call in the main thread. Python writes every signal it takes,
simulated ones included, to the file given to ``signal.set_wakeup_fd``; a relay thread reads that
file and, on SIGINT while a task runs, sends the main thread ``WAKE_SIGNAL`` (SIGURG), whose
handler does nothing. The blocked call returns with EINTR, Python runs the handler of the SIGINT
set pending, and ``KeyboardInterrupt`` is raised in the task as the interrupt meant. The wake-up
signal alone changes nothing: a call it wakes is resumed (PEP 475), so one that lands just after
the task ended is harmless.

A process that inherited SIGINT ignored (a node started in the background by a script) gets
Python's usual handler for it at the first task, since Python drops a simulated interrupt while
the signal is ignored.

Where the process already has a wake-up file or a handler for SIGURG of its own (the task's code
set one), the relay stands aside and the executor's kill after its grace remains the fallback.

A ``KeyboardInterrupt`` is also what a task's own code may raise. The relay's SIGINT handler
counts the interrupts it turns into one, so ``interrupt_mark`` and ``raised_by_code`` tell the two
apart: an interrupt that no signal made is the task's own error, recorded as any other.
"""

from __future__ import annotations

import os
import signal
import threading

WAKE_SIGNAL = signal.SIGURG  # ignored by default, so a stray one ends nothing


def _ignore(signum: int, frame: object) -> None:
    """The wake-up signal's handler: it exists only so that the signal interrupts a blocked call."""


class _Relay:
    """The read end of the wake-up file and the thread that turns a SIGINT into a wake-up."""

    def __init__(self) -> None:
        self.read_fd, self.write_fd = os.pipe()
        os.set_blocking(self.write_fd, False)  # Python requires it of a wake-up file
        self.main = threading.main_thread().ident
        self.tasks = 0  # tasks running in the main thread (calls may nest: a task calling another)
        self.woken = 0  # wake-ups sent, for tests and stats
        self.interrupts = 0  # SIGINTs (real or simulated) turned into KeyboardInterrupt by _on_interrupt
        threading.Thread(target=self._relay, daemon=True, name="raylane-interrupt-relay").start()

    def _relay(self) -> None:
        while True:
            try:
                taken = os.read(self.read_fd, 512)
            except OSError:  # the file is gone: this process is ending
                return
            # Only SIGINT is for the task; the wake-up signal itself, SIGALRM of a soft time limit
            # and any other signal Python takes are written to the same file.
            if signal.SIGINT in taken and self.tasks and signal.getsignal(WAKE_SIGNAL) is _ignore:
                self.woken += 1
                signal.pthread_kill(self.main, WAKE_SIGNAL)  # type: ignore[arg-type]

    def claim(self) -> bool:
        """Make this the process's wake-up file again if nothing else took its place (an event
        loop that installed and removed its own leaves none). False if another one is set. (A
        handler of the task's own for the wake-up signal is checked by the relay, when it matters.)"""
        try:
            previous = signal.set_wakeup_fd(self.write_fd, warn_on_full_buffer=False)
        except (ValueError, OSError):  # the task's code closed the file: no wake-ups in this process
            return False
        if previous not in (-1, self.write_fd):
            signal.set_wakeup_fd(previous)  # someone else's: leave it
            return False
        return True


_relay: _Relay | None = None


def _armed() -> _Relay | None:
    """The relay of this process, set up on first use; None off the main thread, or where the
    process's signals are taken by code of its own."""
    global _relay
    if threading.current_thread() is not threading.main_thread():
        return None
    if _relay is None:
        if signal.getsignal(WAKE_SIGNAL) not in (signal.SIG_DFL, signal.SIG_IGN, None):
            return None
        # A shell without job control starts its background commands with SIGINT ignored, and a
        # Ray node started that way passes it on to every worker. Python drops a simulated
        # interrupt while SIGINT is ignored, so each cancel and timeout would end in a kill. The
        # handler is Python's usual one, as Ray expects; Ray's workers block the real signal.
        # Ours counts each interrupt before raising it as Python's would (see ``raised_by_code``).
        if signal.getsignal(signal.SIGINT) in (signal.SIG_IGN, signal.SIG_DFL, signal.default_int_handler):
            signal.signal(signal.SIGINT, _on_interrupt)
        signal.signal(WAKE_SIGNAL, _ignore)
        _relay = _Relay()
    return _relay if _relay.claim() else None


def _on_interrupt(signum: int, frame: object) -> None:
    """SIGINT's handler in a task's process: Python's usual one, counted."""
    if _relay is not None:
        _relay.interrupts += 1
    raise KeyboardInterrupt


def interrupt_mark() -> int | None:
    """The count of interrupts this process has taken, to pass to ``raised_by_code`` later;
    None where SIGINT's handler is not ours (nothing is known of where an interrupt came from)."""
    if _relay is None or signal.getsignal(signal.SIGINT) is not _on_interrupt:
        return None
    return _relay.interrupts


def raised_by_code(mark: int | None) -> bool:
    """Whether a ``KeyboardInterrupt`` caught since ``interrupt_mark`` returned ``mark`` was raised by
    the task's code rather than by an interrupt (a cancel, a timeout, a group's stop): no SIGINT
    came in between. Unknown counts as an interrupt, as Ray takes every one."""
    return mark is not None and interrupt_mark() == mark


class wakeable:  # lower case: it reads as a function, ``with wakeable():``
    """Run the body (a task's call, in the main thread) so that an interrupt meant for it ends a
    blocking call it is in, instead of waiting for that call to return. A class rather than a
    generator: it wraps every task, and costs a few microseconds less so."""

    __slots__ = ("_relay",)

    def __enter__(self) -> int | None:
        """Arm the relay; the ``interrupt_mark`` of the body's start."""
        self._relay = _armed()
        if self._relay is not None:
            self._relay.tasks += 1
        return interrupt_mark()

    def __exit__(self, *exc: object) -> None:
        if self._relay is not None:
            self._relay.tasks -= 1


def wake_ups() -> int:
    """How many blocked calls of tasks this process has woken for an interrupt."""
    return _relay.woken if _relay is not None else 0
