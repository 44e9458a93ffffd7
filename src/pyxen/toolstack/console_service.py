"""Giving a domain its PV console, as libxl and xenconsoled do together for every domain.

The ring lives in the console special page of the guest's physmap (libxc's
SPECIALPAGE_CONSOLE, index 7 of the HVM special-page region below 0xFF000000, which the e820
reserves), its event channel is bound to the console back end standing in dom0, and both
are advertised through HVM_PARAM_CONSOLE_PFN / CONSOLE_EVTCHN. With a XenStore, the
domain's `console` nodes are written as libxl writes them for console 0 (read-only to the
guest, except `backend-id`), with the back end's directory under dom0.
"""

from __future__ import annotations

from collections.abc import Callable

from pyxen.abi.hvm import HVM_PARAM_CONSOLE_EVTCHN, HVM_PARAM_CONSOLE_PFN
from pyxen.backends.console import ConsoleBackend
from pyxen.backends.xenbus import remove_path_and_empty_parents
from pyxen.domain.domain import Domain
from pyxen.xenstore.client import Client
from pyxen.xenstore.xenstored import XenStored

from .service_ring import (
    SERVICE_DOMID,
    SPECIAL_GFN_BASE,
    ServiceRing,
    place_service_ring,
    ring_page,
)

SPECIALPAGE_CONSOLE = 7  # libxc's index of the console ring among the special pages
CONSOLE_GFN = SPECIAL_GFN_BASE + SPECIALPAGE_CONSOLE
XENCONSOLED_PORT = 2  # the console back end's own end of the channel, as dom0 sees it
BACKEND_DOMID = SERVICE_DOMID
LIBXL_XENCONSOLE_LIMIT = 1048576
LIBXL_XENCONSOLE_PROTOCOL = "vt100"
XenbusStateInitialising = 1


def place_console_ring(domain: Domain, consumer: Callable[[], None]) -> ServiceRing:
    """The guest half: the ring page and its port, advertised by HVM params."""
    return place_service_ring(domain, "console", CONSOLE_GFN, XENCONSOLED_PORT,
                              HVM_PARAM_CONSOLE_PFN, HVM_PARAM_CONSOLE_EVTCHN, consumer)


def console_ring_of(domain: Domain) -> ServiceRing:
    """The console ring `place_console_ring` gave `domain`, from its HVM params."""
    return ServiceRing("console", domain.hvm_params[HVM_PARAM_CONSOLE_PFN],
                       domain.hvm_params[HVM_PARAM_CONSOLE_EVTCHN])


def attach_console(domain: Domain, output: Callable[[bytes], None] | None = None) -> ConsoleBackend:
    """Give `domain` a console ring served by pyxen; call before the domain starts. The
    guest's output goes to `output`, by default the domain's console (source "ring")."""
    holder: list[ConsoleBackend] = []
    ring = place_console_ring(domain, consumer=lambda: holder[0].kick())
    sink = output or (lambda data: domain.console_write(data, source="ring"))
    holder.append(ConsoleBackend(ring_page(domain, ring.gfn), sink,
                                 lambda: domain.evtchn.notify_from_service(ring.port),
                                 name=f"dom{domain.domid} ({domain.config.name})"))
    return holder[0]


def frontend_path(domid: int) -> str:
    return f"/local/domain/{domid}/console"


def backend_path(domid: int) -> str:
    return f"/local/domain/{BACKEND_DOMID}/backend/console/{domid}/0"


def libxl_path(domid: int) -> str:
    return f"/libxl/{domid}/device/console/0"


def write_console_nodes(xenstored: XenStored, domid: int, ring: ServiceRing,
                        tty: str = "") -> None:
    """libxl__device_console_add for console 0 with a xenconsoled back end, for the ring
    the domain was given. `tty`: the terminal the console is on, if any."""
    front, back = frontend_path(domid), backend_path(domid)
    ro = [f"n{BACKEND_DOMID}", f"r{domid}"]  # libxl's ro_frontend_perms and backend_perms
    rw = [f"n{domid}", f"r{BACKEND_DOMID}"]  # frontend_perms: owned by the domain
    xs = Client.in_process(xenstored, domid=0)
    try:
        for tx in xs.transactions():
            with tx:
                if xs.exists(libxl_path(domid), tx.id):
                    xs.rm(libxl_path(domid), tx.id)
                for key, value in (("frontend", front), ("backend", back),
                                   *backend_entries(domid)):
                    xs.write(f"{libxl_path(domid)}/{key}", value, tx.id)
                if xs.exists(front, tx.id):
                    xs.rm(front, tx.id)
                xs.mkdir(front, tx.id)
                xs.set_perms(front, ro, tx.id)
                xs.write(f"{front}/backend", back, tx.id)
                set_node(xs, f"{front}/backend-id", str(BACKEND_DOMID), rw, tx.id)
                for key, value in (
                        ("limit", str(LIBXL_XENCONSOLE_LIMIT)), ("type", "xenconsoled"),
                        ("output", "pty"), ("tty", tty),
                        ("port", str(ring.port)), ("ring-ref", str(ring.gfn))):
                    set_node(xs, f"{front}/{key}", value, ro, tx.id)
                if xs.exists(back, tx.id):
                    xs.rm(back, tx.id)
                xs.mkdir(back, tx.id)
                xs.set_perms(back, ro, tx.id)
                xs.write(f"{back}/frontend", front, tx.id)
                for key, value in backend_entries(domid):
                    xs.write(f"{back}/{key}", value, tx.id)
    finally:
        xs.close()


def backend_entries(domid: int) -> list[tuple[str, str]]:
    return [("frontend-id", str(domid)), ("online", "1"),
            ("state", str(XenbusStateInitialising)), ("protocol", LIBXL_XENCONSOLE_PROTOCOL)]


def set_node(xs: Client, path: str, value: str, perms: list[str], tx: int) -> None:
    xs.write(path, value, tx)
    xs.set_perms(path, perms, tx)


def remove_console_nodes(xenstored: XenStored, domid: int) -> None:
    """What libxl removes with the domain's console device: the back end's directory and
    libxl's record (the front end goes with /local/domain/<id>), each with the parents it
    leaves empty (libxl__xs_path_cleanup)."""
    xs = Client.in_process(xenstored, domid=0)
    try:
        for path in (backend_path(domid), libxl_path(domid)):
            remove_path_and_empty_parents(xs, path)
    finally:
        xs.close()
