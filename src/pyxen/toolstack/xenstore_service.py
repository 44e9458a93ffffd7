"""Serving XenStore to a domain, as Xen's toolstack and xenstored do together.

The store ring lives in a special page of the guest's physmap (Xen's HVM special-page
region just below 0xFF000000, reserved in the e820), its event channel is bound to
xenstored in dom0 — here, pyxen itself — and both are advertised through
HVM_PARAM_STORE_PFN / STORE_EVTCHN. The domain's /local/domain/<id> subtree is created with
libxl's permissions (readable by the domain; `data`, `control/shutdown` and friends
writable by it) before the domain is introduced.
"""

from __future__ import annotations

import uuid

from pyxen.abi.hvm import HVM_PARAM_STORE_EVTCHN, HVM_PARAM_STORE_PFN
from pyxen.domain.builder import SPECIAL_PAGES_START
from pyxen.domain.domain import Domain
from pyxen.domain.memory import PAGE_SHIFT, PAGE_SIZE
from pyxen.xenstore.client import Client
from pyxen.xenstore.ring import GuestRing
from pyxen.xenstore.xenstored import XenStored

SPECIALPAGE_XENSTORE = 4  # Xen's index of the store ring among the special pages
STORE_GFN = (SPECIAL_PAGES_START >> PAGE_SHIFT) + SPECIALPAGE_XENSTORE
XENSTORED_PORT = 1  # xenstored's own end of the store channel, as dom0 sees it
WRITABLE_BY_DOMAIN = ("data", "drivers", "feature", "attr", "error", "control/shutdown",
                      "control/feature-poweroff", "control/feature-reboot",
                      "control/feature-suspend", "device")


def write_domain_nodes(xs: Client, domain: Domain) -> None:
    """The nodes libxl writes for a new domain, with its permissions."""
    domid = domain.domid
    home = f"/local/domain/{domid}"
    vm = f"/vm/{uuid.UUID(bytes=domain.handle[:16])}"
    readonly = ["n0", f"r{domid}"]  # owner dom0, the domain may read
    for path in (home, vm):
        xs.write(path, b"")
        xs.set_perms(path, readonly)
    xs.write(f"{home}/name", domain.config.name.encode())
    xs.write(f"{home}/domid", str(domid).encode())
    xs.write(f"{home}/vm", vm.encode())
    xs.write(f"{home}/memory/target", str(domain.config.memory_mib * 1024).encode())
    xs.write(f"{home}/memory/static-max", str(domain.max_pages * 4).encode())
    xs.write(f"{vm}/name", domain.config.name.encode())
    xs.write(f"{vm}/uuid", str(uuid.UUID(bytes=domain.handle[:16])).encode())
    for sub in WRITABLE_BY_DOMAIN:
        xs.write(f"{home}/{sub}", b"")
        xs.set_perms(f"{home}/{sub}", [f"n{domid}"])  # owned by the domain


def release_domain(xenstored: XenStored, domid: int, handle: bytes) -> None:
    """What libxl does when a domain is destroyed: remove its nodes and release it from the
    store (its watches and transactions go, @releaseDomain fires)."""
    toolstack = Client.in_process(xenstored, domid=0)
    try:
        for path in (f"/local/domain/{domid}", f"/vm/{uuid.UUID(bytes=handle[:16])}"):
            if toolstack.exists(path):
                toolstack.rm(path)
        if domid != 0 and toolstack.is_domain_introduced(domid):
            toolstack.release(domid)
    finally:
        toolstack.close()


def attach_xenstore(domain: Domain, xenstored: XenStored) -> GuestRing:
    """Give `domain` a store ring served by `xenstored`; call before the domain starts."""
    mem = domain.memory
    with domain.memory_lock:
        mem.populate(STORE_GFN)
        mem.commit()
    domain.special_frames[STORE_GFN] = "xenstore"
    page = memoryview(mem.map)[STORE_GFN << PAGE_SHIFT : (STORE_GFN << PAGE_SHIFT) + PAGE_SIZE]
    holder: list[GuestRing] = []
    port = domain.evtchn.bind_service(0, XENSTORED_PORT, consumer=lambda: holder[0].kick())
    ring = GuestRing(xenstored, domain.domid, page,
                     notify=lambda: domain.evtchn.notify_from_service(port))
    holder.append(ring)
    domain.hvm_params[HVM_PARAM_STORE_PFN] = STORE_GFN
    domain.hvm_params[HVM_PARAM_STORE_EVTCHN] = port
    toolstack = Client.in_process(xenstored, domid=0)
    try:
        write_domain_nodes(toolstack, domain)
        if domain.domid != 0:  # dom0 is xenstored's own domain, never introduced
            toolstack.introduce(domain.domid, STORE_GFN, port)
    finally:
        toolstack.close()
    return ring
