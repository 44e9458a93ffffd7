"""One domain's process in host mode: `python -m pyxen.host.domain_process FD`.

The daemon starts one per domain (as QEMU or Firecracker run one VM per process), so each
domain has its own vCPU threads, GIL and memfd-backed RAM, and a crash here touches no
other domain. FD is this process's end of a SOCK_SEQPACKET control channel:

    daemon → here   {"op": "build", "domain": {...},      what to build (see DomainSpec),
                     "contain": true}                     and whether to contain the process
                    {"op": "restore", ...} + save file    or: restore the domain in that file
                                                          (pyxen.migration.restore) under
                                                          the domain's id and name
    here → daemon   {"op": "built", ...} + fds            memfd and the rings' eventfds, and
                                                          its containment (containment.py);
                                                          a restore's toolstack record
                    {"op": "failed", "error": "..."}      the image or config was refused
    daemon → here   {"op": "start"}                       run vCPU 0
                    {"op": "set_max_pages", "pages": N}   XEN_DOMCTL_max_mem (xl mem-max)
                    {"op": "save", "resume": bool,        pause the domain and write it to
                     "config": ..., "toolstack": ...}     the file, with the daemon's parts
                     + the file                           (pyxen.migration.save)
    here → daemon   {"op": "saved", "pages": N, ...}      done (or "error": one line; the
                                                          domain then runs on)
    here → daemon   {"op": "vcpu_thread", "vcpu": i, "tid": T}   a vCPU's thread started
    here → daemon   {"op": "console_io", "data": "..."}   the guest's CONSOLEIO_write bytes
                    {"op": "stopped", "outcome": ...}     the guest shut down or crashed
                                                          (with its populated memory runs)
    here → daemon   {"op": "peer_link", "domid": D, "seq": N}   connect me to domain D
    daemon → here   {"op": "peer_link", "seq": N, ...} + fds    the link (or "error")
                    {"op": "peer", "domid": D} + fds      domain D linked itself to this one
                                                          (peer_link.py: events between them)

The store and console rings are served by the daemon from the memfd; the guest's
notifications reach it through one eventfd per ring ("kick") and its replies come back
through another ("notify"). `pyxen pause` is Xen's domain_pause ({"op": "pause"}, then
"unpause"): the vCPUs stop, but this process goes on serving its rings and its peers'
calls, as Xen answers for a paused domain (a domain mapping its grants or binding its
ports is not held up). Destroy is SIGKILL: the daemon needs no cooperation for it.

The domain outlives its daemon, as a Xen domain outlives its toolstack: at end of file on
the control channel it runs on, and listens on `adopt_socket` (STATE_DIR/domains/ID.sock)
for the next daemon, which asks to adopt it:

    daemon → here   {"op": "adopt"}                       on a new connection to adopt_socket
    here → daemon   {"op": "adopted", ...} + fds          as "built", plus the pid, whether it
                                                          started, its vCPU threads, what it
                                                          printed meanwhile and how it stopped
                    {"op": "busy"}                        another daemon holds it already
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import selectors
import signal
import socket
import stat
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass

from pyxen.abi.hvm import (
    HVM_PARAM_CONSOLE_EVTCHN,
    HVM_PARAM_CONSOLE_PFN,
    HVM_PARAM_STORE_EVTCHN,
    HVM_PARAM_STORE_PFN,
)
from pyxen.backends.dataplane import DataPlane
from pyxen.domain.builder import build_domain, image_limit, load_module
from pyxen.domain.domain import Domain, DomainConfig
from pyxen.domain.loader import ImageError
from pyxen.domain.vcpu import Vcpu
from pyxen.host import containment
from pyxen.host.peer_link import PeerLinks
from pyxen.host.wire import Message, WireError, bytes_to_wire, recv_packet, send_packet
from pyxen.hv import hypercall_table
from pyxen.migration.live import Progress, Together, finish, precopy
from pyxen.migration.restore import needs_reconnect, reconnect, restore_domain
from pyxen.migration.save import SaveError, save_domain
from pyxen.migration.stream import StreamError
from pyxen.threads import start_worker
from pyxen.toolstack import accel
from pyxen.toolstack.console_service import XENCONSOLED_PORT, place_console_ring
from pyxen.toolstack.service_ring import ServiceRing, restored_service_ring
from pyxen.toolstack.xenstore_service import XENSTORED_PORT, place_store_ring

log = logging.getLogger("pyxen.domain_process")


@dataclass(frozen=True)
class DomainSpec:
    """What the daemon asks for: xl.cfg's settings, resolved (paths absolute, id chosen)."""

    name: str
    domid: int
    uuid: str  # 32 hex digits
    kernel: str
    memory: int  # MiB
    maxmem: int | None = None
    vcpus: int = 1
    maxvcpus: int | None = None
    cmdline: str = ""
    acpi: bool = True  # xl's acpi (default on for PVH): the tables Linux needs
    ramdisk: str | None = None
    max_grant_frames: int = 32
    max_event_channels: int = 1023
    accel: str = "auto"
    adopt_socket: str | None = None  # where a later daemon finds this domain

    @classmethod
    def from_message(cls, fields: dict[str, object]) -> DomainSpec:
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in fields.items() if k in known})  # type: ignore[arg-type]

    def domain_config(self) -> DomainConfig:
        return DomainConfig(name=self.name, domid=self.domid, memory_mib=self.memory,
                            maxmem_mib=self.maxmem, vcpus=self.vcpus, max_vcpus=self.maxvcpus,
                            cmdline=self.cmdline, max_grant_frames=self.max_grant_frames,
                            max_event_channels=self.max_event_channels, acpi=self.acpi,
                            handle=bytes.fromhex(self.uuid))


