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
from collections.abc import Callable

from pyxen.abi.hvm import HVM_PARAM_STORE_EVTCHN, HVM_PARAM_STORE_PFN
from pyxen.domain.domain import Domain
from pyxen.xenstore.client import Client
from pyxen.xenstore.ring import GuestRing
from pyxen.xenstore.xenstored import XenStored

from .service_ring import SPECIAL_GFN_BASE, ServiceRing, place_service_ring, ring_page

SPECIALPAGE_XENSTORE = 4  # Xen's index of the store ring among the special pages
STORE_GFN = SPECIAL_GFN_BASE + SPECIALPAGE_XENSTORE
XENSTORED_PORT = 1  # xenstored's own end of the store channel, as dom0 sees it
WRITABLE_BY_DOMAIN = ("data", "drivers", "feature", "attr", "error", "control/shutdown",
                      "control/feature-poweroff", "control/feature-reboot",
                      "control/feature-suspend", "device")


def write_domain_nodes(xs: Client, domid: int, name: str, handle: bytes, memory_kib: int,
                       static_max_kib: int) -> None:
    """The nodes libxl writes for a new domain, with its permissions."""
    home = f"/local/domain/{domid}"
    vm = f"/vm/{uuid.UUID(bytes=handle[:16])}"
    readonly = ["n0", f"r{domid}"]  # owner dom0, the domain may read
    for path in (home, vm):
        xs.write(path, b"")
        xs.set_perms(path, readonly)
    xs.write(f"{home}/name", name.encode())
    xs.write(f"{home}/domid", str(domid).encode())
    xs.write(f"{home}/vm", vm.encode())
    xs.write(f"{home}/memory/target", str(memory_kib).encode())
    xs.write(f"{home}/memory/static-max", str(static_max_kib).encode())
    xs.write(f"{vm}/name", name.encode())
    xs.write(f"{vm}/uuid", str(uuid.UUID(bytes=handle[:16])).encode())
    for sub in WRITABLE_BY_DOMAIN:
        xs.write(f"{home}/{sub}", b"")
        xs.set_perms(f"{home}/{sub}", [f"n{domid}"])  # owned by the domain


def introduce_domain(xenstored: XenStored, domid: int, name: str, handle: bytes,
                     memory_kib: int, static_max_kib: int, ring: ServiceRing) -> None:
    """libxl's part once the store ring exists: the domain's nodes, then the introduction
    (dom0 is xenstored's own domain, never introduced)."""
    toolstack = Client.in_process(xenstored, domid=0)
    try:
        write_domain_nodes(toolstack, domid, name, handle, memory_kib, static_max_kib)
        if domid != 0:
            toolstack.introduce(domid, ring.gfn, ring.port)
    finally:
        toolstack.close()


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


def place_store_ring(domain: Domain, consumer: Callable[[], None]) -> ServiceRing:
    """The guest half: the ring page and its port, advertised by HVM params."""
    return place_service_ring(domain, "xenstore", STORE_GFN, XENSTORED_PORT,
                              HVM_PARAM_STORE_PFN, HVM_PARAM_STORE_EVTCHN, consumer)


def attach_xenstore(domain: Domain, xenstored: XenStored) -> GuestRing:
    """Give `domain` a store ring served by `xenstored` in this process; call before the
    domain starts."""
    holder: list[GuestRing] = []
    ring = place_store_ring(domain, consumer=lambda: holder[0].kick())
    holder.append(GuestRing(xenstored, domain.domid, ring_page(domain, ring.gfn),
                            notify=lambda: domain.evtchn.notify_from_service(ring.port)))
    introduce_domain(xenstored, domain.domid, domain.config.name, domain.handle,
                     domain.config.memory_mib * 1024, domain.max_pages * 4, ring)
    return holder[0]
