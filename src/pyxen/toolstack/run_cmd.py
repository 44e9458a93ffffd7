"""`pyxen run IMAGE`: one domain in the foreground, console on stdout, no daemon."""

from __future__ import annotations

import argparse
import contextlib
import logging
import math
import signal
import sys
from collections.abc import Callable, Iterator

from pyxen.domain.backend import MachineBackend
from pyxen.domain.builder import check_config, image_limit, load_module
from pyxen.domain.domain import Domain, DomainConfig, Outcome
from pyxen.domain.loader import ImageError
from pyxen.xenstore import XenStored
from pyxen.xenstore.unix import ThreadedServer, prepare_socket_path, socket_path_arg

from . import accel
from .console_service import console_ring_of, remove_console_nodes, write_console_nodes
from .embedded import EXIT_CODES, run_image, stdout_console, stop_signals
from .terminal import ESCAPE_NAME, stdin_console, terminal_name
from .xenstore_service import attach_xenstore, release_domain
from .xl_common import MAX_TIMEOUT

EXIT_HELP = ", ".join(f"{code} {outcome.value}" for outcome, code in
                      sorted(EXIT_CODES.items(), key=lambda kv: kv[1]))
EXIT_USAGE = 2


def check_timeout(seconds: float) -> None:
    """--timeout's rule: a finite number of seconds above 0, at most MAX_TIMEOUT."""
    if not math.isfinite(seconds) or not 0 < seconds <= MAX_TIMEOUT:
        raise ValueError(f"{seconds:g} is not a number of seconds above 0 and at most "
                         f"{MAX_TIMEOUT} (a year); omit --timeout for none")


def timeout_seconds(text: str) -> float:
    """argparse type for --timeout (also for commands built on `pyxen run`)."""
    try:
        seconds = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a number of seconds") from None
    try:
        check_timeout(seconds)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return seconds


def file_path(text: str) -> str:
    """argparse type for IMAGE and --ramdisk: an empty path is a usage error (it named no
    file, and --ramdisk '' used to mean no ramdisk, silently)."""
    if not text:
        raise argparse.ArgumentTypeError("the path is empty")
    return text


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("image", type=file_path,
                   help="a Xen PVH kernel (ELF with XEN_ELFNOTE_PHYS32_ENTRY)")
    p.add_argument("--memory", type=int, default=64, metavar="MiB",
                   help="guest memory (default 64; at most the host's RAM)")
    p.add_argument("--maxmem", type=int, metavar="MiB",
                   help="memory the guest may grow to (default: --memory)")
    p.add_argument("--cmdline", default="",
                   help="the guest's command line (passed as the bytes given)")
    p.add_argument("--ramdisk", metavar="FILE", type=file_path,
                   help="a module (ramdisk) for the guest")
    p.add_argument("--dom0", action="store_true",
                   help="run as the privileged initial domain (SIF_INITDOMAIN)")
    p.add_argument("--vcpus", type=int, default=1,
                   help="vCPUs (default 1); vCPU 0 boots, the guest brings up the others")
    p.add_argument("--maxvcpus", type=int, metavar="N",
                   help="vCPUs the guest may bring up (default: --vcpus)")
    p.add_argument("--xenstore", action="store_true",
                   help="serve XenStore to the guest (HVM_PARAM_STORE_PFN/STORE_EVTCHN)")
    p.add_argument("--xenstore-socket", metavar="PATH", type=socket_path_arg,
                   help="also serve that store on a Unix socket, for xenstore-* tools "
                        "(implies --xenstore; the directory must exist)")
    p.add_argument("--name", default="guest", help="domain name (UTF-8, default guest)")
    p.add_argument("--timeout", type=timeout_seconds, metavar="S",
                   help="stop the guest after S seconds (exit status 7)")
    p.add_argument("--console-log", metavar="FILE",
                   help="also append the guest's console output to FILE, as bytes")
    p.add_argument("--trace", action="store_true",
                   help="log every hypercall with its arguments and result on stderr")
    add_accel_argument(p)
    p.epilog = (f"console: the guest's output on stdout; stdin goes to its PV console ring "
                f"(on a terminal: raw, {ESCAPE_NAME} stops the domain as Ctrl-C would). "
                f"exit status: {EXIT_HELP}; 2 bad usage; 128+N stopped by signal N "
                "(130 SIGINT, 129 SIGHUP, 143 SIGTERM)")


def add_accel_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument("--accel", choices=accel.ACCELS, default="auto",
                   help="vCPU backend: kvm, soft (a software CPU) or auto (KVM with "
                        "hardware virtualization, else soft; the choice is shown on stderr)")


