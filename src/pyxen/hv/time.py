"""Xen system time and the pvclock (vcpu_time_info) that lets a guest read it from its TSC.

Xen system time is nanoseconds since the domain's clock epoch (host CLOCK_MONOTONIC). A guest
converts its TSC with: system_time + ((tsc - tsc_timestamp) << tsc_shift) * mul >> 32. Each
vCPU's TSC is calibrated once against the monotonic clock; the guest TSC is invariant
(constant + nonstop), so the pair stays consistent.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from pyxen.abi.xen import shared_info, vcpu_time_info

NS_PER_S = 1_000_000_000


def time_scale(ticks_per_sec: int) -> tuple[int, int]:
    """(mul, shift) such that ns = ((ticks << shift) * mul) >> 32 (shift may be negative).

    The ticks rate is brought into (0.5, 1] GHz·2 by powers of two so that mul, the
    32-bit fraction ns-per-tick, keeps full precision.
    """
    shift = 0
    tps = ticks_per_sec
    while tps > 2 * NS_PER_S:
        tps >>= 1
        shift -= 1
    while tps <= NS_PER_S:
        tps <<= 1
        shift += 1
    mul = (NS_PER_S << 32) // tps
    return mul, shift


def scale_delta(delta: int, mul: int, shift: int) -> int:
    """The guest's conversion, for checking: ns for `delta` ticks."""
    delta = delta << shift if shift >= 0 else delta >> -shift
    return (delta * mul) >> 32


class DomainClock:
    """A domain's Xen system time (ns) and wallclock base."""

    def __init__(self) -> None:
        self.epoch_ns = time.monotonic_ns()

    def now(self) -> int:
        """Xen system time: ns since the epoch."""
        return time.monotonic_ns() - self.epoch_ns

    def continue_from(self, system_time: int) -> None:
        """A restored domain's time goes on from where it was saved, without a jump."""
        self.epoch_ns = time.monotonic_ns() - system_time

    def wallclock_at_zero(self) -> tuple[int, int]:
        """(seconds, nanoseconds) of UTC wallclock time at system time 0."""
        wall_ns = time.time_ns() - self.now()
        return divmod(wall_ns, NS_PER_S)

    def update_wallclock(self, si: shared_info) -> None:
        """Write wc_sec/wc_nsec with shared_info's version protocol (odd = in progress)."""
        sec, nsec = self.wallclock_at_zero()
        si.wc_version = (si.wc_version + 1) | 1
        si.wc_sec = sec & 0xFFFF_FFFF
        si.wc_sec_hi = sec >> 32
        si.wc_nsec = nsec
        si.wc_version += 1


@dataclass
class TscCalibration:
    """One vCPU's guest TSC at one system time, and the TSC rate."""

    tsc: int
    system_time: int
    tsc_khz: int

    def tsc_at(self, system_time: int) -> int:
        return self.tsc + (system_time - self.system_time) * self.tsc_khz // 1_000_000


def write_time_info(info: vcpu_time_info, cal: TscCalibration, system_time: int) -> None:
    """Publish a (tsc, system_time) pair with the version protocol guests spin on."""
    mul, shift = time_scale(cal.tsc_khz * 1000)
    info.version = (info.version + 1) | 1
    info.tsc_timestamp = cal.tsc_at(system_time)
    info.system_time = system_time
    info.tsc_to_system_mul = mul
    info.tsc_shift = shift
    info.flags = 0
    info.version += 1
