"""Links between two domain processes: inter-domain event channels without the daemon.

In host mode every domain runs in a process of its own, so the two ends of an inter-domain
event channel live in two processes. The daemon connects two domain processes when one of
them first needs the other (it vouches for who is at each end: `link_ends`); from then on
the two talk directly, and a link lasts as long as both processes do:

- two SOCK_SEQPACKET socketpairs. On one, this side calls the peer (`bind`, `unbind`) and
  waits for its answer; on the other the peer calls this side, served on the domain
  process's main loop (`PeerLinks.readable`).
- a doorbell each way, for EVTCHNOP_send: a shared bitmap with one bit per port (a memfd)
  and an eventfd. The sender sets the receiver's bit with an atomic instruction and writes
  the eventfd only when the bit was clear, so sends coalesce as Xen's pending bits do; the
  receiver takes the whole words (atomic exchange) and raises the ports still bound to that
  peer. A send costs the sender one atomic operation and at most one write(2): no daemon,
  no reply.

Grants go the same way: the mapping side calls the granting side ("map", "unmap",
"acquire", "release"), which runs Xen's checks and pins against its own grant table, for
the domain the daemon said is at the other end. With its first successful answer the
granting side sends its memfd; the mapping side maps only the granted page of it (a
`ForeignPage`) or, for GNTTABOP_copy, reads and writes only the granted range. A copy
batch's grants travel together: one "acquire" names every grant of the batch ([ref,
readonly] each, answered each with its own status) and one "release" lets them go, so a
batch costs two round trips, not two per segment. The pins a peer holds are counted here
and dropped when its process ends (Xen's gnttab_release_mappings).

A peer can only touch this domain through `EventChannels.bound_by_peer`, `unbound_by_peer`
and `rung_by_peer`, and through the grant table's pin and copy checks, each of which checks
the port or grant against the domain the daemon said is at the other end of the link.
"""

from __future__ import annotations

import contextlib
import ctypes as C
import itertools
import mmap
import os
import selectors
import socket
import threading
from collections import Counter
from collections.abc import Callable, Sequence

from pyxen.abi import grant_table as G
from pyxen.abi.errno import ESRCH, XenError
from pyxen.abi.event_channel import EVTCHN_FIFO_NR_CHANNELS
from pyxen.domain.domain import Domain
from pyxen.domain.memory import PAGE_SHIFT, PAGE_SIZE
from pyxen.host.wire import Message, WireError, recv_packet, send_packet
from pyxen.hv import atomic, grant_table
from pyxen.threads import start_worker

BITMAP_BYTES = EVTCHN_FIFO_NR_CHANNELS // 8  # a bit for each port either ABI can have
LINK_TIMEOUT = 30.0  # seconds a vCPU waits for the daemon to connect it to another domain
# The fds of one side of a link, in the order they travel.
LINK_FDS = ("call", "serve", "bell_in", "bell_out", "bits_in", "bits_out")
MAX_COPY_GRANTS = 1024  # grants one "acquire" or "release" may name


def link_ends() -> tuple[list[int], list[int]]:
    """A new link's fds (the daemon's part): one side's and the other's, in LINK_FDS order.
    The two sides share the doorbells (eventfds, bitmaps), each through an fd of its own: the
    caller closes each of the twelve once sent."""
    a_calls = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    b_calls = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    bells = [os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK) for _ in range(2)]
    bits = []
    for side in "ab":
        fd = os.memfd_create(f"pyxen-doorbell-{side}", os.MFD_CLOEXEC)
        os.ftruncate(fd, BITMAP_BYTES)
        bits.append(fd)
    socks = [s.detach() for s in (*a_calls, *b_calls)]
    a = [socks[0], socks[3], bells[0], bells[1], bits[0], bits[1]]
    b = [socks[2], socks[1], *(os.dup(fd) for fd in (bells[1], bells[0], bits[1], bits[0]))]
    return a, b


