"""HYPERVISOR_event_channel_op: Xen's event channels (common/event_channel.c).

A domain's ports live in `EventChannels`. What a port's event looks like to the guest
depends on the ABI the domain uses, so port-level operations (set/clear pending, unmask,
is_pending, is_masked, the port limit) go through a port-ops object as in Xen's
evtchn_port_ops: 2-level bitmaps in shared_info (event_2l.py) from the start, FIFO queues in
guest pages (event_fifo.py) once the guest calls EVTCHNOP_init_control, 2-level again after
EVTCHNOP_reset.

An interdomain port's other end is either a `Domain` of this process (`remote_dom`) or a
domain that runs in a process of its own (host mode), reached through a `RemotePeer`
(`remote_link`): binding and closing are calls to that process, a send rings its doorbell.
The peer's process calls back into `bound_by_peer`, `unbound_by_peer`, `rung_by_peer` and
`peer_gone`, on its link's thread.
"""

from __future__ import annotations

import contextlib
import ctypes as C
import logging
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pyxen.abi import event_channel as E
from pyxen.abi.errno import (
    EACCES,
    EBUSY,
    EEXIST,
    EINVAL,
    ENOENT,
    ENOSPC,
    ENOSYS,
    EOPNOTSUPP,
    EPERM,
    ESRCH,
    XenError,
)
from pyxen.abi.event_channel import EVTCHN_2L_NR_CHANNELS
from pyxen.abi.xen import DOMID_SELF, HYPERVISOR_event_channel_op
from pyxen.domain.saved import Saved

from . import event_fifo
from .event_2l import Evtchn2L, mark_events_pending
from .event_fifo import EvtchnFifo
from .hypercall import HypercallTable, subop_describer
from .remote import Links, RemotePeer, travels_with

log = logging.getLogger(__name__)
BACKEND_DOMID = 0  # the PV back ends, which travel with the domain (backends/dataplane.py)

if TYPE_CHECKING:
    from pyxen.domain.domain import Domain
    from pyxen.domain.vcpu import Vcpu

__all__ = ["EVTCHN_2L_NR_CHANNELS", "Channel", "EventChannels", "mark_events_pending",
           "register"]

ECS_FREE, ECS_RESERVED, ECS_UNBOUND, ECS_INTERDOMAIN, ECS_PIRQ, ECS_VIRQ, ECS_IPI = range(7)
STATUS = {ECS_FREE: E.EVTCHNSTAT_closed, ECS_RESERVED: E.EVTCHNSTAT_closed,
          ECS_UNBOUND: E.EVTCHNSTAT_unbound, ECS_INTERDOMAIN: E.EVTCHNSTAT_interdomain,
          ECS_PIRQ: E.EVTCHNSTAT_pirq, ECS_VIRQ: E.EVTCHNSTAT_virq, ECS_IPI: E.EVTCHNSTAT_ipi}
DEFAULT_MAX_EVENT_CHANNELS = 1023  # xl's default max_event_channels
EVTCHNS_PER_BUCKET = 64  # ports become valid a bucket at a time, as in Xen
NR_PIRQS_DOMU = 24 + 32  # Xen: the host's GSIs (one IO-APIC: 24) + extra_domU_irqs (32)
PER_VCPU_VIRQS = {E.VIRQ_TIMER, E.VIRQ_DEBUG, E.VIRQ_XENOPROF, E.VIRQ_XENPMU}
SUBOPS = {v: k for k, v in vars(E).items() if k.startswith("EVTCHNOP_")}


def virq_is_global(virq: int) -> bool:
    return virq not in PER_VCPU_VIRQS


@dataclass(slots=True)
class Channel:
    state: int = ECS_FREE
    notify_vcpu: int = 0
    remote_domid: int = 0  # ECS_UNBOUND: the domain allowed to bind
    remote_dom: Domain | None = None  # ECS_INTERDOMAIN, a domain of this process
    remote_link: RemotePeer | None = None  # ECS_INTERDOMAIN, a domain in another process
    remote_port: int = 0
    virq: int = 0
    pirq: int = 0
    # ECS_INTERDOMAIN to a service pyxen itself provides in dom0 (xenstored, consoled):
    # a send from the guest calls it instead of raising an event in another domain.
    consumer: Callable[[], None] | None = None
    # FIFO ABI state, which (as in Xen's struct evtchn) survives closing the port:
    priority: int = E.EVTCHN_FIFO_PRIORITY_DEFAULT
    fifo_pending: bool = False  # raised while its event-array page did not exist yet
    fifo_lastq: tuple[int, int] = (0, 0)  # (vCPU, priority) of the queue it was last on

    def usable(self) -> bool:
        """evtchn_usable: only bound ports have events."""
        return self.state > ECS_RESERVED

    def unbind_from(self, peer: RemotePeer) -> None:
        """The other end (in `peer`'s process) closed or went: unbound for that domain, as
        Xen leaves the surviving end."""
        self.state, self.remote_domid, self.remote_link = ECS_UNBOUND, peer.domid, None