class RingLink:
    """The guest half of a ring the daemon serves: eventfds in both directions."""

    def __init__(self) -> None:
        self.kick_fd = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)  # guest → daemon
        self.notify_fd = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)  # daemon → guest
        self.domain: Domain | None = None
        self.ring: ServiceRing | None = None

    def kick(self) -> None:
        """The guest notified the ring's port: tell the daemon."""
        os.eventfd_write(self.kick_fd, 1)

    def notified(self) -> None:
        """The daemon signalled the ring: raise the guest's event."""
        try:
            os.eventfd_read(self.notify_fd)
        except BlockingIOError:
            return
        assert self.domain is not None and self.ring is not None
        self.domain.evtchn.notify_from_service(self.ring.port)

    def describe(self) -> Message:
        assert self.ring is not None
        return {"gfn": self.ring.gfn, "port": self.ring.port}


MAX_HELD_OUTPUT = 64 * 1024  # bytes of CONSOLEIO_write kept while no daemon listens


class DaemonLink:
    """The control channel to whichever daemon holds the domain, if any. Any thread may send;
    while no daemon is connected, what it must not miss is kept: its console_io output (the
    last MAX_HELD_OUTPUT bytes), the vCPU threads and how the domain stopped."""

    def __init__(self, control: socket.socket) -> None:
        self.control: socket.socket | None = control
        self.lock = threading.Lock()
        self.vcpu_tids: dict[int, int] = {}
        self.stopped: Message | None = None
        self.held_output = bytearray()
        self.on_lost: Callable[[], None] | None = None

    def send(self, msg: Message, fds: list[int] | None = None) -> bool:
        with self.lock:
            return self._send(msg, fds)

    def _send(self, msg: Message, fds: list[int] | None = None) -> bool:
        if self.control is None:
            return False
        try:
            send_packet(self.control, msg, fds)
            return True
        except OSError:  # the daemon went: the domain runs on until another adopts it
            return False

    def console_io(self, data: bytes) -> None:
        with self.lock:
            if not self._send({"op": "console_io", "data": bytes_to_wire(data)}):
                self.held_output += data
                del self.held_output[:-MAX_HELD_OUTPUT]

    def vcpu_thread(self, vcpu: Vcpu) -> None:
        with self.lock:
            self.vcpu_tids[vcpu.index] = vcpu.native_id
            self._send({"op": "vcpu_thread", "vcpu": vcpu.index, "tid": vcpu.native_id})

    def stop(self, msg: Message) -> None:
        with self.lock:
            self.stopped = msg
            self._send(msg)

    def lost(self) -> None:
        """End of file from the daemon."""
        with self.lock:
            if self.control is not None:
                self.control.close()
                self.control = None
        if self.on_lost is not None:
            self.on_lost()

    def adopted_by(self, control: socket.socket, reply: Message, fds: list[int]) -> None:
        """A new daemon: it gets the domain's state and what it missed, then the channel."""
        with self.lock:
            reply = dict(reply, op="adopted", pid=os.getpid(),
                         vcpu_threads={str(i): t for i, t in self.vcpu_tids.items()},
                         output=bytes_to_wire(bytes(self.held_output)), stopped=self.stopped)
            send_packet(control, reply, fds)
            self.held_output.clear()
            self.control = control


