"""`pyxen console DOMAIN`: attach to a domain's PV console, as `xl console` does.

The guest's output goes to stdout, stdin goes to the guest (raw on a terminal: every key
as typed). Ctrl-] leaves; the domain keeps running. The session also ends when the domain
is destroyed. What the guest printed before is in the console log (STATE_DIR/console)."""

from __future__ import annotations

import argparse
import os
import selectors
import sys
from collections.abc import Callable

from pyxen.host.client import HostClient

from .terminal import ESCAPE, ESCAPE_NAME, READ_SIZE, RawTerminal
from .xl_common import Command, add_host_argument, domain_argument, with_host


def attach(host: HostClient, domain: str, backlog: bool = False,
           attached: Callable[[], None] | None = None) -> int:
    """Run a console session on `host`'s connection until Ctrl-] or the domain's end;
    `attached` runs once the daemon sends this session the guest's output."""
    host.console(domain, backlog=backlog)
    if attached is not None:
        attached()
    out = sys.stdout.buffer
    if host.rest:
        out.write(host.rest)
        out.flush()
    sock = host.sock
    sel = selectors.DefaultSelector()
    sel.register(sock, selectors.EVENT_READ, "guest")
    stdin_open = True
    try:
        sel.register(0, selectors.EVENT_READ, "keyboard")
    except (ValueError, OSError):  # stdin closed or not pollable (a regular file is fine)
        stdin_open = False
    with RawTerminal(0):
        while True:
            for key, _ in sel.select():
                if key.data == "guest":
                    data = sock.recv(READ_SIZE)
                    if not data:
                        return 0
                    out.write(data)
                    out.flush()
                elif stdin_open:
                    data = os.read(0, READ_SIZE)
                    if ESCAPE in data:
                        data = data[: data.index(ESCAPE)]
                        if data:
                            sock.sendall(data)
                        return 0
                    if not data:  # end of input: keep showing output
                        sel.unregister(0)
                        stdin_open = False
                        continue
                    sock.sendall(data)


def _add(p: argparse.ArgumentParser) -> None:
    p.add_argument("-t", dest="type", choices=("pv", "serial"), default="pv",
                   help="console type (pv: the PV console; PVH guests have no serial)")
    p.add_argument("-n", dest="num", type=int, default=0, help="console number (only 0)")
    p.add_argument("--backlog", action="store_true",
                   help="first show the last 64 KiB the guest printed")
    domain_argument(p)
    add_host_argument(p)
    p.epilog = f"{ESCAPE_NAME} leaves the console; the domain keeps running"


def _run(host: HostClient, args: argparse.Namespace) -> int:
    if args.type != "pv" or args.num != 0:
        print("pyxen: a PVH domain has one console: -t pv -n 0", file=sys.stderr)
        return 1
    return attach(host, args.domain, backlog=args.backlog)


COMMANDS = {"console": Command("attach to a domain's console", _add, with_host(_run))}
