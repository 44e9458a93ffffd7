"""Embedded mode: build and run one domain in this process, no daemon (DESIGN.md)."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from pyxen.backends.console import ConsoleBackend
from pyxen.domain.backend import MachineBackend
from pyxen.domain.builder import Module, build_domain
from pyxen.domain.domain import Domain, DomainConfig, Outcome, Result
from pyxen.hv import hypercall_table
from pyxen.threads import SignalStop, stop_signals  # noqa: F401 - part of this module's API

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
