"""A vCPU's complete architectural state, architecture-neutral: what `save_cpu()` takes out of
one backend and `load_cpu()` puts into another (save/restore, live migration, soft <-> KVM).
Layouts follow the SDM, not a backend; `from_dict` reads hostile input (a file, a network)."""

from __future__ import annotations

import ctypes as C
from dataclasses import dataclass, field

from .backend import Regs, SpecialRegs

# Architecture-neutral: each backend converts its own representation to and from this one, so
# a state saved on one backend loads on the other. Layouts follow the SDM, not a backend.

FXSAVE_BYTES = 512  # the FXSAVE64 image (SDM vol. 1, table 10-2)
FXSAVE_MXCSR = 24  # offset of MXCSR in it
MXCSR_BITS = 0xFFFF  # MXCSR's defined bits (DAZ included); the rest are reserved
YMMH_BYTES = 256  # bits 255:128 of YMM0-15, as XSAVE's YMM_Hi128 component (16 x 16 bytes)
XCR0_X87, XCR0_SSE, XCR0_AVX = 1, 2, 4  # the XSAVE components CpuState carries
SHADOW_MOV_SS, SHADOW_STI = 1, 2  # interrupt_shadow bits (KVM's KVM_X86_SHADOW_INT_* values)
DEBUG_REGS = ("dr0", "dr1", "dr2", "dr3", "dr6", "dr7")
DEBUG_REGS_RESET = {"dr0": 0, "dr1": 0, "dr2": 0, "dr3": 0, "dr6": 0xFFFF_0FF0, "dr7": 0x400}
CR4_LA57 = 1 << 12

MSR_TSC_ADJUST = 0x3B
MSR_SPEC_CTRL = 0x48
MSR_SYSENTER_CS, MSR_SYSENTER_ESP, MSR_SYSENTER_EIP = 0x174, 0x175, 0x176
MSR_MCG_STATUS = 0x17A
MSR_MISC_ENABLE = 0x1A0
MSR_PAT = 0x277
MSR_MTRR_DEF_TYPE = 0x2FF
MSR_STAR, MSR_LSTAR, MSR_CSTAR, MSR_SFMASK = 0xC000_0081, 0xC000_0082, 0xC000_0083, 0xC000_0084
MSR_KERNEL_GS_BASE, MSR_TSC_AUX = 0xC000_0102, 0xC000_0103

# Every MSR a guest can write and read back that CpuState carries (FS/GS base travel in the
# segments, EFER and the APIC base in SpecialRegs, the TSC in `tsc`). The list QEMU's
# target/i386 migration carries, less what neither backend offers a PVH guest here (PMU,
# machine-check banks, XSS, PKRS, KVM's and Hyper-V's paravirtual MSRs).
CPU_MSRS: dict[int, str] = {
    MSR_SYSENTER_CS: "SYSENTER_CS", MSR_SYSENTER_ESP: "SYSENTER_ESP",
    MSR_SYSENTER_EIP: "SYSENTER_EIP", MSR_STAR: "STAR", MSR_LSTAR: "LSTAR",
    MSR_CSTAR: "CSTAR", MSR_SFMASK: "SFMASK", MSR_KERNEL_GS_BASE: "KERNEL_GS_BASE",
    MSR_TSC_AUX: "TSC_AUX", MSR_PAT: "PAT", MSR_MISC_ENABLE: "MISC_ENABLE",
    MSR_MCG_STATUS: "MCG_STATUS", MSR_TSC_ADJUST: "TSC_ADJUST", MSR_SPEC_CTRL: "SPEC_CTRL",
    MSR_MTRR_DEF_TYPE: "MTRR_DEF_TYPE", 0x250: "MTRR_FIX64K_00000",
    0x258: "MTRR_FIX16K_80000", 0x259: "MTRR_FIX16K_A0000",
    **{0x268 + i: f"MTRR_FIX4K_{0xC0000 + 0x8000 * i:X}" for i in range(8)},
    **{0x200 + 2 * i: f"MTRR_PHYS_BASE{i}" for i in range(8)},
    **{0x201 + 2 * i: f"MTRR_PHYS_MASK{i}" for i in range(8)},
}
ADDRESS_MSRS = frozenset([MSR_SYSENTER_ESP, MSR_SYSENTER_EIP, MSR_LSTAR, MSR_CSTAR,
                          MSR_KERNEL_GS_BASE])  # WRMSR refuses a non-canonical value
