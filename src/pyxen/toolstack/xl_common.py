"""What every host-mode command shares: finding the daemon and reporting its refusals.

Commands print errors as xl does, one line on stderr, and exit 1 (xl's EXIT_FAILURE)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pyxen.host import paths
from pyxen.host.client import HostClient, HostError, HostUnavailable
from pyxen.host.wire import WireError
from pyxen.xenstore.unix import socket_path_arg

EXIT_FAILURE = 1
# The longest time a command-line option may give (run --timeout, top -d): a year; anything
# longer is a typo. Here, not in run_cmd, so that the daemon's clients need not import the
# hypervisor to check it.
MAX_TIMEOUT = 365 * 24 * 3600


@dataclass(frozen=True)
class Command:
    """One xl subcommand: its help line, its arguments, what it does."""

    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


def add_host_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument("--host", metavar="SOCKET", type=socket_path_arg,
                   help=f"the daemon's API socket (default ${paths.HOST_ENV} or "
                        f"{paths.default_socket()})")


def with_host(body: Callable[[HostClient, argparse.Namespace], int]
              ) -> Callable[[argparse.Namespace], int]:
    """Run `body` with a connection to the daemon; its refusals become one line and 1."""
    def run(args: argparse.Namespace) -> int:
        try:
            with HostClient(args.host) as host:
                return body(host, args)
        except HostError as e:
            print(f"pyxen: {e}", file=sys.stderr)
            return e.status or EXIT_FAILURE
        except (HostUnavailable, WireError, OSError) as e:
            print(f"pyxen: {e}", file=sys.stderr)
            return EXIT_FAILURE

    return run


def domain_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument("domain", metavar="DOMAIN", help="a domain's name or id")


def select_domains(doms: list[dict[str, Any]], wanted: list[str]) -> list[dict[str, Any]]:
    """The listed domains named (by name or id) in `wanted`, all of them if it is empty;
    HostError for a name that matches none, as xl says it."""
    if not wanted:
        return doms
    chosen = [d for d in doms if d["name"] in wanted or str(d["domid"]) in wanted]
    missing = set(wanted) - {d["name"] for d in chosen} - {str(d["domid"]) for d in chosen}
    if missing:
        raise HostError(f"{sorted(missing)[0]} is an invalid domain identifier")
    return chosen
