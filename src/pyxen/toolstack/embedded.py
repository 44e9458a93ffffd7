"""Embedded mode: build and run one domain in this process, no daemon (DESIGN.md)."""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from pyxen.domain.backend import MachineBackend
from pyxen.domain.builder import Module, build_domain
from pyxen.domain.domain import Domain, DomainConfig, Outcome, Result
from pyxen.hv import hypercall_table

from . import accel

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
    sys.stdout.buffer.write(data)
    sys.stdout.buffer.flush()


def run_image(
    image: str | Path,
    config: DomainConfig,
    modules: list[Module] | None = None,
    timeout: float | None = None,
    console: Callable[[bytes], None] | None = None,
    machine_factory: Callable[[list[int]], MachineBackend] | None = None,
    prepare: Callable[[Domain], None] | None = None,
) -> RunResult:
    """Boot `image` and wait until it stops (or `timeout` seconds pass).

    Raises ImageError (bad image/config) before anything runs; returns the outcome and the
    console output otherwise. `prepare` may adjust the built domain before it starts.
    Without a `machine_factory` the backend is chosen as by `--accel auto`.
    """
    if machine_factory is None:
        machine_factory = accel.machine_factory("auto")[0]
    captured = bytearray()

    def sink(data: bytes) -> None:
        captured.extend(data)
        if console:
            console(data)

    domain = build_domain(image, config, machine_factory, hypercall_table(), sink, modules)
    try:
        if prepare:
            prepare(domain)
        domain.start()
        result = domain.wait(timeout)
    finally:
        domain.close()
    return RunResult(result, bytes(captured))