def select_machine(name: str, image: str | None = None) -> accel.MachineFactory:
    """The machine factory for --accel NAME. With `auto` it says on stderr what it chose and
    why (the guest `image` may rule KVM out); an explicit `kvm` warns when that KVM cannot
    take the image's hypercalls. Both when the machine is created: a refused image or
    config stays a one-line error."""
    factory, chosen, reason = accel.machine_factory(name, image)
    if name == "auto":
        message = f"pyxen: accel {chosen} ({reason})"
    else:
        warning = accel.kvm_warning(image) if chosen == "kvm" else None
        if warning is None:
            return factory
        message = f"pyxen: warning: {warning}"

    def announced(msr_exits: list[int]) -> MachineBackend:
        print(message, file=sys.stderr)
        return factory(msr_exits)

    return announced


def run(args: argparse.Namespace) -> int:
    """Boot args.image and wait for it. A stop signal (SignalStop, from the CLI's handlers)
    propagates after the domain is torn down and its socket removed."""
    logging.basicConfig(level=logging.INFO if args.trace else logging.WARNING,
                        format="pyxen: %(message)s", stream=sys.stderr)
    if args.timeout is not None:  # argparse checked it; callers building args may not have
        try:
            check_timeout(args.timeout)
        except ValueError as e:
            print(f"pyxen: bad --timeout: {e}", file=sys.stderr)
            return EXIT_USAGE
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
        check_config(config)  # before reading files: their size limit comes from the memory
        modules = ([load_module(args.ramdisk, image_limit(config))]
                   if args.ramdisk is not None else [])
        factory = select_machine(args.accel, args.image)
        with console_output(args.console_log) as console, \
                stdin_console(escape=escape_stops_domain) as keyboard, \
                XenStoreForGuest(args.xenstore or args.xenstore_socket is not None,
                                 args.xenstore_socket, config) as store:
            outcome = run_image(args.image, config, modules, args.timeout,
                                console=console, machine_factory=factory,
                                prepare=store.attach, console_input=keyboard)
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


@contextlib.contextmanager
def console_output(log_path: str | None) -> Iterator[Callable[[bytes], None]]:
    """The guest's console on stdout and, with --console-log, appended to that file."""
    if log_path is None:
        yield stdout_console
        return
    try:
        log = open(log_path, "ab", buffering=0)  # noqa: SIM115 - closed below
    except OSError as e:
        raise RuntimeError(f"cannot open the console log {log_path}: "
                           f"{e.strerror or e}") from None

    def both(data: bytes) -> None:
        log.write(data)
        stdout_console(data)

    try:
        yield both
    finally:
        log.close()


def escape_stops_domain() -> None:
    """The console escape key was typed: stop the domain as Ctrl-C (SIGINT) does."""
    print(f"\npyxen: console escape ({ESCAPE_NAME}): stopping the domain", file=sys.stderr)
    stop_signals.request(signal.SIGINT)


class XenStoreForGuest:
    """--xenstore / --xenstore-socket: a store for the guest, released when it ends.

    The socket is checked on entry (so a bad path fails before the domain is built) but
    bound only in `attach`, after the domain's nodes are written: a client that waits for
    the socket to appear can read them at once."""

    def __init__(self, wanted: bool, socket_path: str | None, config: DomainConfig) -> None:
        self.xenstored = XenStored() if wanted else None
        self.socket_path = socket_path
        self.config = config
        self.server: ThreadedServer | None = None
        self.handle = b""

    def __enter__(self) -> XenStoreForGuest:
        if self.xenstored is not None and self.socket_path is not None:
            try:
                prepare_socket_path(self.socket_path)
            except OSError as e:
                raise self._cannot_serve(e) from e
        return self

    def _cannot_serve(self, e: OSError) -> RuntimeError:
        return RuntimeError(f"cannot serve XenStore on {self.socket_path}: {e.strerror or e}")

    def attach(self, domain: Domain) -> None:
        if self.xenstored is None:
            return
        attach_xenstore(domain, self.xenstored)
        self.handle = domain.handle
        write_console_nodes(self.xenstored, domain.domid, console_ring_of(domain),
                            tty=terminal_name())
        if self.socket_path is not None:
            server = ThreadedServer(self.socket_path, self.xenstored)
            self.server = server  # before start: __exit__ stops it even if start is cut short
            try:
                server.start()
            except OSError as e:
                raise self._cannot_serve(e) from e

    def __exit__(self, *exc: object) -> None:
        with stop_signals.deferred():
            try:
                if self.xenstored is not None and self.handle:
                    remove_console_nodes(self.xenstored, self.config.domid)
                    release_domain(self.xenstored, self.config.domid, self.handle)
            finally:
                if self.server is not None:
                    self.server.stop()


def build_parser_defaults() -> argparse.Namespace:
    """`pyxen run`'s arguments with their defaults (for commands built on it)."""
    p = argparse.ArgumentParser()
    add_arguments(p)
    return p.parse_args(["-"])