def _grant_entry(entry: object) -> tuple[int | None, bool]:
    """(ref, readonly) of a peer's [ref, readonly]; ref None if it is not one."""
    if not isinstance(entry, list) or len(entry) != 2:
        return None, False
    ref, readonly = entry
    if not isinstance(ref, int) or isinstance(ref, bool) or not 0 <= ref < 1 << 32:
        return None, False
    return ref, bool(readonly)


def _status(value: object) -> int:
    """A GNTST status from the peer: a small negative number, or GNTST_okay (0)."""
    if isinstance(value, int) and not isinstance(value, bool) and -0x8000 <= value <= 0:
        return value
    return G.GNTST_general_error


def _copy_answer(answer: object) -> tuple[int, int, int, int]:
    """The peer's [status, gfn, offset, length] for one grant to copy, checked: a granted
    range must lie within one page (else GNTST_general_error, as a bad entry would)."""
    if not isinstance(answer, list) or len(answer) != 4:
        return G.GNTST_general_error, 0, 0, 0
    status = _status(answer[0])
    if status != G.GNTST_okay:
        return status, 0, 0, 0
    gfn, offset, length = answer[1:]
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in (gfn, offset, length)) \
            or not 0 <= gfn < 1 << 52 or not 0 <= offset <= offset + length <= PAGE_SIZE:
        return G.GNTST_general_error, 0, 0, 0
    return status, gfn, offset, length


def _close_fds(fds: list[int]) -> None:
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)


class PeerGone(Exception):
    """The peer's process ended (its domain was destroyed)."""


class ForeignPage:
    """One page of the peer's RAM, mapped into this process for a grant mapping."""

    def __init__(self, memfd: int, gfn: int) -> None:
        self._map = mmap.mmap(memfd, PAGE_SIZE, mmap.MAP_SHARED,
                              mmap.PROT_READ | mmap.PROT_WRITE, offset=gfn << PAGE_SHIFT)
        self._anchor: C.c_char | None = C.c_char.from_buffer(self._map)
        self.address = C.addressof(self._anchor)

    def close(self) -> None:
        self._anchor = None
        self._map.close()


