"""A KVM vCPU's complete state in CpuState's neutral encoding, and back (save/restore).

Each part has its ioctl pair: KVM_GET/SET_REGS, _SREGS, _XSAVE (the XSAVE area, whose first
512 bytes are the FXSAVE64 image and whose YMM_Hi128 component sits at a fixed offset),
_XCRS, _MSRS (the TSC included: a host-initiated write of IA32_TSC sets the vCPU's TSC
offset), _DEBUGREGS and _VCPU_EVENTS. KVM serialises vCPU ioctls with KVM_RUN on the vCPU's
mutex, so any thread of the process may issue them; the caller keeps run() from running.

Software interrupts and exceptions (`int n`, `int3`, `into`) KVM is re-injecting are left
out: their RIP still points at the instruction, which runs again after a load (KVM itself
reports a re-injected `int n` as no event), instead of needing an instruction length that
KVM does not report.
"""

from __future__ import annotations

import ctypes as C
import os

from pyxen.domain.backend import Regs, SpecialRegs
from pyxen.domain.cpu_state import (
    CPU_MSRS,
    FXSAVE_BYTES,
    SHADOW_MOV_SS,
    SHADOW_STI,
    XCR0_AVX,
    XCR0_SSE,
    XCR0_X87,
    YMMH_BYTES,
    CpuState,
    PendingException,
)

from . import uapi as K
from .ioctl import KvmError, ioctl

MSR_IA32_TSC = 0x10
XSTATE_BV_AT = 512  # the XSAVE header's first field
XSAVE_YMM_AT = 576  # YMM_Hi128 in the standard format (the same on every CPU)
MXCSR_MASK_AT = 28  # a CPU constant: kept as KVM reports it
FX_RESERVED_AT = 416  # FXSAVE's reserved and software-available tail
ST_AT, ST_SLOT = 32, 16
BP, OF = 3, 4  # the exceptions `int3` and `into` raise as software exceptions
CARRIED_XCR0 = XCR0_X87 | XCR0_SSE | XCR0_AVX
# XSAVE components whose state CpuState cannot hold: opmask, ZMM_Hi256, Hi16_ZMM, AMX's
# TILECFG and TILEDATA. In use (set in XSTATE_BV), saving would lose them. (kvm_pvm runs
# guest ring 3 with the host's XCR0, so a guest's user code can reach them there although
# its XCR0 says x87/SSE/AVX.)
LOST_COMPONENTS = 0xE0 | 3 << 17


def _refused(what: str, e: KvmError) -> ValueError:
    return ValueError(f"CPU state: this vCPU refuses its {what} ({os.strerror(e.errno)})")


def _put(fd: int, request: int, arg: C.Structure, what: str) -> None:
    """A KVM_SET_* ioctl; a refusal is the state's fault (ValueError)."""
    try:
        ioctl(fd, request, arg)
    except KvmError as e:
        raise _refused(what, e) from None


# --- MSRs ---------------------------------------------------------------------------------------
def _batch(values: dict[int, int]) -> C.Structure:
    msrs = K.kvm_msrs(len(values))(nmsrs=len(values))
    for entry, (index, value) in zip(msrs.entries, values.items(), strict=True):
        entry.index, entry.data = index, value
    return msrs


def kept_msrs(fd: int) -> tuple[int, ...]:
    """Which of CPU_MSRS this vCPU reads (KVM_GET_MSRS stops at the first it does not)."""
    return tuple(index for index in CPU_MSRS if ioctl(fd, K.KVM_GET_MSRS, _batch({index: 0})))


def get_msrs(fd: int, indices: tuple[int, ...]) -> dict[int, int]:
    msrs = _batch(dict.fromkeys(indices, 0))
    done = ioctl(fd, K.KVM_GET_MSRS, msrs)
    if done != len(indices):
        raise KvmError(0, f"KVM_GET_MSRS read no MSR {indices[done]:#x}")
    return {e.index: e.data for e in msrs.entries}


def set_msrs(fd: int, values: dict[int, int]) -> None:
    """Write MSRs and read them back: a value this vCPU refuses or does not keep (a KVM may
    ignore a write it takes) is ValueError."""
    msrs = _batch(values)
    done = ioctl(fd, K.KVM_SET_MSRS, msrs)
    if done != len(values):
        index = msrs.entries[done].index
        raise ValueError(f"CPU state: MSR {index:#x} ({CPU_MSRS.get(index, '?')}): this "
                         f"vCPU refuses {values[index]:#x}")
    for index, value in get_msrs(fd, tuple(values)).items():
        if value != values[index]:
            raise ValueError(f"CPU state: MSR {index:#x} ({CPU_MSRS[index]}): this vCPU "
                             f"does not keep {values[index]:#x} (it reads {value:#x})")