MEMORY_TYPES = frozenset([0, 1, 4, 5, 6, 7])  # UC, WC, WT, WP, WB, UC- (PAT entries)

# Fields of the ctypes structs that are not state: padding, and KVM's copy of an injected
# interrupt (CpuState.pending_interrupt carries it once).
_NOT_STATE = frozenset(["padding", "interrupt_bitmap"])
# What a segment's attribute fields can hold (everything else: the C field's width).
_SEGMENT_LIMITS = {"type": 15, "dpl": 3, "present": 1, "db": 1, "s": 1, "l": 1, "g": 1,
                   "avl": 1, "unusable": 1}
_TOP_KEYS = ("regs", "sregs", "fxsave", "ymmh", "xcr0", "msrs", "tsc", "debugregs",
             "interrupt_shadow", "pending_exception", "pending_interrupt", "nmi_pending",
             "nmi_masked")


def _bad(where: str, why: str) -> ValueError:
    return ValueError(f"CPU state: {where}: {why}")


def _shown(key: object) -> str:
    """A key from hostile input, fit for a one-line message."""
    text = repr(key)
    return text if len(text) <= 40 else text[:37] + "..."


def _int(value: object, bits: int, where: str, top: int | None = None) -> int:
    if type(value) is not int:
        raise _bad(where, "not an integer")
    top = (1 << bits) - 1 if top is None else top
    if not 0 <= value <= top:
        raise _bad(where, f"out of range (0..{top:#x})")
    return value


def _object(data: object, keys: tuple[str, ...], where: str) -> dict[str, object]:
    """`data` as a dict with exactly `keys`."""
    if not isinstance(data, dict):
        raise _bad(where, "not an object")
    for key in data:
        if key not in keys:
            raise _bad(where, f"unknown key {_shown(key)}")
    for key in keys:
        if key not in data:
            raise _bad(where, f"missing key {key!r}")
    return data


def _struct_keys(cls: type[C.Structure]) -> tuple[str, ...]:
    return tuple(name for name, *_ in cls._fields_ if name not in _NOT_STATE)


def _struct_to_dict(s: C.Structure) -> dict[str, object]:
    out: dict[str, object] = {}
    for name in _struct_keys(type(s)):
        value = getattr(s, name)
        out[name] = _struct_to_dict(value) if isinstance(value, C.Structure) else value
    return out


def _struct_from_dict(cls: type[C.Structure], data: object, where: str) -> C.Structure:
    """A ctypes struct from its to_dict form; every value checked against its field's width
    (ctypes would silently truncate)."""
    items = _object(data, _struct_keys(cls), where)
    s = cls()
    types = {name: ctype for name, ctype, *_ in cls._fields_}
    for name in _struct_keys(cls):
        ctype, at = types[name], f"{where}.{name}"
        if issubclass(ctype, C.Structure):
            setattr(s, name, _struct_from_dict(ctype, items[name], at))
        else:
            setattr(s, name, _int(items[name], 8 * C.sizeof(ctype), at))
    return s


def _hex_bytes(value: object, size: int, where: str) -> bytes:
    if not isinstance(value, str) or len(value) != 2 * size:
        raise _bad(where, f"not {size} bytes in hex")
    try:
        return bytes.fromhex(value)
    except ValueError:
        raise _bad(where, "not hex") from None


def _canonical(value: int, bits: int) -> bool:
    top = value >> (bits - 1)
    return top in (0, (1 << (65 - bits)) - 1)


def _check_msr(index: int, value: int, address_bits: int) -> None:
    where = f"msrs[{index:#x}] ({CPU_MSRS[index]})"
    _int(value, 64, where)
    if index in ADDRESS_MSRS and not _canonical(value, address_bits):
        raise _bad(where, "not a canonical address")
    if index == MSR_PAT and any((value >> s) & 0xFF not in MEMORY_TYPES for s in range(0, 64, 8)):
        raise _bad(where, "not a memory type in every entry")
    if index == MSR_TSC_AUX:
        _int(value, 32, where)


def _check_segments(sregs: SpecialRegs) -> None:
    for name in ("cs", "ds", "es", "fs", "gs", "ss", "tr", "ldt"):
        seg = getattr(sregs, name)
        for attr, top in _SEGMENT_LIMITS.items():
            if getattr(seg, attr) > top:
                raise _bad(f"sregs.{name}.{attr}", f"out of range (0..{top})")


