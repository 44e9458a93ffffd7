"""xl's disk commands on a running domain: block-attach, block-detach, block-list."""

from __future__ import annotations

import argparse

from pyxen.host.client import HostClient, HostError

from .xl_common import Command, add_host_argument, domain_argument, with_host
from .xl_create import absolute_disk
from .xl_disk import XlConfigError, parse_disk_spec


def _attach() -> Command:
    def add(p: argparse.ArgumentParser) -> None:
        domain_argument(p)
        p.add_argument("spec", nargs="+", metavar="DISKSPEC",
                       help="the disk, as in xl.cfg's disk= (parts may be separate words)")
        add_host_argument(p)

    def body(host: HostClient, args: argparse.Namespace) -> int:
        text = ",".join(args.spec)
        try:
            spec = absolute_disk(parse_disk_spec(text)).to_spec()
        except XlConfigError as e:
            raise HostError(f"disk {text!r}: {e}") from None
        host.request("block_attach", dom=args.domain, spec=spec)
        return 0

    return Command("attach a disk to a running domain", add, with_host(body))


def _detach() -> Command:
    def add(p: argparse.ArgumentParser) -> None:
        p.add_argument("-f", "--force", action="store_true",
                       help="remove the disk even if the guest does not let go of it")
        domain_argument(p)
        p.add_argument("dev", metavar="DEV", help="the disk's device number or vdev (xvdb)")
        add_host_argument(p)

    def body(host: HostClient, args: argparse.Namespace) -> int:
        host.request("block_detach", dom=args.domain, dev=args.dev, force=args.force)
        return 0

    return Command("detach a disk from a domain", add, with_host(body))


def _list() -> Command:
    def add(p: argparse.ArgumentParser) -> None:
        p.add_argument("domains", nargs="+", metavar="DOMAIN", help="domains' names or ids")
        add_host_argument(p)

    def body(host: HostClient, args: argparse.Namespace) -> int:
        disks = host.request("block_list", doms=args.domains)["disks"]
        print(f"{'Vdev':<5} {'BE':<3} {'handle':<6} {'state':<5} {'evt-ch':<6} "
              f"{'ring-ref':<8} {'BE-path':<30}")
        for d in disks:
            print(f"{d['devid']:<5} {0:<3} {d['domid']:<6} {_num(d['state']):<5} "
                  f"{_num(d['evtchn']):<6} {_num(d['ring_ref']):<8} {d['backend']:<30}")
        return 0

    return Command("list a domain's disks", add, with_host(body))


def _num(value: object) -> int:
    return value if isinstance(value, int) else -1


COMMANDS = {"block-attach": _attach(), "block-detach": _detach(), "block-list": _list()}
