"""Embedded mode: build and run one domain in this process, no daemon (DESIGN.md)."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

from pyxen.backends.console import ConsoleBackend
from pyxen.domain.backend import MachineBackend
from pyxen.domain.builder import Module, build_domain
from pyxen.domain.domain import Domain, DomainConfig, Outcome, Result
from pyxen.hv import hypercall_table
from pyxen.threads import STOP_SIGNALS

from . import accel
from .console_service import attach_console
from .terminal import ConsoleInput

# pyxen run's exit status for each way a domain can end (documented in README.md).
EXIT_CODES = {
    Outcome.POWEROFF: 0,
    Outcome.ERROR: 1,
    Outcome.CRASH: 3,
    Outcome.REBOOT: 4,
    Outcome.SUSPEND: 5,
    Outcome.WATCHDOG: 6,
    Outcome.TIMEOUT: 7,
    Outcome.SOFT_RESET: 8,
}


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


@dataclass
class RunResult:
    result: Result
    console: bytes

    @property
    def exit_code(self) -> int:
        return EXIT_CODES[self.result.outcome]


def stdout_console(data: bytes) -> None:
    """The guest's console on stdout. If the reader goes away (`pyxen run … | head`) the
    guest keeps running, as a Xen guest does when its console is detached: one line on
    stderr, and the rest of its output is discarded."""
    global _stdout_closed
    if _stdout_closed:
        return
    try:
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()
    except BrokenPipeError:
        _stdout_closed = True
        # Python would otherwise fail again flushing stdout at exit.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        print("pyxen: stdout is closed: the guest's console output is discarded",
              file=sys.stderr)


_stdout_closed = False


def run_image(
    image: str | Path,
    config: DomainConfig,
    modules: list[Module] | None = None,
    timeout: float | None = None,
    console: Callable[[bytes], None] | None = None,
    machine_factory: Callable[[list[int]], MachineBackend] | None = None,
    prepare: Callable[[Domain], None] | None = None,
    console_input: ConsoleInput | None = None,
) -> RunResult:
    """Boot `image` and wait until it stops (or `timeout` seconds pass).

    Raises ImageError (bad image/config) before anything runs; returns the outcome and the
    console output otherwise. Every domain gets a PV console ring, as xl gives one, whose
    output joins the console; `console_input` feeds its input side. `prepare` may adjust
    the built domain (its console attached) before it starts. Without a `machine_factory`
    the backend is chosen as by `--accel auto`.
    """
    if machine_factory is None:
        machine_factory = accel.machine_factory("auto", image)[0]
    captured = bytearray()

    def sink(data: bytes) -> None:
        captured.extend(data)
        if console:
            console(data)

    domain = build_domain(image, config, machine_factory, hypercall_table(), sink, modules)
    ring: ConsoleBackend | None = None
    try:
        ring = attach_console(domain)
        if prepare:
            prepare(domain)
        if console_input is not None:
            console_input.start(ring)
        domain.start()
        result = domain.wait(timeout)  # where a stop signal usually lands (SignalStop)
    finally:
        with stop_signals.deferred():
            if console_input is not None:
                console_input.stop()
            if ring is not None:
                ring.close()  # what the guest left in its ring is printed
            domain.close()
    return RunResult(result, bytes(captured))
