"""HYPERVISOR_multicall: a batch of hypercalls in one exit (xen/common/multicall.c).

Each entry's result is written back as it completes; a bad entry pointer stops the batch with
-EFAULT; a multicall inside a multicall fails that entry with -EINVAL.
"""

from __future__ import annotations

import ctypes as C
from typing import TYPE_CHECKING

from pyxen.abi.errno import EFAULT, EINVAL, XenError
from pyxen.abi.xen import HYPERVISOR_multicall, compat_multicall_entry, multicall_entry

from .hypercall import HypercallTable

if TYPE_CHECKING:
    from pyxen.domain.vcpu import Vcpu


def make_do_multicall(table: HypercallTable):  # type: ignore[no-untyped-def]
    def do_multicall(vcpu: Vcpu, call_list: int, nr_calls: int, *_: int) -> int:
        if vcpu.in_multicall:
            raise XenError(EINVAL, "multicall reentry")
        entry_cls = compat_multicall_entry if vcpu.compat else multicall_entry
        size = C.sizeof(entry_cls)
        mask = 0xFFFF_FFFF if vcpu.compat else (1 << 64) - 1
        field = entry_cls.result.offset
        guest = vcpu.guest()
        vcpu.in_multicall = True
        try:
            for i in range(nr_calls & 0xFFFF_FFFF):
                entry = guest.read_struct(entry_cls, call_list + i * size)
                result = table.call(vcpu, entry.op, tuple(entry.args[:5]))
                if vcpu.domain.stopping:
                    return 0
                try:
                    write = guest.write_u32 if vcpu.compat else guest.write_u64
                    write(call_list + i * size + field, result & mask)
                except XenError as e:
                    raise XenError(EFAULT) from e
        finally:
            vcpu.in_multicall = False
        return 0

    return do_multicall


def register(table: HypercallTable) -> None:
    table.register(HYPERVISOR_multicall, make_do_multicall(table))
