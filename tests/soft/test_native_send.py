"""EVTCHNOP_send on IPI ports in the software CPU's OUT hook (native_send.c), on a bare
engine in long mode with 4-level paging, against the order Xen's evtchn_2l_set_pending
keeps (pending bit; nothing more if it was set or the port is masked; the vCPU's selector
bit; then evtchn_upcall_pending, raised or already up) -- and everything it must leave to
Python untouched: ports not listed, a disabled list, an argument it cannot read, 32-bit
callers, CPL 3.
"""

from __future__ import annotations

import ctypes as C
import struct

import pytest
from unicorn import UC_ARCH_X86, UC_MODE_64, Uc
from unicorn import x86_const as X

from guestkit import image as guest_image
from pyxen.abi.xen import shared_info, vcpu_info
from pyxen.domain.domain import DomainConfig
from pyxen.soft import native
from pyxen.soft.cpustate import ENV_HFLAGS
from pyxen.toolstack.accel import machine_factory
from pyxen.toolstack.embedded import run_image

from .test_native import out_hook_adder

PORT = 0xE8
EVENT_CHANNEL_OP, EVTCHNOP_SEND = 32, 4
RAM = 4 << 20
PML4, PDPT, PD = 0x1000, 0x2000, 0x3000
CODE, ARG = 0x10000, 0x20000
IPI, IPI_MASKED, OTHER = 5, 70, 9

pytestmark = pytest.mark.skipif(native.available() is not None,
                                reason=f"native hook unavailable: {native.available()}")


