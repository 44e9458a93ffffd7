"""`pyxen list`: the host's domains, as `xl list` prints them (and -l as JSON)."""

from __future__ import annotations

import argparse
import json
from typing import Any

from pyxen.host.client import HostClient

from .xl_common import Command, add_host_argument, select_domains, with_host

HEADER = "Name                                        ID   Mem VCPUs\tState\tTime(s)"


def format_row(d: dict[str, Any], verbose: bool = False) -> str:
    row = (f"{d['name']:<40} {d['domid']:>5} {d['memory']:>5} {d['vcpus']:>5}     "
           f"{d['state']}  {d['cpu_time']:>8.1f}")
    if verbose:
        reason = d.get("shutdown_reason")
        row += f" {d['uuid']} {reason:>8x}" if reason is not None else f" {d['uuid']} {'-':>8}"
        row += f" {'-':>16}"  # security label: pyxen has no XSM
    return row


def libxl_json(d: dict[str, Any]) -> dict[str, Any]:
    """A domain as `xl list -l` shows it: its domid and libxl's domain config, with what
    libxl reads back from the running domain (scheduler, memory, online vCPUs) in place of
    the config file's values."""
    spec, actions = d["spec"], d.get("actions", {})
    b_info: dict[str, Any] = {
        "max_vcpus": spec.get("maxvcpus") or spec.get("vcpus", 1),
        "avail_vcpus": list(range(spec.get("vcpus", 1))),
        "max_memkb": (spec.get("maxmem") or spec["memory"]) * 1024,
        "target_memkb": spec["memory"] * 1024,
        "sched_params": {"weight": spec.get("cpu_weight", 256), "cap": spec.get("cap", 0)},
        "max_grant_frames": spec.get("max_grant_frames", 32),
        "event_channels": spec.get("max_event_channels", 1023),
        "kernel": spec["kernel"],
        "cmdline": spec.get("cmdline", ""),
        "type.pvh": {},
    }
    b_info.update(d.get("live") or {})
    if spec.get("ramdisk"):
        b_info["ramdisk"] = spec["ramdisk"]
    config: dict[str, Any] = {"c_info": {"type": "pvh", "name": d["name"], "uuid": d["uuid"]},
                              "b_info": b_info}
    config.update({key: actions[key] for key in
                   ("on_poweroff", "on_reboot", "on_watchdog", "on_crash") if key in actions})
    return {"domid": d["domid"], "config": config}


def _add(p: argparse.ArgumentParser) -> None:
    p.add_argument("-l", "--long", action="store_true", help="JSON, as xl list -l")
    p.add_argument("-v", "--verbose", action="store_true", help="also UUID and reason code")
    p.add_argument("domains", metavar="DOMAIN", nargs="*", help="only these (names or ids)")
    add_host_argument(p)


def _run(host: HostClient, args: argparse.Namespace) -> int:
    doms = select_domains(host.request("list", live=args.long)["domains"], args.domains)
    if args.long:
        print(json.dumps([libxl_json(d) for d in doms if d["domid"]], indent=4))
        return 0
    header = HEADER + ("   UUID                            Reason-Code\tSecurity Label"
                       if args.verbose else "")
    print(header)
    for d in doms:
        print(format_row(d, args.verbose))
    return 0


COMMANDS = {"list": Command("list the host's domains", _add, with_host(_run))}
