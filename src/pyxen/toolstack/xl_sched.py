"""xl's commands for a running domain's limits: sched-credit, vcpu-list, vcpu-pin, vcpu-set,
mem-set, mem-max, and `top` (xentop). Syntax and output are xl's (Xen 4.17's xl_sched.c,
xl_vcpu.c, xl_mem.c) and xentop's; the daemon applies them (`pyxen.host.sched`)."""

from __future__ import annotations

import argparse
import math
import re
import sys
import time
from collections.abc import Callable
from typing import Any

from pyxen.host.client import HostClient, HostError
from pyxen.host.limits import host_cpus
from pyxen.host.sched import format_cpus
from pyxen.threads import SignalStop

from .xl_common import MAX_TIMEOUT, Command, add_host_argument, domain_argument, with_host
from .xlcfg import parse_cpu_list

POOL = "Pool-0"  # pyxen has one CPU pool, as a Xen host has until cpupools are made
_C_SPACE = " \t\n\v\f\r"


def _usage(message: str) -> HostError:
    return HostError(message, status=1)


# --- sizes and CPU sets as xl writes them ------------------------------------------------------
def parse_mem_size_kb(text: str) -> int | None:
    """xl's parse_mem_size_kb: a decimal number with at most one suffix letter, t/g/m/k/b
    in either case, no suffix meaning MiB; the size in KiB (bytes round down). None for
    what xl calls an invalid memory size; pyxen also refuses what xl would wrap or read
    as 0 (a negative number, no digits at all, more than 2^63 KiB)."""
    m = re.fullmatch(rf"[{_C_SPACE}]*\+?([0-9]+)([tgmkbTGMKB]?)", text)
    if m is None:
        return None
    number, suffix = int(m.group(1)), m.group(2).lower()
    shift = {"t": 30, "g": 20, "": 10, "m": 10, "k": 0, "b": -10}[suffix]
    kib = number << shift if shift >= 0 else number >> -shift
    return kib if kib < 2**63 else None


def format_affinity(cpus: list[int], nr_cpus: int) -> str:
    """xl's print_bitmap: "all" for every CPU of the host, "none" for none, else ranges."""
    if not cpus:
        return "none"
    if set(cpus) == set(range(nr_cpus)):
        return "all"
    return format_cpus(set(cpus))


def _host_cpu_count() -> int:
    return max(host_cpus()) + 1


def _cpu_set(text: str) -> list[int]:
    try:
        cpus = parse_cpu_list(text, _host_cpu_count())
    except ValueError as e:
        raise _usage(str(e)) from None
    if not cpus:
        raise _usage(f"`{text}' selects no CPU")
    return sorted(cpus)


# --- sched-credit ------------------------------------------------------------------------------
CREDIT_HEADER = f"{'Name':<33} {'ID':>4} {'Weight':>6} {'Cap':>4}"


def credit_row(d: dict[str, Any]) -> str:
    return f"{d['name']:<33} {d['domid']:>4} {d['weight']:>6} {d['cap']:>4}"


def _sched_credit_add(p: argparse.ArgumentParser) -> None:
    p.add_argument("-d", "--domain", metavar="DOMAIN", help="the domain to show or set")
    p.add_argument("-w", "--weight", type=int, help="its weight (1 to 65535, default 256)")
    p.add_argument("-c", "--cap", type=int,
                   help="its cap, in percent of one CPU (0: none; at most 100 per vCPU)")
    p.add_argument("-p", "--cpupool", metavar="POOL", help=f"the pool ({POOL}, the only one)")
    p.add_argument("-s", "--schedparam", action="store_true",
                   help="the pool's scheduler parameters (not available: Linux schedules)")
    for short, name in (("-t", "--tslice_ms"), ("-r", "--ratelimit_us"),
                        ("-m", "--migration_delay_us")):
        p.add_argument(short, name, type=int, help=argparse.SUPPRESS)
    add_host_argument(p)


