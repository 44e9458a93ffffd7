"""One domain as the daemon holds it: its process, its rings, its console.

The daemon's half of what `pyxen.host.domain_process` does in the domain's own process:
start that process, hand it what to build, then serve the domain's store ring (as
xenstored) and console ring (as xenconsoled) from pages mapped out of the domain's memfd,
woken by the eventfds the process sends along. Everything here runs on the daemon's
asyncio loop, except console output, which the console back end's rate-limit timer may
deliver from its own thread."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import mmap
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pyxen.abi.sched import SHUTDOWN_crash
from pyxen.backends.console import ConsoleBackend
from pyxen.domain.memory import PAGE_SHIFT, PAGE_SIZE
from pyxen.host import procstat
from pyxen.host.wire import Message, WireError, recv_packet, send_packet, wire_to_bytes
from pyxen.toolstack.console_service import remove_console_nodes, write_console_nodes
from pyxen.toolstack.service_ring import ServiceRing
from pyxen.toolstack.xenstore_service import introduce_domain, release_domain
from pyxen.xenstore.ring import GuestRing
from pyxen.xenstore.xenstored import XenStored

log = logging.getLogger("pyxen.daemon")
BUILD_TIMEOUT = 300.0  # seconds a domain process may take to build (a big kernel, a busy host)
SHUTDOWN_REASON_LETTERS = "-rscw"  # xl list's letter for SHUTDOWN_poweroff .. _watchdog
CONSOLE_BACKLOG = 64 * 1024  # bytes of recent console output a new `console` client is shown


class DomainState:
    """xl list's state letters."""

    RUNNING = "r"
    BLOCKED = "b"
    PAUSED = "p"
    SHUTDOWN = "s"
    CRASHED = "c"
    DYING = "d"


@dataclass
class ConsoleTap:
    """Where a domain's console output goes: its log file, a short backlog, live clients."""

    log_path: Path
    backlog: bytearray = field(default_factory=bytearray)
    clients: set[Callable[[bytes], None]] = field(default_factory=set)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "ab", buffering=0)  # noqa: SIM115 - closed in close()

    def output(self, data: bytes) -> None:
        with self.lock:
            self._log.write(data)
            self.backlog += data
            del self.backlog[:-CONSOLE_BACKLOG]
            clients = list(self.clients)
        for client in clients:
            client(data)

    def close(self) -> None:
        with self.lock:
            self._log.close()


