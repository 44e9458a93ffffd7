"""`pyxen xenstored`: a standalone XenStore daemon on a Unix socket, in the foreground."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys

from pyxen.threads import STOP_SIGNALS
from pyxen.xenstore.quota import QUOTA_MAX, Quotas, parse_quota_value
from pyxen.xenstore.unix import UnixServer, check_socket_path, socket_path_arg
from pyxen.xenstore.xenstored import XenStored

DEFAULT_SOCKET = "/var/run/xenstored/socket"  # where Debian's xenstore-utils look
# The stop signals (STOP_SIGNALS) stop the daemon cleanly (socket removed), with exit status
# 128 + signum as a shell reports for a command killed by them. (The C xenstored reopens its
# log on SIGHUP; this one logs to stderr and has no log file, so a hangup stops it.)


def quota_number(text: str) -> int:
    """argparse type for -E, -S, -W, -t, -A, -M: the same rule as --quota's values."""
    try:
        return parse_quota_value(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def quota_item(text: str) -> tuple[str, int]:
    """argparse type for --quota WHAT=NB."""
    name, sep, value = text.partition("=")
    if not sep or name not in Quotas.NAMES:
        raise argparse.ArgumentTypeError(
            f"'{text}': expected WHAT=NB with WHAT one of {', '.join(Quotas.NAMES)}")
    try:
        return name, parse_quota_value(value)
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"{name}: {e}") from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--socket",
        type=socket_path_arg,
        metavar="PATH",
        help=f"Unix socket to serve (default: $XENSTORED_PATH or {DEFAULT_SOCKET}); "
             "its directory must exist",
    )
    parser.add_argument(
        "--log-level",
        default="warning",
        choices=["debug", "info", "warning", "error"],
        help="logging threshold (default: %(default)s)",
    )
    q = Quotas()
    group = parser.add_argument_group("quotas for unprivileged domains (C xenstored options; "
                                      f"each 0 to {QUOTA_MAX})")
    group.add_argument("-E", "--entry-nb", type=quota_number, default=q.nodes,
                       help="nodes per domain")
    group.add_argument("-S", "--entry-size", type=quota_number, default=q.node_size,
                       help="bytes per node")
    group.add_argument("-W", "--watch-nb", type=quota_number, default=q.watches,
                       help="watches per domain")
    group.add_argument("-t", "--transaction", type=quota_number, default=q.transactions,
                       help="transactions per domain")
    group.add_argument("-A", "--perm-nb", type=quota_number, default=q.permissions,
                       help="permission entries per node")
    group.add_argument("-M", "--path-max", type=quota_number, default=q.path_max,
                       help="node path length")
    group.add_argument(
        "-Q",
        "--quota",
        type=quota_item,
        action="append",
        default=[],
        metavar="WHAT=NB",
        help=f"set any quota by name: {', '.join(Quotas.NAMES)}",
    )
    parser.epilog = ("exit status: 1 cannot listen (or a bad $XENSTORED_PATH), 2 bad usage, "
                     "128+N stopped by signal N (130 SIGINT, 129 SIGHUP, 143 SIGTERM)")


def quotas_from_args(args: argparse.Namespace) -> Quotas:
    quotas = Quotas(
        nodes=args.entry_nb,
        node_size=args.entry_size,
        watches=args.watch_nb,
        transactions=args.transaction,
        permissions=args.perm_nb,
        path_max=args.path_max,
    )
    for name, value in args.quota:
        quotas.set(name, value)
    return quotas


def socket_from(args: argparse.Namespace) -> str:
    """--socket, else $XENSTORED_PATH, else the default; ValueError for a bad $XENSTORED_PATH
    (the environment, not the command line, is wrong)."""
    if args.socket is not None:
        return str(args.socket)
    env = os.environ.get("XENSTORED_PATH")
    if env is None:
        return DEFAULT_SOCKET
    try:
        check_socket_path(env)
    except ValueError as e:
        raise ValueError(f"XENSTORED_PATH: {e}") from None
    return env


async def serve(server: UnixServer) -> int:
    """Serve until a stop signal; returns its number. The socket is gone when this returns."""
    loop = asyncio.get_running_loop()
    stopped: asyncio.Future[int] = loop.create_future()

    def on_signal(signum: int) -> None:
        if not stopped.done():
            stopped.set_result(signum)

    # A signal ignored from the start (nohup) stays ignored. Handlers go in before the bind:
    # a signal from then on cannot skip the cleanup.
    handled = [sig for sig in STOP_SIGNALS if signal.getsignal(sig) is not signal.SIG_IGN]
    for sig in handled:
        loop.add_signal_handler(sig, on_signal, sig)
    try:
        await server.start()
        return await stopped
    finally:
        await server.stop()
        for sig in handled:
            loop.remove_signal_handler(sig)


def stop_message(signum: int) -> str:
    return "interrupted" if signum == signal.SIGINT else f"terminated by {signal.Signals(signum).name}"


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(
        level=getattr(logging, args.log_level.upper()),
        format="%(asctime)s xenstored %(levelname)s %(message)s",
    )
    try:
        path = socket_from(args)
    except ValueError as e:
        print(f"pyxen xenstored: {e}", file=sys.stderr)
        return 1
    server = UnixServer(XenStored(quotas_from_args(args)), path)
    try:
        signum = asyncio.run(serve(server))
    except OSError as e:
        print(f"pyxen xenstored: cannot listen on {path}: {e.strerror or e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # SIGINT before the loop's handlers were in place
        signum = signal.SIGINT
    print(f"pyxen xenstored: {stop_message(signum)}", file=sys.stderr)
    return 128 + signum


def main(argv: list[str] | None = None) -> int:
    """`python -m pyxen.xenstore.daemon`: the same command without the pyxen CLI."""
    from pyxen.cli import messages_show_bytes

    messages_show_bytes()
    parser = argparse.ArgumentParser(prog="pyxen xenstored", description=__doc__)
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