def _sched_credit(host: HostClient, args: argparse.Namespace) -> int:
    setting = args.weight is not None or args.cap is not None
    pool_params = (args.tslice_ms, args.ratelimit_us, args.migration_delay_us)
    if (args.cpupool or args.schedparam) and (args.domain or setting):
        raise _usage("Specifying a cpupool or schedparam is not allowed with domain options.")
    if not args.domain and setting:
        raise _usage("Must specify a domain.")
    if not args.schedparam and any(v is not None for v in pool_params):
        raise _usage("Must specify schedparam to set schedule parameter values.")
    if args.cpupool and args.cpupool not in (POOL, "0"):
        raise _usage(f"unknown cpupool '{args.cpupool}'")
    if args.schedparam:
        if any(v is not None for v in pool_params):
            raise _usage("pyxen cannot set the credit scheduler's tslice, ratelimit or "
                         "migration delay: the host's Linux scheduler has its own")
        print(f"Cpupool {POOL}: [sched params unavailable]")
        return 0
    if not args.domain:
        rows = host.request("sched_credit")["domains"]
        print(f"Cpupool {POOL}: [sched params unavailable]")
        print(CREDIT_HEADER)
        for row in rows:
            print(credit_row(row))
        return 0
    if setting:
        host.request("sched_credit", dom=args.domain, weight=args.weight, cap=args.cap)
        return 0
    row = host.request("sched_credit", dom=args.domain)["domains"][0]
    print(CREDIT_HEADER)
    print(credit_row(row))
    return 0


# --- vcpu-list, vcpu-pin, vcpu-set ------------------------------------------------------------
VCPU_HEADER = (f"{'Name':<32} {'ID':>5} {'VCPU':>5} {'CPU':>5} {'State':>5} {'Time(s)':>9} "
               "Affinity (Hard / Soft)")


def vcpu_row(v: dict[str, Any], nr_cpus: int) -> str:
    """One line of xl vcpu-list: an offline vCPU shows '-' for its CPU and 'p' in State."""
    row = f"{v['name']:<32} {v['domid']:>5} {v['vcpu']:>5}"
    if not v["online"]:
        row += f" {'-':>5} {'-':>3}-p "
    else:
        cpu = "-" if v["cpu"] is None else v["cpu"]
        row += (f" {cpu:>5} {'r' if v['running'] else '-':>3}"
                f"{'b' if v['blocked'] else '-'}- ")
    row += f"{v['time']:>9.1f}  "
    return row + (f"{format_affinity(v['hard'], nr_cpus)} / "
                  f"{format_affinity(v['soft'], nr_cpus)}")


def _vcpu_list_add(p: argparse.ArgumentParser) -> None:
    p.add_argument("domains", metavar="DOMAIN", nargs="*", help="only these (names or ids)")
    add_host_argument(p)


def _vcpu_list(host: HostClient, args: argparse.Namespace) -> int:
    reply = host.request("vcpu_list", doms=args.domains or None)
    print(VCPU_HEADER)
    for v in reply["vcpus"]:
        print(vcpu_row(v, reply["nr_cpus"]))
    return 0


def _vcpu_pin_add(p: argparse.ArgumentParser) -> None:
    p.add_argument("-f", "--force", action="store_true",
                   help="accepted as xl does (pyxen pins the same way either way)")
    domain_argument(p)
    p.add_argument("vcpu", metavar="VCPU", help="a vCPU number, or 'all'")
    p.add_argument("hard", metavar="CPUS",
                   help="hard affinity, in xl's CPU list syntax (0-3,^1 / all); '-' keeps it")
    p.add_argument("soft", metavar="SOFT", nargs="?",
                   help="soft affinity: only 'all' or '-' (Linux has no soft affinity)")
    add_host_argument(p)


def _vcpu_pin(host: HostClient, args: argparse.Namespace) -> int:
    vcpu: int | None
    if re.fullmatch(r"[0-9]+", args.vcpu):
        vcpu = int(args.vcpu)
    elif args.vcpu == "all":
        if args.force:
            raise _usage("Error: --force and 'all' as VCPU not allowed.")
        vcpu = None
    else:
        raise _usage(f"Error: Invalid argument {args.vcpu} as VCPU.")
    hard = None if args.hard == "-" else _cpu_set(args.hard)
    if args.soft not in (None, "-") and _cpu_set(args.soft) != list(range(_host_cpu_count())):
        raise _usage(f"soft affinity `{args.soft}': pyxen has no soft affinity (Linux schedules "
                     "a thread where its hard affinity allows); give 'all' or '-'")
    host.request("vcpu_pin", dom=args.domain, vcpu=vcpu, cpus=hard)
    return 0


def _vcpu_set_add(p: argparse.ArgumentParser) -> None:
    p.add_argument("-i", "--ignore-host", action="store_true",
                   help="allow more vCPUs than the host has CPUs")
    domain_argument(p)
    p.add_argument("count", metavar="N", help="how many vCPUs the guest should have online")
    add_host_argument(p)


