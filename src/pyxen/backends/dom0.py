"""Domain 0 as the back ends in a domain's own process see the guest: its event channels
and its grants, with Xen's checks.

In host mode a back end's data path (blkback's, netback's) runs in the process of the
domain it serves, as QEMU's Xen back ends run in a per-domain device-model process in
dom0: it reaches the guest's RAM directly, and no request crosses a process boundary. To
the guest it is still domain 0: it binds the port the front end left unbound *for domain
0* (`bound_by_peer`, the same check as any other domain's EVTCHNOP_bind_interdomain), and
maps only what the front end granted *to domain 0* (`pin_for_map`, GTF_permit_access,
the domid, GTF_readonly). This class is that domain 0: a `RemotePeer` to the guest's
hypervisor code, with one local port per back-end channel."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable, Sequence

from pyxen.abi import grant_table as G
from pyxen.abi.errno import EINVAL, XenError
from pyxen.domain.domain import Domain
from pyxen.domain.memory import PAGE_SHIFT, PAGE_SIZE
from pyxen.hv import grant_table

DOM0 = 0


class Dom0:
    """Domain 0's side of the guest's channels and grants, for the back ends in this
    process. Thread-safe: back-end threads bind and notify, vCPU threads ring."""

    domid = DOM0

    def __init__(self, domain: Domain) -> None:
        self.domain = domain
        self.lock = threading.Lock()
        self._next_port = 1
        self.listeners: dict[int, Callable[[], None]] = {}  # our port -> its back end
        self.bound: dict[int, int] = {}  # our port -> the guest's port
        self.pins: Counter[tuple[int, int]] = Counter()  # (ref, flags) -> pins we hold

    # --- event channels: our side ---------------------------------------------------------------
    def bind_interdomain(self, guest_port: int, listener: Callable[[], None]) -> int:
        """EVTCHNOP_bind_interdomain by domain 0 to `guest_port`: our new port. XenError
        (EINVAL) unless the guest left that port unbound for domain 0."""
        with self.lock:
            port, self._next_port = self._next_port, self._next_port + 1
        self.domain.evtchn.bound_by_peer(self, guest_port, port)
        with self.lock:
            self.listeners[port], self.bound[port] = listener, guest_port
        return port

    def notify(self, port: int) -> None:
        """EVTCHNOP_send on our `port`: the guest's end is raised (if still bound to us)."""
        guest_port = self.bound.get(port)
        if guest_port is not None:
            self.domain.evtchn.rung_by_peer(self, [guest_port])

    def close(self, port: int) -> None:
        """EVTCHNOP_close on our `port`: the guest's end becomes unbound (for domain 0)."""
        with self.lock:
            guest_port = self.bound.pop(port, None)
            self.listeners.pop(port, None)
        if guest_port is not None:
            self.domain.evtchn.unbound_by_peer(self, guest_port, port)

    # --- event channels: the guest's calls (RemotePeer) -----------------------------------------
    def ring(self, remote_port: int) -> None:
        """The guest sent on its end of our `remote_port` (called under its event lock:
        the listener only wakes its back end)."""
        listener = self.listeners.get(remote_port)
        if listener is not None:
            listener()

    def unbind(self, remote_port: int, local_port: int) -> None:
        """The guest closed its end: ours stays allocated but hears nothing more."""
        with self.lock:
            if self.bound.get(remote_port) == local_port:
                del self.bound[remote_port]

    def bind(self, remote_port: int, local_port: int) -> None:
        raise XenError(EINVAL, "domain 0 has no port left unbound for this domain")

    # --- grants: the guest's pages granted to domain 0 ------------------------------------------
    def pin(self, ref: int, readonly: bool) -> tuple[int, int]:
        """Map the guest's grant `ref` for domain 0 (GNTMAP_host_map, read-only if asked):
        (GNTST status, the granted frame)."""
        flags = G.GNTMAP_host_map | (G.GNTMAP_readonly if readonly else 0)
        rc, act = grant_table.pin_for_map(self.domain, ref, DOM0, flags)
        if rc != G.GNTST_okay or act is None:
            return rc, 0
        with self.lock:
            self.pins[ref, flags] += 1
        return rc, act.gfn

    def unpin(self, ref: int, readonly: bool) -> None:
        flags = G.GNTMAP_host_map | (G.GNTMAP_readonly if readonly else 0)
        with self.lock:
            if self.pins[ref, flags] <= 0:
                return
            self.pins[ref, flags] -= 1
            if not self.pins[ref, flags]:
                del self.pins[ref, flags]
        grant_table.unpin_for_map(self.domain, ref, flags)

    def unpin_all(self, refs: Sequence[tuple[int, bool]]) -> None:
        for ref, readonly in refs:
            self.unpin(ref, readonly)

    def page(self, gfn: int) -> memoryview:
        """Guest frame `gfn` (one granted to us) as a writable view."""
        offset = gfn << PAGE_SHIFT
        return memoryview(self.domain.memory.map)[offset : offset + PAGE_SIZE]

    def address(self, gfn: int) -> int:
        """Where this process sees guest frame `gfn`."""
        return self.domain.memory.host_address + (gfn << PAGE_SHIFT)

    def wrote(self, gfn: int, offset: int, length: int) -> None:
        """The back end changed guest memory (dirty logging must know, for migration)."""
        self.domain.memory.note_write((gfn << PAGE_SHIFT) + offset, length)
