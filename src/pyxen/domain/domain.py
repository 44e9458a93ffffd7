"""A domain: guest memory, vCPUs, Xen per-domain state, and its lifecycle.

Lifecycle: built → running → shut down (with a Xen shutdown reason), crashed, or failed (a
VMM error); `wait()` returns the outcome. Every way of stopping goes through `_stop`, which
records the first outcome only and kicks every vCPU out of the guest.
"""

from __future__ import annotations

import contextlib
import ctypes as C
import enum
import hashlib
import logging
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from pyxen.abi.hvm import HVM_NR_PARAMS, HVM_PARAM_CALLBACK_IRQ, HVM_PARAM_CALLBACK_TYPE_VECTOR
from pyxen.abi.sched import SHUTDOWN_NAMES, SHUTDOWN_crash
from pyxen.abi.xen import DOMID_FIRST_RESERVED, DOMID_SELF
from pyxen.hv.event_channel import DEFAULT_MAX_EVENT_CHANNELS, EventChannels
from pyxen.hv.grant_table import GrantTable
from pyxen.hv.remote import RemotePeer
from pyxen.hv.shared_info import SharedInfo
from pyxen.hv.time import DomainClock
from pyxen.hv.timer import TimerQueue, tight_timer_slack
from pyxen.threads import start_worker, stop_signals
from pyxen.x86.lapic import (
    DM_FIXED,
    DM_INIT,
    DM_LOWEST,
    DM_NMI,
    DM_SMI,
    DM_STARTUP,
    SH_ALL,
    SH_OTHERS,
    SH_SELF,
    Ipi,
)

from .memory import GuestMemory
from .vcpu import Vcpu

if TYPE_CHECKING:
    from pyxen.hv.hypercall import HypercallTable

    from .backend import MachineBackend

log = logging.getLogger("pyxen.domain")
MiB = 1 << 20
CONSOLE_LINGER = 0.05  # seconds an unfinished console line waits for its end
DEFAULT_MAX_GRANT_FRAMES = 32  # xl's default max_grant_frames
NR_DOMAIN_WATCHDOG_TIMERS = 2


class Outcome(enum.Enum):
    """How a domain's run ended."""

    POWEROFF = "poweroff"
    REBOOT = "reboot"
    SUSPEND = "suspend"
    CRASH = "crash"
    WATCHDOG = "watchdog"
    SOFT_RESET = "soft_reset"
    TIMEOUT = "timeout"
    ERROR = "error"


SHUTDOWN_OUTCOMES = {code: Outcome(name) for code, name in SHUTDOWN_NAMES.items()}


@dataclass
class DomainConfig:
    name: str = "pyxen-guest"
    domid: int = 1
    memory_mib: int = 64
    maxmem_mib: int | None = None
    vcpus: int = 1
    max_vcpus: int | None = None
    cmdline: str = ""
    privileged: bool = False  # dom0: SIF_INITDOMAIN, privileged hypercalls
    max_grant_frames: int = DEFAULT_MAX_GRANT_FRAMES
    max_event_channels: int = DEFAULT_MAX_EVENT_CHANNELS
    trace: bool = False
    acpi: bool = True  # xl's acpi: ACPI tables for the guest (off: rsdp_paddr 0)
    handle: bytes = field(default_factory=bytes)  # xen_domain_handle_t (UUID)


@dataclass
class Result:
    outcome: Outcome
    detail: str = ""
    shutdown_code: int | None = None


