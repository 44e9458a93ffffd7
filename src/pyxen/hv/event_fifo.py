"""The FIFO event-channel ABI (Xen's event_fifo.c): up to 2^17 ports, 16 priorities.

Each port has a 32-bit event word (PENDING, MASKED, LINKED, BUSY, 17-bit LINK) in event-array
pages the guest donates (EVTCHNOP_expand_array); each vCPU has a control block (ready bits,
one head per priority) in a guest page it names (EVTCHNOP_init_control). Raising an event
links its word onto the tail of its vCPU's queue for the port's priority; the guest walks the
queues from head[] and unlinks words itself, concurrently, so every change to an event word
is an atomic instruction and linking a tail is a compare-exchange that retries as Xen's does.
pyxen keeps the queue tails (Xen's evtchn_fifo_queue) and reaches the guest's pages through
views of the domain's memory; its writes are recorded for dirty logging.
"""

from __future__ import annotations

import ctypes as C
import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from pyxen.abi import event_channel as E
from pyxen.abi.errno import EINVAL, ENOENT, ENOSPC, XenError
from pyxen.domain.memory import PAGE_SHIFT, PAGE_SIZE
from pyxen.domain.saved import Saved

from . import atomic
from .event_2l import mark_events_pending

if TYPE_CHECKING:
    from pyxen.domain.vcpu import Vcpu

    from .event_channel import Channel, EventChannels

EVENT_WORDS_PER_PAGE = PAGE_SIZE // C.sizeof(E.event_word_t)
MAX_EVENT_ARRAY_PAGES = E.EVTCHN_FIFO_NR_CHANNELS // EVENT_WORDS_PER_PAGE
CONTROL_BLOCK_SIZE = C.sizeof(E.evtchn_fifo_control_block)
HEAD = E.evtchn_fifo_control_block.head.offset
PENDING, MASKED, LINKED, BUSY = (E.EVTCHN_FIFO_PENDING, E.EVTCHN_FIFO_MASKED,
                                 E.EVTCHN_FIFO_LINKED, E.EVTCHN_FIFO_BUSY)
LINK_MASK = E.EVTCHN_FIFO_LINK_MASK


@dataclass(slots=True)
class FifoQueue:
    """evtchn_fifo_queue: one priority's queue of one vCPU (the head lives in the guest)."""

    priority: int
    head: int = 0  # host address of control_block.head[priority]
    tail: int = 0


@dataclass(slots=True)
class FifoVcpu:
    """evtchn_fifo_vcpu."""

    queues: list[FifoQueue] = field(
        default_factory=lambda: [FifoQueue(p) for p in range(E.EVTCHN_FIFO_MAX_QUEUES)])
    control_block: E.evtchn_fifo_control_block | None = None  # a view into guest memory