class FastSends:
    """EVTCHNOP_send on IPI ports made by the vCPU backend itself where it can (the software
    CPU's OUT hook, native_send.c), for a machine that offers it (`ipi_sends()`): this keeps
    the backend's list of such ports right.

    The backend sends on a listed port only while the list is enabled. Ports and the ABI
    change inside hold(), and a moved shared_info or vcpu_info calls invalidate(): the list
    is disabled first, with no engine running (machine.exclusive), and made again after the
    next send Python makes (refresh). A vCPU in SCHEDOP_poll
    disables it too (polling()): a send must wake pollers, which Python does."""

    def __init__(self, ev: EventChannels) -> None:
        self.ev = ev
        domain = ev.domain
        offer = getattr(domain.machine, "ipi_sends", None)  # an optional backend capability
        self.sink = offer() if offer is not None and not domain.trace else None  # --trace
        self._holds = self._polls = 0  # sees every call
        self._stale = True  # the list does not describe the ports: make it again
        if self.sink is not None:
            self.sink.woken = self._woken

    def _update(self) -> None:
        """With machine.exclusive() held."""
        self.sink.enabled = not (self._holds or self._polls or self._stale)  # type: ignore[union-attr]

    @contextlib.contextmanager
    def _counted(self, name: str, stale_after: bool) -> Iterator[None]:
        if self.sink is None:
            yield
            return
        exclusive = self.ev.domain.machine.exclusive
        with exclusive():
            setattr(self, name, getattr(self, name) + 1)
            self._update()
        try:
            yield
        finally:
            with exclusive():
                setattr(self, name, getattr(self, name) - 1)
                self._stale = self._stale or stale_after
                self._update()

    def hold(self) -> contextlib.AbstractContextManager[None]:
        """No backend sends while the ports (or what their events reach) may change."""
        return self._counted("_holds", True)

    def invalidate(self) -> None:
        """Something the list holds moved (a vcpu_info, shared_info): off until made again."""
        if self.sink is not None:
            with self.ev.domain.machine.exclusive():
                self._stale = True
                self._update()

    def polling(self) -> contextlib.AbstractContextManager[None]:
        """No backend sends while a vCPU polls (SCHEDOP_poll)."""
        return self._counted("_polls", False)

    def refresh(self) -> None:
        """After a send Python made: list the ports again if something changed."""
        if self.sink is None or not self._stale or self._holds:
            return
        ev, domain = self.ev, self.ev.domain
        with ev.lock, domain.machine.exclusive():
            if self._holds or not self._stale:
                return
            infos = [v.vcpu_info for v in domain.vcpus]
            targets = {port: chn.notify_vcpu for port, chn in enumerate(ev.ports)
                       if chn.state == ECS_IPI and chn.notify_vcpu < len(infos)
                       and infos[chn.notify_vcpu] is not None}
            if not isinstance(ev.port_ops, Evtchn2L):
                targets = {}  # the FIFO ABI: every send is Python's
            self.sink.publish(C.addressof(domain.shared_info.page),
                              [0 if i is None else C.addressof(i) for i in infos], targets)
            self._stale = False
            self._update()

    def _woken(self, vcpu: int, raised: bool) -> None:
        """What mark_events_pending does after the bits: raise the upcall, or kick. Called
        from C, which cannot take an exception: a VMM bug ends the domain, as it would have
        out of a hypercall made in Python."""
        domain = self.ev.domain
        try:
            v = domain.vcpus[vcpu]
            if raised:
                v.raise_upcall()
            else:
                v.kick()
        except Exception as e:  # noqa: BLE001
            log.exception("native EVTCHNOP_send: waking vCPU%d failed", vcpu)
            domain.vmm_error(f"vCPU{vcpu}: internal error after a native send: {e!r}")


