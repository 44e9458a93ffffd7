"""The native delivery of external interrupts (native_deliver.c) against pyxen.soft.interrupts.

Two identical CPUs (real engines, guest RAM, page tables, GDT, IDT, TSS; see
test_interrupts_delivery.Cpu) get the same external interrupt, one through Python's deliver,
one through native.deliver_external, over states drawn by hypothesis: gates of every kind
and presence, IST stacks, code segments that are wrong in each way, CPL 3 and 0, stacks
across a page boundary, on a read-only or absent page, non-canonical, a TSS too short, an
IDT too short. Where the C path delivers, the result (registers, every byte of the saved
CPU state, every byte of RAM) must be Python's; where it declines, nothing may have changed.
"""

from __future__ import annotations

import ctypes as C
import hashlib
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pyxen.soft import native
from pyxen.soft.interrupts import Event, TripleFault, Unsupported
from soft.test_interrupts_delivery import (
    CODE,
    HANDLERS,
    IST1,
    KCS,
    KDS,
    RAM,
    RSP0,
    STACK,
    UCS,
    Cpu,
)

pytestmark = pytest.mark.skipif(native.available() is not None,
                                reason=f"native code unavailable: {native.available()}")

CODE64_HI = 0x00AF9A00  # the high dword of KCS's descriptor (L=1, P, DPL 0, type 0xA)


def _state(c: Cpu) -> tuple[bytes, bytes, str]:
    ctx = c.ctx
    raw = C.string_at(ctx.env_address(), ctx.size - ctx.header)
    return bytes(c.regs), raw, hashlib.sha256(c.mem.read(0, RAM)).hexdigest()


# One deviation at a time from a valid state, so that each is drawn often.
DEVIATIONS = {
    "none": {}, "none2": {},
    "gate absent": {"present": False}, "task gate": {"kind": 0x5},
    "call gate": {"kind": 0xC}, "16-bit gate": {"kind": 0x6},
    "null selector": {"selector": 0}, "LDT selector": {"selector": KCS | 4},
    "selector past GDT": {"selector": 0x100}, "data segment": {"selector": KDS},
    "user code from CPL 0": {"selector": UCS},
    "CS not 64-bit": {"cs_hi": CODE64_HI & ~(1 << 21)}, "CS with D": {"cs_hi": CODE64_HI | 1 << 22},
    "CS absent": {"cs_hi": CODE64_HI & ~(1 << 15)}, "CS DPL 3": {"cs_hi": CODE64_HI | 3 << 13},
    "CS conforming": {"cs_hi": CODE64_HI | 1 << 10}, "CS not code": {"cs_hi": CODE64_HI & ~(1 << 11)},
    "IST 5 past TSS": {"ist": 5}, "short TSS": {"tr_limit": 0x23},
    "TSS ends in IST1": {"tr_limit": 0x2B}, "short IDT": {"idt_limit": 0x40F},
    "stack read-only": {"stack_flags": 1}, "stack absent": {"stack_flags": 0},
    "stack non-canonical": {"rsp": 0x0007_0000_0000_0008},
    "stack past RAM": {"rsp": (2 << 20) + 0x100}, "stack wraps": {"rsp": 0x20},
    "frame straddles a page": {"rsp": 0x7010},
}
BASE = {"present": True, "kind": 0xE, "selector": KCS, "cs_hi": None, "ist": 0,
        "tr_limit": None, "idt_limit": None, "stack_flags": None, "rsp": STACK}


