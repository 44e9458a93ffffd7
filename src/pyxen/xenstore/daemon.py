"""`pyxen xenstored`: a standalone XenStore daemon on a Unix socket, in the foreground."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys

from pyxen.xenstore.quota import Quotas
from pyxen.xenstore.unix import UnixServer
from pyxen.xenstore.xenstored import XenStored

DEFAULT_SOCKET = "/var/run/xenstored/socket"  # where Debian's xenstore-utils look


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--socket",
        default=os.environ.get("XENSTORED_PATH", DEFAULT_SOCKET),
        metavar="PATH",
        help="Unix socket to serve (default: $XENSTORED_PATH or %(default)s)",
    )
    parser.add_argument(
        "--log-level",
        default="warning",
        choices=["debug", "info", "warning", "error"],
        help="logging threshold (default: %(default)s)",
    )
    q = Quotas()
    group = parser.add_argument_group("quotas for unprivileged domains (C xenstored options)")
    group.add_argument("-E", "--entry-nb", type=int, default=q.nodes, help="nodes per domain")
    group.add_argument("-S", "--entry-size", type=int, default=q.node_size, help="bytes per node")
    group.add_argument("-W", "--watch-nb", type=int, default=q.watches, help="watches per domain")
    group.add_argument(
        "-t", "--transaction", type=int, default=q.transactions, help="transactions per domain"
    )
    group.add_argument(
        "-A", "--perm-nb", type=int, default=q.permissions, help="permission entries per node"
    )
    group.add_argument("-M", "--path-max", type=int, default=q.path_max, help="node path length")
    group.add_argument(
        "-Q",
        "--quota",
        action="append",
        default=[],
        metavar="WHAT=NB",
        help=f"set any quota by name: {', '.join(Quotas.NAMES)}",
    )


def quotas_from_args(args: argparse.Namespace) -> Quotas:
    quotas = Quotas(
        nodes=args.entry_nb,
        node_size=args.entry_size,
        watches=args.watch_nb,
        transactions=args.transaction,
        permissions=args.perm_nb,
        path_max=args.path_max,
    )
    for item in args.quota:
        name, sep, value = item.partition("=")
        if not sep or name not in Quotas.NAMES or not value.isdigit():
            raise ValueError(f"bad --quota {item!r}: expected WHAT=NB, WHAT in {list(Quotas.NAMES)}")
        quotas.set(name, int(value))
    return quotas


async def serve(server: UnixServer) -> None:
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await server.stop()


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(
        level=getattr(logging, args.log_level.upper()),
        format="%(asctime)s xenstored %(levelname)s %(message)s",
    )
    try:
        quotas = quotas_from_args(args)
    except ValueError as e:
        print(f"pyxen xenstored: {e}", file=sys.stderr)
        return 2
    server = UnixServer(XenStored(quotas), args.socket)
    try:
        asyncio.run(serve(server))
    except OSError as e:
        print(f"pyxen xenstored: cannot listen on {args.socket}: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        pass
    return 0


def main(argv: list[str] | None = None) -> int:
    """`python -m pyxen.xenstore.daemon`: the same command without the pyxen CLI."""
    parser = argparse.ArgumentParser(prog="pyxen xenstored", description=__doc__)
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
