"""One domain as the daemon holds it: its process, its rings, its console.

The daemon's half of what `pyxen.host.domain_process` does in the domain's own process:
start that process, hand it what to build, then serve the domain's store ring (as
xenstored) and console ring (as xenconsoled) from pages mapped out of the domain's memfd,
woken by the eventfds the process sends along. Everything here runs on the daemon's
asyncio loop, except console output, which the console back end's rate-limit timer may
deliver from its own thread."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import itertools
import logging
import mmap
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pyxen.abi.sched import SHUTDOWN_crash
from pyxen.backends.console import ConsoleBackend
from pyxen.backends.xenbus import DeviceError, XenbusBackend
from pyxen.domain.memory import PAGE_SHIFT, PAGE_SIZE
from pyxen.host import containment, procstat
from pyxen.host.peer_link import link_ends
from pyxen.host.wire import Message, WireError, recv_packet, send_packet, wire_to_bytes
from pyxen.toolstack.console_service import remove_console_nodes, write_console_nodes
from pyxen.toolstack.service_ring import ServiceRing
from pyxen.toolstack.xenstore_service import introduce_domain, release_domain
from pyxen.xenstore.domain_state import restore_domain_nodes, save_domain_nodes
from pyxen.xenstore.ring import GuestRing
from pyxen.xenstore.snapshot import restore_session
from pyxen.xenstore.unix import check_socket_path
from pyxen.xenstore.xenstored import XenStored

if TYPE_CHECKING:
    from pyxen.host.migrate import MigrationGroup

log = logging.getLogger("pyxen.daemon")
BUILD_TIMEOUT = 300.0  # seconds a domain process may take to build (a big kernel, a busy host)
SAVE_TIMEOUT = 600.0  # seconds a domain process may take to write a save (GiBs, a slow disk)
SHUTDOWN_REASON_LETTERS = "-rscw"  # xl list's letter for SHUTDOWN_poweroff .. _watchdog
DEVICE_CALL_TIMEOUT = 30.0  # seconds a domain process has to connect or disconnect a device
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
        # the host's domains by id, for linking this domain's process to another's
        self.find_domain: Callable[[int], HostedDomain | None] = lambda domid: None
        self.destroying = False
        self.created = time.time()
        self.process: subprocess.Popen[bytes] | None = None  # when this daemon started it
        self.pid: int | None = None
        self.exited = False
        self.contain = True  # whether its process is to be contained (containment.py)
        self.containment = "unknown"  # how its process says it is contained
        self.adopt_socket = state_dir / "domains" / f"{self.domid}.sock"
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
        self._saved: asyncio.Future[Message] | None = None
        self._rings: list[tuple[int, Callable[[], None]]] = []
        self._migrated: asyncio.Future[Message] | None = None
        self.migration_paused_at: float | None = None  # monotonic time of the last pause
        self._together: MigrationGroup | None = None  # the group it migrates with
        self.on_migration_progress: Callable[[Message], None] = lambda msg: None
        self._missed: Message | None = None  # a "stopped" the domain sent no daemon
        self._loop = asyncio.get_running_loop()
        self.devices: dict[tuple[str, int], XenbusBackend] = {}  # its PV devices
        self._calls: dict[int, concurrent.futures.Future[Message]] = {}  # device calls, by seq
        self._calls_lock = threading.Lock()
        self._call_seq = itertools.count(1)

    # --- creation ----------------------------------------------------------------------------
    async def launch(self, restore_fd: int | None = None,
                     spawned: Callable[[], None] = lambda: None) -> None:
        """Start the domain process and serve its rings; the domain stays paused (vCPU 0 not
        yet started) until `unpause`. With `restore_fd`, the process restores the domain
        from that save file instead of building it (its store nodes and watches come
        back too). `spawned` runs once the process exists, before it builds anything.
        RuntimeError (one line) if the build is refused."""
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
        self._watch_process(self.process.pid, parent)
        spawned()
        self._built = self._loop.create_future()
        send_packet(parent, {"op": "build" if restore_fd is None else "restore",
                             "contain": self.contain,
                             "domain": dict(self.spec, adopt_socket=self._adopt_path())},
                    [] if restore_fd is None else [restore_fd])
        try:
            built = await asyncio.wait_for(self._built, BUILD_TIMEOUT)
        except TimeoutError:
            raise RuntimeError(f"domain {self.name} took over {BUILD_TIMEOUT:.0f} s to build") \
                from None
        store, console = self._serve_rings(built)
        self._introduce(built["max_pages"], store, console)
        toolstack = built.get("toolstack")
        if restore_fd is not None and isinstance(toolstack, dict):
            try:
                restore_domain_nodes(self.xenstored, self.domid, toolstack.get("xenstore"),
                                     self.store.conn)  # type: ignore[union-attr]
            except ValueError as e:
                raise RuntimeError(str(e)) from None
        if restore_fd is not None:  # what the guest left in its rings is answered now
            self.store.kick()  # type: ignore[union-attr]
            self.console.kick()  # type: ignore[union-attr]

    def carried_config(self) -> dict[str, Any]:
        """What a save or a migration carries of the domain's config (migrate.carried_config
        reads it back)."""
        return {"spec": self.spec, "actions": self.actions}

    def _check_movable(self, paused_ok: bool) -> None:
        """RuntimeError (one line) unless the domain can be saved or migrated now."""
        if self.control is None or self.exited or self.stopped_as is not None or \
                (not paused_ok and self.state == DomainState.PAUSED):
            raise RuntimeError(f"domain {self.name} is not running")

    async def save(self, fd: int, resume: bool) -> dict[str, Any]:
        """Have the domain process write the domain to `fd` (xl save): paused at once, it
        stays so (for `destroy`) or runs on (`resume`: a checkpoint). The daemon's part is
        the domain's spec and actions and its store nodes and watches. RuntimeError (one
        line) if it cannot be saved."""
        self._check_movable(paused_ok=True)
        self._saved = self._loop.create_future()
        msg = {"op": "save", "resume": resume, "config": self.carried_config(),
               "toolstack": {"xenstore": save_domain_nodes(self.xenstored, self.domid)}}
        send_packet(self.control, msg, [fd])
        try:
            reply = await asyncio.wait_for(self._saved, SAVE_TIMEOUT)
        except TimeoutError:
            raise RuntimeError(f"domain {self.name} took over {SAVE_TIMEOUT:.0f} s to save") \
                from None
        if reply.get("error"):
            raise RuntimeError(f"domain {self.name} cannot be saved: {reply['error']}")
        return reply

    async def migrate_send(self, fd: int, downtime_ms: float,
                           together: MigrationGroup | None = None) -> dict[str, Any]:
        """The domain process streams the domain into `fd` (a connection to the target),
        live, until it is paused and all of it is sent. RuntimeError (one line) if that
        fails: the domain then runs on here. Afterwards the caller either destroys the
        domain or calls `migrate_resume`. In a group (`together`: its links to the other
        members travel) the group hears when the domain is ready to stop and when it has
        stopped, and says when to stop (`stop_migration`) and when to send the rest
        (`send_final_part`)."""
        self._check_movable(paused_ok=True)  # paused (xl pause), its rounds are quick
        assert self.control is not None
        self._migrated = pending = self._loop.create_future()
        self._together = together
        msg = {"op": "migrate_send", "downtime_ms": downtime_ms,
               "config": self.carried_config()}
        send_packet(self.control, msg if together is None else dict(msg, group=together.domids),
                    [fd])
        reply = await pending
        if reply.get("error"):
            self.migrate_resume()
            raise RuntimeError(f"domain {self.name} cannot be migrated: {reply['error']}")
        return reply

    def _migration_paused(self) -> None:
        """The guest has stopped: the rings' last state is final (and, once its group is
        all paused, the store's part)."""
        self.migration_paused_at = time.monotonic()
        self.serve_rings(False)
        if self._together is not None:
            self._together.paused(self)
        else:
            self.send_final_part()

    def stop_migration(self) -> None:
        """Every domain of the group is ready: pause now."""
        if self.control is not None and self._migrated is not None:
            send_packet(self.control, {"op": "migrate_stop"})

    def send_final_part(self) -> None:
        """The daemon's part of a paused migrating domain: its store nodes and watches."""
        if self.control is not None and self._migrated is not None:
            send_packet(self.control, {"op": "migrate_toolstack", "toolstack": {
                "xenstore": save_domain_nodes(self.xenstored, self.domid)}})

    def migrate_resume(self) -> None:
        """The target did not take the domain over, or a domain of its group cannot go:
        it runs on here (a send still under way is called off)."""
        if self.migration_paused_at is not None:
            self.migration_paused_at = None
            self.serve_rings(True)
        pending, self._migrated, self._together = self._migrated, None, None
        if pending is not None and not pending.done():
            pending.set_result({"error": "the migration was called off"})
        if self.control is not None:
            send_packet(self.control, {"op": "migrate_resume"})

    def _adopt_path(self) -> str | None:
        """Where a later daemon finds the domain (None if the state directory's path is too
        long for a socket address: the domain then ends with its daemon)."""
        try:
            check_socket_path(str(self.adopt_socket))
        except ValueError as e:
            log.warning("dom%d cannot be re-adopted: %s", self.domid, e)
            return None
        self.adopt_socket.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        return str(self.adopt_socket)

    def _watch_process(self, pid: int, control: socket.socket) -> None:
        self.pid = pid
        self.pidfd = os.pidfd_open(pid)
        self.control = control
        control.setblocking(False)
        self._loop.add_reader(control.fileno(), self._control_readable)
        self._loop.add_reader(self.pidfd, self._process_exited)

    # --- re-adoption by a restarted daemon ---------------------------------------------------
    def record(self) -> dict[str, Any]:
        """What a restarted daemon needs to adopt this domain (with the store's snapshot)."""
        return {"spec": self.spec, "actions": self.actions, "name": self.name,
                "created": self.created, "state": self.state, "started": self.started,
                "shutdown_reason": self.shutdown_reason, "stopped_as": self.stopped_as,
                "pid": self.pid}

    @classmethod
    async def adopt(cls, record: dict[str, Any], state_dir: Path, xenstored: XenStored,
                    on_stopped: Callable[[HostedDomain, str, str], None],
                    on_dmesg: Callable[[int, bytes], None],
                    session: dict[str, Any] | None) -> HostedDomain:
        """The domain a previous daemon ran, taken over through its adopt socket: its rings
        served again (the store's nodes and the guest's watches come from the snapshot).
        RuntimeError (one line) if its process is gone or does not answer."""
        dom = cls(record["spec"], record["actions"], state_dir, xenstored, on_stopped, on_dmesg)
        dom.name, dom.created = record["name"], record["created"]
        dom.state, dom.started = record["state"], record["started"]
        dom.shutdown_reason = record["shutdown_reason"]
        dom.stopped_as = record["stopped_as"]
        pid = record.get("pid")
        reply, fds, control = await asyncio.get_running_loop().run_in_executor(
            None, ask_adopt, str(dom.adopt_socket), pid if dom.state == DomainState.PAUSED else None)
        dom.fds = fds
        if dom.state == DomainState.PAUSED and dom.started and reply.get("paused") is not True:
            send_packet(control, {"op": "pause"})  # an older daemon paused it with SIGSTOP
        dom._watch_process(peer_pid(control), control)
        dom._serve_rings(reply)
        dom.introduced = True
        if session is not None:
            restore_session(dom.store.conn, session)  # type: ignore[union-attr]
        for index, tid in (reply.get("vcpu_threads") or {}).items():
            dom.vcpu_tids[int(index)] = int(tid)
        if reply.get("output"):
            dom.on_dmesg(dom.domid, wire_to_bytes(reply["output"]))
        dom._missed = reply.get("stopped") if dom.stopped_as is None else None
        dom.store.kick()  # type: ignore[union-attr]  # requests the guest made meanwhile
        dom.console.kick()  # type: ignore[union-attr]
        return dom

    def catch_up(self) -> None:
        """Once registered with the host: how the domain stopped while no daemon ran."""
        missed, self._missed = self._missed, None
        if missed is not None:
            self._handle(missed, [])

    def _serve_rings(self, built: Message) -> tuple[ServiceRing, ServiceRing]:
        """Serve the store and console rings `built` names; the two rings."""
        self.memfd, store_kick, store_notify, console_kick, console_notify = self.fds
        self.containment = str(built.get("containment", "unknown (an older domain process)"))
        store = ServiceRing("xenstore", built["store"]["gfn"], built["store"]["port"])
        console = ServiceRing("console", built["console"]["gfn"], built["console"]["port"])
        self.store = GuestRing(self.xenstored, self.domid, self._map(store.gfn),
                               notify=lambda: os.eventfd_write(store_notify, 1))
        self.console = ConsoleBackend(self._map(console.gfn), self.tap.output,
                                      lambda: os.eventfd_write(console_notify, 1),
                                      name=f"dom{self.domid} ({self.name})")
        self._rings = [(store_kick, self.store.kick), (console_kick, self.console.kick)]
        self.serve_rings(True)
        return store, console

    def serve_rings(self, on: bool) -> None:
        """Hear the guest's ring notifications, or stop (a migration's last copy of the
        rings must not change under it: their requests stay for the target to answer)."""
        for fd, kick in self._rings:
            if on:
                self._on_eventfd(fd, kick)
            else:
                with contextlib.suppress(ValueError, OSError):
                    self._loop.remove_reader(fd)

    def _introduce(self, max_pages: int, store: ServiceRing, console: ServiceRing) -> None:
        """A new domain's store nodes and its introduction to xenstored, as libxl does."""
        memory_kib = self.spec["memory"] * 1024
        introduce_domain(self.xenstored, self.domid, self.name, bytes.fromhex(self.uuid),
                         memory_kib, max_pages * 4, store)
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
        elif op == "saved" and self._saved is not None and not self._saved.done():
            self._saved.set_result(msg)
        elif op == "migrate_progress":
            self.on_migration_progress(msg)
        elif op == "migrate_paused" and self._migrated is not None:
            self._migration_paused()
        elif op == "migrate_ready" and self._together is not None:
            self._together.ready(self)
        elif op == "migrate_sent" and self._migrated is not None and not self._migrated.done():
            self._migrated.set_result(msg)
        elif op == "failed" and self._built is not None and not self._built.done():
            self._built.set_exception(RuntimeError(str(msg.get("error", "build failed"))))
        elif op == "vcpu_thread":
            index, tid = _count(msg.get("vcpu")), _count(msg.get("tid"))
            if index is None or tid is None or not self._own_thread(tid):
                log.warning("dom%d: ignored vcpu_thread %r: not a thread of its process",
                            self.domid, msg)
                return
            self.vcpu_tids[index] = tid
            if self.on_vcpu_thread is not None:
                self.on_vcpu_thread(self, index, tid)
        elif op == "console_io":
            self.on_dmesg(self.domid, wire_to_bytes(str(msg.get("data", ""))))
        elif op == "peer_link":
            self._link_peer(msg.get("domid"), msg.get("seq"))
        elif op == "device_reply":
            with self._calls_lock:
                call = self._calls.pop(_count(msg.get("seq")), None)  # type: ignore[arg-type]
            if call is not None and not call.done():
                call.set_result(msg)
        elif op == "stopped" and self.stopped_as is None:
            self.stopped_as = str(msg.get("outcome"))
            self.memory_runs = _runs(msg.get("runs"))
            if self.memory_runs is None:
                log.warning("dom%d: malformed memory runs in %r", self.domid, msg)
            self.on_stopped(self, self.stopped_as, str(msg.get("detail") or ""))
        else:
            for fd in fds:
                os.close(fd)

    def _own_thread(self, tid: int) -> bool:
        """Whether `tid` is a thread of the domain's process (the daemon pins it)."""
        return self.pid is not None and os.path.isdir(f"/proc/{self.pid}/task/{tid}")

    def _link_peer(self, domid: object, seq: object) -> None:
        """The domain process asks to be linked to domain `domid`'s (its first
        inter-domain event channel with it): both get their ends of a new link, each told
        who is at the other end. The daemon vouches for that; the rest is between them."""
        assert self.control is not None
        reply: Message = {"op": "peer_link", "domid": domid, "seq": seq}  # + the peer's pid
        peer = self.find_domain(domid) if isinstance(domid, int) else None
        if peer is None or peer is self or not peer.linkable():
            send_packet(self.control, dict(reply, error="ESRCH"))
            return
        mine, theirs = link_ends()
        try:
            send_packet(peer.control, {"op": "peer", "domid": self.domid, "pid": self.pid},  # type: ignore[arg-type]
                        theirs)
            send_packet(self.control, dict(reply, pid=peer.pid), mine)
        except OSError as e:
            log.warning("dom%d: linking to dom%s: %s", self.domid, domid, e)
            with contextlib.suppress(OSError):
                send_packet(self.control, dict(reply, error="ESRCH"))
        finally:
            for fd in mine + theirs:
                os.close(fd)

    def device_call(self, msg: Message, fds: list[int]) -> Message:
        """Ask the domain's process to connect or disconnect a device's data path, and wait
        for its answer (from a device's thread, never the loop's). DeviceError when the
        process is gone or does not answer."""
        if not self.linkable():
            raise DeviceError(f"domain {self.domid} has no running process")
        call: concurrent.futures.Future[Message] = concurrent.futures.Future()
        with self._calls_lock:
            seq = next(self._call_seq)
            self._calls[seq] = call
        try:
            send_packet(self.control, dict(msg, seq=seq), fds)  # type: ignore[arg-type]
            return call.result(DEVICE_CALL_TIMEOUT)
        except (OSError, AttributeError):
            raise DeviceError(f"domain {self.domid}'s process is gone") from None
        except concurrent.futures.TimeoutError:
            raise DeviceError(f"domain {self.domid}'s process did not answer within "
                              f"{DEVICE_CALL_TIMEOUT:.0f} s (paused?)") from None
        finally:
            with self._calls_lock:
                self._calls.pop(seq, None)

    def _fail_calls(self) -> None:
        with self._calls_lock:
            calls, self._calls = self._calls, {}
        for call in calls.values():
            if not call.done():
                call.set_exception(OSError("the domain's process is gone"))

    def linkable(self) -> bool:
        """A domain whose process runs and is this daemon's to talk to."""
        return self.control is not None and not self.exited and not self.destroying

    def _process_exited(self) -> None:
        self._loop.remove_reader(self.pidfd)
        self.exited = True
        self._fail_calls()
        # A process this daemon started tells its status; an adopted one is not its child.
        status = self.process.wait() if self.process is not None else None
        if self._built is not None and not self._built.done():
            self._built.set_exception(RuntimeError(
                f"the domain process ended while building (status {status}); see "
                f"{self.state_dir / 'log' / f'domain-{self.name}.log'}"))
        if self.destroying:
            self._finish()
        elif self.stopped_as is None:  # killed from outside, or died: Xen calls that a crash
            how = ("ended" if status is None else
                   "killed by SIGSYS, as its seccomp filter kills a forbidden system call "
                   "(the kernel's audit log names the call)" if containment.killed_by_filter(status)
                   else f"killed by {signal.Signals(-status).name}" if status < 0
                   else f"exited with status {status}")
            self.stopped_as = "crash"
            self.on_stopped(self, "crash", f"the domain's process {how}")

    # --- control -----------------------------------------------------------------------------
    def unpause(self) -> None:
        if self.state != DomainState.PAUSED:
            return
        if self.control is not None:
            send_packet(self.control, {"op": "unpause" if self.started else "start"})
        self.started = True
        self.state = DomainState.RUNNING

    def pause(self) -> None:
        """Xen's domain_pause, in the domain's process: its vCPUs stop; the process goes on
        serving its rings and the other domains' calls (a paused Xen domain's ports and
        grants still answer)."""
        if self.state in (DomainState.RUNNING, DomainState.BLOCKED):
            if self.started and self.control is not None:
                send_packet(self.control, {"op": "pause"})
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
        if self.pid is not None and not self.exited:
            self._signal(signal.SIGKILL)  # _process_exited finishes the job
        else:
            self._finish()

    def _finish(self) -> None:
        """The process is gone: release the domain from the store, unmap, close."""
        devices, self.devices = self.devices, {}
        for device in devices.values():
            device.gone()
        if self.introduced:
            remove_console_nodes(self.xenstored, self.domid)
            release_domain(self.xenstored, self.domid, bytes.fromhex(self.uuid))
        self._close_everything()
        with contextlib.suppress(OSError):
            self.adopt_socket.unlink()  # SIGKILL left it behind
        for future in (self.ended, self.gone):
            if not future.done():
                future.set_result(None)

    def let_go(self) -> None:
        """The daemon hands over: the domain runs on, waiting for the next daemon to adopt
        it; this one only lets go of its channel, mappings and descriptors."""
        if self.pid is not None and not self.exited:
            for device in self.devices.values():
                device.let_go()
            self._close_everything()

    def _close_everything(self) -> None:
        for fd in self.fds[1:]:
            with contextlib.suppress(ValueError, OSError):
                self._loop.remove_reader(fd)
        if self.console is not None:
            self.console.close()
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
            with contextlib.suppress(ValueError, OSError):
                self._loop.remove_reader(self.pidfd)
            os.close(self.pidfd)
            self.pidfd = -1
        self.tap.close()

    # --- figures -----------------------------------------------------------------------------
    def live_pid(self) -> int | None:
        """The domain's process while it runs."""
        return None if self.exited else self.pid

    def cpu_ns(self) -> int:
        """CPU time of the domain's process (all its vCPU threads)."""
        pid = self.live_pid()
        return 0 if pid is None else procstat.cpu_ns(procstat.stat_fields(pid))

    def cpu_seconds(self) -> float:
        return self.cpu_ns() / 1e9

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
        pid = self.live_pid()
        if self.state != DomainState.RUNNING or pid is None:
            return self.state
        return (DomainState.RUNNING if procstat.any_thread_running(pid)
                else DomainState.BLOCKED)