def build(spec: DomainSpec, link: DaemonLink) -> Domain:
    """The domain as `pyxen run` builds it, its console_io output sent to the daemon."""
    config = spec.domain_config()
    modules = ([load_module(spec.ramdisk, image_limit(config))]
               if spec.ramdisk is not None else [])
    factory = accel.machine_factory(spec.accel, spec.kernel)[0]
    domain = build_domain(spec.kernel, config, factory, hypercall_table(), link.console_io,
                          modules)
    domain.on_vcpu_thread = link.vcpu_thread
    return domain


def listen(path: str | None) -> socket.socket | None:
    """The socket a later daemon adopts the domain through (None: not adoptable)."""
    if path is None:
        return None
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)  # a domain that had this id before was killed without cleaning up
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
    listener.bind(path)
    os.chmod(path, 0o600)
    listener.listen(4)
    return listener


def serve(control: socket.socket) -> int:
    msg, fds = recv_packet(control)
    if msg is None:
        return 0
    if msg.get("op") not in ("build", "restore"):
        raise WireError(f"expected build or restore, got {msg.get('op')!r}")
    link = DaemonLink(control)
    store, console = RingLink(), RingLink()
    toolstack: object = None
    contained: list[str] = []  # how the process is contained, once it is
    wanted = msg.get("contain", True) is not False
    listener = None
    try:
        spec = DomainSpec.from_message(msg["domain"])
        if msg["op"] == "build":
            domain = build(spec, link)
            store.domain = console.domain = domain
            store.ring, console.ring = place_store_ring(domain, store.kick), \
                place_console_ring(domain, console.kick)
            listener = listen(spec.adopt_socket)
        else:
            # A stream is hostile input: it is read contained, as soon as the domain it
            # fills is built (every descriptor the domain needs is open by then).
            listener = listen(spec.adopt_socket)
            domain, toolstack = restore(spec, link, fds, {XENSTORED_PORT: store.kick,
                                                          XENCONSOLED_PORT: console.kick},
                                        lambda: contained.append(containment.contain(wanted)))
            store.domain = console.domain = domain
            store.ring = restored_service_ring(domain, "xenstore", HVM_PARAM_STORE_PFN,
                                               HVM_PARAM_STORE_EVTCHN)
            console.ring = restored_service_ring(domain, "console", HVM_PARAM_CONSOLE_PFN,
                                                 HVM_PARAM_CONSOLE_EVTCHN)
    except (ImageError, StreamError, OSError, RuntimeError, ValueError, TypeError,
            KeyError) as e:
        send_packet(control, {"op": "failed", "error": str(e)})
        if listener is not None:
            with contextlib.suppress(OSError):
                os.unlink(spec.adopt_socket)  # type: ignore[arg-type]
        return 1
    finally:
        for fd in fds:
            os.close(fd)
    try:
        # everything the domain needs is open; the guest has not run yet
        if not contained:
            contained.append(containment.contain(wanted))
        if contained[0] != containment.CONTAINED:
            print(f"pyxen domain process: containment {contained[0]}", file=sys.stderr)
        rings: Message = {"store": store.describe(), "console": console.describe(),
                          "max_pages": domain.max_pages, "containment": contained[0],
                          "fds": ["memfd", "store_kick", "store_notify",
                                  "console_kick", "console_notify"]}
        fds = [domain.memory.fd, store.kick_fd, store.notify_fd,
               console.kick_fd, console.notify_fd]
        link.send(dict(rings, op="built", toolstack=toolstack), fds)
        return run(domain, link, [store, console], listener, (rings, fds))
    finally:
        if listener is not None and spec.adopt_socket is not None:
            with contextlib.suppress(OSError):
                os.unlink(spec.adopt_socket)
        domain.close()


