"""What every host-mode command shares: finding the daemon and reporting its refusals.

Commands print errors as xl does, one line on stderr, and exit 1 (xl's EXIT_FAILURE)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from dataclasses import dataclass

from pyxen.host import paths
from pyxen.host.client import HostClient, HostError, HostUnavailable
from pyxen.host.wire import WireError

EXIT_FAILURE = 1


@dataclass(frozen=True)
class Command:
    """One xl subcommand: its help line, its arguments, what it does."""

    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


def add_host_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument("--host", metavar="SOCKET",
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
