"""xl's network commands on a running domain: network-attach, network-detach, network-list."""

from __future__ import annotations

import argparse

from pyxen.host.client import HostClient, HostError

from .xl_common import Command, add_host_argument, domain_argument, with_host
from .xl_disk import XlConfigError
from .xl_vif import parse_vif_spec


def _attach() -> Command:
    def add(p: argparse.ArgumentParser) -> None:
        domain_argument(p)
        p.add_argument("spec", nargs="*", metavar="KEY=VALUE",
                       help="the vif, as in xl.cfg's vif= (bridge=, mac=, vifname=, ...)")
        add_host_argument(p)

    def body(host: HostClient, args: argparse.Namespace) -> int:
        text = ",".join(args.spec)
        try:
            spec = parse_vif_spec(text).to_spec()
        except (XlConfigError, ValueError) as e:
            raise HostError(f"vif {text!r}: {e}") from None
        host.request("network_attach", dom=args.domain, spec=spec)
        return 0

    return Command("attach a network interface to a running domain", add, with_host(body))


def _detach() -> Command:
    def add(p: argparse.ArgumentParser) -> None:
        p.add_argument("-f", "--force", action="store_true",
                       help="remove the interface even if the guest does not let go of it")
        domain_argument(p)
        p.add_argument("dev", metavar="DEVID|MAC", help="the vif's devid or MAC address")
        add_host_argument(p)

    def body(host: HostClient, args: argparse.Namespace) -> int:
        host.request("network_detach", dom=args.domain, dev=args.dev, force=args.force)
        return 0

    return Command("detach a network interface from a domain", add, with_host(body))


def _list() -> Command:
    def add(p: argparse.ArgumentParser) -> None:
        p.add_argument("domains", nargs="+", metavar="DOMAIN", help="domains' names or ids")
        add_host_argument(p)

    def body(host: HostClient, args: argparse.Namespace) -> int:
        vifs = host.request("network_list", doms=args.domains)["vifs"]
        print(f"{'Idx':<3} {'BE':<3} {'Mac Addr.':<17} {'handle':<6} {'state':<5} "
              f"{'evt-ch':<6} {'tx-/rx-ring-ref':<15} {'BE-path':<30}")
        for v in vifs:
            rings = f"{_num(v.get('tx_ring_ref'))}/{_num(v.get('rx_ring_ref'))}"
            print(f"{v['devid']:<3} {0:<3} {v['mac']:<17} {v['domid']:<6} {_num(v['state']):<5} "
                  f"{_num(v['evtchn']):<6} {rings:<15} {v['backend']:<30}")
        return 0

    return Command("list a domain's network interfaces", add, with_host(body))


def _num(value: object) -> int:
    return value if isinstance(value, int) else -1


COMMANDS = {"network-attach": _attach(), "network-detach": _detach(),
            "network-list": _list()}