class PeerLink:
    """This domain's link to one domain in another process (a `RemotePeer`)."""

    def __init__(self, domid: int, fds: list[int], process: int | None = None) -> None:
        """The link over `fds` (LINK_FDS order), which it takes: they are the link's, or
        closed (each once) if the link cannot be made of them. `process`: the peer's
        process, as the daemon names it."""
        if len(fds) != len(LINK_FDS):
            _close_fds(fds)
            raise WireError(f"a peer link needs {len(LINK_FDS)} fds, got {len(fds)}")
        self.domid = domid
        self.process = process
        # Who the hypervisor side sees at the other end: this link, or the first link to
        # the same process when both asked for one at once (PeerLinks._add).
        self.identity: PeerLink = self
        call, serve, self.bell_in, self.bell_out, bits_in, bits_out = fds
        socks: list[socket.socket] = []
        self._maps: list[mmap.mmap] = []
        addresses = []
        try:
            for fd in (call, serve):
                socks.append(socket.socket(fileno=fd))
            self.call_sock, self.serve_sock = socks
            self.call_sock.setblocking(True)
            self.serve_sock.setblocking(False)
            for fd in (bits_in, bits_out):
                self._maps.append(mmap.mmap(fd, BITMAP_BYTES, mmap.MAP_SHARED,
                                            mmap.PROT_READ | mmap.PROT_WRITE))
                addresses.append(C.addressof(C.c_char.from_buffer(self._maps[-1])))
        except BaseException:
            for sock in socks:
                sock.close()
            _close_fds(fds[len(socks):])
            for m in self._maps:
                with contextlib.suppress(BufferError):
                    m.close()
            raise
        _close_fds([bits_in, bits_out])  # mapped: the maps keep the bitmaps
        self._in_addr, self._out_addr = addresses
        self._in_words = memoryview(self._maps[0]).cast("Q")
        self._call_lock = threading.Lock()
        self.memfd = -1  # the peer's RAM, once it granted us something
        self._memfd_sent = False  # ours, likewise
        self.held: Counter[tuple[str, int, int]] = Counter()  # the peer's pins on our grants
        self._remapping = False  # a "remap" of the peer's is being served

    # --- this side's requests (RemotePeer) -------------------------------------------------------
    def _call(self, msg: Message) -> Message:
        with self._call_lock:
            try:
                send_packet(self.call_sock, msg)
                reply, fds = recv_packet(self.call_sock)
            except (OSError, WireError):
                reply, fds = None, []
            for fd in fds:
                if self.memfd < 0:
                    self.memfd = fd
                else:
                    os.close(fd)
        if reply is None:
            raise PeerGone
        return reply

    def _grant_call(self, msg: Message, gone: int = G.GNTST_bad_domain) -> Message:
        """A grant request; a peer that is gone answers `gone` as its status."""
        try:
            return self._call(msg)
        except PeerGone:
            return {"status": gone}

    def bind(self, remote_port: int, local_port: int) -> None:
        try:
            reply = self._call({"op": "bind", "port": remote_port, "from": local_port})
        except PeerGone:
            raise XenError(ESRCH, f"domain {self.domid} is gone") from None
        if reply.get("errno"):
            raise XenError(int(reply["errno"]))

    def unbind(self, remote_port: int, local_port: int) -> None:
        with contextlib.suppress(PeerGone):
            self._call({"op": "unbind", "port": remote_port, "from": local_port})

    def map_grant(self, ref: int, flags: int) -> tuple[int, int]:
        reply = self._grant_call({"op": "map", "ref": ref, "flags": flags})
        return int(reply["status"]), int(reply.get("gfn", 0))

    def unmap_grant(self, ref: int, flags: int, dev_bus_addr: int) -> int:
        reply = self._grant_call({"op": "unmap", "ref": ref, "flags": flags,
                                  "dev_bus_addr": dev_bus_addr}, gone=G.GNTST_okay)
        return int(reply["status"])

    def acquire_for_copy(self, grants: Sequence[tuple[int, bool]]
                         ) -> list[tuple[int, int, int, int]]:
        answers: list[tuple[int, int, int, int]] = []
        for at in range(0, len(grants), MAX_COPY_GRANTS):
            part = grants[at : at + MAX_COPY_GRANTS]
            reply = self._grant_call({"op": "acquire",
                                      "grants": [[ref, readonly] for ref, readonly in part]})
            got = reply.get("grants")
            gone = _status(reply.get("status"))  # no answer at all: the peer is gone
            for i in range(len(part)):
                answers.append(_copy_answer(got[i]) if isinstance(got, list) and i < len(got)
                               else (gone if gone != G.GNTST_okay else G.GNTST_general_error,
                                     0, 0, 0))
        return answers

    def release_for_copy(self, grants: Sequence[tuple[int, bool]]) -> None:
        for at in range(0, len(grants), MAX_COPY_GRANTS):
            self._grant_call({"op": "release", "grants": [
                [ref, readonly] for ref, readonly in grants[at : at + MAX_COPY_GRANTS]]})

    def remap_grants(self) -> int:
        try:
            reply = self._call({"op": "remap"})
        except PeerGone:
            return 0
        moved = reply.get("moved")
        return moved if isinstance(moved, int) else 0

    def page(self, gfn: int) -> ForeignPage:
        return ForeignPage(self.memfd, gfn)

    def read(self, gfn: int, offset: int, length: int) -> bytes:
        return os.pread(self.memfd, length, (gfn << PAGE_SHIFT) + offset)

    def write(self, gfn: int, offset: int, data: bytes) -> None:
        if os.pwrite(self.memfd, data, (gfn << PAGE_SHIFT) + offset) != len(data):
            raise OSError("short write to the peer's memory")

    def ring(self, remote_port: int) -> None:
        if not 0 <= remote_port < EVTCHN_FIFO_NR_CHANNELS:
            return
        if not atomic.test_and_set_bit(self._out_addr + (remote_port >> 6) * 8, remote_port & 63):
            with contextlib.suppress(OSError):  # the peer is gone: nobody to wake
                os.eventfd_write(self.bell_out, 1)

    # --- the peer's requests, on the main loop ------------------------------------------------
    def rung(self, max_port: int) -> list[int]:
        """The ports the peer sent on since last time (up to `max_port`, the highest port
        this domain may have: a bit above it is nobody's)."""
        with contextlib.suppress(BlockingIOError):
            os.eventfd_read(self.bell_in)  # first, so that a later ring wakes us again
        ports = []
        words = self._in_words
        for i in range(min(len(words), (max_port >> 6) + 1)):
            if words[i]:
                word = atomic.exchange64(self._in_addr + i * 8, 0)
                while word:
                    low = word & -word
                    ports.append(i * 64 + low.bit_length() - 1)
                    word ^= low
        return ports

    def serve(self, domain: Domain) -> bool:
        """Answer the peer's next call; False once the peer is gone."""
        try:
            msg, fds = recv_packet(self.serve_sock)
        except BlockingIOError:
            return True
        except (OSError, WireError):
            msg, fds = None, []
        for fd in fds:
            os.close(fd)
        if msg is None:
            return False
        op = msg.get("op")
        fds: list[int] = []
        if op in ("acquire", "release"):
            reply = self._serve_copy(domain, msg)
            if op == "acquire" and not self._memfd_sent and any(
                    answer[0] == G.GNTST_okay for answer in reply.get("grants", ())):
                fds, self._memfd_sent = [domain.memory.fd], True
        elif op == "remap" and not self._remapping:  # on a thread: it pauses our domain
            self._remapping = True                     # and calls the peer
            start_worker(threading.Thread(target=self._serve_remap, args=(domain,),
                                          name=f"remap-dom{self.domid}", daemon=True))
            return True
        elif op == "remap":  # one at a time: a peer that does not wait gets nothing more
            reply = {"moved": 0}
        elif op in ("map", "unmap"):
            reply = self._serve_grant(domain, msg)
            if reply.get("status") == G.GNTST_okay and op == "map" and not self._memfd_sent:
                fds, self._memfd_sent = [domain.memory.fd], True
        else:
            reply = {"errno": self._serve_event(domain, msg)}
        try:
            send_packet(self.serve_sock, reply, fds)
        except OSError:
            return False
        return True

    def _serve_remap(self, domain: Domain) -> None:
        """The peer was restored: our mappings of its grants move to its new process.
        Answered from this thread; the peer makes no other call meanwhile."""
        try:
            moved = grant_table.remap_for_peer(domain, self.identity)
        finally:
            self._remapping = False
        with contextlib.suppress(OSError):
            send_packet(self.serve_sock, {"moved": moved})

    def _serve_event(self, domain: Domain, msg: Message) -> int:
        """A bind or unbind of one of our ports: its errno (0: done)."""
        port, peer_port = msg.get("port"), msg.get("from")
        if not isinstance(port, int) or not isinstance(peer_port, int):
            return 22  # EINVAL
        if msg.get("op") == "bind":
            try:
                domain.evtchn.bound_by_peer(self.identity, port, peer_port)
            except XenError as e:
                return e.errno
            return 0
        if msg.get("op") == "unbind":
            domain.evtchn.unbound_by_peer(self.identity, port, peer_port)
            return 0
        return 38  # ENOSYS

    def _serve_copy(self, domain: Domain, msg: Message) -> Message:
        """The granting side's part of the peer's GNTTABOP_copy: acquire_grant_for_copy of
        each of our grants [ref, readonly] asked for (for the peer's domid), each answered
        [GNTST status, gfn, offset, length] in order; or the release of such grants (only
        of pins the peer holds)."""
        grants = msg.get("grants")
        if not isinstance(grants, list) or len(grants) > MAX_COPY_GRANTS:
            return {"status": G.GNTST_general_error}
        answers = []
        for entry in grants:
            ref, readonly = _grant_entry(entry)
            if ref is None:
                answers.append([G.GNTST_general_error, 0, 0, 0])
                continue
            if msg["op"] == "release":
                if self.held["copy", ref, readonly] > 0:
                    grant_table.release_grant_for_copy(domain, ref, readonly)
                    self._unhold("copy", ref, readonly)
                continue
            rc, buf = grant_table.acquire_grant_for_copy(domain, ref, self.domid, readonly, False)
            if rc != G.GNTST_okay or buf is None:
                answers.append([rc, 0, 0, 0])
                continue
            self.held["copy", ref, readonly] += 1
            answers.append([rc, buf.gfn, buf.offset, buf.length])
        if msg["op"] == "release":
            return {"status": G.GNTST_okay}
        return {"status": G.GNTST_okay, "grants": answers}

    def _serve_grant(self, domain: Domain, msg: Message) -> Message:
        """The granting side's part of the peer's map or unmap of our grant `ref`, checked
        against our grant table for the peer's domid."""
        op, ref, flags = msg["op"], msg.get("ref"), msg.get("flags", 0)
        if not isinstance(ref, int) or not isinstance(flags, int) or not 0 <= ref < 1 << 32:
            return {"status": G.GNTST_general_error}
        flags &= G.GNTMAP_host_map | G.GNTMAP_readonly
        if op == "map":
            rc, act = grant_table.pin_for_map(domain, ref, self.domid, flags)
            if rc != G.GNTST_okay or act is None:
                return {"status": rc}
            self.held["map", ref, flags] += 1
            return {"status": rc, "gfn": act.gfn}
        if self.held["map", ref, flags] <= 0:  # unmap
            return {"status": G.GNTST_bad_handle}
        dev_bus_addr = msg.get("dev_bus_addr", 0)
        rc = grant_table.unmap_for_peer(domain, ref, flags,
                                        dev_bus_addr if isinstance(dev_bus_addr, int) else -1)
        if rc == G.GNTST_okay:
            self._unhold("map", ref, flags)
        return {"status": rc}

    def _unhold(self, kind: str, ref: int, how: int) -> None:
        self.held[kind, ref, how] -= 1
        if self.held[kind, ref, how] <= 0:
            del self.held[kind, ref, how]

    def release_all(self, domain: Domain) -> None:
        """The peer's process ended: the pins it held on our grants go (Xen's
        gnttab_release_mappings for the dying domain)."""
        for (kind, ref, how), count in list(self.held.items()):
            for _ in range(count):
                if kind == "map":
                    grant_table.unpin_for_map(domain, ref, how)
                else:
                    grant_table.release_grant_for_copy(domain, ref, bool(how))
        self.held.clear()

    def close(self) -> None:
        if self.call_sock.fileno() < 0:
            return  # closed already
        self._in_words.release()
        for sock in (self.call_sock, self.serve_sock):
            sock.close()
        for fd in (self.bell_in, self.bell_out):
            os.close(fd)
        # self.memfd stays open: pages of the peer may still be mapped (as Xen keeps a
        # destroyed domain's granted pages until the last mapping goes); unmapping them
        # needs no fd, and the process's end closes it.
        for m in self._maps:
            with contextlib.suppress(BufferError):  # ctypes views pin it: the GC unmaps it
                m.close()


