"""The stop signals: handled in the main thread, blocked in every worker thread.

The kernel delivers a process-directed signal to any thread that does not block it. If a
worker gets SIGINT, CPython only notes it, and the main thread runs its handler when it next
wakes, which, blocked in a wait, may be never. A worker started here blocks the stop
signals, so they always reach the main thread and interrupt its wait at once: the main
thread can sleep until something happens instead of polling (polling wakes a sleeping
domain's process several times a second, for nothing)."""

from __future__ import annotations

import contextlib
import os
import select
import signal
import threading
import time
from collections.abc import Callable, Iterator
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
            self._pending = None  # check() outside this block has nothing to raise

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

    def _raise_pending(self, again: bool = False) -> None:
        if self._pending is not None and (again or not self._raised) and not self._deferring:
            self._raised = True
            raise SignalStop(self._pending)

    def check(self) -> None:
        """Raise SignalStop if a stop signal came, even if its first SignalStop was lost.

        The handler raises in whatever Python code the main thread runs when the signal is
        handled. If that is a finalizer (a weakref callback or __del__, run by the garbage
        collector at any allocation: Unicorn's uc_close), the exception is printed as
        "ignored" and dropped, and a wait that follows would sleep forever. The main
        thread's long waits call this first."""
        self._raise_pending(again=True)

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


class Wake:
    """A threading.Event (set/clear/is_set/wait) for a vCPU that sleeps, whose wait can also
    watch file descriptors (`sources`: fd → what to do when it is readable, run on the
    waiting thread). A blocked vCPU then takes an event from another domain's process
    itself (its doorbell eventfd), instead of another thread of its process being woken
    first to kick it. Without sources it is a plain Event wait.

    While a thread waits on sources, `set` also writes an eventfd the wait watches. The
    Event is the truth; each step is one bytecode-atomic store or test under the GIL, so
    either the waiter sees the Event set or the setter sees the waiter."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self._fd = -1  # made the first time a wait watches sources
        self._polling = False

    def set(self) -> None:
        self._event.set()
        if self._polling:
            with contextlib.suppress(OSError):  # closed: nobody waits any more
                os.eventfd_write(self._fd, 1)

    def clear(self) -> None:
        self._event.clear()

    def is_set(self) -> bool:
        return self._event.is_set()

    def wait(self, timeout: float | None = None,
             sources: dict[int, Callable[[], None]] | None = None) -> bool:
        """Until set or `timeout` seconds; whether it was set."""
        if not sources:
            return self._event.wait(timeout)
        if self._fd < 0:
            self._fd = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
        deadline = None if timeout is None else time.monotonic() + timeout
        poller = select.poll()
        for fd in (self._fd, *sources):
            poller.register(fd, select.POLLIN)
        self._polling = True
        try:
            while not self._event.is_set():
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    break
                # poll counts milliseconds: round up, never wake early
                for fd, what in poller.poll(None if left is None else int(left * 1000) + 1):
                    if what & select.POLLNVAL:  # closed under us: the domain is going
                        return self._event.is_set()
                    if fd == self._fd:
                        with contextlib.suppress(OSError):
                            os.eventfd_read(fd)
                    elif fd in sources:
                        sources[fd]()
        finally:
            self._polling = False
        return self._event.is_set()

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
