"""HYPERVISOR_vcpu_op: per-vCPU state, bring-up and timers (xen/common/domain.c, and
arch_set_info_hvm_guest of xen/arch/x86/hvm/domain.c for VCPUOP_initialise)."""

from __future__ import annotations

import contextlib
import ctypes as C
from typing import TYPE_CHECKING

from pyxen.abi import vcpu as V
from pyxen.abi.errno import EEXIST, EINVAL, ENOENT, ENOSYS, XenError
from pyxen.abi.event_channel import VIRQ_TIMER
from pyxen.abi.hvm_vcpu import VCPU_HVM_MODE_32B, VCPU_HVM_MODE_64B, vcpu_hvm_context
from pyxen.abi.sched import SHUTDOWN_poweroff
from pyxen.abi.xen import HYPERVISOR_vcpu_op, vcpu_info
from pyxen.domain.backend import Regs, Segment, SpecialRegs
from pyxen.domain.memory import PAGE_SHIFT, PAGE_SIZE, GuestMemoryError

from .hypercall import HypercallTable, subop_describer

if TYPE_CHECKING:
    from pyxen.domain.vcpu import Vcpu

SUBOPS = {v: k for k, v in vars(V).items() if k.startswith("VCPUOP_")}
MILLISECS = 1_000_000
STIME_DELTA_MAX = (1 << 62) - 1
HVM_VCPU_OPS = {  # the sub-ops Xen lets an HVM guest reach
    V.VCPUOP_register_runstate_memory_area, V.VCPUOP_get_runstate_info,
    V.VCPUOP_set_periodic_timer, V.VCPUOP_stop_periodic_timer,
    V.VCPUOP_set_singleshot_timer, V.VCPUOP_stop_singleshot_timer,
    V.VCPUOP_register_vcpu_info, V.VCPUOP_register_vcpu_time_memory_area,
    V.VCPUOP_initialise, V.VCPUOP_up, V.VCPUOP_down, V.VCPUOP_is_up, V.VCPUOP_send_nmi,
}


def runstate_info(v: Vcpu, compat: bool) -> C.Structure:
    cls = V.compat_vcpu_runstate_info if compat else V.vcpu_runstate_info
    now = v.domain.clock.now()
    times = list(v.runstate_time)
    times[v.runstate_state] += now - v.runstate_entry  # the current state, up to now
    info = cls(state=v.runstate_state, state_entry_time=v.runstate_entry)
    for i, t in enumerate(times):
        info.time[i] = t
    return info


def publish_runstate(v: Vcpu) -> None:
    """Refresh the guest's registered runstate area (Xen does so at each context switch)."""
    if v.runstate_area is None:
        return
    va, compat = v.runstate_area
    with contextlib.suppress(XenError):  # Xen ignores an area that is no longer mapped
        v.guest().write_struct(va, runstate_info(v, compat))


def map_vcpu_info(caller: Vcpu, v: Vcpu, gfn: int, offset: int) -> None:
    size = C.sizeof(vcpu_info)
    if offset > PAGE_SIZE - size or offset % 8:
        raise XenError(EINVAL)
    if v.vcpu_info_override is not None:
        raise XenError(EINVAL)  # once only
    if v is not caller and v.online:
        raise XenError(EINVAL)
    mem = v.domain.memory
    gpa = (gfn << PAGE_SHIFT) + offset
    try:
        mem.check_populated(gpa, size)
    except GuestMemoryError as e:
        raise XenError(EINVAL, str(e)) from e
    old = v.vcpu_info
    new = mem.struct_at(vcpu_info, gpa)
    if old is None:
        C.memset(C.addressof(new), 0, size)
        new.evtchn_upcall_mask = 1
    else:
        C.memmove(C.addressof(new), C.addressof(old), size)
    v.vcpu_info_override = new
    v.vcpu_info_moved()
    # Everything is marked pending so that no event is lost in the move (a spurious upcall
    # is harmless, a lost one is not).
    new.evtchn_pending_sel = (1 << 64) - 1
    new.evtchn_upcall_pending = 1
    v.update_time()


