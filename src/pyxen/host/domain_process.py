"""One domain's process in host mode: `python -m pyxen.host.domain_process FD`.

The daemon starts one per domain (as QEMU or Firecracker run one VM per process), so each
domain has its own vCPU threads, GIL and memfd-backed RAM, and a crash here touches no
other domain. FD is this process's end of a SOCK_SEQPACKET control channel:

    daemon → here   {"op": "build", "domain": {...}}      what to build (see DomainSpec)
    here → daemon   {"op": "built", ...} + fds            memfd and the rings' eventfds
                    {"op": "failed", "error": "..."}      the image or config was refused
    daemon → here   {"op": "start"}                       run vCPU 0
                    {"op": "set_max_pages", "pages": N}   XEN_DOMCTL_max_mem (xl mem-max)
    here → daemon   {"op": "vcpu_thread", "vcpu": i, "tid": T}   a vCPU's thread started
    here → daemon   {"op": "console_io", "data": "..."}   the guest's CONSOLEIO_write bytes
                    {"op": "stopped", "outcome": ...}     the guest shut down or crashed
                                                          (with its populated memory runs)

The store and console rings are served by the daemon from the memfd; the guest's
notifications reach it through one eventfd per ring ("kick") and its replies come back
through another ("notify"). Pause is SIGSTOP, destroy SIGKILL: the daemon needs no
cooperation from this process for either. If the daemon goes away (end of file on the
control channel), the domain is destroyed: nothing outlives its host."""

from __future__ import annotations

import os
import selectors
import signal
import socket
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass

from pyxen.domain.builder import build_domain, image_limit, load_module
from pyxen.domain.domain import Domain, DomainConfig
from pyxen.domain.loader import ImageError
from pyxen.domain.vcpu import Vcpu
from pyxen.host.wire import Message, WireError, bytes_to_wire, recv_packet, send_packet
from pyxen.hv import hypercall_table
from pyxen.threads import start_worker
from pyxen.toolstack import accel
from pyxen.toolstack.console_service import place_console_ring
from pyxen.toolstack.service_ring import ServiceRing
from pyxen.toolstack.xenstore_service import place_store_ring


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
    ramdisk: str | None = None
    max_grant_frames: int = 32
    max_event_channels: int = 1023
    accel: str = "auto"

    @classmethod
    def from_message(cls, fields: dict[str, object]) -> DomainSpec:
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in fields.items() if k in known})  # type: ignore[arg-type]

    def domain_config(self) -> DomainConfig:
        return DomainConfig(name=self.name, domid=self.domid, memory_mib=self.memory,
                            maxmem_mib=self.maxmem, vcpus=self.vcpus, max_vcpus=self.maxvcpus,
                            cmdline=self.cmdline, max_grant_frames=self.max_grant_frames,
                            max_event_channels=self.max_event_channels,
                            handle=bytes.fromhex(self.uuid))


class RingLink:
    """The guest half of a ring the daemon serves: eventfds in both directions."""

    def __init__(self, domain: Domain,
                 place: Callable[[Domain, Callable[[], None]], ServiceRing]) -> None:
        self.kick_fd = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)  # guest → daemon
        self.notify_fd = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)  # daemon → guest
        self.domain = domain
        self.ring = place(domain, lambda: os.eventfd_write(self.kick_fd, 1))

    def notified(self) -> None:
        """The daemon signalled the ring: raise the guest's event."""
        try:
            os.eventfd_read(self.notify_fd)
        except BlockingIOError:
            return
        self.domain.evtchn.notify_from_service(self.ring.port)

    def describe(self) -> Message:
        return {"gfn": self.ring.gfn, "port": self.ring.port}


def build(spec: DomainSpec, control: socket.socket) -> Domain:
    """The domain as `pyxen run` builds it, its console_io output sent to the daemon."""
    config = spec.domain_config()
    modules = ([load_module(spec.ramdisk, image_limit(config))]
               if spec.ramdisk is not None else [])
    factory = accel.machine_factory(spec.accel, spec.kernel)[0]

    def console_io(data: bytes) -> None:
        send_packet(control, {"op": "console_io", "data": bytes_to_wire(data)})

    domain = build_domain(spec.kernel, config, factory, hypercall_table(), console_io, modules)

    def vcpu_thread(vcpu: Vcpu) -> None:
        send_packet(control, {"op": "vcpu_thread", "vcpu": vcpu.index, "tid": vcpu.native_id})

    domain.on_vcpu_thread = vcpu_thread
    return domain


def serve(control: socket.socket) -> int:
    msg, _ = recv_packet(control)
    if msg is None:
        return 0
    if msg.get("op") != "build":
        raise WireError(f"expected build, got {msg.get('op')!r}")
    try:
        spec = DomainSpec.from_message(msg["domain"])
        domain = build(spec, control)
    except (ImageError, OSError, RuntimeError, ValueError, TypeError, KeyError) as e:
        send_packet(control, {"op": "failed", "error": str(e)})
        return 1
    try:
        store = RingLink(domain, place_store_ring)
        console = RingLink(domain, place_console_ring)
        send_packet(control, {"op": "built", "store": store.describe(),
                              "console": console.describe(),
                              "max_pages": domain.max_pages,
                              "fds": ["memfd", "store_kick", "store_notify",
                                      "console_kick", "console_notify"]},
                    [domain.memory.fd, store.kick_fd, store.notify_fd,
                     console.kick_fd, console.notify_fd])
        return run(domain, control, [store, console])
    finally:
        domain.close()


def run(domain: Domain, control: socket.socket, links: list[RingLink]) -> int:
    """Serve the control channel and the rings' notifications until the daemon goes."""
    done_fd = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)

    def waiter() -> None:
        result = domain.wait()
        with domain.memory_lock:
            runs = domain.memory.runs()
        send_packet(control, {"op": "stopped", "outcome": result.outcome.value,
                              "detail": result.detail, "code": result.shutdown_code,
                              "runs": runs})
        os.eventfd_write(done_fd, 1)

    sel = selectors.DefaultSelector()
    sel.register(control, selectors.EVENT_READ, None)
    for link in links:
        sel.register(link.notify_fd, selectors.EVENT_READ, link)
    started = False
    while True:
        for key, _ in sel.select():
            if key.data is not None:
                key.data.notified()
                continue
            msg, _ = recv_packet(control)
            if msg is None:
                return 0  # the daemon is gone: so is the domain
            op = msg.get("op")
            if op == "start" and not started:
                started = True
                domain.start()
                start_worker(threading.Thread(target=waiter, name="domain-waiter", daemon=True))
            elif op == "set_max_pages" and isinstance(msg.get("pages"), int):
                with domain.memory_lock:
                    domain.max_pages = msg["pages"]


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