class EvtchnFifo:
    """evtchn_port_ops_fifo plus the domain's event array (evtchn_fifo_domain)."""

    name = "FIFO"
    max_evtchns = E.EVTCHN_FIFO_NR_CHANNELS

    def __init__(self, ev: EventChannels) -> None:
        self.ev = ev
        self.mem = ev.domain.memory
        self.vcpus = [FifoVcpu() for _ in ev.domain.vcpus]  # setup_control_block, each vCPU
        self.event_array: list[C.Array[C.c_uint32]] = []  # views of the donated pages
        self.num_evtchns = 0
        self.lock = threading.RLock()  # Xen's per-queue locks, as one

    # --- save / restore ------------------------------------------------------------------------
    def _gpa(self, address: int) -> int:
        return address - self.mem.host_address

    def save_state(self) -> dict[str, object]:
        """The FIFO ABI's state outside guest memory: where the control blocks and event
        array pages are, and each queue's tail (Xen's evtchn_fifo_queue.tail)."""
        return {"control_blocks": [None if fv.control_block is None else
                                   self._gpa(C.addressof(fv.control_block)) for fv in self.vcpus],
                "event_array": [self._gpa(C.addressof(page)) >> PAGE_SHIFT
                                for page in self.event_array],
                "tails": [[q.tail for q in fv.queues] for fv in self.vcpus]}

    def load_state(self, saved: Saved) -> None:
        blocks = saved.list("control_blocks")
        tails = saved.list("tails")
        if len(blocks) != len(self.vcpus) or len(tails) != len(self.vcpus):
            raise ValueError("the saved FIFO state is for another number of vCPUs")
        for index, gpa in enumerate(blocks):
            if gpa is not None:
                if not isinstance(gpa, int) or gpa % 8 or \
                        gpa % PAGE_SIZE > PAGE_SIZE - C.sizeof(E.evtchn_fifo_control_block):
                    raise ValueError(f"the saved FIFO control block of vCPU{index} is invalid")
                try:
                    self.map_control_block(index, gpa >> PAGE_SHIFT, gpa % PAGE_SIZE)
                except XenError:
                    raise ValueError(f"the saved FIFO control block of vCPU{index} is not "
                                     "in RAM") from None
            row = Saved({"t": tails[index]}, f"FIFO queues of vCPU{index}").ints(
                "t", E.EVTCHN_FIFO_MAX_QUEUES)
            for q, tail in zip(self.vcpus[index].queues, row, strict=True):
                q.tail = tail
        for gfn in saved.ints("event_array"):
            try:
                self.add_page_to_event_array(gfn)
            except XenError:
                raise ValueError(f"the saved FIFO event array page {gfn:#x} is not usable") \
                    from None

    # --- guest pages -------------------------------------------------------------------------
    def _map_guest_page(self, gfn: int) -> int:
        """map_guest_page: the frame must be RAM the domain owns; its guest-physical address."""
        if not self.mem.is_populated(gfn):
            raise XenError(EINVAL, f"gfn {gfn:#x} is not RAM")
        return gfn << PAGE_SHIFT

    def map_control_block(self, vcpu_id: int, gfn: int, offset: int) -> None:
        fv = self.vcpus[vcpu_id]
        if fv.control_block is not None:
            raise XenError(EINVAL, f"vCPU{vcpu_id} already has a control block")
        gpa = self._map_guest_page(gfn) + offset
        cb = E.evtchn_fifo_control_block.from_buffer(self.mem.map, gpa)
        fv.control_block = cb
        for q in fv.queues:
            q.head = C.addressof(cb) + HEAD + 4 * q.priority

    def add_page_to_event_array(self, gfn: int) -> None:
        port = self.num_evtchns
        if port // EVENT_WORDS_PER_PAGE >= MAX_EVENT_ARRAY_PAGES:
            raise XenError(ENOSPC, "the event array is full")
        gpa = self._map_guest_page(gfn)
        self.event_array.append((C.c_uint32 * EVENT_WORDS_PER_PAGE).from_buffer(self.mem.map, gpa))
        self.num_evtchns += EVENT_WORDS_PER_PAGE
        # Re-raise the events that were pending while this page was missing.
        ev = self.ev
        for p in range(port, self.num_evtchns):
            if not ev.valid(p):
                break
            chn = ev.ports[p]
            if chn.fifo_pending:
                self.set_pending(ev.domain.vcpus[chn.notify_vcpu], p)

    def word(self, port: int) -> int | None:
        """evtchn_fifo_word_from_port: the host address of the port's event word, or None."""
        if port >= self.num_evtchns:
            return None
        page, index = divmod(port, EVENT_WORDS_PER_PAGE)
        return C.addressof(self.event_array[page]) + 4 * index

    def _wrote(self, address: int) -> None:
        """pyxen changed a guest word in place: dirty logging must see it."""
        self.mem.note_write(address - self.mem.host_address, 4)

    # --- linking -------------------------------------------------------------------------------
    def _try_set_link(self, word: int, w: int, link: int) -> tuple[int, int]:
        """try_set_link: (1 linked, 0 the tail is no longer LINKED, -1 retry; the word seen)."""
        if not w & (1 << LINKED):
            return 0, w
        new = (w & ~((1 << BUSY) | LINK_MASK)) | link
        found = atomic.cmpxchg32(word, w, new)
        if found == w:
            self._wrote(word)
            return 1, found
        return -1, found

    def _set_link(self, word: int, link: int) -> bool:
        """evtchn_fifo_set_link: link the tail word to `link` iff it is still LINKED. The guest
        may only mask, unmask, clear PENDING or unlink meanwhile; BUSY blocks its unmasking,
        so the compare-exchange fails at most four more times."""
        ret, w = self._try_set_link(word, atomic.load32(word), link)
        if ret >= 0:
            return bool(ret)
        atomic.test_and_set_bit32(word, BUSY)
        w = atomic.load32(word)
        for _ in range(4):
            ret, w = self._try_set_link(word, w, link)
            if ret >= 0:
                if ret == 0:
                    atomic.test_and_clear_bit32(word, BUSY)
                self._wrote(word)
                return bool(ret)
        atomic.test_and_clear_bit32(word, BUSY)
        self._wrote(word)
        return True

    # --- port operations -----------------------------------------------------------------------
    def init(self, chn: Channel) -> None:
        """evtchn_fifo_init: a newly bound port gets the default priority."""
        chn.priority = E.EVTCHN_FIFO_PRIORITY_DEFAULT

    def set_pending(self, v: Vcpu, port: int) -> None:
        """evtchn_fifo_set_pending."""
        chn = self.ev.ports[port]
        word = self.word(port)
        if word is None:  # no event-array page yet: raised when the page is added
            chn.fifo_pending = True
            return
        fv = self.vcpus[v.index]
        # machine.exclusive is the innermost lock (see event_2l.set_pending).
        with self.lock, self.ev.domain.machine.exclusive():
            last_vcpu, last_priority = chn.fifo_lastq
            q = fv.queues[chn.priority]
            old_q = self.vcpus[last_vcpu].queues[last_priority]
            was_pending = atomic.test_and_set_bit32(word, PENDING)
            self._wrote(word)
            linked = True
            # Without a control block the guest cannot have unmasked the port: drop it.
            if (fv.control_block is not None and not atomic.test_bit32(word, MASKED)
                    and not atomic.test_and_set_bit32(word, LINKED)):
                if old_q.tail == port:  # it was the old queue's tail: that queue is empty
                    old_q.tail = 0
                if old_q is not q:
                    chn.fifo_lastq = (v.index, q.priority)
                linked = False
                if q.tail:
                    tail_word = self.word(q.tail)
                    assert tail_word is not None  # a tail always has a word
                    linked = self._set_link(tail_word, port)
                if not linked:
                    atomic.store32(q.head, port)
                    self._wrote(q.head)
                q.tail = port
            if not linked and fv.control_block is not None:
                ready = C.addressof(fv.control_block)
                raised = not atomic.test_and_set_bit32(ready, q.priority)
                self._wrote(ready)
                if raised:
                    mark_events_pending(v)
        if not was_pending:
            self.ev.check_pollers(port)

    def clear_pending(self, port: int) -> None:
        """Only the PENDING bit: the guest unlinks (and skips) events that are not pending."""
        word = self.word(port)
        if word is not None:
            with self.ev.domain.machine.exclusive():
                atomic.test_and_clear_bit32(word, PENDING)
            self._wrote(word)

    def unmask(self, port: int) -> None:
        word = self.word(port)
        if word is None:
            return
        with self.ev.domain.machine.exclusive():
            atomic.test_and_clear_bit32(word, MASKED)
        self._wrote(word)
        if atomic.test_bit32(word, PENDING):  # relink if pending
            chn = self.ev.ports[port]
            self.set_pending(self.ev.domain.vcpus[chn.notify_vcpu], port)

    def is_pending(self, port: int) -> bool:
        word = self.word(port)
        return word is not None and atomic.test_bit32(word, PENDING)

    def is_masked(self, port: int) -> bool:
        word = self.word(port)
        return word is None or atomic.test_bit32(word, MASKED)

    def is_busy(self, port: int) -> bool:
        """A closed port still LINKED is not handed out again until the guest unlinks it."""
        word = self.word(port)
        return word is not None and atomic.test_bit32(word, LINKED)

    def set_priority(self, chn: Channel, priority: int) -> None:
        """Future events use the new queue; one already linked stays where it is."""
        if priority > E.EVTCHN_FIFO_PRIORITY_MIN:
            raise XenError(EINVAL, f"priority {priority}")
        chn.priority = priority