class Domain:
    def __init__(self, config: DomainConfig, machine: MachineBackend,
                 hypercalls: HypercallTable, console: Callable[[bytes], None]) -> None:
        self.config = config
        self.domid = config.domid
        self.privileged = config.privileged
        self.trace = config.trace
        self.machine = machine
        self.hypercalls = hypercalls
        self._console = console
        self._console_lock = threading.Lock()  # console_write's lines never interleave
        self._console_held: dict[str, bytes] = {}  # each source's unfinished line
        self._console_flush: threading.Timer | None = None
        self.handle = config.handle or hashlib.md5(f"pyxen:{config.name}".encode()).digest()
        maxmem = config.maxmem_mib or config.memory_mib
        self.memory = GuestMemory(config.memory_mib * MiB, max(maxmem, config.memory_mib) * MiB,
                                  name=f"pyxen-{config.name}")
        self.max_pages = max(maxmem, config.memory_mib) * MiB >> 12
        self.memory_lock = threading.RLock()  # populate/release and the slots that follow
        self._slots: dict[tuple[int, int, int, bool], int] = {}  # (gpa, size, host, ro) → slot
        # gfn → (host address, read-only) of a granted page mapped there: Xen's p2m_grant_map_rw
        # or p2m_grant_map_ro
        self.grant_maps: dict[int, tuple[int, bool]] = {}
        self.memory.on_layout_change = self._sync_memory_slots
        self.memory.commit()
        self.clock = DomainClock()
        self.tsc_khz = 0
        self.shared_info = SharedInfo(self.memory, on_move=self._vcpu_info_moved)
        self.clock.update_wallclock(self.shared_info.page)
        self.evtchn = EventChannels(self, config.max_event_channels)
        self.timers = TimerQueue(self.clock, config.name)
        self.hvm_params = [0] * HVM_NR_PARAMS
        self.max_grant_frames = config.max_grant_frames
        self.special_frames: dict[int, str] = {}  # gfn → Xen page mapped there
        self.vcpus: list[Vcpu] = []
        self.peers: dict[int, Domain] = {self.domid: self}  # the host's domains, by id
        # host mode: a domain in another process, by id (None: no such domain)
        self.remote_peers: Callable[[int], RemotePeer | None] | None = None
        # fds a sleeping vCPU also waits on, and what to do when one is readable (another
        # domain's process rang this domain's doorbell: see pyxen.threads.Wake)
        self.wake_sources: dict[int, Callable[[], None]] = {}
        self.e820: list[tuple[int, int, int]] = []  # (addr, size, type): XENMEM_memory_map
        self.grant_table = GrantTable(self, config.max_grant_frames)
        self.extra_pages = 0  # increase_reservation pages (allocated, not mapped: HVM)
        self.max_vcpus = config.max_vcpus or config.vcpus
        self.shutdown_code: int | None = None
        self.watchdogs: dict[int, threading.Timer] = {}
        self.stopping = False
        self._result: Result | None = None
        self._done = threading.Event()
        self._state_lock = threading.Lock()  # the first outcome wins (_stop)
        self.domain_lock = threading.RLock()  # Xen's d->domain_lock: vCPU state, watchdogs
        self.pause_count = 0  # Xen's d->pause_count: pause() calls not yet undone
        self.paused_at = 0  # system time of the outermost pause()
        self.restored = False  # built from a saved stream, not from an image
        self.quiesce = threading.Condition()  # pause_count and quiet_vcpus change under it
        self.quiet_vcpus: set[int] = set()  # vCPUs at their pause point or parked offline
        # told of each vCPU thread as it starts, on that thread (host mode pins them)
        self.on_vcpu_thread: Callable[[Vcpu], None] | None = None

    def _sync_memory_slots(self, runs: list[tuple[int, int]]) -> None:
        """One backend memory slot per run of populated frames, and one per granted page
        mapped into the physmap (GNTTABOP_map_grant_ref; read-only for GNTMAP_readonly):
        nothing else is reachable."""
        base = self.memory.host_address
        wanted = {(first << 12, count << 12, base + (first << 12), False)
                  for first, count in runs}
        wanted |= {(gfn << 12, 1 << 12, host, ro) for gfn, (host, ro) in self.grant_maps.items()
                   if not self.memory.is_populated(gfn)}
        for key in [k for k in self._slots if k not in wanted]:
            self.machine.unmap_memory(self._slots.pop(key))
        used = set(self._slots.values())
        free = (n for n in range(1 << 15) if n not in used)
        for gpa, size, host, ro in sorted(wanted - self._slots.keys()):
            slot = next(free)
            self.machine.map_memory(slot, gpa, size, host, readonly=ro)
            self._slots[gpa, size, host, ro] = slot

    def special_frame_leaves(self, gfn: int) -> None:
        """The Xen page at `gfn` leaves the physmap (removed, given back, or displaced by
        another Xen page mapped there): shared_info and grant frames keep their contents
        aside, as Xen's p2m removal leaves them, and no longer claim the frame."""
        kind = self.special_frames.pop(gfn, None)
        if kind == "shared_info":
            self.shared_info.unmap()
        elif kind is not None and kind.startswith("grant_"):
            self.grant_table.frame_unmapped(kind)

    def _vcpu_info_moved(self) -> None:
        for v in self.vcpus:
            v.vcpu_info_moved()

    def send_ipi(self, ipi: Ipi) -> None:
        """An ICR write reaches the vCPUs it names (Xen's vlapic_ipi): fixed and
        lowest-priority vectors to their LAPICs (lowest priority: the first match), INIT
        and SIPI to start or stop them. A CPU cannot INIT or SIPI itself."""
        for v in self.vcpus:
            own = v.lapic.id == ipi.source
            if ipi.shorthand == SH_SELF:
                hit = own
            elif ipi.shorthand in (SH_ALL, SH_OTHERS):
                hit = ipi.shorthand == SH_ALL or not own
            else:
                hit = v.lapic.matches(ipi.destination, ipi.logical)
            if not hit:
                continue
            if ipi.mode in (DM_FIXED, DM_LOWEST):
                v.lapic.accept(ipi.vector)
                if ipi.mode == DM_LOWEST:
                    return
            elif ipi.mode == DM_INIT and ipi.level_assert and not own:
                v.init_ipi()
            elif ipi.mode == DM_STARTUP and not own:
                v.startup_ipi(ipi.vector)
            elif ipi.mode in (DM_NMI, DM_SMI):
                log.info("d%d: %s IPI to vCPU%d not delivered (not emulated)", self.domid,
                         "NMI" if ipi.mode == DM_NMI else "SMI", v.index)

    @property
    def callback_vector(self) -> int:
        """The upcall vector from HVM_PARAM_CALLBACK_IRQ when its type is "vector", else 0."""
        via = self.hvm_params[HVM_PARAM_CALLBACK_IRQ]
        return via & 0xFF if via >> 56 == HVM_PARAM_CALLBACK_TYPE_VECTOR else 0

    # --- dirty logging (live migration) ------------------------------------------------------
    def set_dirty_logging(self, enabled: bool) -> None:
        """Start (with an empty record) or stop tracking which frames change."""
        self.memory.host_dirty = set() if enabled else None
        self.machine.set_dirty_logging(enabled)

    def dirty_frames(self) -> set[int]:
        """Frames changed since logging started or since the previous call: the guest's
        writes (from the backend), pyxen's writes, and the Xen pages pyxen updates in place
        through views (shared_info, grant frames, rings, registered vcpu_info)."""
        if self.memory.host_dirty is None:
            return set()
        frames = self.machine.fetch_dirty() | self.memory.take_host_dirty()
        frames.update(self.special_frames)
        for v in self.vcpus:
            if v.vcpu_info_override is not None:
                frames.add(C.addressof(v.vcpu_info_override) - self.memory.host_address >> 12)
        return frames

    # --- Xen's domain lookups --------------------------------------------------------------------
    def lookup(self, domid: int) -> Domain | None:
        """rcu_lock_domain_by_any_id: DOMID_SELF or an existing domain's id."""
        return self if domid == DOMID_SELF else self.peers.get(domid)

    def remote_peer(self, domid: int) -> RemotePeer | None:
        """A domain that runs in another process (host mode), for inter-domain events."""
        if self.remote_peers is None or domid >= DOMID_FIRST_RESERVED:
            return None
        return self.remote_peers(domid)

    def may_control(self, target: Domain) -> bool:
        """XSM_TARGET: a domain acts on itself; the privileged domain on any."""
        return target is self or self.privileged

    @property
    def tot_pages(self) -> int:
        """Pages the domain owns (Xen's domain_tot_pages): RAM frames, not Xen's pages."""
        return self.memory.nr_populated - len(self.special_frames) + self.extra_pages

    # --- console --------------------------------------------------------------------------------
    def console_write(self, data: bytes, source: str = "console_io") -> None:
        """The guest's output from any source (console_io, debugcon, the PV console ring),
        whichever thread delivers it, merged a whole line at a time in the order the lines
        end: one source's unfinished line never splices into another's (the ring drains
        wherever its notify fell, often mid-line). An unfinished line, such as a prompt, is
        shown once it has waited CONSOLE_LINGER seconds."""
        with self._console_lock:
            held = self._console_held.pop(source, b"") + data
            cut = held.rfind(b"\n") + 1
            if cut:
                self._console(held[:cut])
            if cut < len(held):
                self._console_held[source] = held[cut:]
                if self._console_flush is None:
                    self._console_flush = threading.Timer(CONSOLE_LINGER, self.flush_console)
                    self._console_flush.daemon = True
                    start_worker(self._console_flush)

    def flush_console(self) -> None:
        """Show every source's unfinished line now."""
        with self._console_lock:
            self._console_flush = None
            for rest in self._console_held.values():
                self._console(rest)
            self._console_held.clear()

    # --- vCPUs ------------------------------------------------------------------------------------
    def add_vcpu(self, vcpu: Vcpu) -> None:
        self.vcpus.append(vcpu)

    def start(self) -> None:
        if not self.restored:  # a restored table is as the guest left it
            self.grant_table.seed_reserved()  # as libxl's xc_dom_gnttab_seed, for dom0's backends
        for vcpu in self.vcpus:
            if vcpu.online:
                self.start_vcpu(vcpu)

    def start_vcpu(self, vcpu: Vcpu) -> None:
        def body() -> None:
            vcpu.backend.thread_id = threading.get_ident()  # type: ignore[attr-defined]
            vcpu.native_id = threading.get_native_id()
            if self.on_vcpu_thread is not None:
                self.on_vcpu_thread(vcpu)
            tight_timer_slack()
            try:
                vcpu.run_loop()
            finally:  # a kick must never signal a thread that is gone
                vcpu.backend.thread_id = None  # type: ignore[attr-defined]

        vcpu.thread = threading.Thread(target=body, name=f"{self.config.name}-vcpu{vcpu.index}",
                                       daemon=True)
        start_worker(vcpu.thread)

    # --- pause --------------------------------------------------------------------------------------
    def pause(self, timeout: float = 30.0) -> bool:
        """Xen's domain_pause: every vCPU leaves guest code and finishes the hypercall it is
        in (a blocked vCPU wakes, as from a spurious event), then waits; the domain's timers
        fire nothing until unpause(). Nests. True once every vCPU has stopped; False if one
        did not within `timeout` seconds (the domain stays paused: call unpause())."""
        with self.quiesce:
            self.pause_count += 1
            if self.pause_count == 1:
                self.paused_at = self.clock.now()  # the guest's time stops here for a save
        self.timers.hold(True)
        for vcpu in self.vcpus:
            vcpu.kick()
        with self.quiesce:
            return self.quiesce.wait_for(self._all_quiet, timeout)

    def _all_quiet(self) -> bool:
        return self.stopping or all(
            v.index in self.quiet_vcpus or v.thread is None or not v.thread.is_alive()
            for v in self.vcpus)

    def unpause(self) -> None:
        with self.quiesce:
            self.pause_count -= 1
            if self.pause_count:
                return
            self.quiesce.notify_all()
        self.timers.hold(False)

    @contextlib.contextmanager
    def quiet(self, vcpu: Vcpu) -> Iterator[None]:
        """`vcpu` counts as stopped for pause() while inside (it runs no guest code)."""
        with self.quiesce:
            self.quiet_vcpus.add(vcpu.index)
            self.quiesce.notify_all()
        try:
            yield
        finally:
            with self.quiesce:
                self.quiet_vcpus.discard(vcpu.index)

    def pause_point(self, vcpu: Vcpu) -> None:
        """A vCPU's thread waits here, between exits, while the domain is paused."""
        with self.quiet(vcpu), self.quiesce:
            self.quiesce.wait_for(lambda: not self.pause_count or self.stopping)

    # --- lifecycle --------------------------------------------------------------------------------
    def shutdown(self, reason: int, detail: str = "") -> None:
        """SCHEDOP_shutdown and friends: the guest asked to stop with a Xen reason."""
        outcome = SHUTDOWN_OUTCOMES.get(reason, Outcome.CRASH)
        code = self.shutdown_code if self.shutdown_code is not None else reason
        self._stop(Result(outcome, detail, code))

    def crash(self, detail: str) -> None:
        log.warning("domain %d crashed: %s", self.domid, detail)
        self._stop(Result(Outcome.CRASH, detail, SHUTDOWN_crash))

    def vmm_error(self, detail: str) -> None:
        self._stop(Result(Outcome.ERROR, detail))

    def timeout(self, seconds: float) -> None:
        self._stop(Result(Outcome.TIMEOUT, f"no shutdown within {seconds:g} s"))

    def _stop(self, result: Result) -> None:
        with self._state_lock:
            if self._result is not None:
                return
            self._result = result
            self.stopping = True
        with self.quiesce:  # paused vCPUs go too
            self.quiesce.notify_all()
        for timer in self.watchdogs.values():
            timer.cancel()
        self.timers.close()
        for vcpu in self.vcpus:
            vcpu.kick()
        self._done.set()

    def wait(self, timeout: float | None = None) -> Result:
        """Block until the domain stops, or `timeout` seconds pass (→ Outcome.TIMEOUT).
        One sleep, no polling: the domain's threads block the stop signals
        (`pyxen.threads`), so a signal interrupts this wait in the main thread; one whose
        SignalStop a finalizer swallowed earlier is raised here (`StopSignals.check`)."""
        if threading.current_thread() is threading.main_thread():
            stop_signals.check()
        if not self._done.wait(timeout):
            self.timeout(timeout or 0)
        assert self._result is not None
        return self._result

    @property
    def result(self) -> Result | None:
        return self._result

    def close(self) -> None:
        self.stopping = True
        self.timers.close()
        for vcpu in self.vcpus:
            vcpu.kick()
        for vcpu in self.vcpus:
            if vcpu.thread is not None and vcpu.thread.ident is not None:  # started
                vcpu.thread.join(timeout=5)
        if self._console_flush is not None:
            self._console_flush.cancel()
        self.flush_console()
        self.machine.close()
        self.memory.close()
        for vcpu in self.vcpus:
            vcpu.wake.close()
