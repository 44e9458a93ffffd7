"""A domain's virtual CPU: the exit loop that turns backend exits into hypervisor work."""

from __future__ import annotations

import contextlib
import ctypes as C
import logging
import threading
from typing import TYPE_CHECKING

from pyxen.abi import errno
from pyxen.abi.errno import XenError
from pyxen.abi.event_channel import NR_VIRQS, VIRQ_TIMER
from pyxen.abi.sched import SHUTDOWN_poweroff, SHUTDOWN_reboot
from pyxen.abi.vcpu import RUNSTATE_blocked, RUNSTATE_offline, RUNSTATE_running
from pyxen.abi.xen import vcpu_info, vcpu_time_info
from pyxen.hv.guest_access import GuestAccess
from pyxen.hv.hypercall import format_result, hypercall_page
from pyxen.hv.time import TscCalibration, write_time_info
from pyxen.hv.timer import Timer
from pyxen.hv.vcpu import publish_runstate
from pyxen.threads import Wake
from pyxen.x86.cpuid import HYPERCALL_MSR
from pyxen.x86.lapic import APIC_PAGE, Lapic

from .acpi import power_request
from .backend import Exit, Regs, SpecialRegs, VcpuBackend, no_device_read, real_mode_at
from .memory import PAGE_SHIFT, PAGE_SIZE, GuestMemoryError
from .saved import Saved

if TYPE_CHECKING:
    from .domain import Domain

log = logging.getLogger("pyxen.vcpu")
M32 = 0xFFFF_FFFF
M64 = 0xFFFF_FFFF_FFFF_FFFF
RFLAGS_IF = 1 << 9
DEBUGCON_PORT = 0xE9  # Xen prints HVM guests' writes to port 0xE9 on its console
HYPERCALL_PAGE = hypercall_page()
_THIS_THREAD = threading.local()  # .vcpu: the vCPU whose exit loop runs on this thread