def init_control(ev: EventChannels, vcpu_id: int, gfn: int, offset: int) -> None:
    """evtchn_fifo_init_control, checks in Xen's order. The first call switches the domain to
    the FIFO ABI: bound ports keep their pending state (raised once their event-array page
    exists) and get the default priority (setup_ports)."""
    d = ev.domain
    if vcpu_id >= len(d.vcpus):
        raise XenError(ENOENT)
    if offset > PAGE_SIZE - CONTROL_BLOCK_SIZE:
        raise XenError(EINVAL, "the control block would cross the page")
    if offset & 7:
        raise XenError(EINVAL, "the control block must be 8-byte aligned")
    with ev.lock:
        fifo = ev.port_ops
        if isinstance(fifo, EvtchnFifo):
            fifo.map_control_block(vcpu_id, gfn, offset)
            return
        prev_evtchns = fifo.max_evtchns
        new = EvtchnFifo(ev)
        new.map_control_block(vcpu_id, gfn, offset)  # on failure the domain stays 2-level
        pending = [p for p in range(1, min(prev_evtchns, len(ev.ports))) if fifo.is_pending(p)]
        ev.port_ops = new
        for port in range(1, min(prev_evtchns, len(ev.ports))):
            ev.ports[port].priority = E.EVTCHN_FIFO_PRIORITY_DEFAULT
        for port in pending:
            ev.ports[port].fifo_pending = True