def restore(spec: DomainSpec, link: DaemonLink, fds: list[int],
            services: dict[int, Callable[[], None]],
            built: Callable[[], None]) -> tuple[Domain, object]:
    """The domain in the save file the daemon opened (`fds`: its descriptor), under the
    id and name the daemon gives it; and the toolstack's record for the daemon. `built`
    runs once the domain exists, before its pages are read."""
    if len(fds) != 1:
        raise ValueError("a restore needs the save file's descriptor")
    factory = accel.machine_factory(spec.accel)[0]
    fd = fds[0]
    migrating = stat.S_ISSOCK(os.fstat(fd).st_mode)  # a live migration answers SYNC records
    with os.fdopen(os.dup(fd), "rb") as src:
        restored = restore_domain(src, factory, hypercall_table(), link.console_io,
                                  name=spec.name, domid=spec.domid, services=services,
                                  ack=(lambda: os.write(fd, ACK)) if migrating else None,
                                  built=built)
    restored.domain.on_vcpu_thread = link.vcpu_thread
    return restored.domain, None if restored.toolstack is None else restored.toolstack.data


def run(domain: Domain, link: DaemonLink, rings: list[RingLink],
        listener: socket.socket | None, built: tuple[Message, list[int]]) -> int:
    """Serve the daemon's requests and the rings' notifications until the domain is
    destroyed (SIGKILL) or, without an adopt socket, until the daemon goes."""
    started = False
    xl_paused = False  # `pyxen pause`: a Xen domain_pause of its own, until `unpause`
    sender: MigrationSender | None = None

    def waiter() -> None:
        result = domain.wait()
        with domain.memory_lock:
            runs = domain.memory.runs()
        link.stop({"op": "stopped", "outcome": result.outcome.value, "detail": result.detail,
                   "code": result.shutdown_code, "runs": runs})

    def start() -> None:
        """Off the main loop: joining a restored domain to its peers needs it served."""
        if needs_reconnect(domain):
            try:
                reconnect(domain)
            except Exception:  # a bug: the domain runs with whatever links were joined
                log.exception("dom%d: joining its links again failed", domain.domid)
        domain.start()
        waiter()

    sel = selectors.DefaultSelector()
    assert link.control is not None
    sel.register(link.control, selectors.EVENT_READ, "control")
    peers = PeerLinks(domain, link.send, sel)
    devices = DataPlane(domain)
    link.on_lost = peers.daemon_lost
    if listener is not None:
        sel.register(listener, selectors.EVENT_READ, "listener")
    for ring in rings:
        sel.register(ring.notify_fd, selectors.EVENT_READ, ring)
    while True:
        for key, _ in sel.select():
            if isinstance(key.data, RingLink):
                key.data.notified()
            elif isinstance(key.data, tuple):  # a peer link's doorbell or calls
                _, peer, what = key.data
                peers.readable(peer, what)
            elif key.data == "listener":
                assert listener is not None
                control = adopt(listener, link, dict(built[0], started=started,
                                                     paused=xl_paused), built[1])
                if control is not None:
                    sel.register(control, selectors.EVENT_READ, "control")
            else:
                try:
                    msg, fds = recv_packet(key.fileobj)  # type: ignore[arg-type]
                except (OSError, WireError):
                    msg, fds = None, []
                if msg is None:
                    sel.unregister(key.fileobj)
                    link.lost()
                    if listener is None:
                        return 0  # not adoptable: the domain goes with its daemon
                    continue
                op = msg.get("op")
                if op == "start" and not started:
                    started = True
                    start_worker(threading.Thread(target=start, name="domain-start",
                                                  daemon=True))
                elif op == "pause" and started and not xl_paused:
                    xl_paused = True  # the vCPUs stop at their next exit; this loop serves on
                    domain.pause(timeout=0)
                elif op == "unpause" and xl_paused:
                    xl_paused = False
                    domain.unpause()
                elif op == "set_max_pages" and isinstance(msg.get("pages"), int):
                    with domain.memory_lock:
                        domain.max_pages = msg["pages"]
                elif op in ("peer", "peer_link"):
                    peers.from_daemon(msg, fds)
                    fds = []
                elif op == "save":
                    link.send(save(domain, devices, msg, fds))
                    fds = []
                elif op == "migrate_send" and sender is None and len(fds) == 1:
                    sender = MigrationSender(domain, devices, link, msg, fds[0])
                    fds = []
                elif op == "migrate_stop" and sender is not None:
                    sender.stop()
                elif op == "migrate_toolstack" and sender is not None:
                    sender.toolstack(msg.get("toolstack"))
                elif op == "migrate_resume" and sender is not None:
                    sender.resume()
                    sender = None
                elif op in ("device_connect", "device_disconnect"):
                    link.send(devices.handle(msg, fds))
                    fds = []
                for fd in fds:
                    os.close(fd)