@dataclass(frozen=True)
class PendingException:
    """An exception the CPU delivers before the next instruction: KVM's injected exception not
    yet delivered, or the software CPU's #GP for an MSR pyxen refused."""

    vector: int
    error_code: int | None = None


@dataclass(eq=False)
class CpuState:
    """Everything a guest can observe of one x86-64 vCPU at an exit boundary.

    Encoding of each part (also what `to_dict` writes, for the save stream):
    - `regs`, `sregs`: `Regs`/`SpecialRegs`, segments with their hidden parts; `sregs`'s
      `interrupt_bitmap` stays zero (an injected interrupt is `pending_interrupt`);
    - `fxsave`: the 512-byte FXSAVE64 image: FCW, FSW, abridged FTW, FOP, 64-bit FIP and FDP,
      MXCSR, the saving CPU's MXCSR_MASK (not state: a CPU constant, ignored by loads),
      ST0-7 in stack order, XMM0-15; reserved bytes zero;
    - `ymmh`: bits 255:128 of YMM0-15, 16 bytes each; `xcr0`: XCR0 (x87, SSE, AVX only);
    - `msrs`: index -> value, for the MSRs of `CPU_MSRS` the saving backend keeps;
    - `tsc`: the guest's time-stamp counter when it was saved;
    - `debugregs`: DR0-3, DR6, DR7;
    - `interrupt_shadow`: SHADOW_STI / SHADOW_MOV_SS (the next instruction runs before an
      interrupt can be taken); `pending_exception`, `pending_interrupt` (a vector the CPU
      accepted and must deliver before the next instruction), `nmi_pending`, `nmi_masked`.
    """

    regs: Regs
    sregs: SpecialRegs
    fxsave: bytes
    ymmh: bytes
    xcr0: int
    msrs: dict[int, int]
    tsc: int
    debugregs: dict[str, int] = field(default_factory=lambda: dict(DEBUG_REGS_RESET))
    interrupt_shadow: int = 0
    pending_exception: PendingException | None = None
    pending_interrupt: int | None = None
    nmi_pending: bool = False
    nmi_masked: bool = False

    def __eq__(self, other: object) -> bool:
        """Equal states: equal encodings (ctypes structs have no value equality)."""
        if not isinstance(other, CpuState):
            return NotImplemented
        return self.to_dict() == other.to_dict()

    @property
    def mxcsr(self) -> int:
        return int.from_bytes(self.fxsave[FXSAVE_MXCSR : FXSAVE_MXCSR + 4], "little")

    def to_dict(self) -> dict[str, object]:
        """JSON-able values: ints, bools, None, hex strings, dicts (MSR keys as "0x...")."""
        exc = self.pending_exception
        return {
            "regs": _struct_to_dict(self.regs),
            "sregs": _struct_to_dict(self.sregs),
            "fxsave": self.fxsave.hex(),
            "ymmh": self.ymmh.hex(),
            "xcr0": self.xcr0,
            "msrs": {f"{index:#x}": value for index, value in sorted(self.msrs.items())},
            "tsc": self.tsc,
            "debugregs": {name: self.debugregs[name] for name in DEBUG_REGS},
            "interrupt_shadow": self.interrupt_shadow,
            "pending_exception": None if exc is None else {"vector": exc.vector,
                                                           "error_code": exc.error_code},
            "pending_interrupt": self.pending_interrupt,
            "nmi_pending": self.nmi_pending,
            "nmi_masked": self.nmi_masked,
        }

    @classmethod
    def from_dict(cls, data: object) -> CpuState:
        """The inverse of to_dict, for input from a file or the network: every type, size and
        range is checked; ValueError (one line) names the first bad part."""
        d = _object(data, _TOP_KEYS, "state")
        state = cls(
            regs=_struct_from_dict(Regs, d["regs"], "regs"),  # type: ignore[arg-type]
            sregs=_struct_from_dict(SpecialRegs, d["sregs"], "sregs"),  # type: ignore[arg-type]
            fxsave=_hex_bytes(d["fxsave"], FXSAVE_BYTES, "fxsave"),
            ymmh=_hex_bytes(d["ymmh"], YMMH_BYTES, "ymmh"),
            xcr0=_int(d["xcr0"], 64, "xcr0"),
            msrs=_msrs_from_dict(d["msrs"]),
            tsc=_int(d["tsc"], 64, "tsc"),
            debugregs={k: _int(v, 64, f"debugregs.{k}") for k, v in
                       _object(d["debugregs"], DEBUG_REGS, "debugregs").items()},
            interrupt_shadow=_int(d["interrupt_shadow"], 8, "interrupt_shadow"),
            pending_exception=_exception_from_dict(d["pending_exception"]),
            pending_interrupt=None if d["pending_interrupt"] is None else
            _int(d["pending_interrupt"], 8, "pending_interrupt"),
            nmi_pending=_bool(d["nmi_pending"], "nmi_pending"),
            nmi_masked=_bool(d["nmi_masked"], "nmi_masked"),
        )
        state.validate()
        return state

    def validate(self) -> None:
        """ValueError unless every part is a value the architecture allows (what any CPU's
        WRMSR, XSETBV, FXRSTOR or event injection would refuse is refused here)."""
        _check_segments(self.sregs)
        if any(self.sregs.interrupt_bitmap):
            raise _bad("sregs.interrupt_bitmap", "not empty (use pending_interrupt)")
        if not isinstance(self.fxsave, bytes) or len(self.fxsave) != FXSAVE_BYTES:
            raise _bad("fxsave", f"not {FXSAVE_BYTES} bytes")
        if not isinstance(self.ymmh, bytes) or len(self.ymmh) != YMMH_BYTES:
            raise _bad("ymmh", f"not {YMMH_BYTES} bytes")
        if self.mxcsr & ~MXCSR_BITS:
            raise _bad("fxsave", "reserved MXCSR bits set")
        self._check_xcr0()
        bits = 57 if self.sregs.cr4 & CR4_LA57 else 48
        for index, value in self.msrs.items():
            if index not in CPU_MSRS:
                raise _bad("msrs", f"MSR {_shown(index)} is not carried")
            _check_msr(index, value, bits)
        _int(self.tsc, 64, "tsc")
        self._check_debugregs()
        _int(self.interrupt_shadow, 2, "interrupt_shadow")
        self._check_events()

    def _check_xcr0(self) -> None:
        if not self.xcr0 & XCR0_X87 or self.xcr0 & ~(XCR0_X87 | XCR0_SSE | XCR0_AVX):
            raise _bad("xcr0", "x87 off, or a component CpuState does not carry")
        if self.xcr0 & XCR0_AVX and not self.xcr0 & XCR0_SSE:
            raise _bad("xcr0", "AVX without SSE")

    def _check_debugregs(self) -> None:
        if set(self.debugregs) != set(DEBUG_REGS):
            raise _bad("debugregs", f"not exactly {', '.join(DEBUG_REGS)}")
        for name, value in self.debugregs.items():
            _int(value, 32 if name in ("dr6", "dr7") else 64, f"debugregs.{name}")

    def _check_events(self) -> None:
        exc = self.pending_exception
        if exc is not None:
            _int(exc.vector, 8, "pending_exception.vector", 31)
            if exc.vector == 2:
                raise _bad("pending_exception.vector", "an NMI is nmi_pending")
            if exc.error_code is not None:
                _int(exc.error_code, 32, "pending_exception.error_code")
        if self.pending_interrupt is not None:
            _int(self.pending_interrupt, 8, "pending_interrupt")
        for name in ("nmi_pending", "nmi_masked"):
            _bool(getattr(self, name), name)


def _bool(value: object, where: str) -> bool:
    if type(value) is not bool:
        raise _bad(where, "not true or false")
    return value


def _msrs_from_dict(data: object) -> dict[int, int]:
    if not isinstance(data, dict):
        raise _bad("msrs", "not an object")
    msrs = {}
    for key, value in data.items():
        try:
            index = int(key, 16) if isinstance(key, str) else -1
        except ValueError:
            index = -1
        if index < 0 or f"{index:#x}" != key or index not in CPU_MSRS:
            raise _bad("msrs", f"key {_shown(key)} is not a carried MSR's 0x-index")
        msrs[index] = _int(value, 64, f"msrs[{key}]")
    return msrs


def _exception_from_dict(data: object) -> PendingException | None:
    if data is None:
        return None
    d = _object(data, ("vector", "error_code"), "pending_exception")
    error = d["error_code"]
    return PendingException(_int(d["vector"], 8, "pending_exception.vector"),
                            None if error is None else
                            _int(error, 32, "pending_exception.error_code"))


