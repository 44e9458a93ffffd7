"""A ring page that a dom0 service shares with a guest: the store and the console.

libxc places each in a special page of the guest's physmap (the HVM special-page region
below 0xFF000000, which the e820 reserves), binds an event channel whose far end is the
service in dom0, and advertises both through a pair of HVM params. The guest half is the
same whether the service runs in this process (embedded mode) or in the host daemon (host
mode, which maps the page from the domain's memfd); only who hears the guest's
notifications differs (`consumer`)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from pyxen.domain.builder import SPECIAL_PAGES_START
from pyxen.domain.domain import Domain
from pyxen.domain.memory import PAGE_SHIFT, PAGE_SIZE

SPECIAL_GFN_BASE = SPECIAL_PAGES_START >> PAGE_SHIFT
SERVICE_DOMID = 0  # the store and console back ends stand in dom0


@dataclass(frozen=True)
class ServiceRing:
    """One ring as the guest sees it: its frame and its event channel port."""

    kind: str  # "xenstore" or "console": the special page's name
    gfn: int
    port: int


def place_service_ring(domain: Domain, kind: str, gfn: int, service_port: int,
                       pfn_param: int, evtchn_param: int,
                       consumer: Callable[[], None]) -> ServiceRing:
    """Populate `gfn`, bind a port to the service (dom0's `service_port`; `consumer` hears
    the guest's notifications) and advertise both; call before the domain starts."""
    with domain.memory_lock:
        domain.memory.populate(gfn)
        domain.memory.commit()
    domain.special_frames[gfn] = kind
    port = domain.evtchn.bind_service(SERVICE_DOMID, service_port, consumer=consumer)
    domain.hvm_params[pfn_param] = gfn
    domain.hvm_params[evtchn_param] = port
    return ServiceRing(kind, gfn, port)


def restored_service_ring(domain: Domain, kind: str, pfn_param: int,
                          evtchn_param: int) -> ServiceRing:
    """The ring a restored domain had, from its HVM params: its frame must be the special
    page of that kind (the daemon maps it), else ValueError."""
    gfn, port = domain.hvm_params[pfn_param], domain.hvm_params[evtchn_param]
    if domain.special_frames.get(gfn) != kind or not domain.memory.is_populated(gfn):
        raise ValueError(f"the saved domain's {kind} ring is not at its special page")
    return ServiceRing(kind, gfn, port)


def ring_page(domain: Domain, gfn: int) -> memoryview:
    """A writable view of guest frame `gfn` in this process."""
    offset = gfn << PAGE_SHIFT
    return memoryview(domain.memory.map)[offset : offset + PAGE_SIZE]