# --- the XSAVE area -----------------------------------------------------------------------------
def _xstate_bv(area: bytes) -> int:
    return int.from_bytes(area[XSTATE_BV_AT : XSTATE_BV_AT + 8], "little")


def fxsave_of(xsave: K.kvm_xsave) -> tuple[bytes, bytes]:
    """(FXSAVE64 image with its reserved bytes zeroed, YMM upper halves) of an XSAVE area.
    Linux fills the legacy part from the init state where a component is in it."""
    area = bytes(xsave)
    image = bytearray(area[:FXSAVE_BYTES])
    image[5] = 0
    for slot in range(ST_AT, ST_AT + 8 * ST_SLOT, ST_SLOT):
        image[slot + 10 : slot + ST_SLOT] = bytes(ST_SLOT - 10)
    image[FX_RESERVED_AT:] = bytes(FXSAVE_BYTES - FX_RESERVED_AT)
    ymmh = area[XSAVE_YMM_AT : XSAVE_YMM_AT + YMMH_BYTES]
    return bytes(image), ymmh if _xstate_bv(area) & XCR0_AVX else bytes(YMMH_BYTES)


def put_fxsave(xsave: K.kvm_xsave, image: bytes, ymmh: bytes) -> None:
    """Write the image (MXCSR_MASK and the reserved tail excepted) and the YMM upper halves
    into an XSAVE area KVM gave, marking x87 and SSE (and AVX, unless all zero: its init
    state) as present."""
    area = (C.c_char * C.sizeof(xsave)).from_buffer(xsave)
    area[:MXCSR_MASK_AT] = image[:MXCSR_MASK_AT]
    area[ST_AT:FX_RESERVED_AT] = image[ST_AT:FX_RESERVED_AT]
    bv = _xstate_bv(bytes(area)) | XCR0_X87 | XCR0_SSE
    if any(ymmh):
        area[XSAVE_YMM_AT : XSAVE_YMM_AT + YMMH_BYTES] = ymmh
        bv |= XCR0_AVX
    else:
        bv &= ~XCR0_AVX
    area[XSTATE_BV_AT : XSTATE_BV_AT + 8] = bv.to_bytes(8, "little")


def get_xcr0(fd: int) -> int:
    xcrs = K.kvm_xcrs()
    ioctl(fd, K.KVM_GET_XCRS, xcrs)
    return next((x.value for x in xcrs.xcrs[: xcrs.nr_xcrs] if x.xcr == 0), XCR0_X87)


# --- events in flight ---------------------------------------------------------------------------
def events_of(ev: K.kvm_vcpu_events) -> dict[str, object]:
    """CpuState's event fields from KVM's (see the module's note on software events)."""
    exc = ev.exception
    pending = None
    if (exc.injected or exc.pending) and exc.nr not in (BP, OF):
        pending = PendingException(exc.nr, exc.error_code if exc.has_error_code else None)
    intr = ev.interrupt
    return {
        "interrupt_shadow": intr.shadow & (SHADOW_MOV_SS | SHADOW_STI),
        "pending_exception": pending,
        "pending_interrupt": intr.nr if intr.injected and not intr.soft else None,
        "nmi_pending": bool(ev.nmi.injected or ev.nmi.pending),
        "nmi_masked": bool(ev.nmi.masked),
    }


def put_events(ev: K.kvm_vcpu_events, state: CpuState) -> None:
    """Fill KVM's events from `state`; an exception or interrupt goes in as injected (KVM
    delivers it before the next instruction, as it was going to)."""
    exc, pending = ev.exception, state.pending_exception
    exc.injected = exc.pending = exc.has_error_code = exc.nr = exc.error_code = 0
    if pending is not None:
        exc.injected, exc.nr = 1, pending.vector
        if pending.error_code is not None:
            exc.has_error_code, exc.error_code = 1, pending.error_code
    intr = ev.interrupt
    intr.injected, intr.nr, intr.soft = 0, 0, 0
    if state.pending_interrupt is not None:
        intr.injected, intr.nr = 1, state.pending_interrupt
    intr.shadow = state.interrupt_shadow
    ev.nmi.injected, ev.nmi.pending, ev.nmi.masked = 0, int(state.nmi_pending), \
        int(state.nmi_masked)
    ev.exception_has_payload, ev.exception_payload = 0, 0
    ev.flags = K.KVM_VCPUEVENT_VALID_NMI_PENDING | K.KVM_VCPUEVENT_VALID_SHADOW


