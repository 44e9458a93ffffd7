"""Domain.pause (Xen's domain_pause), what a save's stop-and-copy stands on: once it
returns no vCPU runs guest code and no timer fires, until unpause; a destroy still works."""

from __future__ import annotations

import struct
import time

from elftools.elf.elffile import ELFFile

from guestkit import image
from pyxen.domain.builder import build_domain
from pyxen.domain.domain import Domain, DomainConfig, Outcome
from pyxen.hv import hypercall_table
from pyxen.toolstack.accel import machine_factory


def symbol(name: str, sym: str) -> int:
    with image(name).open("rb") as f:
        return ELFFile(f).get_section_by_name(".symtab").get_symbol_by_name(sym)[0]["st_value"]


def counter(accel: str, vcpus: int = 1) -> Domain:
    config = DomainConfig(name="paused", vcpus=vcpus, cmdline="report_ms=100000")
    return build_domain(image("counter"), config, machine_factory(accel)[0],
                        hypercall_table(), lambda _: None)


def read_u64(domain: Domain, address: int) -> int:
    return struct.unpack("<Q", domain.memory.read(address, 8))[0]


def moving(domain: Domain, address: int, timeout: float = 60) -> int:
    """The word at `address` once it has changed (the guest is running)."""
    first, deadline = read_u64(domain, address), time.monotonic() + timeout
    while time.monotonic() < deadline:
        time.sleep(0.05)
        if (now := read_u64(domain, address)) != first:
            return now
    raise AssertionError(f"the guest's word at {address:#x} did not change in {timeout} s")


def test_a_paused_domain_neither_runs_nor_ticks(guests, accel: str) -> None:
    domain = counter(accel, vcpus=2)  # vCPU 1 stays offline: parked counts as paused
    count, ticks = symbol("counter", "count"), symbol("counter", "ticks")
    try:
        domain.start()
        moving(domain, count)
        moving(domain, ticks)  # the periodic timer is armed
        assert domain.pause()
        assert domain.pause()  # nested
        held = read_u64(domain, count), read_u64(domain, ticks), bytes(domain.shared_info.page)
        time.sleep(0.5)  # 50 periods
        assert (read_u64(domain, count), read_u64(domain, ticks),
                bytes(domain.shared_info.page)) == held
        domain.unpause()
        time.sleep(0.3)
        assert read_u64(domain, count) == held[0], "one unpause of two resumed the guest"
        domain.unpause()
        assert moving(domain, count) > held[0]
        assert moving(domain, ticks) > held[1]  # the timers fire again
        assert domain.result is None
    finally:
        domain.close()


def test_a_paused_domain_can_be_destroyed(guests) -> None:
    domain = counter("soft")
    try:
        domain.start()
        moving(domain, symbol("counter", "count"))
        assert domain.pause()
        started = time.monotonic()
        domain.crash("destroyed while paused")
        assert domain.wait(30).outcome is Outcome.CRASH
        thread = domain.vcpus[0].thread
        assert thread is not None
        thread.join(30)
        assert not thread.is_alive()
        assert time.monotonic() - started < 30
    finally:
        domain.close()


def test_a_pause_that_lands_just_before_a_block_is_not_slept_through(guests) -> None:
    """pause() raises the pause count, then kicks each vCPU awake. A vCPU on its way into a
    blocking hypercall (SCHEDOP_poll, SCHEDOP_block, hlt) clears its wake-up first, which
    can swallow that kick: it must not sleep then. (A member of a group migration slept
    through its pause in SCHEDOP_poll: "the domain's vCPUs did not stop within 30 s".)"""
    domain = counter("soft")
    try:
        vcpu = domain.vcpus[0]
        with domain.quiesce:
            domain.pause_count += 1  # what pause() does before its kicks
        vcpu.wake.clear()  # what do_poll does first, after the kick
        started = time.monotonic()
        vcpu.sleep(domain.clock.now() + 20 * 10**9)
        assert time.monotonic() - started < 5, "the vCPU slept through a pause"
    finally:
        domain.close()