class EventChannels:
    """One domain's event-channel ports (Xen's d->evtchn and d->event_lock)."""

    def __init__(self, domain: Domain, max_port: int = DEFAULT_MAX_EVENT_CHANNELS) -> None:
        self.domain = domain
        self.max_evtchn_port = max_port  # the toolstack's limit (xl max_event_channels)
        self.lock = threading.RLock()
        self.ports: list[Channel] = [Channel() for _ in range(EVTCHNS_PER_BUCKET)]
        self.ports[0].state = ECS_RESERVED  # port 0 is never handed out
        self.port_ops: Evtchn2L | EvtchnFifo = Evtchn2L(self)
        self._free_hint = 1  # every port below it is bound (speeds up get_free_port)
        # (peer, its port, our port) of remote ends closed under the lock, for
        # `tell_peers` to tell once the lock is released
        self.unbinds: list[tuple[RemotePeer, int, int]] = []
        self.to_relink: list[int] = []  # restored ports whose other ends `relink` binds
        self.fast = FastSends(self)

    @property
    def max_port(self) -> int:
        """The highest port the domain may use now, in its current ABI."""
        return min(self.max_evtchn_port, self.port_ops.max_evtchns - 1)

    def valid(self, port: int) -> bool:
        return 0 <= port < len(self.ports)

    def get(self, port: int) -> Channel:
        if not self.valid(port):
            raise XenError(EINVAL, f"port {port} is not valid")
        return self.ports[port]

    def get_free_port(self) -> int:
        """get_free_port / evtchn_allocate_port: the lowest port that is free and not still
        queued (FIFO), within the toolstack's and the ABI's limits."""
        ports, ops = self.ports, self.port_ops
        while self._free_hint < len(ports) and ports[self._free_hint].state != ECS_FREE:
            self._free_hint += 1
        for port in range(self._free_hint, min(len(ports), self.max_evtchn_port + 1)):
            if port >= ops.max_evtchns:
                raise XenError(ENOSPC, "no free event channel")
            if ports[port].state == ECS_FREE and not ops.is_busy(port):
                return port
        port = len(ports)
        if port > self.max_evtchn_port or port >= ops.max_evtchns:
            raise XenError(ENOSPC, "no free event channel")
        ports.extend(Channel() for _ in range(EVTCHNS_PER_BUCKET))
        return port

    # --- port operations: the domain's ABI (evtchn_port_*) -------------------------------------
    def bind(self, port: int) -> Channel:
        """evtchn_port_init for a port just bound (the caller sets its state)."""
        chn = self.ports[port]
        self.port_ops.init(chn)
        return chn

    def set_pending(self, vcpu_id: int, port: int) -> None:
        """evtchn_port_set_pending: raise `port`'s event towards vCPU `vcpu_id`."""
        if not self.valid(port) or not self.ports[port].usable():
            return
        vcpus = self.domain.vcpus
        self.port_ops.set_pending(vcpus[vcpu_id] if vcpu_id < len(vcpus) else vcpus[0], port)

    def clear_pending(self, port: int) -> None:
        if self.valid(port) and self.ports[port].usable():
            self.port_ops.clear_pending(port)

    def is_pending(self, port: int) -> bool:
        return self.valid(port) and self.ports[port].usable() and self.port_ops.is_pending(port)

    def is_masked(self, port: int) -> bool:
        return (not self.valid(port) or not self.ports[port].usable()
                or self.port_ops.is_masked(port))

    def unmask(self, port: int) -> None:
        """An unmask that finds the port pending delivers its event (both ABIs)."""
        if self.valid(port) and self.ports[port].usable():
            self.port_ops.unmask(port)

    def set_priority(self, port: int, priority: int) -> None:
        """evtchn_set_priority: -EINVAL for an invalid port, then -ENOSYS in 2-level mode,
        then -EACCES for an unbound port."""
        chn = self.get(port)
        ops = self.port_ops
        if not isinstance(ops, EvtchnFifo):
            raise XenError(ENOSYS, "the 2-level ABI has no priorities")
        if not chn.usable():
            raise XenError(EACCES)
        ops.set_priority(chn, priority)

    def check_pollers(self, port: int) -> None:
        for v in self.domain.vcpus:
            if v.poll_port is not None and v.poll_port in (0, port):
                v.poll_port = None
                v.kick()

    def bind_service(self, remote_domid: int, remote_port: int,
                     consumer: Callable[[], None]) -> int:
        """A new port connected to a pyxen service standing as `remote_domid`'s port
        `remote_port` (what the toolstack sets up for the store and console rings)."""
        with self.lock:
            port = self.get_free_port()
            chn = self.bind(port)
            chn.state, chn.remote_domid, chn.remote_port = ECS_INTERDOMAIN, remote_domid, remote_port
            chn.consumer = consumer
        return port

    def notify_from_service(self, port: int) -> None:
        """The service signals the guest on `port` (if the guest has not closed it)."""
        chn = self.ports[port] if self.valid(port) else None
        if chn is not None and chn.consumer is not None:
            self.set_pending(chn.notify_vcpu, port)

    # --- VIRQs -------------------------------------------------------------------------------
    def send_virq(self, v: Vcpu, virq: int) -> None:
        """send_guest_vcpu_virq: nothing happens when the VIRQ is not bound."""
        port = v.virq_to_evtchn[virq]
        if port:
            with self.lock:
                chn = self.ports[port]
                if chn.state == ECS_VIRQ:
                    self.set_pending(chn.notify_vcpu, port)

    # --- closing -----------------------------------------------------------------------------
    def close(self, port: int) -> None:
        chn = self.get(port)
        if chn.state in (ECS_FREE, ECS_RESERVED):
            raise XenError(EINVAL, f"port {port} is not bound")
        if chn.state == ECS_VIRQ:
            for v in self.domain.vcpus:
                if v.virq_to_evtchn[chn.virq] == port:
                    v.virq_to_evtchn[chn.virq] = 0
        elif chn.state == ECS_INTERDOMAIN and chn.remote_dom is not None:
            peer = chn.remote_dom.evtchn.ports[chn.remote_port]
            peer.state, peer.remote_domid = ECS_UNBOUND, self.domain.domid
            peer.remote_dom = None
        elif chn.state == ECS_INTERDOMAIN and chn.remote_link is not None:
            self.unbinds.append((chn.remote_link, chn.remote_port, port))
        self.clear_pending(port)  # a re-bound port must not inherit an old event
        self.release(port)

    def release(self, port: int) -> None:
        """The port is free again; its FIFO state stays (as in Xen's struct evtchn)."""
        chn = self.ports[port]
        self.ports[port] = Channel(priority=chn.priority, fifo_pending=chn.fifo_pending,
                                   fifo_lastq=chn.fifo_lastq)
        self._free_hint = min(self._free_hint, port)

    def tell_peers(self) -> None:
        """After closing ports (outside the event lock: it is a call to another process):
        the other ends in other processes become unbound."""
        with self.lock:
            unbinds, self.unbinds = self.unbinds, []
        for peer, remote_port, port in unbinds:
            peer.unbind(remote_port, port)

    # --- the other ends of ports bound to domains in other processes --------------------------
    def bound_by_peer(self, peer: RemotePeer, port: int, peer_port: int) -> None:
        """`peer` binds our `port` (its EVTCHNOP_bind_interdomain): -EINVAL unless the port
        is unbound for that domain. Restored together (a group migration), both ends wait
        to be joined again: whichever side relinks first joins both, so a port still held
        for exactly this other end is bound too (and raised: events may have been
        dropped), and one it has joined already answers as bound."""
        with self.lock:
            if not self.valid(port) or port == 0:
                raise XenError(EINVAL)
            chn = self.ports[port]
            if chn.state == ECS_RESERVED and port in self.to_relink and \
                    (chn.remote_domid, chn.remote_port) == (peer.domid, peer_port):
                chn.state, chn.remote_link = ECS_INTERDOMAIN, peer
                self.set_pending(chn.notify_vcpu, port)
                return
            if chn.state == ECS_INTERDOMAIN and chn.remote_link is peer and \
                    chn.remote_port == peer_port:
                return
            if chn.state != ECS_UNBOUND or chn.remote_domid != peer.domid:
                raise XenError(EINVAL, "port is not unbound for that domain")
            chn.state, chn.remote_link, chn.remote_port = ECS_INTERDOMAIN, peer, peer_port

    def unbound_by_peer(self, peer: RemotePeer, port: int, peer_port: int) -> None:
        """`peer` closed `peer_port`, the other end of our `port`: ours becomes unbound (a
        port still being bound to it, too)."""
        with self.lock:
            chn = self.ports[port] if self.valid(port) else None
            if (chn is not None and chn.remote_link is peer and chn.remote_port == peer_port
                    and chn.state in (ECS_INTERDOMAIN, ECS_RESERVED)):
                chn.unbind_from(peer)

    def rung_by_peer(self, peer: RemotePeer, ports: list[int]) -> None:
        """`peer` sent on the other ends of `ports`: raise those still bound to it."""
        with self.lock:
            for port in ports:
                chn = self.ports[port] if self.valid(port) else None
                if chn is not None and chn.state == ECS_INTERDOMAIN and chn.remote_link is peer:
                    self.set_pending(chn.notify_vcpu, port)

    def peer_gone(self, peer: RemotePeer) -> None:
        """`peer`'s domain was destroyed: every port bound to it becomes unbound, as Xen's
        evtchn_destroy closes the dying domain's ends."""
        with self.lock:
            for chn in self.ports:
                if chn.remote_link is peer and chn.state in (ECS_INTERDOMAIN, ECS_RESERVED):
                    chn.unbind_from(peer)

    # --- save / restore ------------------------------------------------------------------------
    def save_state(self, links: Links = False) -> dict[str, object]:
        """Every port's binding, and the ABI's state outside guest memory (the 2-level
        bitmaps live in shared_info and vcpu_info: they travel as pages). A port bound to a
        domain in another process travels if `links` covers that domain (`relink` binds it
        again after the restore); otherwise ValueError names it. Ports bound to the PV back
        ends (domain 0) always may: the back ends let go of them at the pause and bind
        them again wherever the domain goes."""
        ports: list[object] = []
        with self.lock:
            for port, chn in enumerate(self.ports):
                if chn.state == ECS_INTERDOMAIN and \
                        (chn.remote_dom is not None and chn.remote_dom is not self.domain
                         or chn.remote_link is not None
                         and chn.remote_link.domid != BACKEND_DOMID
                         and not travels_with(links, chn.remote_link.domid)):
                    raise ValueError(f"port {port} is bound to domain {chn.remote_domid}, "
                                     "which stays on this host")
                remote_domid = chn.remote_link.domid if chn.remote_link else chn.remote_domid
                ports.append([chn.state, chn.notify_vcpu, remote_domid, chn.remote_port,
                              chn.virq, chn.pirq, chn.priority, chn.fifo_pending,
                              list(chn.fifo_lastq), _peer_kind(chn)])
            fifo = self.port_ops.save_state() if isinstance(self.port_ops, EvtchnFifo) else None
        return {"max_evtchn_port": self.max_evtchn_port, "ports": ports, "fifo": fifo}

    def load_state(self, state: object, services: dict[int, Callable[[], None]]) -> None:
        """The counterpart of save_state, into a domain with no port bound yet. `services`
        gives the consumer of each pyxen service by its port in dom0 (the store's and the
        console's, placed again by the toolstack)."""
        with self.fast.hold():
            self._load_state(state, services)

    def _load_state(self, state: object, services: dict[int, Callable[[], None]]) -> None:
        saved = Saved(state, "event channels")
        rows = saved.list("ports")
        if not 0 < len(rows) <= E.EVTCHN_FIFO_NR_CHANNELS or len(rows) % EVTCHNS_PER_BUCKET:
            raise ValueError(f"the saved event channels have {len(rows)} ports")
        ports = [self._load_channel(port, row, services) for port, row in enumerate(rows)]
        max_port = saved.int("max_evtchn_port", hi=E.EVTCHN_FIFO_NR_CHANNELS)
        ops = self.port_ops
        if saved.data.get("fifo") is not None:  # its pages are read with no port bound yet
            ops = EvtchnFifo(self)
            ops.load_state(saved.sub("fifo", "FIFO state"))
        with self.lock:
            self.port_ops, self.max_evtchn_port = ops, max_port
            self.ports = ports
            self._free_hint = 1

    def _load_channel(self, port: int, row: object,
                      services: dict[int, Callable[[], None]]) -> Channel:
        names = ("state", "notify_vcpu", "remote_domid", "remote_port", "virq", "pirq",
                 "priority", "fifo_pending", "fifo_lastq", "peer")
        if not isinstance(row, list) or len(row) != len(names):
            raise ValueError(f"the saved port {port} is malformed")
        saved = Saved(dict(zip(names, row, strict=True)), f"port {port}")
        lastq = saved.ints("fifo_lastq", 2)
        chn = Channel(state=saved.int("state", hi=ECS_IPI),
                      notify_vcpu=saved.int("notify_vcpu", hi=len(self.domain.vcpus) - 1),
                      remote_domid=saved.int("remote_domid", hi=0xFFFF),
                      remote_port=saved.int("remote_port", hi=E.EVTCHN_FIFO_NR_CHANNELS),
                      virq=saved.int("virq", hi=E.NR_VIRQS - 1),
                      pirq=saved.int("pirq", hi=NR_PIRQS_DOMU),
                      priority=saved.int("priority", hi=E.EVTCHN_FIFO_PRIORITY_MIN),
                      fifo_pending=saved.bool("fifo_pending"),
                      fifo_lastq=(lastq[0], lastq[1]))
        if (port == 0) != (chn.state == ECS_RESERVED):
            raise ValueError(f"the saved port {port} has state {chn.state}")
        peer = saved.str("peer")
        if (chn.state == ECS_INTERDOMAIN) != (peer in PEER_KINDS) or \
                peer not in (*PEER_KINDS, ""):
            raise ValueError(f"the saved port {port} has state {chn.state} and peer {peer!r}")
        if peer == "service":
            if chn.remote_port not in services:
                raise ValueError(f"the saved port {port} is bound to dom0's port "
                                 f"{chn.remote_port}, which no service holds here")
            chn.consumer = services[chn.remote_port]
        elif peer == "self":  # a loopback channel: this domain, whatever its id is now
            chn.remote_dom, chn.remote_domid = self.domain, self.domain.domid
        elif peer == "domain":  # held until `relink` binds the other end again
            chn.state = ECS_RESERVED
            self.to_relink.append(port)
        return chn

    def relink(self) -> list[int]:
        """After a restore, before the guest runs: bind again each port that was bound to a
        domain in another process, if that domain still holds its end unbound for ours (as
        it does once our old process is gone and we kept our domid). A port whose other end
        is gone or taken is left unbound for that domain, as Xen leaves a surviving end.
        Both ends are raised: events sent while we were away were dropped. The domids
        relinked."""
        linked = []
        for port in self.to_relink:
            chn = self.ports[port]
            with self.lock:
                if chn.state != ECS_RESERVED:
                    continue  # its other end, restored too, joined it first
            peer = self.domain.remote_peer(chn.remote_domid)
            try:
                if peer is None:
                    raise XenError(ESRCH)
                peer.bind(chn.remote_port, port)
            except XenError as e:
                log.warning("dom%d port %d: domain %d's port %d is not there to bind "
                            "again (%s)", self.domain.domid, port, chn.remote_domid,
                            chn.remote_port, e)
                with self.lock:
                    chn.state, chn.remote_link = ECS_UNBOUND, None
                continue
            with self.lock:
                chn.state, chn.remote_link = ECS_INTERDOMAIN, peer
                self.set_pending(chn.notify_vcpu, port)
            peer.ring(chn.remote_port)
            linked.append(peer.domid)
        self.to_relink = []
        return linked

    def reset(self) -> None:
        """evtchn_reset: close every port, and go back to the 2-level ABI."""
        with self.fast.hold():
            self._reset()

    def _reset(self) -> None:
        for port in range(1, len(self.ports)):
            if self.ports[port].state not in (ECS_FREE, ECS_RESERVED):
                self.close(port)
        if isinstance(self.port_ops, EvtchnFifo):
            self.port_ops = Evtchn2L(self)


