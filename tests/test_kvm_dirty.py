"""KVM dirty logging: the frames a guest writes between two fetches, and only those."""

from __future__ import annotations

import ctypes as C
import mmap
import os

import pytest

from pyxen.domain.backend import Exit, Regs
from pyxen.domain.builder import _flat_segments
from pyxen.kvm.vm import KvmMachine, kvm_usable

PORT = 0xE8
SIZE = 2 << 20
# mov %eax,0x5000; out %eax,$PORT; mov %eax,0x9000; out; mov 0x7000,%eax (a read); out; jmp
GUEST = bytes([0xA3, 0, 0x50, 0, 0, 0xE7, PORT, 0xA3, 0, 0x90, 0, 0, 0xE7, PORT,
               0xA1, 0, 0x70, 0, 0, 0xE7, PORT, 0xEB, 0xE9])


@pytest.fixture
def vm():
    if not kvm_usable()[0]:
        pytest.skip("KVM is not usable here")
    machine = KvmMachine([])
    fd = os.memfd_create("ram")
    os.ftruncate(fd, SIZE)
    ram = mmap.mmap(fd, SIZE)
    anchor = C.c_char.from_buffer(ram)
    machine.map_memory(0, 0, SIZE, C.addressof(anchor))
    ram[0x1000 : 0x1000 + len(GUEST)] = GUEST
    vcpu = machine.create_vcpu(0, PORT)
    vcpu.set_cpuid(machine.host_cpuid())
    vcpu.set_sregs(_flat_segments(vcpu.sregs()))
    regs = Regs(rip=0x1000, rflags=2)
    vcpu.set_initial_regs(regs)
    yield machine, vcpu
    machine.close()
    del anchor
    ram.close()
    os.close(fd)


def step(vcpu) -> None:  # type: ignore[no-untyped-def]
    assert vcpu.run() is Exit.HYPERCALL  # each store/load is followed by an out to PORT


def test_logging_off_reports_nothing(vm) -> None:
    machine, vcpu = vm
    step(vcpu)
    assert machine.fetch_dirty() == set()


def test_guest_writes_are_reported_once(vm) -> None:
    machine, vcpu = vm
    machine.set_dirty_logging(True)
    step(vcpu)  # wrote 0x5000
    assert machine.fetch_dirty() == {0x5}
    assert machine.fetch_dirty() == set()  # the fetch started a new record
    step(vcpu)  # wrote 0x9000
    step(vcpu)  # read 0x7000: not a write
    assert machine.fetch_dirty() == {0x9}
    step(vcpu)  # 0x5000 again
    assert machine.fetch_dirty() == {0x5}
    machine.set_dirty_logging(False)
    step(vcpu)
    assert machine.fetch_dirty() == set()