def _setup(c: Cpu, p: dict) -> None:
    v = p["vector"]
    c.gate(v, HANDLERS + 16 * (v & 0xF) + p["offset_high"], ist=p["ist"], kind=p["kind"],
           present=p["present"], selector=p["selector"], dpl=p["gate_dpl"])
    if p["cs_hi"] is not None:  # KCS's descriptor, changed
        c.mem.write(0x3000 + 8, (0x0000FFFF | p["cs_hi"] << 32).to_bytes(8, "little"))
    if p["ring3"]:
        c.to_ring3()
    c.regs.rsp = p["rsp"]
    if p["stack_flags"] is not None:
        for page in (p["rsp"] - 1, p["rsp"] - 48, RSP0 - 8, IST1 - 8):
            if 0 <= page < 2 << 20:
                c.map(page, p["stack_flags"])
    if p["tr_limit"] is not None:
        c.ctx.seg(7).limit = p["tr_limit"]
    if p["idt_limit"] is not None:
        c.ctx.seg(9).limit = p["idt_limit"]
    if p["wp_off"]:
        c.ctx.set_cr(0, c.ctx.cr(0) & ~(1 << 16))


params = st.builds(
    lambda deviation, **free: {**BASE, **free, **DEVIATIONS[deviation]},
    deviation=st.sampled_from(sorted(DEVIATIONS)),
    vector=st.integers(32, 255),
    offset_high=st.sampled_from([0, 0x7FFF_0000_0000]),
    ist=st.sampled_from([0, 1, 2]),
    kind=st.sampled_from([0xE, 0xF]),
    gate_dpl=st.integers(0, 3),
    ring3=st.booleans(),
    rsp=st.sampled_from([STACK, STACK + 7, 0x7018, STACK - 0x9F8]),
    wp_off=st.booleans(),
)


@pytest.fixture
def pair() -> Iterator[tuple[Cpu, Cpu]]:
    made = (Cpu(), Cpu())
    yield made
    for c in made:
        c.close()


def _python(c: Cpu, vector: int) -> str:
    try:
        c.deliver(Event(vector, external=True))  # GuestMemory: no native window, Python
    except (TripleFault, Unsupported) as e:
        return type(e).__name__
    return "delivered"


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                   HealthCheck.function_scoped_fixture])
@given(p=params)
def test_native_delivery_is_pythons_or_declines(p: dict) -> None:
    py, nat = Cpu(), Cpu()
    try:
        for c in (py, nat):
            _setup(c, p)
        before = _state(nat)
        outcome = _python(py, p["vector"])
        written = native.deliver_external(nat.regs, nat.ctx.env_address(),
                                          (nat.mem.host_address, 0, RAM), p["vector"])
        if written is None:
            assert _state(nat) == before, "declined, but something changed"
            return
        nat.ctx.recompute_hflags(nat.regs.rflags)
        assert outcome == "delivered"
        assert _state(nat) == _state(py)
        assert all(n > 0 and gpa + n <= RAM for gpa, n in written)
        assert sum(n for _, n in written) == 40  # SS, RSP, RFLAGS, CS, RIP
    finally:
        py.close()
        nat.close()


def test_the_plain_cases_are_taken_natively(pair: tuple[Cpu, Cpu]) -> None:
    """Not a path that always declines: same CPL, IST, and ring 3 to ring 0 on RSP0."""
    c, _ = pair
    written = native.deliver_external(c.regs, c.ctx.env_address(), (c.mem.host_address, 0, RAM),
                                      0xF3)
    assert written is not None and c.regs.rsp == STACK - 40
    assert c.regs.rip == HANDLERS + 16 * 0xF3 and c.frame(5) == [CODE, KCS, 0x202, STACK, KDS]
    c.ctx.recompute_hflags(c.regs.rflags)
    assert c.run_handler() == 0xF3
    for ist, ring3, top in ((1, False, IST1), (0, True, RSP0)):
        c2 = Cpu()
        try:
            c2.gate(0x40, HANDLERS + 16 * 0x40, ist=ist)
            if ring3:
                c2.to_ring3()
            assert native.deliver_external(c2.regs, c2.ctx.env_address(),
                                           (c2.mem.host_address, 0, RAM), 0x40) is not None
            assert c2.regs.rsp == top - 40 and c2.ctx.seg(1).selector == KCS
        finally:
            c2.close()