PEER_KINDS = ("service", "self", "domain")


def _peer_kind(chn: Channel) -> str:
    """How a saved interdomain port's other end is found again ("" for other states): a
    pyxen service, this domain, or a domain in another process."""
    if chn.state != ECS_INTERDOMAIN:
        return ""
    if chn.consumer is not None:
        return "service"
    return "domain" if chn.remote_link is not None else "self"


def _lock_pair(a: Domain, b: Domain):  # type: ignore[no-untyped-def]
    """Both domains' event locks, in domid order (Xen's double_evtchn_lock)."""
    first, second = sorted((a, b), key=lambda d: d.domid)

    class _Pair:
        def __enter__(self) -> None:
            first.evtchn.lock.acquire()
            second.evtchn.lock.acquire()

        def __exit__(self, *exc: object) -> None:
            second.evtchn.lock.release()
            first.evtchn.lock.release()

    return _Pair()


def _bind_remote(d: Domain, remote_domid: int, remote_port: int) -> int:
    """EVTCHNOP_bind_interdomain to a domain in another process; the new local port.
    The local port is held (ECS_RESERVED) while the peer's process binds its end: no event
    lock is held across that call, which may wait for the peer."""
    peer = d.remote_peer(remote_domid)
    if peer is None:
        raise XenError(ESRCH)
    ev = d.evtchn
    with ev.lock:
        lport = ev.get_free_port()
        chn = ev.bind(lport)
        chn.state, chn.remote_link, chn.remote_port = ECS_RESERVED, peer, remote_port
    try:
        peer.bind(remote_port, lport)
    except BaseException:
        with ev.lock:
            if ev.ports[lport] is chn:
                ev.release(lport)
        raise
    with ev.lock:
        if chn.state == ECS_RESERVED:  # unless the peer closed its end meanwhile
            chn.state, chn.notify_vcpu = ECS_INTERDOMAIN, 0
        # Notifications sent to the unbound remote end may have been lost: be safe.
        ev.set_pending(chn.notify_vcpu, lport)
    return lport