class Vcpu:
    """One vCPU: owns its backend vCPU and the thread that runs it."""

    def __init__(self, domain: Domain, index: int, backend: VcpuBackend) -> None:
        self.domain = domain
        self.index = index
        self.native_id = 0  # the host thread's id (TID) while it runs
        self.backend = backend
        if hasattr(backend, "inline_hypercall"):  # an optional backend capability
            backend.inline_hypercall = self.hypercall_inline
        if hasattr(backend, "answer_natively") and not domain.trace:  # --trace sees every call
            backend.answer_natively(domain.hypercalls.always)
        self.online = index == 0
        # VCPUOP_initialise's (special registers, registers), until this vCPU's thread loads them
        self.initial_state: tuple[SpecialRegs, Regs] | None = None
        self.initialised = index == 0  # vCPU 0 boots at the PVH entry; others need
        #                                VCPUOP_initialise
        self.compat = False  # whether the current hypercall came from 32-bit code
        self.vcpu_info_override: vcpu_info | None = None  # set by VCPUOP_register_vcpu_info
        self._vcpu_info: vcpu_info | None = None  # cached view; see vcpu_info_moved()
        self.runstate_state = RUNSTATE_running if self.online else RUNSTATE_offline
        self.runstate_entry = 0
        self.runstate_time = [0, 0, 0, 0]
        self.runstate_area: tuple[int, bool] | None = None  # (guest va, compat layout)
        self.calibration: TscCalibration | None = None
        self.upcall_vector = 0  # HVMOP_set_evtchn_upcall_vector (0: the domain's callback)
        self.lapic_timer = Timer(self._lapic_timer_fired)
        self.lapic = Lapic(index, domain.clock.now, self._arm_lapic_timer, domain.send_ipi,
                           self.kick, self._tsc_to_ns)
        self.wait_for_sipi = index != 0  # an AP waits for INIT/SIPI (or VCPUOP_initialise)
        self._window_requested = False
        self.virq_to_evtchn = [0] * NR_VIRQS
        self.poll_port: int | None = None  # SCHEDOP_poll: the port waited for (0: several)
        self.singleshot = Timer(lambda: domain.evtchn.send_virq(self, VIRQ_TIMER))
        self.periodic = Timer(self._periodic_tick)
        self.periodic_period = 0
        self._periodic_next = 0
        self.thread: threading.Thread | None = None
        self.wake = Wake()
        self.in_multicall = False  # a multicall may not nest
        self.time_area: int | None = None  # VCPUOP_register_vcpu_time_memory_area (va)
        self.sleeping = False  # blocked in sleep(): a kick wakes it

    # --- time and shared state ---------------------------------------------------------------
    @property
    def vcpu_info(self) -> vcpu_info | None:
        if self.vcpu_info_override is not None:
            return self.vcpu_info_override
        if self._vcpu_info is None:
            self._vcpu_info = self.domain.shared_info.default_vcpu_info(self.index)
        return self._vcpu_info

    def vcpu_info_moved(self) -> None:
        """shared_info was remapped, or the guest placed our vcpu_info elsewhere: forget the
        cached view, and stop a running engine that may watch the old evtchn_upcall_pending
        for an interrupt window (deliver_interrupts asks again with the new one)."""
        self._vcpu_info = None
        self.backend.kick()
        self.domain.evtchn.fast.invalidate()  # native sends must not use the old one

    def _periodic_tick(self) -> None:
        """The periodic timer: send VIRQ_TIMER and re-arm on the ideal schedule (no drift);
        if ticks were missed, the next one is a period from now."""
        if not self.periodic_period:
            return
        self.domain.evtchn.send_virq(self, VIRQ_TIMER)
        now = self.domain.clock.now()
        nxt = self._periodic_next + self.periodic_period
        if nxt <= now:
            nxt = now + self.periodic_period
        self.set_periodic(self.periodic_period, first=nxt)

    def set_periodic(self, period: int, first: int | None = None) -> None:
        self.periodic_period = period
        if not period:
            self.domain.timers.stop(self.periodic)
            return
        self._periodic_next = first if first is not None else self.domain.clock.now() + period
        self.domain.timers.set(self.periodic, self._periodic_next)

    def calibrate(self) -> None:
        """Pair this vCPU's guest TSC with Xen system time (on the vCPU's own thread)."""
        tsc = self.backend.read_tsc()
        self.calibration = TscCalibration(tsc, self.domain.clock.now(), self.domain.tsc_khz)

    def update_time(self) -> None:
        """Publish current system time in this vCPU's vcpu_time_info."""
        if self.calibration is None:
            return
        now = self.domain.clock.now()
        info = self.vcpu_info
        if info is not None:
            write_time_info(info.time, self.calibration, now)
        if self.time_area is not None:
            # The guest may read it meanwhile: version odd, data, then the next even version.
            with contextlib.suppress(XenError):
                guest = self.guest()
                version = (guest.read_u32(self.time_area) + 1) | 1
                guest.write_u32(self.time_area, version)
                area = vcpu_time_info()
                write_time_info(area, self.calibration, now)
                area.version = version + 1
                guest.write(self.time_area + 4, bytes(area)[4:])
                guest.write_u32(self.time_area, version + 1)

    def set_runstate(self, state: int) -> None:
        now = self.domain.clock.now()
        self.runstate_time[self.runstate_state] += now - self.runstate_entry
        self.runstate_state, self.runstate_entry = state, now
        publish_runstate(self)

    # --- guest access --------------------------------------------------------------------------
    def guest(self) -> GuestAccess:
        return GuestAccess(self.domain.memory, self.backend.paging())

    # --- the exit loop -------------------------------------------------------------------------
    def run_loop(self) -> None:
        domain = self.domain
        backend = self.backend
        self.calibrate()
        self.update_time()
        self._load_initial_state()
        _THIS_THREAD.vcpu = self
        try:
            while not domain.stopping:
                if domain.pause_count:
                    backend.settle()
                    domain.pause_point(self)
                    continue
                if not self.online:
                    self._park()  # VCPUOP_initialise happens while a vCPU is offline
                    self._load_initial_state()
                    continue
                self.deliver_interrupts()
                exit_ = backend.run()
                if exit_ is Exit.HYPERCALL:
                    self.hypercall()
                else:
                    self._other_exit(exit_)
        except Exception as e:  # noqa: BLE001 - a VMM bug must end the domain, not hang it
            log.exception("vCPU%d failed", self.index)
            domain.vmm_error(f"vCPU{self.index}: internal error: {e!r}")

    # --- event delivery ------------------------------------------------------------------------
    def raise_upcall(self) -> None:
        """evtchn_upcall_pending went from 0 to 1 (Xen's hvm_assert_evtchn_irq): a per-vCPU
        upcall vector (HVMOP_set_evtchn_upcall_vector) is an edge interrupt through the
        LAPIC, EOI'd by the guest; the domain's callback vector is level-triggered on
        evtchn_upcall_pending and injected directly, with no EOI."""
        if self.upcall_vector:
            self.lapic.accept(self.upcall_vector)
        else:
            self.kick()

    def next_interrupt(self) -> tuple[int, bool]:
        """(vector, through the LAPIC) to inject now, or (0, False): Xen's
        hvm_vcpu_has_pending_irq order, the callback vector before the LAPIC."""
        vector = self.domain.callback_vector
        if vector and not self.upcall_vector:
            info = self.vcpu_info
            if info is not None and info.evtchn_upcall_pending:
                return vector, False
        if self.lapic.irr:
            vector = self.lapic.pending_vector()
            if vector:
                return vector, True
        return 0, False

    def deliver_interrupts(self) -> None:
        vector, from_lapic = self.next_interrupt()
        if not vector:
            if self._window_requested:  # the upcall went away (consumed by polling): a
                self._window_requested = False  # stale request would exit on every sti
                self.backend.request_interrupt_window(False)
            return
        if self.backend.inject_interrupt(vector):
            if from_lapic:
                self.lapic.acknowledge(vector)
            wanted = False
        else:  # interrupts off: come back as soon as the guest can take it
            wanted = True
        if wanted or self._window_requested:
            self.backend.request_interrupt_window(wanted, self._window_level(from_lapic))
        self._window_requested = wanted

    def _window_level(self, from_lapic: bool) -> int | None:
        """The callback vector is level-triggered on evtchn_upcall_pending, which the
        guest usually clears itself (its handler, entered some other way, or polling)
        before it sets IF again: then the window is no longer wanted. Its host address,
        unless the LAPIC has an interrupt waiting too."""
        info = self.vcpu_info
        if from_lapic or self.lapic.irr or info is None:
            return None
        return C.addressof(info) + vcpu_info.evtchn_upcall_pending.offset

    def events_need_delivery(self) -> bool:
        """Xen's local_events_need_delivery for HVM: an interrupt that would be taken now."""
        return bool(self.next_interrupt()[0]) and bool(self.backend.regs.rflags & RFLAGS_IF)

    def upcall_ready(self) -> int:
        """The vector an interrupt would bring now (0: none): whether a hypercall that
        waits or runs inline should stop for it."""
        return self.next_interrupt()[0]

    # --- the local APIC ------------------------------------------------------------------------
    def _arm_lapic_timer(self, deadline: int | None) -> None:
        if deadline is None:
            self.domain.timers.stop(self.lapic_timer)
        else:
            self.domain.timers.set(self.lapic_timer, deadline)

    def _lapic_timer_fired(self) -> None:
        self.lapic.timer_fired()

    def _tsc_to_ns(self, tsc: int) -> int:
        """The system time at which this vCPU's TSC reads `tsc` (the TSC-deadline timer)."""
        cal = self.calibration
        if cal is None or not cal.tsc_khz:
            return self.domain.clock.now()
        return cal.system_time + (tsc - cal.tsc) * 1_000_000 // cal.tsc_khz

    def init_ipi(self) -> None:
        """INIT (Xen's vlapic_init_sipi_one): the vCPU stops and waits for a SIPI."""
        self.lapic.reset()
        self.wait_for_sipi = True
        if self.online:
            self.online = False
            self.kick()

    def startup_ipi(self, vector: int) -> None:
        """SIPI: a vCPU waiting for one starts in real mode at vector * 4 KiB."""
        if not self.wait_for_sipi:
            return
        self.wait_for_sipi = False
        self.initial_state = (real_mode_at(vector << 12), Regs(rflags=0x2))
        self.initialised = True
        self.online = True
        if self.thread is None:
            self.domain.start_vcpu(self)
        self.wake.set()
        self.kick()

    def sleep(self, deadline: int | None = None) -> None:
        """Block this vCPU (no CPU used) until kicked or until system time `deadline`.
        Callers clear `wake` before testing their wake-up condition, so no kick is lost."""
        self.backend.settle()  # now, not on the way back from the wake-up
        if self.domain.pause_count or self.domain.stopping:
            return  # a pause's (or destroy's) kick came before our caller cleared `wake`
        self.set_runstate(RUNSTATE_blocked)
        try:
            timeout = None
            if deadline is not None:
                timeout = max(0, deadline - self.domain.clock.now()) / 1e9
            self.sleeping = True
            self.wake.wait(timeout, self.domain.wake_sources)
        finally:
            self.sleeping = False
            self.wake.clear()
            # Woken while taken down (VCPUOP_down): offline, not running.
            self.set_runstate(RUNSTATE_running if self.online else RUNSTATE_offline)

    def _load_initial_state(self) -> None:
        """VCPUOP_initialise's registers, if it gave any, on this vCPU's own thread before
        it runs (off the exit loop's hot path: only when the thread starts or comes online)."""
        state, self.initial_state = self.initial_state, None
        if state is not None:
            sregs, regs = state
            self.load_sregs(sregs)
            self.backend.set_initial_regs(regs)

    def load_sregs(self, sregs: SpecialRegs) -> None:
        """Load special registers, IA32_APIC_BASE from the LAPIC model (KVM derives
        CPUID's APIC bit from its enable flag)."""
        sregs.apic_base = self.lapic.apic_base
        self.backend.set_sregs(sregs)

    def _park(self) -> None:
        """An offline vCPU waits to be brought up (VCPUOP_up) or for the domain to stop."""
        if self.runstate_state == RUNSTATE_running:
            self.set_runstate(RUNSTATE_offline)
        self.wake.clear()
        if not self.online and not self.domain.stopping:
            with self.domain.quiet(self):
                self.wake.wait()
        if self.online and self.runstate_state == RUNSTATE_offline:
            self.set_runstate(RUNSTATE_running)

    def _hypercall_args(self) -> tuple[int, tuple[int, int, int, int, int]]:
        """Xen's calling convention: the number and five arguments, by the caller's CS.L."""
        regs = self.backend.regs
        if self.backend.is_64bit():
            self.compat = False
            return regs.rax & M32, (regs.rdi, regs.rsi, regs.rdx, regs.r10, regs.r8)
        self.compat = True
        return regs.rax & M32, (regs.rbx & M32, regs.rcx & M32, regs.rdx & M32,
                                regs.rsi & M32, regs.rdi & M32)

    def hypercall_inline(self) -> bool | None:
        """For a backend that can run a hypercall without leaving its engine (the software
        CPU's OUT hook): run it here if its family allows that (HypercallTable.inline).
        None: not here, exit as usual; True: done, go on; False: done, but leave the engine
        now (an event to deliver, the domain stopping)."""
        if self.backend.cpl():
            return None
        nr, args = self._hypercall_args()
        if self.domain.trace or not self.domain.hypercalls.may_run_inline(nr, args):
            return None
        self._complete_hypercall(nr, args, self.domain.hypercalls.call(self, nr, args))
        return not (self.domain.stopping or self.upcall_ready())

    def hypercall(self) -> None:
        """The hot path: decode Xen's calling convention, dispatch, return the result."""
        nr, args = self._hypercall_args()
        # Xen: hypercalls only from guest kernel mode (the stubs check too, see hypercall.py)
        result = -errno.EPERM if self.backend.cpl() \
            else self.domain.hypercalls.call(self, nr, args)
        self._complete_hypercall(nr, args, result)

    def _complete_hypercall(self, nr: int, args: tuple[int, ...], result: int) -> None:
        """The result in rax, in the caller's width; --trace's line."""
        self.backend.settle()
        self.backend.regs.rax = result & (M32 if self.compat else M64)
        self.backend.regs_changed()
        if self.domain.trace:
            log.info("d%dv%d %s = %s", self.domain.domid, self.index,
                     self.domain.hypercalls.describe(nr, args), format_result(result))

    def _other_exit(self, exit_: Exit) -> None:
        domain, backend = self.domain, self.backend
        if exit_ is Exit.IO_OUT:
            self._port_write(backend.exit_port, backend.exit_size, backend.exit_value)
        elif exit_ is Exit.IO_IN:
            backend.complete_io_in(no_device_read(backend.exit_size))
        elif exit_ is Exit.MMIO:
            self._mmio(backend.exit_value, backend.exit_is_write)
        elif exit_ is Exit.MSR_WRITE:
            backend.complete_msr(self._msr_write(backend.exit_msr, backend.exit_value))
        elif exit_ is Exit.MSR_READ:
            value = self.lapic.msr_read(backend.exit_msr)  # Xen's own MSR is write-only
            backend.complete_msr(value is not None, value or 0)
        elif exit_ is Exit.HLT:
            self._halt()
        elif exit_ is Exit.KICKED:
            pass
        elif exit_ is Exit.SHUTDOWN:
            domain.crash(f"vCPU{self.index} triple fault at rip={backend.regs.rip:#x}")
        else:
            domain.vmm_error(f"vCPU{self.index}: {backend.exit_error} "
                             f"(guest rip={backend.regs.rip:#x})")

    def _mmio(self, gpa: int, write: bool) -> None:
        """The xAPIC page where the LAPIC is in xAPIC mode; elsewhere an access the backend
        could not make as RAM, completed as Xen's hvm_hap_nested_page_fault does for an HVM
        guest with no device model: a read of no RAM sees all-ones; a write to no RAM
        vanishes; and a write to a read-only grant mapping (p2m_grant_map_ro, one of Xen's
        write-discard p2m types) goes to the emulator, which drops the store and retires the
        instruction: no fault, the page keeps its contents."""
        base = self.lapic.xapic_mmio_base
        if base is not None and base <= gpa < base + APIC_PAGE:
            self._xapic_access(gpa - base, write)
            return
        if write and self.domain.trace and gpa >> PAGE_SHIFT in self.domain.grant_maps:
            log.info("d%dv%d write to read-only grant mapping at %#x dropped",
                     self.domain.domid, self.index, gpa)
        self.backend.complete_mmio((1 << 64) - 1)

    def _xapic_access(self, offset: int, write: bool) -> None:
        """A register of the xAPIC page: 32-bit accesses to 16-byte aligned registers; the
        rest of the page reads as 0 and ignores writes (Xen's vlapic_mmio_read/write)."""
        if write:
            if not offset & 0xF and self.backend.exit_size == 4:
                self.lapic.write(offset, self.backend.exit_data)
            self.backend.complete_mmio(0)
            return
        value = None if offset & 0xF else self.lapic.read(offset)
        self.backend.complete_mmio(value or 0)

    def _port_write(self, port: int, size: int, value: int) -> None:
        if port == DEBUGCON_PORT:
            self.domain.console_write(bytes([value & 0xFF]), source="debugcon")
        elif self.domain.config.acpi and (request := power_request(port, value)):
            # The FADT's sleep control / reset register: how a PVH guest powers off
            # (x86 PVH has no Xen power-off hook) or reboots through ACPI.
            if request == "poweroff":
                self.domain.shutdown(SHUTDOWN_poweroff, "ACPI sleep state S5")
            else:
                self.domain.shutdown(SHUTDOWN_reboot, "ACPI reset register")
        # Other ports: no device, writes are dropped (as on Xen for a PVH guest).

    def _msr_write(self, msr: int, value: int) -> bool:
        """Xen's hypercall-page MSR: value = guest-physical address | page index; the
        LAPIC's MSRs where a backend reports them."""
        if msr != HYPERCALL_MSR:
            return self.lapic.msr_write(msr, value)
        page_index, gfn = value & (PAGE_SIZE - 1), value >> PAGE_SHIFT
        if page_index != 0:
            return False  # only one hypercall page exists
        try:
            self.domain.memory.check_populated(gfn << PAGE_SHIFT, PAGE_SIZE)
            self.domain.memory.write(gfn << PAGE_SHIFT, HYPERCALL_PAGE)
        except GuestMemoryError:
            return False
        return True

    def _halt(self) -> None:
        """hlt (Xen's hvm_hlt). With interrupts off the vCPU goes offline for good, and the
        domain powers off when no vCPU is left online; otherwise it blocks until an upcall
        can be delivered (SCHEDOP_block), unless one already can."""
        if not self.backend.regs.rflags & RFLAGS_IF:
            self.go_offline()
            return
        self.wake.clear()
        if not self.events_need_delivery():
            self.sleep()
            # The loop looks at pauses, stops, vCPU state and interrupts next: the kick
            # that woke us (an event, an IPI, a timer) has nothing left to stop.
            self.backend.kicks_seen()

    # --- save / restore ------------------------------------------------------------------------
    def save_xen_state(self) -> dict[str, object]:
        """What Xen keeps of this vCPU besides its registers (the domain is paused): up or
        down, where its vcpu_info and areas are, its upcall vector, VIRQs, timers (their
        deadlines in the domain's system time, which continues across a restore) and its
        local APIC."""
        override = self.vcpu_info_override
        initial = self.initial_state
        return {
            "online": self.online, "initialised": self.initialised,
            "wait_for_sipi": self.wait_for_sipi,
            "initial_state": None if initial is None else
            {"sregs": bytes(initial[0]).hex(), "regs": bytes(initial[1]).hex()},
            "vcpu_info_gpa": None if override is None else
            C.addressof(override) - self.domain.memory.host_address,
            "runstate": [self.runstate_state, self.runstate_entry, *self.runstate_time],
            "runstate_area": None if self.runstate_area is None else list(self.runstate_area),
            "time_area": self.time_area, "upcall_vector": self.upcall_vector,
            "virq_to_evtchn": list(self.virq_to_evtchn),
            "singleshot": self.singleshot.deadline,
            "periodic": [self.periodic_period, self._periodic_next],
            "lapic": self.lapic.save_state(),
        }

    def load_xen_state(self, state: object) -> None:
        """The counterpart of save_xen_state, before the domain starts (ValueError names a
        field that does not fit)."""
        saved = Saved(state, f"vCPU{self.index}")
        online, initialised = saved.bool("online"), saved.bool("initialised")
        wait_for_sipi = saved.bool("wait_for_sipi")
        initial = None
        if saved.data.get("initial_state") is not None:
            init = saved.sub("initial_state")
            initial = (SpecialRegs.from_buffer_copy(init.hex("sregs", C.sizeof(SpecialRegs))),
                       Regs.from_buffer_copy(init.hex("regs", C.sizeof(Regs))))
        info_gpa = saved.opt_int("vcpu_info_gpa")
        runstate = saved.ints("runstate", 6)
        area = saved.data.get("runstate_area")
        if area is not None and not (isinstance(area, list) and len(area) == 2 and
                                     isinstance(area[0], int) and isinstance(area[1], bool)):
            raise ValueError(f"the saved vCPU{self.index} has no valid runstate_area")
        time_area = saved.opt_int("time_area")
        upcall_vector = saved.int("upcall_vector", hi=0xFF)
        virqs = saved.ints("virq_to_evtchn", NR_VIRQS)
        singleshot = saved.opt_int("singleshot", hi=(1 << 63) - 1)
        period, periodic_next = saved.ints("periodic", 2)
        if runstate[0] > RUNSTATE_offline:
            raise ValueError(f"the saved vCPU{self.index} has runstate {runstate[0]}")
        if info_gpa is not None:
            try:
                self.domain.memory.check_populated(info_gpa, C.sizeof(vcpu_info))
            except GuestMemoryError as e:
                raise ValueError(f"the saved vCPU{self.index}'s vcpu_info: {e}") from None
        self.lapic.load_state(saved.data.get("lapic"))
        self.online, self.initialised, self.wait_for_sipi = online, initialised, wait_for_sipi
        self.initial_state = initial
        self.vcpu_info_override = None if info_gpa is None else \
            self.domain.memory.struct_at(vcpu_info, info_gpa)  # type: ignore[assignment]
        self.runstate_state, self.runstate_entry = runstate[0], runstate[1]
        self.runstate_time = runstate[2:]
        self.runstate_area = None if area is None else (area[0], area[1])
        self.time_area, self.upcall_vector = time_area, upcall_vector
        self.virq_to_evtchn = virqs
        if singleshot is not None:
            self.domain.timers.set(self.singleshot, singleshot)
        if period:
            self.set_periodic(period, first=periodic_next)

    def go_offline(self) -> None:
        self.online = False
        self.set_runstate(RUNSTATE_offline)
        if not any(v.online for v in self.domain.vcpus):
            self.domain.shutdown(SHUTDOWN_poweroff, "all vCPUs offline")

    def kick(self) -> None:
        if self.sleeping:
            waker = getattr(_THIS_THREAD, "vcpu", None)
            if waker is not None and waker is not self and waker.domain is self.domain \
                    and hasattr(waker.backend, "woke"):  # an optional backend capability
                waker.backend.woke(self.backend)
        self.wake.set()
        self.backend.kick()
