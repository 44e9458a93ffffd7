"""xl save, xl restore and xl migrate: a domain written to a file and brought back from it,
or moved live to another host's daemon.

`pyxen save [-c] [-p] DOMAIN FILE` pauses the domain, writes everything a guest can observe
(memory, vCPUs, event channels, grants, timers, its store nodes and watches) and destroys
it; with -c it runs on (a checkpoint), with -c -p it stays paused. `pyxen restore [-p] FILE`
builds it again, under its name and a free id, and lets it run unless -p. The guest is
not asked to cooperate (no suspend protocol): it carries on where it was stopped.

`pyxen migrate [-p] [--port PORT] [--downtime-ms MS] [--with DOMAIN]... DOMAIN HOST` moves a
domain to the daemon on HOST (started with `--migrate-listen PORT`): memory in
rounds while it runs, then a stop of about the downtime asked for (pyxen.migration.live,
pyxen.host.migrate). Domains that share event channels or grants move together (`--with`):
all of them stop before any sends its last state, and they are joined again there. With
`-s SSHCOMMAND` the stream goes through `SSHCOMMAND HOST pyxen migrate-receive`, whose
`pyxen migrate-receive` hands it to the daemon there, as xl's migrate and migrate-receive.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import socket
import threading
from pathlib import Path
from typing import Any

from pyxen.host.client import HostClient

from .xl_common import Command, add_host_argument, domain_argument, with_host


def _save() -> Command:
    def add(p: argparse.ArgumentParser) -> None:
        p.add_argument("-c", dest="checkpoint", action="store_true",
                       help="leave the domain running after saving it (a checkpoint)")
        p.add_argument("-p", dest="paused", action="store_true",
                       help="with -c: leave the domain paused after saving it")
        domain_argument(p)
        p.add_argument("file", metavar="FILE", help="where to write the saved domain")
        add_host_argument(p)

    def body(host: HostClient, args: argparse.Namespace) -> int:
        path = str(Path(args.file).absolute())
        reply = host.request("save", dom=args.domain, path=path, checkpoint=args.checkpoint,
                             paused=args.paused)
        print(f"Saved domain {args.domain} to {path}: {reply['pages']} pages, "
              f"{reply['bytes'] / (1 << 20):.1f} MiB")
        return 0

    return Command("save a domain to a file (xl save)", add, with_host(body))


def _restore() -> Command:
    def add(p: argparse.ArgumentParser) -> None:
        p.add_argument("-p", dest="paused", action="store_true",
                       help="leave the restored domain paused")
        p.add_argument("file", metavar="FILE", help="a file `pyxen save` wrote")
        add_host_argument(p)

    def body(host: HostClient, args: argparse.Namespace) -> int:
        reply = host.request("restore", path=str(Path(args.file).absolute()),
                             paused=args.paused)
        print(f"Restored domain {reply['name']} as domain {reply['domid']}")
        return 0

    return Command("restore a domain from a file `pyxen save` wrote (xl restore)", add,
                   with_host(body))


def _migrate() -> Command:
    def add(p: argparse.ArgumentParser) -> None:
        p.add_argument("--port", type=int, default=None,
                       help="the target daemon's --migrate-listen port (default 8002)")
        p.add_argument("--downtime-ms", type=float, default=100.0,
                       help="the longest stop to aim for (default 100 ms)")
        p.add_argument("--with", dest="along", metavar="DOMAIN", action="append", default=[],
                       help="another domain to move at the same time, which keeps its event "
                            "channels and grants with DOMAIN (repeatable)")
        p.add_argument("-p", dest="paused", action="store_true",
                       help="leave the domain paused on the target (run it with unpause)")
        p.add_argument("-s", "--ssh-command", metavar="SSHCOMMAND", default=None,
                       help="go through `SSHCOMMAND HOST pyxen migrate-receive` (run by sh) "
                            "instead of TCP, as xl does; e.g. -s ssh. Empty: HOST is the "
                            "whole command")
        domain_argument(p)
        p.add_argument("target", metavar="HOST", help="the target: a name or address, "
                                                      "HOST:PORT or [V6]:PORT")
        add_host_argument(p)

    def body(host: HostClient, args: argparse.Namespace) -> int:
        from rich.console import Console

        out = Console(highlight=False, soft_wrap=True)

        group = len(args.along) > 0

        def show(update: dict[str, Any]) -> None:
            who = f"{update.get('name')}: " if group else ""
            out.print(f"{who}round {update.get('round')}: {update.get('pages')} pages sent, "
                      f"{update.get('dirty')} dirty since, {update.get('rate')} pages/s; "
                      f"a stop now would take ~{float(update.get('predicted_ms') or 0):.1f} ms")

        reply = host.request("migrate", on_progress=show, dom=args.domain, host=args.target,
                             port=args.port, downtime_ms=args.downtime_ms, ssh=args.ssh_command,
                             paused=args.paused, **{"with": args.along})
        for moved in reply.get("domains", [reply]):
            rounds = moved["rounds"]
            name = moved.get("name", args.domain)
            print(f"Migrated domain {name} to {args.target}: {len(rounds)} rounds "
                  f"(pages: {', '.join(map(str, rounds))}), {moved['pages']} pages, "
                  f"{moved['bytes'] / (1 << 20):.1f} MiB sent; downtime "
                  f"{moved['downtime_ms']} ms (predicted {moved['predicted_ms']:.1f} ms; last "
                  f"copy, restore there, handover: {' + '.join(map(str, moved['stop_ms']))} "
                  f"ms), total {reply['total_s']:.2f} s")
        return 0

    return Command("move a domain, live, to another host's daemon (xl migrate)", add,
                   with_host(body))


def _migrate_receive() -> Command:
    def add(p: argparse.ArgumentParser) -> None:
        add_host_argument(p)

    def body(host: HostClient, args: argparse.Namespace) -> int:
        host.request("migrate_receive")
        relay(host.sock, host.rest)
        return 0

    return Command("the far end of `pyxen migrate -s`: hand the migration on stdin/stdout "
                   "to this host's daemon (xl migrate-receive)", add, with_host(body))


def relay(sock: socket.socket, early: bytes) -> None:
    """stdin to `sock` and `sock` (after the `early` bytes read from it already) to stdout,
    until each side ends: the migration stream between ssh and the daemon."""
    def inbound() -> None:
        while data := os.read(0, RELAY_CHUNK):
            sock.sendall(data)
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_WR)

    threading.Thread(target=inbound, daemon=True).start()
    data = early
    while True:
        while data:
            data = data[os.write(1, data):]
        if not (data := sock.recv(RELAY_CHUNK)):
            return


RELAY_CHUNK = 1 << 16
COMMANDS = {"save": _save(), "restore": _restore(), "migrate": _migrate(),
            "migrate-receive": _migrate_receive()}