class MigrationSender:
    """Live migration's sending half, on a thread of its own (the main loop keeps serving
    the rings meanwhile): pre-copy rounds into the socket the daemon connected, the pause,
    the daemon's store part of the domain (asked for once paused, so that it is final), the
    rest. The daemon then does the handshake with the target and either destroys the domain
    or asks for it to run on (`resume`)."""

    def __init__(self, domain: Domain, devices: DataPlane, link: DaemonLink, msg: Message,
                 fd: int) -> None:
        self.domain, self.devices, self.link = domain, devices, link
        self.fd = fd
        self.out = os.fdopen(os.dup(fd), "wb")
        downtime = msg.get("downtime_ms")
        self.downtime_ms = float(downtime) if isinstance(downtime, (int, float)) else 100.0
        self.config = msg.get("config")
        group = msg.get("group")  # the domids migrating with this domain
        self.links = frozenset(d for d in group if isinstance(d, int)) \
            if isinstance(group, list) else False
        self.together = Together(lambda: link.send({"op": "migrate_ready"})) \
            if self.links else None
        self._toolstack: object = None
        self._got_toolstack = threading.Event()
        self._called_off = False
        self._lock = threading.Lock()
        self.paused = False
        start_worker(threading.Thread(target=self._send, name="migration", daemon=True))

    def toolstack(self, data: object) -> None:
        self._toolstack = data
        self._got_toolstack.set()

    def stop(self) -> None:
        """Every member of the group is ready (or the migration is called off): stop."""
        if self.together is not None:
            self.together.stop.set()

    def resume(self) -> None:
        """The target failed before it took over, or a domain of the group did: the
        domain runs on here (a sender still waiting for the daemon's part gives up)."""
        with self._lock:
            self._called_off = True
            self._got_toolstack.set()
            self.stop()
            if self.paused:
                self.paused = False
                self.devices.resume()
                self.domain.unpause()

    def _wait_ack(self) -> None:
        """The target applied the round: its one-byte answer to the SYNC record."""
        if not os.read(self.fd, 1):
            raise OSError(errno.ECONNRESET, "the target closed the connection")

    def _progress(self, progress: Progress) -> None:
        self.link.send({"op": "migrate_progress", "round": len(progress.rounds),
                        "pages": progress.rounds[-1].pages, "dirty": len(progress.dirty),
                        "rate": round(progress.rate), "predicted_ms": progress.predicted_ms})

    def _send(self) -> None:
        try:
            with self.out:
                writer, progress = precopy(self.domain, self.out, self._wait_ack,
                                           self.downtime_ms, self.config, self._progress,
                                           self.links, self.together)
                with self._lock:
                    if self._called_off:  # while the rounds ran: precopy paused it since
                        self.domain.unpause()
                        raise SaveError(CALLED_OFF)
                    self.paused = True
                    self.devices.suspend()  # see save(): the back ends' last writes go too
                self.link.send({"op": "migrate_paused"})
                # a group's members wait here until all of them are paused
                wait = GROUP_PAUSE_TIMEOUT if self.links else SAVE_TOOLSTACK_TIMEOUT
                if not self._got_toolstack.wait(wait) or self._called_off:
                    raise SaveError(CALLED_OFF if self._called_off
                                    else "the daemon did not send its part of the domain")
                finish(writer, self.domain, progress, self._toolstack, self.links)
        except (SaveError, OSError, ValueError) as e:
            self.domain.set_dirty_logging(False)  # precopy left it on (finish turns it off)
            os.close(self.fd)
            self.resume()
            why = f"the connection to the target failed: {e.strerror}" \
                if isinstance(e, OSError) and e.strerror else str(e)
            self.link.send({"op": "migrate_sent", "error": why})
            return
        os.close(self.fd)
        self.link.send({"op": "migrate_sent", "rounds": [r.pages for r in progress.rounds],
                        "pages": progress.pages_sent, "bytes": progress.bytes_sent,
                        "predicted_ms": progress.predicted_ms})