def do_vcpu_op(caller: Vcpu, cmd: int, vcpuid: int, arg: int, *_: int) -> int:
    domain = caller.domain
    vcpuid &= 0xFFFF_FFFF
    if vcpuid >= len(domain.vcpus):
        raise XenError(ENOENT)  # checked before the sub-op, as in Xen
    if cmd not in HVM_VCPU_OPS:
        raise XenError(ENOSYS)
    v = domain.vcpus[vcpuid]
    guest = caller.guest()
    if cmd == V.VCPUOP_is_up:
        return 1 if v.online else 0
    if cmd == V.VCPUOP_get_runstate_info:
        guest.write_struct(arg, runstate_info(v, caller.compat))
        return 0
    if cmd == V.VCPUOP_register_runstate_memory_area:
        area = guest.read_struct(V.vcpu_register_runstate_memory_area, arg)
        v.runstate_area = (area.addr, caller.compat)
        publish_runstate(v)  # a bad address is accepted and simply not written, as in Xen
        return 0
    if cmd == V.VCPUOP_register_vcpu_info:
        info = guest.read_struct(V.vcpu_register_vcpu_info, arg)
        map_vcpu_info(caller, v, info.mfn, info.offset)
        return 0
    if cmd == V.VCPUOP_register_vcpu_time_memory_area:
        area = guest.read_struct(V.vcpu_register_time_memory_area, arg)
        v.time_area = area.addr
        v.update_time()
        return 0
    if cmd == V.VCPUOP_initialise:
        ctx = guest.read_struct(vcpu_hvm_context, arg)
        with domain.domain_lock:
            if v.initialised:
                raise XenError(EEXIST)
            # Validated now; loaded by the vCPU's own thread before it first runs (as QEMU
            # loads a vCPU's state with run_on_cpu): KVM wants a vCPU's ioctls from its thread.
            v.initial_state = hvm_context_state(v, ctx)
            v.initialised = True
        return 0
    if cmd == V.VCPUOP_up:
        with domain.domain_lock:
            if not v.initialised:
                raise XenError(EINVAL)
            if v.online:
                return 0
            v.online = True
        if v.thread is None:
            domain.start_vcpu(v)
        v.kick()
        return 0
    if cmd == V.VCPUOP_down:
        if not any(o.online for o in domain.vcpus if o is not v):
            domain.shutdown(SHUTDOWN_poweroff, "last vCPU went down")  # as Xen does
            return 0
        if v.online:
            v.online = False
            # Xen's scheduler: a blocked vCPU stays "blocked" until something wakes it (it
            # then goes offline); a running one goes offline when it stops running.
            if v.runstate_state != V.RUNSTATE_blocked:
                v.kick()
        return 0
    if cmd == V.VCPUOP_set_periodic_timer:
        period = guest.read_struct(V.vcpu_set_periodic_timer, arg).period_ns
        if period < MILLISECS or period > STIME_DELTA_MAX:
            raise XenError(EINVAL)
        v.set_periodic(period)
        return 0
    if cmd == V.VCPUOP_stop_periodic_timer:
        v.set_periodic(0)
        return 0
    if cmd == V.VCPUOP_set_singleshot_timer:
        if v is not caller:
            raise XenError(EINVAL)
        t = guest.read_struct(V.vcpu_set_singleshot_timer, arg)
        # VCPU_SSHOTTMR_future is ignored, as Xen's 4.17 stable branch does ("can be ignored
        # by the hypervisor", public/vcpu.h): a past deadline just fires now.
        if t.timeout_abs_ns < domain.clock.now():
            domain.evtchn.send_virq(v, VIRQ_TIMER)
        else:
            domain.timers.set(v.singleshot, t.timeout_abs_ns)
        return 0
    if cmd == V.VCPUOP_stop_singleshot_timer:
        if v is not caller:
            raise XenError(EINVAL)
        domain.timers.stop(v.singleshot)
        return 0
    raise XenError(ENOSYS)  # send_nmi: pyxen does not deliver NMIs


# Segment attribute bits of vcpu_hvm_x86_32's *_ar fields (Xen's segment_register.attr).
AR_TYPE, AR_S, AR_P, AR_L, AR_DB, AR_G = 0xF, 1 << 4, 1 << 7, 1 << 9, 1 << 10, 1 << 11
SYS_DESC_TSS_BUSY = 0xB
CR0_PE, CR0_PG = 1, 1 << 31
CR4_PAE = 1 << 5
EFER_LME, EFER_LMA = 1 << 8, 1 << 10
EFER_VALID = 1 | EFER_LME | EFER_LMA | 1 << 11  # SCE, LME, LMA, NXE
CR4_VALID = 0x7F_FFFF & ~(1 << 13 | 1 << 14 | 1 << 15 | 1 << 19)  # not VMXE/SMXE/.../


