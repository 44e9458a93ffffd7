"""xl's device commands on a running domain: block-attach/-detach/-list for disks and
network-attach/-detach/-list for network interfaces (the same three verbs for each)."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from pyxen.host.client import HostClient, HostError

from .xl_common import Command, add_host_argument, domain_argument, with_host
from .xl_create import absolute_disk
from .xl_disk import XlConfigError, parse_disk_spec
from .xl_vif import parse_vif_spec


def _attach(op: str, what: str, parse: Callable[[str], str], metavar: str,
            help_text: str) -> Command:
    def add(p: argparse.ArgumentParser) -> None:
        domain_argument(p)
        p.add_argument("spec", nargs="*" if op == "network_attach" else "+", metavar=metavar,
                       help=help_text)
        add_host_argument(p)

    def body(host: HostClient, args: argparse.Namespace) -> int:
        text = ",".join(args.spec)
        try:
            spec = parse(text)
        except (XlConfigError, ValueError) as e:
            raise HostError(f"{what} {text!r}: {e}") from None
        host.request(op, dom=args.domain, spec=spec)
        return 0

    return Command(f"attach a {what} to a running domain", add, with_host(body))


def _detach(op: str, what: str, metavar: str, help_text: str) -> Command:
    def add(p: argparse.ArgumentParser) -> None:
        p.add_argument("-f", "--force", action="store_true",
                       help=f"remove the {what} even if the guest does not let go of it")
        domain_argument(p)
        p.add_argument("dev", metavar=metavar, help=help_text)
        add_host_argument(p)

    def body(host: HostClient, args: argparse.Namespace) -> int:
        host.request(op, dom=args.domain, dev=args.dev, force=args.force)
        return 0

    return Command(f"detach a {what} from a domain", add, with_host(body))


def _list(op: str, key: str, what: str, header: str,
          row: Callable[[dict[str, Any]], str]) -> Command:
    def add(p: argparse.ArgumentParser) -> None:
        p.add_argument("domains", nargs="+", metavar="DOMAIN", help="domains' names or ids")
        add_host_argument(p)

    def body(host: HostClient, args: argparse.Namespace) -> int:
        print(header)
        for device in host.request(op, doms=args.domains)[key]:
            print(row(device))
        return 0

    return Command(f"list a domain's {what}s", add, with_host(body))


def _num(value: object) -> int:
    """A number of the listing, -1 where the store has none (as xl prints it)."""
    return value if isinstance(value, int) else -1


def _disk_row(d: dict[str, Any]) -> str:
    return (f"{d['devid']:<5} {0:<3} {d['domid']:<6} {_num(d['state']):<5} "
            f"{_num(d['evtchn']):<6} {_num(d['ring_ref']):<8} {d['backend']:<30}")


def _vif_row(v: dict[str, Any]) -> str:
    rings = f"{_num(v.get('tx_ring_ref'))}/{_num(v.get('rx_ring_ref'))}"
    return (f"{v['devid']:<3} {0:<3} {v['mac']:<17} {v['domid']:<6} {_num(v['state']):<5} "
            f"{_num(v['evtchn']):<6} {rings:<15} {v['backend']:<30}")


COMMANDS = {
    "block-attach": _attach(
        "block_attach", "disk", lambda text: absolute_disk(parse_disk_spec(text)),
        "DISKSPEC", "the disk, as in xl.cfg's disk= (parts may be separate words)"),
    "block-detach": _detach("block_detach", "disk", "DEV",
                            "the disk's device number or vdev (xvdb)"),
    "block-list": _list(
        "block_list", "disks", "disk",
        f"{'Vdev':<5} {'BE':<3} {'handle':<6} {'state':<5} {'evt-ch':<6} {'ring-ref':<8} "
        f"{'BE-path':<30}", _disk_row),
    "network-attach": _attach(
        "network_attach", "network interface", lambda text: parse_vif_spec(text).to_spec(),
        "KEY=VALUE", "the vif, as in xl.cfg's vif= (bridge=, mac=, vifname=, ...)"),
    "network-detach": _detach("network_detach", "network interface", "DEVID|MAC",
                              "the vif's devid or MAC address"),
    "network-list": _list(
        "network_list", "vifs", "network interface",
        f"{'Idx':<3} {'BE':<3} {'Mac Addr.':<17} {'handle':<6} {'state':<5} {'evt-ch':<6} "
        f"{'tx-/rx-ring-ref':<15} {'BE-path':<30}", _vif_row),
}
