"""HYPERVISOR_sched_op and HYPERVISOR_set_timer_op (xen/common/sched/core.c).

Blocking sleeps on the vCPU's wake event, so a blocked vCPU costs no CPU; event delivery
(events issue) and the domain stopping both set it.
"""

from __future__ import annotations

import os
import threading
from typing import TYPE_CHECKING

from pyxen.abi import sched as S
from pyxen.abi.errno import EINVAL, ENOSPC, ENOSYS, EPERM, ESRCH, XenError
from pyxen.abi.vcpu import RUNSTATE_running
from pyxen.abi.xen import HYPERVISOR_sched_op, HYPERVISOR_set_timer_op

from .hypercall import HypercallTable, subop_describer

if TYPE_CHECKING:
    from pyxen.domain.domain import Domain
    from pyxen.domain.vcpu import Vcpu

    from .guest_access import GuestAccess

SCHED_POLL_MAX_PORTS = 128
NR_DOMAIN_WATCHDOG_TIMERS = 2
HUGE_TIMEOUT_BITS = 50  # set_timer_op: a deadline 2^50 ns (~13 days) out is a guest bug
LINUX_WORKAROUND_NS = 100_000_000

SUBOPS = {v: k for k, v in vars(S).items() if k.startswith("SCHEDOP_")}


def do_sched_op(vcpu: Vcpu, cmd: int, arg: int, *_: int) -> int:
    domain = vcpu.domain
    if cmd == S.SCHEDOP_yield:
        vcpu.set_runstate(RUNSTATE_running)  # a reschedule: runstate area is refreshed
        return 0
    if cmd == S.SCHEDOP_block:
        info = vcpu.vcpu_info
        if info is not None:
            info.evtchn_upcall_mask = 0  # block enables event delivery first
        vcpu.wake.clear()
        if not vcpu.events_need_delivery():
            vcpu.sleep()
        return 0
    if cmd == S.SCHEDOP_shutdown:
        reason = vcpu.guest().read_struct(S.sched_shutdown, arg).reason & 0xFF
        domain.shutdown(reason, f"SCHEDOP_shutdown from vCPU{vcpu.index}")
        return 0
    if cmd == S.SCHEDOP_shutdown_code:
        reason = vcpu.guest().read_struct(S.sched_shutdown, arg).reason & 0xFF
        if domain.shutdown_code is None:
            domain.shutdown_code = reason
        return 0
    if cmd == S.SCHEDOP_poll:
        return do_poll(vcpu, arg)
    if cmd == S.SCHEDOP_remote_shutdown:
        req = vcpu.guest().read_struct(S.sched_remote_shutdown, arg)
        target = domain.peers.get(req.domain_id)
        if target is None:
            raise XenError(ESRCH)
        if not domain.privileged:  # XSM_DM_PRIV: the control domain (or a device model)
            raise XenError(EPERM)
        target.shutdown(req.reason & 0xFF, f"SCHEDOP_remote_shutdown from d{domain.domid}")
        return 0
    if cmd == S.SCHEDOP_watchdog:
        req = vcpu.guest().read_struct(S.sched_watchdog, arg)
        return domain_watchdog(domain, req.id, req.timeout)
    if cmd == S.SCHEDOP_pin_override:
        if not domain.privileged:
            raise XenError(EPERM)
        cpu = vcpu.guest().read_u32(arg)
        if cpu != 0xFFFF_FFFF and cpu >= (os.cpu_count() or 1):
            raise XenError(EINVAL)
        return 0
    raise XenError(ENOSYS)


def do_poll(vcpu: Vcpu, arg: int) -> int:
    """Sleep until one of the ports is pending, an upcall is due, or the absolute timeout."""
    guest = vcpu.guest()
    poll = guest.read_struct(S.compat_sched_poll if vcpu.compat else S.sched_poll, arg)
    if poll.nr_ports > SCHED_POLL_MAX_PORTS:
        raise XenError(EINVAL)
    ev = vcpu.domain.evtchn
    with ev.fast.polling():  # sends that may wake it are Python's
        return _poll(vcpu, poll, guest)


def _poll(vcpu: Vcpu, poll: S.sched_poll | S.compat_sched_poll, guest: GuestAccess) -> int:
    ev = vcpu.domain.evtchn
    vcpu.wake.clear()
    vcpu.poll_port = 0  # registered before the checks, so no event slips between them
    try:
        if vcpu.events_need_delivery():
            return 0
        port = 0
        for i in range(poll.nr_ports):
            port = guest.read_u32(poll.ports + 4 * i)
            if not ev.valid(port):  # evtchn_port_poll: any valid port, either ABI
                raise XenError(EINVAL)
            if ev.is_pending(port):
                return 0
        if poll.nr_ports == 1 and vcpu.poll_port is not None:
            vcpu.poll_port = port
        if vcpu.poll_port is not None:  # not already woken by an event
            vcpu.sleep(poll.timeout or None)
        return 0
    finally:
        vcpu.poll_port = None


def domain_watchdog(domain: Domain, wid: int, timeout: int) -> int:
    """Create (id 0), re-arm (timeout > 0) or destroy (timeout 0) a domain watchdog."""

    def fire() -> None:
        domain.shutdown(S.SHUTDOWN_watchdog, "watchdog timer fired")

    def arm(slot: int) -> None:
        old = domain.watchdogs.get(slot)
        if old:
            old.cancel()
        timer = threading.Timer(timeout, fire)
        timer.daemon = True
        domain.watchdogs[slot] = timer
        timer.start()

    with domain.domain_lock:
        if wid == 0:
            for slot in range(NR_DOMAIN_WATCHDOG_TIMERS):
                if slot not in domain.watchdogs:
                    arm(slot)
                    return slot + 1
            raise XenError(ENOSPC)
        slot = wid - 1
        if slot not in domain.watchdogs:
            raise XenError(EINVAL)
        if timeout == 0:
            domain.watchdogs.pop(slot).cancel()
        else:
            arm(slot)
        return 0


def do_set_timer_op(vcpu: Vcpu, lo: int, hi: int = 0, *_: int) -> int:
    """Arm (or with 0, stop) this vCPU's single-shot timer at an absolute system time."""
    timeout = (lo | hi << 32) if vcpu.compat else lo
    if timeout >= 1 << 63:
        timeout -= 1 << 64
    timers, now = vcpu.domain.timers, vcpu.domain.clock.now()
    if timeout == 0:
        timers.stop(vcpu.singleshot)
    elif timeout < 0 or (timeout - now > 0 and (timeout - now) >> HUGE_TIMEOUT_BITS):
        # Xen's Linux workaround: a wrapped or absurdly far deadline fires in 100 ms.
        timers.set(vcpu.singleshot, now + LINUX_WORKAROUND_NS)
    else:
        timers.set(vcpu.singleshot, timeout)
    return 0


def register(table: HypercallTable) -> None:
    table.register(HYPERVISOR_sched_op, do_sched_op, subop_describer(SUBOPS, 2))
    table.register(HYPERVISOR_set_timer_op, do_set_timer_op, inline=True)
