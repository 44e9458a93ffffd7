"""Keeping vCPUs out of KVM_RUN while memory slots are rebuilt.

KVM changes one slot per ioctl, and a slot's size cannot change: a frame released from the
middle of a run of RAM means deleting the run's slot and creating its two halves. A vCPU in
KVM_RUN between those ioctls finds no memory at guest addresses that stay RAM (an instruction
fetch there fails; a load becomes an MMIO exit and reads all-ones). So a layout change that
deletes a slot first closes the gate: vCPUs inside KVM_RUN are kicked out, others wait at it
until the change is whole (what QEMU does with accel_ioctl_inhibit_begin/end).
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from pyxen.domain.backend import Exit

from .vcpu import KvmVcpu

KICK_RETRY_S = 0.001  # a kick sent just before KVM_RUN began is sent again


class RunGate:
    """Counts the vCPUs inside KVM_RUN; while closed, none enters. The hot path (enter and
    leave around every KVM_RUN) takes a plain lock twice and nothing else."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)  # opened, or the last vCPU left
        self._closed = 0  # layout changes in progress
        self._inside = 0

    def enter(self) -> None:
        with self._lock:
            while self._closed:
                self._changed.wait()
            self._inside += 1

    def leave(self) -> None:
        with self._lock:
            self._inside -= 1
            if self._closed and not self._inside:
                self._changed.notify_all()

    def close(self, kick: Callable[[], None]) -> None:
        """Return once no vCPU is inside KVM_RUN and none can enter until open()."""
        with self._lock:
            self._closed += 1
            while self._inside:
                kick()
                self._changed.wait(KICK_RETRY_S)

    def open(self) -> None:
        with self._lock:
            self._closed -= 1
            if not self._closed:
                self._changed.notify_all()


class GatedVcpu(KvmVcpu):
    """A KVM vCPU that enters KVM_RUN only through its machine's gate."""

    gate: RunGate

    def run(self) -> Exit:
        gate = self.gate
        gate.enter()
        try:
            return super().run()
        finally:
            gate.leave()