ADOPT_TIMEOUT = 10.0  # seconds a domain process has to answer


def _count(value: object) -> int | None:
    """A domain process's number field: a JSON integer from 0 (not a bool), else None."""
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 \
        else None


def _runs(value: object) -> list[tuple[int, int]] | None:
    """A "stopped" message's memory runs, [[gfn, frames], ...]; None if malformed."""
    if not isinstance(value, list):
        return [] if value is None else None
    runs = [tuple(map(_count, run)) for run in value if isinstance(run, list) and len(run) == 2]
    if len(runs) != len(value) or any(None in run for run in runs):
        return None
    return runs  # type: ignore[return-value]


def ask_adopt(path: str, paused_pid: int | None) -> tuple[Message, list[int], socket.socket]:
    """Connect to a domain's adopt socket and take it over (blocking; in an executor). A
    paused domain's process may have been stopped by an older daemon (SIGSTOP): it runs on
    (the new daemon pauses the domain itself, inside)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
    try:
        sock.settimeout(ADOPT_TIMEOUT)
        sock.connect(path)
        send_packet(sock, {"op": "adopt"})
        if paused_pid is not None:
            with contextlib.suppress(OSError):
                os.kill(paused_pid, signal.SIGCONT)
        reply, fds = recv_packet(sock)
    except (OSError, WireError) as e:
        sock.close()
        raise RuntimeError(f"its process does not answer at {path}: "
                           f"{getattr(e, 'strerror', None) or e}") from None
    if reply is None or reply.get("op") != "adopted" or len(fds) != 5:
        for fd in fds:
            os.close(fd)
        sock.close()
        what = "nothing" if reply is None else repr(reply.get("op"))
        raise RuntimeError(f"its process answered {what} at {path}")
    return reply, fds, sock


def peer_pid(sock: socket.socket) -> int:
    """The pid at the other end of a Unix socket, as the kernel saw it connect."""
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    return struct.unpack("3i", creds)[0]