class Machine:
    """One bare 64-bit engine with paging, the native OUT hook and a send table listing
    port IPI (and IPI_MASKED) for vCPU 1."""

    def __init__(self) -> None:
        self.ram = (C.c_uint8 * RAM)()
        self.uc = uc = Uc(UC_ARCH_X86, UC_MODE_64)
        uc.mem_map_ptr(0, RAM, 7, C.addressof(self.ram))
        # two 2 MiB pages, user pages too (the CPL 3 test runs the same code)
        tables = struct.pack("<Q", PDPT | 7) + bytes(4088) + struct.pack("<Q", PD | 7)
        tables += bytes(4088) + struct.pack("<QQ", 0x87, 0x20_0087)
        C.memmove(C.addressof(self.ram) + PML4, tables, len(tables))
        C.memmove(C.addressof(self.ram) + CODE, b"\xe7\xe8", 2)  # out %eax,$0xe8
        uc.reg_write(X.UC_X86_REG_CR3, PML4)
        uc.reg_write(X.UC_X86_REG_CR4, 0x20)  # PAE
        uc.msr_write(0xC000_0080, 0x500)  # EFER.LME|LMA
        uc.reg_write(X.UC_X86_REG_CR0, 0x8000_0011)  # PG|ET|PE
        self.shared = shared_info()
        self.info = [vcpu_info(), vcpu_info()]
        self.ipi = native.IpiSends()
        self.woken: list[tuple[int, bool]] = []
        self.ipi.woken = lambda vcpu, raised: self.woken.append((vcpu, raised))
        self.slow: list[int] = []
        self.hook = native.install_out_hook(uc, PORT, self._slow, out_hook_adder(uc),
                                            (self.ipi.table, self.ipi.call_woken))
        self.hook.set_answers([(17, 0, 0x4_0013)])  # a listed call: native answers are on
        self.hook.set_ram((C.addressof(self.ram), 0, RAM))
        self.ipi.publish(C.addressof(self.shared), [C.addressof(i) for i in self.info],
                         {IPI: 1, IPI_MASKED: 1})
        self.ipi.enabled = True

    def _slow(self, uc: Uc, port: int, size: int, value: int, _: object) -> None:
        self.slow.append(value)

    def send(self, port: int, arg: int = ARG) -> int:
        C.memmove(C.addressof(self.ram) + ARG, struct.pack("<I", port), 4)
        self.uc.reg_write(X.UC_X86_REG_RAX, EVENT_CHANNEL_OP)
        self.uc.reg_write(X.UC_X86_REG_RDI, EVTCHNOP_SEND)
        self.uc.reg_write(X.UC_X86_REG_RSI, arg)
        self.uc.emu_start(CODE, CODE + 2)
        return self.uc.reg_read(X.UC_X86_REG_RAX)

    def pending(self, port: int) -> bool:
        return bool(self.shared.evtchn_pending[port // 64] >> (port % 64) & 1)

    def state(self) -> tuple[int, int, int, int]:
        words = (self.shared.evtchn_pending[0], self.shared.evtchn_pending[1],
                 self.info[1].evtchn_pending_sel, self.info[1].evtchn_upcall_pending)
        return words  # type: ignore[return-value]


@pytest.fixture
def m() -> Machine:
    return Machine()


def test_a_send_sets_pending_selector_and_upcall_and_raises_it(m: Machine) -> None:
    assert m.send(IPI) == 0
    assert m.pending(IPI) and m.info[1].evtchn_pending_sel == 1
    assert m.info[1].evtchn_upcall_pending == 1 and m.info[0].evtchn_upcall_pending == 0
    assert m.woken == [(1, True)] and m.slow == [] and m.ipi.table.sent == 1


def test_a_port_already_pending_signals_nothing_new(m: Machine) -> None:
    m.send(IPI)
    m.info[1].evtchn_pending_sel = m.info[1].evtchn_upcall_pending = 0  # the guest took it
    assert m.send(IPI) == 0
    assert m.state() == (1 << IPI, 0, 0, 0) and m.woken == [(1, True)]


def test_a_masked_port_only_becomes_pending(m: Machine) -> None:
    m.shared.evtchn_mask[1] = 1 << (IPI_MASKED - 64)
    assert m.send(IPI_MASKED) == 0
    assert m.state() == (0, 1 << (IPI_MASKED - 64), 0, 0) and m.woken == []


def test_an_upcall_already_up_is_a_kick(m: Machine) -> None:
    m.info[1].evtchn_upcall_pending = 1  # another port's event, not yet taken
    assert m.send(IPI) == 0
    assert m.info[1].evtchn_pending_sel == 1 and m.woken == [(1, False)]


def test_a_selector_bit_already_set_raises_nothing(m: Machine) -> None:
    m.info[1].evtchn_pending_sel = 1
    assert m.send(IPI) == 0
    assert m.pending(IPI) and m.info[1].evtchn_upcall_pending == 0 and m.woken == []


def test_what_is_not_listed_or_not_readable_goes_to_python_untouched(m: Machine) -> None:
    before = bytes(m.shared)
    assert m.send(OTHER) == EVENT_CHANNEL_OP  # not an IPI port on the list
    assert m.send(RAM // 64 * 64 + 64) == EVENT_CHANNEL_OP  # past the table
    assert m.send(IPI, arg=RAM + 0x1000) == EVENT_CHANNEL_OP  # argument not mapped
    assert m.send(IPI, arg=1 << 47) == EVENT_CHANNEL_OP  # not canonical
    m.ipi.enabled = False
    assert m.send(IPI) == EVENT_CHANNEL_OP
    assert bytes(m.shared) == before and m.woken == [] and len(m.slow) == 5


def test_cpl3_and_other_event_channel_ops_go_to_python(m: Machine) -> None:
    m.uc.reg_write(X.UC_X86_REG_RDI, 0)
    C.memmove(C.addressof(m.ram) + ARG, struct.pack("<I", IPI), 4)
    m.uc.reg_write(X.UC_X86_REG_RAX, EVENT_CHANNEL_OP)
    m.uc.reg_write(X.UC_X86_REG_RSI, ARG)
    m.uc.emu_start(CODE, CODE + 2)  # EVTCHNOP_alloc_unbound
    env = native.env_address(m.uc, native.find_env())
    flags = C.c_uint32.from_address(env + ENV_HFLAGS)
    flags.value = flags.value & ~3 | 3
    assert m.send(IPI) == EVENT_CHANNEL_OP
    assert m.slow == [EVENT_CHANNEL_OP, EVENT_CHANNEL_OP] and not m.pending(IPI)


def test_no_ram_view_no_native_send(m: Machine) -> None:
    m.hook.set_ram(None)
    assert m.send(IPI) == EVENT_CHANNEL_OP and not m.pending(IPI)


def _ping_pong(**config: object) -> tuple[str, int, str]:
    """The evtchn_latency guest (2 vCPUs, IPIs both ways) on the software CPU: how it
    ended, how many sends the OUT hooks made, and what the guest reported."""
    image = guest_image("evtchn_latency")
    domains = []
    result = run_image(image, DomainConfig(name="ipi", memory_mib=16, vcpus=2,
                                           cmdline="samples=200 warmup=10", **config),
                       prepare=domains.append, timeout=120,
                       machine_factory=machine_factory("soft")[0])
    return (result.result.outcome.name, domains[0].machine.ipi.table.sent,
            result.console.decode(errors="replace"))


def test_a_domains_ipis_are_sent_in_the_hook_and_all_arrive(guests: None) -> None:
    outcome, sent, console = _ping_pong()
    assert outcome == "POWEROFF", console[-2000:]
    assert "TEST evtchn_latency.all_answered PASS" in console
    assert "TEST evtchn_latency.on_vcpu1 PASS" in console
    # 210 pings and as many pongs; the first send on each port is Python's (it lists them)
    assert 2 * 210 - 2 <= sent <= 2 * 210 + 2


def test_trace_makes_no_native_sends(guests: None) -> None:
    outcome, sent, console = _ping_pong(trace=True)
    assert outcome == "POWEROFF" and sent == 0
    assert "TEST evtchn_latency.all_answered PASS" in console
