"""HYPERVISOR_mmuext_op for HVM/PVH callers (xen/arch/x86/mm.c do_mmuext_op, Xen 4.17).

The call is in Xen's HVM hypercall table, but it works only on PV page owners:
- count == MMU_UPDATE_PREEMPTED with a NULL list is the continuation probe: it returns
  `foreigndom` unchanged;
- with the preempted bit set, the done count is read from `pdone` (a bad pointer is ignored);
- the op list is not range-checked for an HVM caller (guest_handle_okay passes);
- the page owner: DOMID_SELF is the caller, which is HVM: -EINVAL; the caller's own id or a
  missing domain: -ESRCH; DOMID_IO / DOMID_XEN are Xen's PV-like pseudo-domains, for which the
  dummy XSM (XSM_TARGET) refuses an unprivileged caller: -EPERM;
- for dom0 on DOMID_IO / DOMID_XEN, each op is read (-EFAULT); an HVM caller may only pin and
  unpin (-EOPNOTSUPP otherwise), and no frame is owned by those pseudo-domains (-EINVAL). The
  number of ops done is added to `*pdone`.
"""

from __future__ import annotations

import contextlib
import ctypes as C
from typing import TYPE_CHECKING

from pyxen.abi import xen as X
from pyxen.abi.errno import EFAULT, EINVAL, EOPNOTSUPP, ESRCH, XenError

from .hypercall import HypercallTable
from .xsm import xsm_target

if TYPE_CHECKING:
    from pyxen.domain.vcpu import Vcpu

PIN_UNPIN = {X.MMUEXT_PIN_L1_TABLE, X.MMUEXT_PIN_L2_TABLE, X.MMUEXT_PIN_L3_TABLE,
             X.MMUEXT_PIN_L4_TABLE, X.MMUEXT_UNPIN_TABLE}
PSEUDO_DOMAINS = {X.DOMID_IO: "dom_io", X.DOMID_XEN: "dom_xen"}


def do_mmuext_op(vcpu: Vcpu, uops: int, count: int, pdone: int, foreigndom: int,
                 *_: int) -> int:
    d = vcpu.domain
    count &= 0xFFFF_FFFF
    foreigndom &= 0xFFFF_FFFF
    if count == X.MMU_UPDATE_PREEMPTED and uops == 0:
        return foreigndom - (1 << 32) if foreigndom >> 31 else foreigndom  # (int)foreigndom
    guest = vcpu.guest()
    done = 0
    if count & X.MMU_UPDATE_PREEMPTED:
        count &= ~X.MMU_UPDATE_PREEMPTED
        if pdone:
            with contextlib.suppress(XenError):  # Xen ignores a failed read here
                done = guest.read_u32(pdone)
    domid = foreigndom & 0xFFFF  # domid_t
    if domid == X.DOMID_SELF:
        raise XenError(EINVAL, "the page owner is an HVM domain")
    owner = PSEUDO_DOMAINS.get(domid)
    if owner is None:
        # Naming oneself by id is refused; any other real domain in pyxen is HVM.
        if domid == d.domid or domid not in d.peers:
            raise XenError(ESRCH, f"page owner {domid}")
        raise XenError(EINVAL, "the page owner is an HVM domain")
    xsm_target(d, owner)
    size = C.sizeof(X.compat_mmuext_op if vcpu.compat else X.mmuext_op)
    rc, i = 0, 0
    for i in range(count):  # the first op already fails, one way or another
        try:
            cmd = int.from_bytes(guest.read(uops + i * size, size)[:4], "little")
        except XenError:
            rc = -EFAULT
            break
        rc = -EOPNOTSUPP if cmd not in PIN_UNPIN else -EINVAL  # no page of a pseudo-domain
        break
    else:
        i = count
    if pdone:
        guest.write_u32(pdone, done + i)
    return rc


def register(table: HypercallTable) -> None:
    table.register(X.HYPERVISOR_mmuext_op, do_mmuext_op,
                   lambda a: f"{a[0]:#x}, count {a[1]:#x}, done {a[2]:#x}, foreigndom {a[3]:#x}")