def _segment(seg: Segment, name: str, base: int, limit: int, ar: int) -> None:
    """check_segment() of Xen's arch_set_info_hvm_guest, then load `seg`."""
    if ar >> 12:
        raise XenError(EINVAL, "segment attribute bits 12-15 are not zero")
    if ar == 0:
        if name not in ("ds", "es"):
            raise XenError(EINVAL, f"null segment for {name}")
        seg.unusable, seg.present = 1, 0
        return
    kind = ar & AR_TYPE
    if name == "tr":
        if ar & AR_S or kind != SYS_DESC_TSS_BUSY:
            raise XenError(EINVAL, "TR must be a busy TSS")
    elif not ar & AR_S:
        raise XenError(EINVAL, f"system segment for {name}")
    if not ar & AR_P:
        raise XenError(EINVAL, f"{name} not present")
    if name == "cs" and not kind & 0x8:
        raise XenError(EINVAL, "CS is not a code segment")
    if name == "ss" and (kind & 0x8 or not kind & 0x2):
        raise XenError(EINVAL, "SS is not a writable data segment")
    if name in ("ds", "es") and kind & 0x8 and not kind & 0x2:
        raise XenError(EINVAL, f"{name} is not readable")
    if name != "tr":
        kind |= 1  # accessed
    seg.base, seg.limit, seg.type, seg.s = base, limit, kind, int(bool(ar & AR_S))
    seg.dpl, seg.present, seg.l = (ar >> 5) & 3, 1, int(bool(ar & AR_L))
    seg.db, seg.g, seg.unusable = int(bool(ar & AR_DB)), int(bool(ar & AR_G)), 0


def hvm_context_state(v: Vcpu, ctx: vcpu_hvm_context) -> tuple[SpecialRegs, Regs]:
    """Registers for VCPUOP_initialise's context, validated as Xen does (-EINVAL)."""
    if ctx.pad:
        raise XenError(EINVAL)
    s = v.backend.sregs()
    s = SpecialRegs.from_buffer_copy(bytes(s))
    regs = Regs()
    if ctx.mode == VCPU_HVM_MODE_32B:
        r = ctx.cpu_regs.x86_32
        if r.pad1 or any(r.pad2):
            raise XenError(EINVAL)
        for name in ("cs", "ds", "ss", "es", "tr"):
            _segment(getattr(s, name), name, getattr(r, f"{name}_base"),
                     getattr(r, f"{name}_limit"), getattr(r, f"{name}_ar"))
        limit = s.cs.limit << 12 | 0xFFF if s.cs.g else s.cs.limit
        if r.eip > limit or s.ss.dpl != s.cs.dpl:
            raise XenError(EINVAL)
        if any(seg.present and seg.dpl > s.cs.dpl for seg in (s.ds, s.es)):
            raise XenError(EINVAL)
        if r.efer & EFER_LMA and not r.efer & EFER_LME:
            raise XenError(EINVAL)
        for name in ["eax", "ecx", "edx", "ebx", "esp", "ebp", "esi", "edi"]:
            setattr(regs, "r" + name[1:], getattr(r, name))
        regs.rip, regs.rflags = r.eip, r.eflags | 2
        s.fs, s.gs = s.ds, s.ds
        s.cr0, s.cr3, s.cr4, efer = r.cr0, r.cr3, r.cr4, r.efer
    elif ctx.mode == VCPU_HVM_MODE_64B:
        r = ctx.cpu_regs.x86_64
        top = r.rip >> 47
        if top not in (0, (1 << 17) - 1):
            raise XenError(EINVAL, "non-canonical rip")
        if not r.cr0 & CR0_PG or not r.cr4 & CR4_PAE or not r.efer & EFER_LME:
            raise XenError(EINVAL, "64-bit mode needs CR0.PG, CR4.PAE and EFER.LME")
        for name in ["rax", "rcx", "rdx", "rbx", "rsp", "rbp", "rsi", "rdi"]:
            setattr(regs, name, getattr(r, name))
        regs.rip, regs.rflags = r.rip, r.rflags | 2
        _segment(s.cs, "cs", 0, 0xFFFF_FFFF, 0xA9B)  # flat 64-bit code
        for name in ("ds", "ss", "es", "fs", "gs"):
            _segment(getattr(s, name), "ds", 0, 0xFFFF_FFFF, 0xC93)
        _segment(s.tr, "tr", 0, 0x67, 0x8B)
        s.cr0, s.cr3, s.cr4, efer = r.cr0, r.cr3, r.cr4, r.efer
    else:
        raise XenError(EINVAL, f"unknown mode {ctx.mode}")
    if efer & EFER_LME and s.cr0 & CR0_PG:
        efer |= EFER_LMA
    if s.cr4 & ~CR4_VALID or efer & ~EFER_VALID:
        raise XenError(EINVAL, "bad CR4 or EFER")
    s.efer = efer
    return s, regs


def register(table: HypercallTable) -> None:
    table.register(HYPERVISOR_vcpu_op, do_vcpu_op, subop_describer(SUBOPS, 3),
                   inline=frozenset([V.VCPUOP_set_singleshot_timer,
                                     V.VCPUOP_stop_singleshot_timer, V.VCPUOP_is_up]))