def _vcpu_set(host: HostClient, args: argparse.Namespace) -> int:
    if not re.fullmatch(r"[0-9]+", args.count):
        raise _usage(f"Error: Invalid argument: {args.count!r} is not a number of vCPUs.")
    host.request("vcpu_set", dom=args.domain, count=int(args.count),
                 ignore_host=args.ignore_host)
    return 0


# --- mem-set, mem-max -------------------------------------------------------------------------
def _mem_command(op: str, what: str) -> Command:
    def add(p: argparse.ArgumentParser) -> None:
        domain_argument(p)
        p.add_argument("mem", metavar="MEM",
                       help="a size: a number and t/g/m/k/b (no suffix: MiB)")
        add_host_argument(p)

    def body(host: HostClient, args: argparse.Namespace) -> int:
        kib = parse_mem_size_kb(args.mem)
        if kib is None:
            raise _usage(f"invalid memory size: {args.mem}")
        host.request(op, dom=args.domain, kib=kib)
        return 0

    return Command(what, add, with_host(body))


# --- top --------------------------------------------------------------------------------------
# xentop's columns and their widths; the network and block columns are 0 until pyxen has PV
# devices, and SSID is 0 (no XSM), so that scripts reading xentop -b by column keep working.
TOP_FIELDS = (("NAME", 10), ("STATE", 6), ("CPU(sec)", 10), ("CPU(%)", 6), ("MEM(k)", 10),
              ("MEM(%)", 6), ("MAXMEM(k)", 10), ("MAXMEM(%)", 9), ("VCPUS", 5), ("NETS", 4),
              ("NETTX(k)", 8), ("NETRX(k)", 8), ("VBDS", 4), ("VBD_OO", 8), ("VBD_RD", 8),
              ("VBD_WR", 8), ("VBD_RSECT", 10), ("VBD_WSECT", 10), ("SSID", 4))
CLEAR_SCREEN = "\x1b[H\x1b[2J"


def xentop_state(xl_state: str) -> str:
    """xl list's letters (r b p s <reason> d) in xentop's order: d s b c p r."""
    r, b, p, s, reason, d = (xl_state + "------")[:6]
    return "".join((d if d == "d" else "-", "s" if s == "s" else "-", b if b == "b" else "-",
                    "c" if reason == "c" else "-", p if p == "p" else "-",
                    r if r == "r" else "-"))


def cpu_percent(now: dict[str, Any], before: dict[str, Any] | None) -> float:
    """xentop's CPU(%): CPU time used since the last sample over the time between them."""
    if before is None or now["sampled_ns"] <= before["sampled_ns"]:
        return 0.0
    return 100.0 * (now["cpu_ns"] - before["cpu_ns"]) / (now["sampled_ns"] - before["sampled_ns"])


def top_lines(snapshot: dict[str, Any], previous: dict[int, dict[str, Any]],
              args: argparse.Namespace) -> list[str]:
    """One xentop screen (batch: without the summary): the header, then a line per domain,
    sorted by name as xentop sorts by default."""
    doms = sorted(snapshot["domains"], key=lambda d: d["name"].lower())
    if args.dom0_first:
        doms.sort(key=lambda d: d["domid"] != 0)
    name_width = max([10, *(len(d["name"]) for d in doms)]) if args.full_name else 10
    widths = dict(TOP_FIELDS, NAME=name_width)
    header = " ".join(f"{title:>{widths[title]}}" for title, _ in TOP_FIELDS)
    total = snapshot["total_kib"] or 1
    lines = [] if args.batch else _summary(snapshot)
    for index, d in enumerate(doms):
        if index == 0 or args.repeat_header:
            lines.append(header)
        name = d["name"] if args.full_name else d["name"][:10]
        maxmem = d["maxmem_kib"]
        cells = [f"{name:>{name_width}}", xentop_state(d["state"]),
                 f"{d['cpu_ns'] // 1_000_000_000:>10}",
                 f"{cpu_percent(d, previous.get(d['domid'])):>6.1f}",
                 f"{d['mem_kib']:>10}", f"{100.0 * d['mem_kib'] / total:>6.1f}",
                 f"{'no limit':>10}" if maxmem is None else f"{maxmem:>10}",
                 f"{'n/a':>9}" if maxmem is None else f"{100.0 * maxmem / total:>9.1f}",
                 f"{d['vcpus']:>5}", f"{0:>4}", f"{0:>8}", f"{0:>8}", f"{0:>4}", f"{0:>8}",
                 f"{0:>8}", f"{0:>8}", f"{0:>10}", f"{0:>10}", f"{0:>4}"]
        lines.append(" ".join(cells))
        if args.vcpus:
            lines.append(_vcpu_seconds(d["vcpu_seconds"]))
    return lines


