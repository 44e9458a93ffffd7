"""`pyxen run IMAGE`: one domain in the foreground, console on stdout, no daemon."""

from __future__ import annotations

import argparse
import logging
import sys

from pyxen.domain.builder import load_module
from pyxen.domain.domain import Domain, DomainConfig, Outcome
from pyxen.domain.loader import ImageError
from pyxen.xenstore import XenStored
from pyxen.xenstore.unix import ThreadedServer

from . import accel
from .embedded import EXIT_CODES, run_image, stdout_console
from .xenstore_service import attach_xenstore, release_domain

EXIT_HELP = ", ".join(f"{code} {outcome.value}" for outcome, code in
                      sorted(EXIT_CODES.items(), key=lambda kv: kv[1]))


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("image", help="a Xen PVH kernel (ELF with XEN_ELFNOTE_PHYS32_ENTRY)")
    p.add_argument("--memory", type=int, default=64, metavar="MiB",
                   help="guest memory (default 64)")
    p.add_argument("--maxmem", type=int, metavar="MiB",
                   help="memory the guest may grow to (default: --memory)")
    p.add_argument("--cmdline", default="", help="the guest's command line")
    p.add_argument("--ramdisk", metavar="FILE", help="a module (ramdisk) for the guest")
    p.add_argument("--dom0", action="store_true",
                   help="run as the privileged initial domain (SIF_INITDOMAIN)")
    p.add_argument("--vcpus", type=int, default=1,
                   help="vCPUs (default 1); vCPU 0 boots, the guest brings up the others")
    p.add_argument("--maxvcpus", type=int, metavar="N",
                   help="vCPUs the guest may bring up (default: --vcpus)")
    p.add_argument("--xenstore", action="store_true",
                   help="serve XenStore to the guest (HVM_PARAM_STORE_PFN/STORE_EVTCHN)")
    p.add_argument("--xenstore-socket", metavar="PATH",
                   help="also serve that store on a Unix socket, for xenstore-* tools "
                        "(implies --xenstore)")
    p.add_argument("--name", default="guest", help="domain name")
    p.add_argument("--timeout", type=float, metavar="S",
                   help="stop the guest after S seconds (exit status 7)")
    p.add_argument("--trace", action="store_true",
                   help="log every hypercall with its arguments and result on stderr")
    add_accel_argument(p)
    p.epilog = f"exit status: {EXIT_HELP}; 2 bad usage"


def add_accel_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument("--accel", choices=accel.ACCELS, default="auto",
                   help="vCPU backend: kvm, soft (a software CPU) or auto (KVM with "
                        "hardware virtualization, else soft; the choice is shown on stderr)")


def select_machine(name: str) -> accel.MachineFactory:
    """The machine factory for --accel NAME; `auto` says on stderr what it chose and why."""
    factory, chosen, reason = accel.machine_factory(name)
    if name == "auto":
        print(f"pyxen: accel {chosen} ({reason})", file=sys.stderr)
    return factory


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO if args.trace else logging.WARNING,
                        format="pyxen: %(message)s", stream=sys.stderr)
    config = DomainConfig(
        name=args.name,
        domid=0 if args.dom0 else 1,
        memory_mib=args.memory,
        maxmem_mib=args.maxmem,
        vcpus=args.vcpus,
        max_vcpus=args.maxvcpus,
        cmdline=args.cmdline,
        privileged=args.dom0,
        trace=args.trace,
    )
    try:
        modules = [load_module(args.ramdisk)] if args.ramdisk else []
        factory = select_machine(args.accel)
        with XenStoreForGuest(args.xenstore or bool(args.xenstore_socket),
                              args.xenstore_socket, config) as store:
            outcome = run_image(args.image, config, modules, args.timeout,
                                console=stdout_console, machine_factory=factory,
                                prepare=store.attach)
    except ImageError as e:
        print(f"pyxen: {e}", file=sys.stderr)
        return EXIT_CODES[Outcome.ERROR]
    except (OSError, RuntimeError) as e:  # e.g. /dev/kvm missing, or no usable engine
        print(f"pyxen: cannot start the domain: {e}", file=sys.stderr)
        return EXIT_CODES[Outcome.ERROR]
    result = outcome.result
    detail = f": {result.detail}" if result.detail else ""
    if result.outcome is not Outcome.POWEROFF or args.trace:
        print(f"pyxen: domain {args.name} {result.outcome.value}{detail}", file=sys.stderr)
    return outcome.exit_code


class XenStoreForGuest:
    """--xenstore / --xenstore-socket: a store for the guest, released when it ends."""

    def __init__(self, wanted: bool, socket_path: str | None, config: DomainConfig) -> None:
        self.xenstored = XenStored() if wanted else None
        self.socket_path = socket_path
        self.config = config
        self.server: ThreadedServer | None = None
        self.handle = b""

    def __enter__(self) -> XenStoreForGuest:
        if self.xenstored is not None and self.socket_path:
            try:
                self.server = ThreadedServer(self.socket_path, self.xenstored).start()
            except OSError as e:
                raise RuntimeError(f"cannot serve XenStore on {self.socket_path}: "
                                   f"{e.strerror or e}") from e
        return self

    def attach(self, domain: Domain) -> None:
        if self.xenstored is not None:
            attach_xenstore(domain, self.xenstored)
            self.handle = domain.handle

    def __exit__(self, *exc: object) -> None:
        if self.xenstored is not None and self.handle:
            release_domain(self.xenstored, self.config.domid, self.handle)
        if self.server is not None:
            self.server.stop()


def build_parser_defaults() -> argparse.Namespace:
    """`pyxen run`'s arguments with their defaults (for commands built on it)."""
    p = argparse.ArgumentParser()
    add_arguments(p)
    return p.parse_args(["-"])
