"""The stop signals: handled in the main thread, blocked in every worker thread.

The kernel delivers a process-directed signal to any thread that does not block it. If a
worker gets SIGINT, CPython only notes it, and the main thread runs its handler when it next
wakes, which, blocked in a wait, may be never. A worker started here blocks the stop
signals, so they always reach the main thread and interrupt its wait at once: the main
thread can sleep until something happens instead of polling (polling wakes a sleeping
domain's process several times a second, for nothing)."""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from types import FrameType

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def start_worker(thread: threading.Thread) -> threading.Thread:
    """Start `thread` with the stop signals blocked in it (a new thread inherits its
    creator's signal mask); the caller's own mask is left as it was."""
    saved = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        thread.start()
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, saved)
    return thread


# A stop signal (STOP_SIGNALS) ends a foreground run as Ctrl-C does; the exit status is
# 128 + signum, as a shell reports for a command one killed (130 SIGINT, 143 SIGTERM, 129 SIGHUP).


class SignalStop(BaseException):
    """A stop signal arrived. Raised in the main thread like KeyboardInterrupt (and, like it,
    not an Exception), so every `finally` on the way out tears down what it built."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum

    @property
    def exit_status(self) -> int:
        return 128 + self.signum

    @property
    def message(self) -> str:
        if self.signum == signal.SIGINT:
            return "interrupted"
        return f"terminated by {signal.Signals(self.signum).name}"


class StopSignals:
    """SIGINT, SIGTERM and SIGHUP → SignalStop in the main thread, once.

    The first signal raises; later ones are ignored, so a second Ctrl-C cannot cut the
    teardown the first one started. Inside `deferred()` (teardown that runs anyway, e.g.
    after the guest powered off) a signal is held and raised when the block ends.
    """

    def __init__(self) -> None:
        self._pending: int | None = None
        self._raised = False
        self._deferring = 0
        self._ignored: set[int] = set()
        self._requested: int | None = None

    @contextlib.contextmanager
    def installed(self) -> Iterator[None]:
        """Handle the stop signals for the duration (main thread only; elsewhere a no-op)."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        self._pending, self._raised, self._requested = None, False, None
        # A signal ignored from the start (nohup, a shell's background job) stays ignored
        # when it comes from outside; the handler is there for request() only.
        self._ignored = {sig for sig in STOP_SIGNALS if signal.getsignal(sig) is signal.SIG_IGN}
        saved = {sig: signal.signal(sig, self._handle) for sig in STOP_SIGNALS}
        try:
            yield
        finally:
            for sig, handler in saved.items():
                signal.signal(sig, handler)

    def request(self, signum: int) -> None:
        """Stop as `signum` would (the console escape), even where it is ignored from
        outside: sent to the main thread itself, whose blocking wait it interrupts."""
        self._requested = signum
        signal.pthread_kill(threading.main_thread().ident or 0, signum)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if signum in self._ignored and signum != self._requested:
            return
        if self._pending is None:
            self._pending = signum
        self._raise_pending()

    def _raise_pending(self) -> None:
        if self._pending is not None and not self._raised and not self._deferring:
            self._raised = True
            raise SignalStop(self._pending)

    @contextlib.contextmanager
    def deferred(self) -> Iterator[None]:
        """A block a stop signal must not interrupt; it is raised after the block."""
        self._deferring += 1
        try:
            yield
        finally:
            self._deferring -= 1
        self._raise_pending()


stop_signals = StopSignals()  # signal handlers are per process: one instance
