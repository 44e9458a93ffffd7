"""HYPERVISOR_sysctl: host-wide control for the toolstack (xen/common/sysctl.c, Xen 4.17).

Xen's order: copy the whole xen_sysctl in (-EFAULT), the interface version (-EACCES), then the
dummy XSM check (XSM_PRIV): an unprivileged domain gets -EPERM for every sub-op.

As dom0 pyxen answers XEN_SYSCTL_physinfo (the host pyxen runs on: its CPUs and memory) and
XEN_SYSCTL_getdomaininfolist (the domains pyxen runs). Xen's other sub-ops (console ring,
trace buffers, cpupools, power management, livepatch, ...) return -EOPNOTSUPP: pyxen has none
of that machinery. Numbers Xen does not know are -ENOSYS (arch_do_sysctl's default).
"""

from __future__ import annotations

import ctypes as C
import os
from pathlib import Path
from typing import TYPE_CHECKING

from pyxen.abi import domctl as D
from pyxen.abi import sysctl as S
from pyxen.abi.errno import EACCES, ENOSYS, EOPNOTSUPP, XenError
from pyxen.abi.xen import HYPERVISOR_sysctl

from .domctl import getdomaininfo
from .hypercall import HypercallTable
from .xsm import xsm_priv

if TYPE_CHECKING:
    from pyxen.domain.vcpu import Vcpu

KNOWN = {v for k, v in vars(S).items() if k.startswith("XEN_SYSCTL_") and k[11:12].islower()}
MAX_NUMNODES = 64  # x86 NODES_SHIFT 6


TOPOLOGY = Path("/sys/devices/system/cpu/cpu0/topology")


def _cpu0_siblings(name: str) -> int:
    """How many CPUs a Linux topology list of CPU 0 names ("0-3,8"), 1 if unknown."""
    try:
        text = (TOPOLOGY / name).read_text().strip()
    except OSError:
        return 1
    count = 0
    for part in filter(None, text.split(",")):
        first, _, last = part.partition("-")
        count += int(last or first) - int(first) + 1
    return max(count, 1)


def physinfo(vcpu: Vcpu) -> S.xen_sysctl_physinfo:
    """The host as Xen would describe it: one NUMA node, the host's CPUs and RAM, the guest TSC
    rate as cpu_khz; hw_cap (Xen's boot CPU feature words) is left 0."""
    cpus = os.cpu_count() or 1
    threads = _cpu0_siblings("thread_siblings_list")
    cores = max(_cpu0_siblings("core_siblings_list") // threads, 1)
    page = os.sysconf("SC_PAGE_SIZE")
    total = os.sysconf("SC_PHYS_PAGES") * page >> 12
    free = os.sysconf("SC_AVPHYS_PAGES") * page >> 12
    return S.xen_sysctl_physinfo(
        threads_per_core=threads, cores_per_socket=cores, nr_cpus=cpus, max_cpu_id=cpus - 1,
        nr_nodes=1, max_node_id=MAX_NUMNODES - 1, cpu_khz=vcpu.domain.tsc_khz,
        capabilities=S.XEN_SYSCTL_PHYSCAP_hvm | S.XEN_SYSCTL_PHYSCAP_hap,
        total_pages=total, free_pages=free, max_mfn=total - 1)


def do_sysctl(vcpu: Vcpu, arg: int, *_: int) -> int:
    guest = vcpu.guest()
    op = guest.read_struct(S.xen_sysctl, arg)
    if op.interface_version != S.XEN_SYSCTL_INTERFACE_VERSION:
        raise XenError(EACCES, f"interface version {op.interface_version:#x}")
    xsm_priv(vcpu.domain)
    if op.cmd == S.XEN_SYSCTL_physinfo:
        op.u.physinfo = physinfo(vcpu)
    elif op.cmd == S.XEN_SYSCTL_getdomaininfolist:
        lst = op.u.getdomaininfolist
        peers = vcpu.domain.peers
        ids = sorted(i for i in peers if i >= lst.first_domain)[: lst.max_domains]
        size = C.sizeof(D.xen_domctl_getdomaininfo)
        for n, domid in enumerate(ids):
            guest.write_struct(lst.buffer + n * size, getdomaininfo(peers[domid]))
        lst.num_domains = len(ids)
    elif op.cmd in KNOWN:
        raise XenError(EOPNOTSUPP, f"sysctl {op.cmd}")
    else:
        raise XenError(ENOSYS)
    guest.write_struct(arg, op)
    return 0


def register(table: HypercallTable) -> None:
    table.register(HYPERVISOR_sysctl, do_sysctl, lambda args: hex(args[0]))