def _vcpu_seconds(seconds: list[float | None]) -> str:
    """xentop -v: "VCPUs(sec): " and each online vCPU's time, five to a line."""
    text = "VCPUs(sec): "
    for index, value in enumerate(seconds):
        if value is None:
            continue
        if index and index % 5 == 0:
            text += "\n        "
        text += f" {index:>2}: {int(value):>10}s"
    return text


def _summary(snapshot: dict[str, Any]) -> list[str]:
    counts = dict.fromkeys(("running", "blocked", "paused", "shutdown", "crashed", "dying"), 0)
    for d in snapshot["domains"]:
        state = xentop_state(d["state"])
        for letter, key in (("r", "running"), ("b", "blocked"), ("p", "paused"),
                            ("s", "shutdown"), ("c", "crashed"), ("d", "dying")):
            if letter in state:
                counts[key] += 1
                break
    total, free = snapshot["total_kib"], snapshot["free_kib"]
    return [f"xentop - {time.strftime('%H:%M:%S')}   Xen {snapshot['xen_version']}",
            f"{len(snapshot['domains'])} domains: {counts['running']} running, "
            f"{counts['blocked']} blocked, {counts['paused']} paused, {counts['crashed']} "
            f"crashed, {counts['dying']} dying, {counts['shutdown']} shutdown ",
            f"Mem: {total}k total, {total - free}k used, {free}k free    "
            f"CPUs: {snapshot['nr_cpus']} @ {snapshot['cpu_mhz']}MHz"]


def _top_add(p: argparse.ArgumentParser) -> None:
    p.add_argument("-b", "--batch", action="store_true",
                   help="batch mode: plain lines, no screen handling")
    p.add_argument("-i", "--iterations", type=int, default=0,
                   help="stop after this many screens (default: until interrupted)")
    p.add_argument("-d", "--delay", type=float, default=3.0,
                   help="seconds between screens (default 3)")
    p.add_argument("-v", "--vcpus", action="store_true", help="also each vCPU's time")
    p.add_argument("-f", "--full-name", action="store_true", help="names not cut to 10")
    p.add_argument("-r", "--repeat-header", action="store_true",
                   help="the header before each domain")
    p.add_argument("-z", "--dom0-first", action="store_true", help="Domain-0 first")
    p.add_argument("-n", "--networks", action="store_true",
                   help="accepted as xentop does (no PV networks yet)")
    p.add_argument("-x", "--vbds", action="store_true",
                   help="accepted as xentop does (no PV block devices yet)")
    add_host_argument(p)


def _top(host: HostClient, args: argparse.Namespace) -> int:
    if not (math.isfinite(args.delay) and 0 <= args.delay <= MAX_TIMEOUT):
        raise _usage(f"-d: the delay must be 0 to {MAX_TIMEOUT} seconds (a year), "
                     f"not {args.delay:g}")
    screen = not args.batch and sys.stdout.isatty()
    previous: dict[int, dict[str, Any]] = {}
    shown = 0
    try:
        while True:
            snapshot = host.request("top")
            text = "\n".join(top_lines(snapshot, previous, args)) + "\n"
            sys.stdout.write((CLEAR_SCREEN if screen else "") + text)
            sys.stdout.flush()
            previous = {d["domid"]: d for d in snapshot["domains"]}
            shown += 1
            if args.iterations > 0 and shown >= args.iterations:
                return 0
            time.sleep(args.delay)
    except SignalStop:  # Ctrl-C or SIGTERM ends top, as it ends xentop: not an error
        return 0


def _command(help_text: str, add: Callable[[argparse.ArgumentParser], None],
             body: Callable[[HostClient, argparse.Namespace], int]) -> Command:
    return Command(help_text, add, with_host(body))


COMMANDS = {
    "sched-credit": _command("show or set the credit weight and cap of domains",
                             _sched_credit_add, _sched_credit),
    "vcpu-list": _command("each vCPU: its CPU, state, time and affinity", _vcpu_list_add,
                          _vcpu_list),
    "vcpu-pin": _command("set which host CPUs a vCPU may run on", _vcpu_pin_add, _vcpu_pin),
    "vcpu-set": _command("how many vCPUs a PV-aware guest should have online",
                         _vcpu_set_add, _vcpu_set),
    "mem-set": _mem_command("mem_set", "set a domain's memory target (the balloon's goal)"),
    "mem-max": _mem_command("mem_max", "set the most memory a domain may hold"),
    "top": _command("the domains' CPU and memory use, refreshed (xentop)", _top_add, _top),
}