class PeerLinks:
    """A domain process's links to the other domains, by domid. vCPU threads ask for one
    (`get`, the domain's `remote_peers`); the main loop receives them from the daemon and
    serves them (`readable`)."""

    def __init__(self, domain: Domain, ask_daemon: Callable[[Message], bool],
                 sel: selectors.BaseSelector) -> None:
        self.domain = domain
        self.ask_daemon = ask_daemon
        self.sel = sel
        self.links: dict[int, PeerLink] = {}  # the newest link to each domain
        self.lock = threading.Lock()
        self._seq = itertools.count(1)
        self._waiting: dict[int, tuple[threading.Event, list[PeerLink]]] = {}
        domain.remote_peers = self.get

    def get(self, domid: int) -> PeerLink | None:
        """The link to domain `domid`, asking the daemon for one the first time; None if
        there is no such domain (or no daemon to ask)."""
        if domid == self.domain.domid:
            return None
        with self.lock:
            link = self.links.get(domid)
            if link is not None:
                return link
            seq = next(self._seq)
            done, result = self._waiting[seq] = (threading.Event(), [])
        if self.ask_daemon({"op": "peer_link", "domid": domid, "seq": seq}):
            done.wait(LINK_TIMEOUT)
        with self.lock:
            self._waiting.pop(seq, None)
        return result[0] if result else None

    # --- on the main loop ---------------------------------------------------------------------
    def from_daemon(self, msg: Message, fds: list[int]) -> None:
        """"peer" (another domain linked to this one) or "peer_link" (the answer to `get`)."""
        domid, link = msg.get("domid"), None
        process = msg.get("pid")
        if isinstance(domid, int) and fds and not msg.get("error"):
            with contextlib.suppress(WireError, OSError):  # the fds are the link's, or closed
                link = self._add(domid, fds, process if isinstance(process, int) else None)
        else:
            _close_fds(fds)
        if msg.get("op") == "peer_link":
            with self.lock:
                waiter = self._waiting.get(msg.get("seq"))  # type: ignore[arg-type]
            if waiter is not None:
                if link is not None:
                    waiter[1].append(link)
                waiter[0].set()

    def _add(self, domid: int, fds: list[int], process: int | None) -> PeerLink:
        """A new link, served from now on; the link the hypervisor side is to use. Two
        domains that asked for a link to each other at once get two: both are served,
        but the first stands for the peer in both (one identity per peer process, as the
        event-channel and grant checks compare them), whichever the peer calls through."""
        link = PeerLink(domid, fds, process)
        try:
            self.sel.register(link.serve_sock, selectors.EVENT_READ, (self, link, "serve"))
            self.sel.register(link.bell_in, selectors.EVENT_READ, (self, link, "bell"))
        except BaseException:
            for fileobj in (link.serve_sock, link.bell_in):
                with contextlib.suppress(KeyError, ValueError):
                    self.sel.unregister(fileobj)
            link.close()
            raise
        # a blocked vCPU takes the peer's events itself (Wake), one thread hop fewer
        self.domain.wake_sources[link.bell_in] = lambda: self.readable(link, "bell")
        with self.lock:
            first = self.links.get(domid)
            if first is not None and process is not None and first.process == process:
                link.identity = first
            else:
                self.links[domid] = link
        return link.identity

    def readable(self, link: PeerLink, what: str) -> None:
        evtchn = self.domain.evtchn
        if what == "bell":
            evtchn.rung_by_peer(link.identity, link.rung(evtchn.max_port))
        elif not link.serve(self.domain):
            self._drop(link)

    def _drop(self, link: PeerLink) -> None:
        """The peer's process ended: its domain was destroyed."""
        self.sel.unregister(link.serve_sock)
        self.sel.unregister(link.bell_in)
        self.domain.wake_sources.pop(link.bell_in, None)
        with self.lock:
            if self.links.get(link.domid) is link:
                del self.links[link.domid]
        self.domain.evtchn.peer_gone(link.identity)
        link.release_all(self.domain)
        link.close()

    def daemon_lost(self) -> None:
        """No daemon to answer: nobody waits for a new link any longer."""
        with self.lock:
            waiters = list(self._waiting.values())
        for done, _ in waiters:
            done.set()