SAVE_TOOLSTACK_TIMEOUT = 60.0
CALLED_OFF = "the migration was called off"
GROUP_PAUSE_TIMEOUT = 900.0  # ... and for the rest of a group, whose rounds may go on long
ACK = b"\x06"  # a live migration's answer to a SYNC record


def save(domain: Domain, devices: DataPlane, msg: Message, fds: list[int]) -> Message:
    """Pause the domain and write it to the daemon's file (`fds`), with the daemon's own
    parts (`config`, `toolstack`); then it runs on (`resume`: a checkpoint) or stays paused
    for the daemon to destroy it. Its back ends let go of it meanwhile (DataPlane.suspend):
    what they took is answered, and the rings in its memory hold the rest."""
    if len(fds) != 1:
        for fd in fds:
            os.close(fd)
        return {"op": "saved", "error": "a save needs the file's descriptor"}
    stopped = domain.pause()
    devices.suspend()
    try:
        with os.fdopen(fds[0], "wb") as out:
            if not stopped:
                raise SaveError("the domain's vCPUs did not stop within 30 s")
            stats = save_domain(domain, out, msg.get("toolstack"), msg.get("config"),
                                links=True)
    except (SaveError, OSError) as e:
        devices.resume()
        domain.unpause()  # a failed save leaves the domain running, as xl's does
        return {"op": "saved", "error": str(e)}
    if msg.get("resume"):
        devices.resume()
        domain.unpause()
    return {"op": "saved", "pages": stats.pages, "bytes": stats.bytes}


ADOPT_TIMEOUT = 10.0  # seconds a connecting daemon has to say what it wants


def adopt(listener: socket.socket, link: DaemonLink, state: Message,
          fds: list[int]) -> socket.socket | None:
    """A daemon connected to the adopt socket: it becomes the domain's daemon unless one
    holds the domain already."""
    try:
        conn, _ = listener.accept()
    except OSError:
        return None
    try:
        conn.settimeout(ADOPT_TIMEOUT)
        if link.control is not None:
            send_packet(conn, {"op": "busy"})
            conn.close()
            return None
        msg, _ = recv_packet(conn)
        if msg is None or msg.get("op") != "adopt":
            conn.close()
            return None
        conn.settimeout(None)
        link.adopted_by(conn, state, fds)
        return conn
    except (OSError, WireError):
        conn.close()
        return None


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1 or not args[0].isdigit():
        print("usage: python -m pyxen.host.domain_process CONTROL_FD (started by pyxen daemon)",
              file=sys.stderr)
        return 2
    # The daemon decides when this process ends; a terminal's Ctrl-C is for the daemon.
    for sig in (signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)
    control = socket.socket(fileno=int(args[0]))
    try:
        return serve(control)
    except (WireError, OSError) as e:
        print(f"pyxen domain process: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
