"""xl save and xl restore: a domain written to a file and brought back from it.

`pyxen save [-c] [-p] DOMAIN FILE` pauses the domain, writes everything a guest can observe
(memory, vCPUs, event channels, grants, timers, its store nodes and watches) and destroys
it; with -c it runs on (a checkpoint), with -c -p it stays paused. `pyxen restore [-p] FILE`
builds it again, under its name and a free id, and lets it run unless -p. The guest is
not asked to cooperate (no suspend protocol): it carries on where it was stopped.
"""

from __future__ import annotations

import argparse
from pathlib import Path

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


COMMANDS = {"save": _save(), "restore": _restore()}