class HostedDomain:
    """A domain of the host: created by `launch`, ended by `destroy`."""

    def __init__(self, spec: dict[str, Any], actions: dict[str, str], state_dir: Path,
                 xenstored: XenStored, on_stopped: Callable[[HostedDomain, str, str], None],
                 on_dmesg: Callable[[int, bytes], None]) -> None:
        self.spec = spec
        self.actions = actions  # on_poweroff, on_reboot, on_crash, on_watchdog
        self.domid: int = spec["domid"]
        self.name: str = spec["name"]
        self.uuid: str = spec["uuid"]
        self.state_dir = state_dir
        self.xenstored = xenstored
        self.on_stopped = on_stopped
        self.on_dmesg = on_dmesg
        self.state = DomainState.PAUSED
        self.started = False
        self.stopped_as: str | None = None  # the outcome the domain process reported
        self.shutdown_reason: int | None = None  # SHUTDOWN_* once shut down or crashed
        self.memory_runs: list[tuple[int, int]] | None = None  # (gfn, frames), once stopped
        self.vcpu_tids: dict[int, int] = {}  # vCPU index → its thread's id in the process
        # called with (domain, vCPU index, thread id) as each vCPU thread starts
        self.on_vcpu_thread: Callable[[HostedDomain, int, int], None] | None = None
        self.destroying = False
        self.created = time.time()
        self.process: subprocess.Popen[bytes] | None = None
        self.control: socket.socket | None = None
        self.pidfd = -1
        self.fds: list[int] = []
        self.memfd = -1
        self.pages: list[mmap.mmap] = []
        self.store: GuestRing | None = None
        self.console: ConsoleBackend | None = None
        self.tap = ConsoleTap(state_dir / "console" / f"guest-{self.name}.log")
        self.introduced = False
        self.gone = asyncio.get_running_loop().create_future()  # set when destroyed
        self.ended = asyncio.get_running_loop().create_future()  # set when shut down or gone
        self._built: asyncio.Future[Message] | None = None
        self._loop = asyncio.get_running_loop()

    # --- creation ----------------------------------------------------------------------------
    async def launch(self) -> None:
        """Start the domain process and serve its rings; the domain stays paused (vCPU 0 not
        yet started) until `unpause`. RuntimeError (one line) if the build is refused."""
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.control = parent
        logs = self.state_dir / "log"
        logs.mkdir(parents=True, exist_ok=True)
        with open(logs / f"domain-{self.name}.log", "ab") as errors:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "pyxen.host.domain_process", str(child.fileno())],
                pass_fds=[child.fileno()], stdin=subprocess.DEVNULL, stdout=errors,
                stderr=errors, start_new_session=True)
        child.close()
        self.pidfd = os.pidfd_open(self.process.pid)
        parent.setblocking(False)
        self._built = self._loop.create_future()
        self._loop.add_reader(parent.fileno(), self._control_readable)
        self._loop.add_reader(self.pidfd, self._process_exited)
        send_packet(parent, {"op": "build", "domain": self.spec})
        try:
            built = await asyncio.wait_for(self._built, BUILD_TIMEOUT)
        except TimeoutError:
            raise RuntimeError(f"domain {self.name} took over {BUILD_TIMEOUT:.0f} s to build") \
                from None
        self._serve_rings(built)

    def _serve_rings(self, built: Message) -> None:
        self.memfd, store_kick, store_notify, console_kick, console_notify = self.fds
        store = ServiceRing("xenstore", built["store"]["gfn"], built["store"]["port"])
        console = ServiceRing("console", built["console"]["gfn"], built["console"]["port"])
        self.store = GuestRing(self.xenstored, self.domid, self._map(store.gfn),
                               notify=lambda: os.eventfd_write(store_notify, 1))
        self.console = ConsoleBackend(self._map(console.gfn), self.tap.output,
                                      lambda: os.eventfd_write(console_notify, 1),
                                      name=f"dom{self.domid} ({self.name})")
        self._on_eventfd(store_kick, self.store.kick)
        self._on_eventfd(console_kick, self.console.kick)
        memory_kib = self.spec["memory"] * 1024
        introduce_domain(self.xenstored, self.domid, self.name, bytes.fromhex(self.uuid),
                         memory_kib, built["max_pages"] * 4, store)
        self.introduced = True
        write_console_nodes(self.xenstored, self.domid, console)

    def _map(self, gfn: int) -> memoryview:
        page = mmap.mmap(self.memfd, PAGE_SIZE, mmap.MAP_SHARED,
                         mmap.PROT_READ | mmap.PROT_WRITE, offset=gfn << PAGE_SHIFT)
        self.pages.append(page)
        return memoryview(page)

    def _on_eventfd(self, fd: int, kick: Callable[[], None]) -> None:
        def readable() -> None:
            try:
                os.eventfd_read(fd)
            except BlockingIOError:
                return
            kick()

        self._loop.add_reader(fd, readable)

    # --- messages from the domain process ----------------------------------------------------
    def _control_readable(self) -> None:
        assert self.control is not None
        while True:
            try:
                msg, fds = recv_packet(self.control)
            except BlockingIOError:
                return
            except (OSError, WireError) as e:
                log.warning("dom%d: control channel: %s", self.domid, e)
                msg, fds = None, []
            if msg is None:
                self._loop.remove_reader(self.control.fileno())
                return
            self._handle(msg, fds)

    def _handle(self, msg: Message, fds: list[int]) -> None:
        op = msg.get("op")
        if op == "built" and self._built is not None and not self._built.done():
            self.fds = fds
            self._built.set_result(msg)
        elif op == "failed" and self._built is not None and not self._built.done():
            self._built.set_exception(RuntimeError(str(msg.get("error", "build failed"))))
        elif op == "vcpu_thread":
            index, tid = int(msg.get("vcpu", -1)), int(msg.get("tid", 0))
            self.vcpu_tids[index] = tid
            if self.on_vcpu_thread is not None:
                self.on_vcpu_thread(self, index, tid)
        elif op == "console_io":
            self.on_dmesg(self.domid, wire_to_bytes(str(msg.get("data", ""))))
        elif op == "stopped" and self.stopped_as is None:
            self.stopped_as = str(msg.get("outcome"))
            self.memory_runs = [(int(gfn), int(n)) for gfn, n in msg.get("runs") or []]
            self.on_stopped(self, self.stopped_as, str(msg.get("detail") or ""))
        else:
            for fd in fds:
                os.close(fd)

    def _process_exited(self) -> None:
        self._loop.remove_reader(self.pidfd)
        assert self.process is not None
        status = self.process.wait()
        if self._built is not None and not self._built.done():
            self._built.set_exception(RuntimeError(
                f"the domain process ended while building (status {status}); see "
                f"{self.state_dir / 'log' / f'domain-{self.name}.log'}"))
        if self.destroying:
            self._finish()
        elif self.stopped_as is None:  # killed from outside, or died: Xen calls that a crash
            how = (f"killed by {signal.Signals(-status).name}" if status < 0
                   else f"exited with status {status}")
            self.stopped_as = "crash"
            self.on_stopped(self, "crash", f"the domain's process {how}")

    # --- control -----------------------------------------------------------------------------
    def unpause(self) -> None:
        if self.state != DomainState.PAUSED:
            return
        if not self.started:
            self.started = True
            assert self.control is not None
            send_packet(self.control, {"op": "start"})
        else:
            self._signal(signal.SIGCONT)
        self.state = DomainState.RUNNING

    def pause(self) -> None:
        if self.state in (DomainState.RUNNING, DomainState.BLOCKED):
            if self.started:
                self._signal(signal.SIGSTOP)
            self.state = DomainState.PAUSED

    def set_max_pages(self, pages: int) -> None:
        """XEN_DOMCTL_max_mem: the most frames the domain may hold from now on."""
        if self.control is not None:
            send_packet(self.control, {"op": "set_max_pages", "pages": pages})

    def _signal(self, sig: int) -> None:
        if self.pidfd >= 0:
            with contextlib.suppress(ProcessLookupError, OSError):
                signal.pidfd_send_signal(self.pidfd, sig)

    def mark_stopped(self, reason: int) -> None:
        self.shutdown_reason = reason
        self.state = DomainState.CRASHED if reason == SHUTDOWN_crash else DomainState.SHUTDOWN
        if not self.ended.done():
            self.ended.set_result(None)

    def destroy(self) -> None:
        """Xen's destroy: the domain goes at once, whatever it was doing."""
        if self.destroying:
            return
        self.destroying = True
        self.state = DomainState.DYING
        if self.process is not None and self.process.returncode is None:
            self._signal(signal.SIGKILL)  # _process_exited finishes the job
        else:
            self._finish()

    def _finish(self) -> None:
        """The process is gone: release the domain from the store, unmap, close."""
        for fd in self.fds[1:]:
            with contextlib.suppress(ValueError, OSError):
                self._loop.remove_reader(fd)
        if self.console is not None:
            self.console.close()
        if self.introduced:
            remove_console_nodes(self.xenstored, self.domid)
            release_domain(self.xenstored, self.domid, bytes.fromhex(self.uuid))
        self.store = None
        self.console = None
        for page in self.pages:
            with contextlib.suppress(BufferError):
                page.close()
        self.pages.clear()
        for fd in self.fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        self.fds = []
        if self.control is not None:
            with contextlib.suppress(ValueError, OSError):
                self._loop.remove_reader(self.control.fileno())
            self.control.close()
            self.control = None
        if self.pidfd >= 0:
            os.close(self.pidfd)
            self.pidfd = -1
        self.tap.close()
        for future in (self.ended, self.gone):
            if not future.done():
                future.set_result(None)

    # --- figures -----------------------------------------------------------------------------
    def cpu_seconds(self) -> float:
        """CPU time of the domain's process (all its vCPU threads)."""
        if self.process is None or self.process.returncode is not None:
            return 0.0
        return procstat.cpu_ns(procstat.stat_fields(self.process.pid)) / 1e9

    def state_letters(self) -> str:
        """xl list's State column: running, blocked, paused, shutdown, reason, dying."""
        live = self.live_state()
        reason = self.shutdown_reason
        return "".join((
            "r" if live == DomainState.RUNNING else "-",
            "b" if live == DomainState.BLOCKED else "-",
            "p" if self.state == DomainState.PAUSED else "-",
            "s" if reason is not None else "-",
            SHUTDOWN_REASON_LETTERS[reason] if reason is not None and reason < 5 else "-",
            "d" if self.state == DomainState.DYING else "-"))

    def live_state(self) -> str:
        """r or b for a running domain: whether any of its process's threads is on a CPU."""
        if self.state != DomainState.RUNNING or self.process is None:
            return self.state
        return (DomainState.RUNNING if procstat.any_thread_running(self.process.pid)
                else DomainState.BLOCKED)