def _vcpu_id(d: Domain, vcpu_id: int) -> int:
    """A vCPU id of `d` (Xen's domain_vcpu), else -ENOENT."""
    if vcpu_id >= len(d.vcpus):
        raise XenError(ENOENT)
    return vcpu_id


def _domain(vcpu: Vcpu, domid: int, *, control: bool) -> Domain:
    d = vcpu.domain.lookup(domid)
    if d is None:
        raise XenError(ESRCH)
    if control and not vcpu.domain.may_control(d):
        raise XenError(EPERM)
    return d


# Event-channel operations that change nothing FastSends lists.
LIST_NEUTRAL = frozenset([E.EVTCHNOP_send, E.EVTCHNOP_status, E.EVTCHNOP_unmask])


def do_event_channel_op(vcpu: Vcpu, cmd: int, arg: int, *rest: int) -> int:
    ev = vcpu.domain.evtchn
    if cmd not in LIST_NEUTRAL:
        with ev.fast.hold():
            return _event_channel_op(vcpu, cmd, arg)
    result = _event_channel_op(vcpu, cmd, arg)
    if cmd == E.EVTCHNOP_send:
        ev.fast.refresh()
    return result


def _event_channel_op(vcpu: Vcpu, cmd: int, arg: int) -> int:
    d = vcpu.domain
    ev = d.evtchn
    guest = vcpu.guest()

    if cmd == E.EVTCHNOP_alloc_unbound:
        a = guest.read_struct(E.evtchn_alloc_unbound, arg)
        target = _domain(vcpu, a.dom, control=True)
        remote = d.domid if a.remote_dom == DOMID_SELF else a.remote_dom
        with target.evtchn.lock:
            port = target.evtchn.get_free_port()
            chn = target.evtchn.bind(port)
            chn.state, chn.remote_domid, chn.notify_vcpu = ECS_UNBOUND, remote, 0
        a.port = port
        guest.write_struct(arg, a)
        return 0

    if cmd == E.EVTCHNOP_bind_interdomain:
        b = guest.read_struct(E.evtchn_bind_interdomain, arg)
        rd = d if b.remote_dom == DOMID_SELF else d.peers.get(b.remote_dom)
        if rd is None:
            b.local_port = _bind_remote(d, b.remote_dom, b.remote_port)
            guest.write_struct(arg, b)
            return 0
        with _lock_pair(d, rd):
            lport = ev.get_free_port()
            if not rd.evtchn.valid(b.remote_port):
                raise XenError(EINVAL)
            rchn = rd.evtchn.ports[b.remote_port]
            if rchn.state != ECS_UNBOUND or rchn.remote_domid != d.domid:
                raise XenError(EINVAL, "remote port is not unbound for this domain")
            lchn = ev.bind(lport)
            lchn.state, lchn.remote_dom, lchn.remote_port = ECS_INTERDOMAIN, rd, b.remote_port
            lchn.notify_vcpu = 0
            rchn.state, rchn.remote_dom, rchn.remote_port = ECS_INTERDOMAIN, d, lport
            # Notifications sent to the unbound remote end may have been lost: be safe.
            ev.set_pending(lchn.notify_vcpu, lport)
        b.local_port = lport
        guest.write_struct(arg, b)
        return 0

    if cmd == E.EVTCHNOP_bind_virq:
        b = guest.read_struct(E.evtchn_bind_virq, arg)
        if b.virq >= E.NR_VIRQS:
            raise XenError(EINVAL)
        if virq_is_global(b.virq) and b.vcpu != 0:
            raise XenError(EINVAL)
        v = d.vcpus[_vcpu_id(d, b.vcpu)]
        with ev.lock:
            if v.virq_to_evtchn[b.virq]:
                raise XenError(EEXIST)
            port = ev.get_free_port()
            chn = ev.bind(port)
            chn.state, chn.notify_vcpu, chn.virq = ECS_VIRQ, b.vcpu, b.virq
            v.virq_to_evtchn[b.virq] = port
        b.port = port
        guest.write_struct(arg, b)
        return 0

    if cmd == E.EVTCHNOP_bind_ipi:
        b = guest.read_struct(E.evtchn_bind_ipi, arg)
        _vcpu_id(d, b.vcpu)
        with ev.lock:
            port = ev.get_free_port()
            chn = ev.bind(port)
            chn.state, chn.notify_vcpu = ECS_IPI, b.vcpu
        b.port = port
        guest.write_struct(arg, b)
        return 0

    if cmd == E.EVTCHNOP_bind_pirq:
        # An HVM domain's pirqs are emulated: Xen checks only the range, not permission.
        b = guest.read_struct(E.evtchn_bind_pirq, arg)
        if b.pirq >= NR_PIRQS_DOMU:
            raise XenError(EINVAL)
        with ev.lock:
            if any(c.state == ECS_PIRQ and c.pirq == b.pirq for c in ev.ports):
                raise XenError(EEXIST)
            port = ev.get_free_port()
            chn = ev.bind(port)
            chn.state, chn.pirq, chn.notify_vcpu = ECS_PIRQ, b.pirq, 0
        b.port = port
        guest.write_struct(arg, b)
        return 0

    if cmd == E.EVTCHNOP_close:
        port = guest.read_struct(E.evtchn_close, arg).port
        with ev.lock:
            chn = ev.get(port)
            if chn.state == ECS_INTERDOMAIN and chn.remote_dom is not None:
                with _lock_pair(d, chn.remote_dom):
                    ev.close(port)
            else:
                ev.close(port)
        ev.tell_peers()
        return 0

    if cmd == E.EVTCHNOP_send:
        port = guest.read_struct(E.evtchn_send, arg).port
        with ev.lock:
            chn = ev.get(port)
            consumer = chn.consumer if chn.state == ECS_INTERDOMAIN else None
            if consumer is not None:
                pass  # called below, outside the event lock (the service takes its own)
            elif chn.state == ECS_INTERDOMAIN and chn.remote_dom is not None:
                rd, rport = chn.remote_dom, chn.remote_port
                rd.evtchn.set_pending(rd.evtchn.ports[rport].notify_vcpu, rport)
            elif chn.state == ECS_INTERDOMAIN and chn.remote_link is not None:
                chn.remote_link.ring(chn.remote_port)
            elif chn.state == ECS_IPI:
                ev.set_pending(chn.notify_vcpu, port)
            elif chn.state != ECS_UNBOUND:  # an unbound port silently drops the notification
                raise XenError(EINVAL)
        if consumer is not None:
            consumer()
        return 0

    if cmd == E.EVTCHNOP_status:
        s = guest.read_struct(E.evtchn_status, arg)
        target = _domain(vcpu, s.dom, control=True)
        with target.evtchn.lock:
            chn = target.evtchn.get(s.port)
            s.status, s.vcpu = STATUS[chn.state], chn.notify_vcpu
            s.u = E.evtchn_status_u()
            if chn.state == ECS_UNBOUND:
                s.u.unbound = chn.remote_domid
            elif chn.state == ECS_INTERDOMAIN:
                s.u.interdomain.dom = (chn.remote_dom.domid if chn.remote_dom is not None
                                       else chn.remote_link.domid if chn.remote_link is not None
                                       else chn.remote_domid)
                s.u.interdomain.port = chn.remote_port
            elif chn.state == ECS_VIRQ:
                s.u.virq = chn.virq
            elif chn.state == ECS_PIRQ:
                s.u.pirq = chn.pirq
        guest.write_struct(arg, s)
        return 0

    if cmd == E.EVTCHNOP_bind_vcpu:
        b = guest.read_struct(E.evtchn_bind_vcpu, arg)
        _vcpu_id(d, b.vcpu)
        with ev.lock:
            chn = ev.get(b.port)
            if chn.state == ECS_VIRQ and not virq_is_global(chn.virq):
                raise XenError(EINVAL)
            if chn.state not in (ECS_VIRQ, ECS_UNBOUND, ECS_INTERDOMAIN, ECS_PIRQ):
                raise XenError(EINVAL)
            chn.notify_vcpu = b.vcpu
        return 0

    if cmd == E.EVTCHNOP_unmask:
        port = guest.read_struct(E.evtchn_unmask, arg).port
        with ev.lock:
            if not ev.valid(port):
                raise XenError(EINVAL)
            ev.unmask(port)
        return 0

    if cmd in (E.EVTCHNOP_reset, E.EVTCHNOP_reset_cont):
        r = guest.read_struct(E.evtchn_reset, arg)
        target = _domain(vcpu, r.dom, control=True)
        if target is not d:
            raise XenError(EINVAL, "resetting another domain needs it paused by the toolstack")
        if cmd == E.EVTCHNOP_reset_cont:
            raise XenError(EBUSY, "no reset to continue")  # pyxen's resets never pause
        with target.evtchn.lock:
            target.evtchn.reset()
        target.evtchn.tell_peers()
        return 0

    if cmd == E.EVTCHNOP_init_control:
        c = guest.read_struct(E.evtchn_init_control, arg)
        event_fifo.init_control(ev, c.vcpu, c.control_gfn, c.offset)
        c.link_bits = E.EVTCHN_FIFO_LINK_BITS
        guest.write_struct(arg, c)
        return 0

    if cmd == E.EVTCHNOP_expand_array:
        gfn = guest.read_struct(E.evtchn_expand_array, arg).array_gfn
        fifo = ev.port_ops
        if not isinstance(fifo, EvtchnFifo):
            raise XenError(EOPNOTSUPP, "expand_array before init_control")
        with ev.lock:
            fifo.add_page_to_event_array(gfn)
        return 0

    if cmd == E.EVTCHNOP_set_priority:
        p = guest.read_struct(E.evtchn_set_priority, arg)
        with ev.lock:
            ev.set_priority(p.port, p.priority)
        return 0

    raise XenError(ENOSYS)


def register(table: HypercallTable) -> None:
    table.register(HYPERVISOR_event_channel_op, do_event_channel_op, subop_describer(SUBOPS, 2),
                   inline=frozenset([E.EVTCHNOP_send, E.EVTCHNOP_status, E.EVTCHNOP_unmask]))