# --- the whole state ----------------------------------------------------------------------------
def save(fd: int, kept: tuple[int, ...]) -> CpuState:
    """The vCPU's state (it must not be in KVM_RUN, and owe nothing from its last exit)."""
    regs, sregs, xsave = Regs(), SpecialRegs(), K.kvm_xsave()
    ioctl(fd, K.KVM_GET_REGS, regs)
    ioctl(fd, K.KVM_GET_SREGS, sregs)
    for i in range(len(sregs.interrupt_bitmap)):
        sregs.interrupt_bitmap[i] = 0  # an injected interrupt: pending_interrupt, from events
    ioctl(fd, K.KVM_GET_XSAVE, xsave)
    xcr0 = get_xcr0(fd)
    if xcr0 & ~CARRIED_XCR0:
        raise RuntimeError(f"XCR0 {xcr0:#x} enables XSAVE state CpuState does not carry")
    live = _xstate_bv(bytes(xsave)) & LOST_COMPONENTS
    if live:
        raise RuntimeError(f"the guest has XSAVE state CpuState does not carry (XSTATE_BV "
                           f"bits {live:#x}: AVX-512 or AMX)")
    fxsave, ymmh = fxsave_of(xsave)
    dbg, ev = K.kvm_debugregs(), K.kvm_vcpu_events()
    ioctl(fd, K.KVM_GET_DEBUGREGS, dbg)
    ioctl(fd, K.KVM_GET_VCPU_EVENTS, ev)
    debugregs = {f"dr{i}": dbg.db[i] for i in range(4)} | {"dr6": dbg.dr6, "dr7": dbg.dr7}
    return CpuState(regs=regs, sregs=sregs, fxsave=fxsave, ymmh=ymmh, xcr0=xcr0,
                    msrs=get_msrs(fd, kept), tsc=get_msrs(fd, (MSR_IA32_TSC,))[MSR_IA32_TSC],
                    debugregs=debugregs, **events_of(ev))  # type: ignore[arg-type]


def load(fd: int, state: CpuState, kept: tuple[int, ...]) -> None:
    """Load a validated state into the vCPU (not in KVM_RUN, nothing owed); ValueError for a
    part it refuses, after which its state is a mix and it must not run."""
    alien = [i for i, value in state.msrs.items() if value and i not in kept]
    if alien:
        raise ValueError(f"CPU state: MSR {alien[0]:#x} ({CPU_MSRS[alien[0]]}) is not kept "
                         f"by this vCPU")
    _put(fd, K.KVM_SET_SREGS, state.sregs, "segment and control registers")
    _put(fd, K.KVM_SET_REGS, state.regs, "general registers")
    xcrs = K.kvm_xcrs(nr_xcrs=1)
    xcrs.xcrs[0].xcr, xcrs.xcrs[0].value = 0, state.xcr0
    _put(fd, K.KVM_SET_XCRS, xcrs, f"XCR0 {state.xcr0:#x}")
    xsave = K.kvm_xsave()
    ioctl(fd, K.KVM_GET_XSAVE, xsave)
    put_fxsave(xsave, state.fxsave, state.ymmh)
    _put(fd, K.KVM_SET_XSAVE, xsave, "x87/SSE/AVX state")
    set_msrs(fd, {index: state.msrs.get(index, 0) for index in kept})  # absent: reset value
    _put_tsc(fd, state.tsc)
    dbg = K.kvm_debugregs(dr6=state.debugregs["dr6"], dr7=state.debugregs["dr7"])
    for i in range(4):
        dbg.db[i] = state.debugregs[f"dr{i}"]
    _put(fd, K.KVM_SET_DEBUGREGS, dbg, "debug registers")
    ev = K.kvm_vcpu_events()
    ioctl(fd, K.KVM_GET_VCPU_EVENTS, ev)
    put_events(ev, state)
    _put(fd, K.KVM_SET_VCPU_EVENTS, ev, "events in flight")


def _put_tsc(fd: int, tsc: int) -> None:
    """IA32_TSC, written as the host: KVM sets the vCPU's TSC offset so that the guest reads
    `tsc` now. Not read back: it has moved on (and a KVM without TSC offsetting, kvm_pvm,
    keeps the host's TSC; the vCPU reports that, see KvmVcpu.load_cpu)."""
    msrs = _batch({MSR_IA32_TSC: tsc})
    if ioctl(fd, K.KVM_SET_MSRS, msrs) != 1:
        raise ValueError(f"CPU state: this vCPU refuses TSC {tsc:#x}")
