"""The xl commands that name a domain and ask one thing of it: destroy, shutdown, reboot,
pause, unpause, rename, domid, domname, uptime; and dmesg and info, about the host."""

from __future__ import annotations

import argparse
import time

from pyxen.host.client import HostClient

from .xl_common import Command, add_host_argument, domain_argument, select_domains, with_host


def _simple(op: str, help_text: str) -> Command:
    def add(p: argparse.ArgumentParser) -> None:
        domain_argument(p)
        add_host_argument(p)

    def body(host: HostClient, args: argparse.Namespace) -> int:
        host.request(op, dom=args.domain)
        return 0

    return Command(help_text, add, with_host(body))


# --- shutdown / reboot ------------------------------------------------------------------------
def _shutdown_command(reboot: bool) -> Command:
    verb = "reboot" if reboot else "shut down"

    def add(p: argparse.ArgumentParser) -> None:
        p.add_argument("-w", "--wait", action="store_true",
                       help=f"wait for the guest to {verb} (or to crash) before returning")
        p.add_argument("-a", "--all", action="store_true", help=f"{verb} every domain")
        p.add_argument("-F", dest="fallback", action="store_true",
                       help="accepted as xl does; PVH guests have no ACPI fallback")
        p.add_argument("domain", metavar="DOMAIN", nargs="?", help="a domain's name or id")
        add_host_argument(p)

    def body(host: HostClient, args: argparse.Namespace) -> int:
        if args.all == bool(args.domain):
            raise_usage("give one DOMAIN or -a")
        if args.all:
            targets = [str(d["domid"]) for d in host.request("list")["domains"] if d["domid"]]
        else:
            targets = [args.domain]
        asked = [host.request("shutdown", dom=t, reboot=reboot)["domid"] for t in targets]
        for domid in asked if args.wait else []:
            print(f"Waiting for domain {domid} to {verb}" if not args.all else
                  f"Waiting for {len(asked)} domains", flush=True)
            host.request("wait", dom=str(domid))
            print(f"Domain {domid} has been shut down, reason code 0" if not reboot else
                  f"Domain {domid} has been rebooted")
        return 0

    return Command(f"ask a domain to {verb} (through control/shutdown)", add, with_host(body))


def raise_usage(message: str) -> None:
    from pyxen.host.client import HostError

    raise HostError(message, status=2)


# --- rename, domid, domname ----------------------------------------------------------------
def _rename() -> Command:
    def add(p: argparse.ArgumentParser) -> None:
        domain_argument(p)
        p.add_argument("new_name", metavar="NEW_NAME")
        add_host_argument(p)

    def body(host: HostClient, args: argparse.Namespace) -> int:
        host.request("rename", dom=args.domain, name=args.new_name)
        return 0

    return Command("rename a domain", add, with_host(body))


def _lookup(op: str, key: str, help_text: str) -> Command:
    def add(p: argparse.ArgumentParser) -> None:
        domain_argument(p)
        add_host_argument(p)

    def body(host: HostClient, args: argparse.Namespace) -> int:
        print(host.request(op, dom=args.domain)[key])
        return 0

    return Command(help_text, add, with_host(body))


# --- uptime, dmesg, info --------------------------------------------------------------------
def _uptime() -> Command:
    def add(p: argparse.ArgumentParser) -> None:
        p.add_argument("-s", dest="short", action="store_true", help="short format (no header)")
        p.add_argument("domains", metavar="DOMAIN", nargs="*")
        add_host_argument(p)

    def body(host: HostClient, args: argparse.Namespace) -> int:
        doms = select_domains(host.request("list")["domains"], args.domains)
        now = time.time()
        if not args.short:
            print(f"{'Name':<32} {'ID':>5} Uptime")
        for d in doms:
            print(f"{d['name']:<32} {d['domid']:>5} {format_uptime(now - d['created'])}")
        return 0

    return Command("how long each domain has been up", add, with_host(body))


def format_uptime(seconds: float) -> str:
    """xl's uptime format: "[N days, ]H:MM:SS"."""
    s = int(seconds)
    days, s = divmod(s, 86400)
    hours, s = divmod(s, 3600)
    minutes, s = divmod(s, 60)
    clock = f"{hours}:{minutes:02d}:{s:02d}"
    return f"{days} day{'s' if days != 1 else ''}, {clock}" if days else clock


def _dmesg() -> Command:
    def add(p: argparse.ArgumentParser) -> None:
        p.add_argument("-c", dest="clear", action="store_true", help="clear the buffer after")
        add_host_argument(p)

    def body(host: HostClient, args: argparse.Namespace) -> int:
        print(host.request("dmesg", clear=args.clear)["text"], end="")
        return 0

    return Command("the hypervisor's console (guests' CONSOLEIO_write lines)", add,
                   with_host(body))


INFO_KEYS = ("host", "release", "machine", "nr_cpus", "total_memory", "free_memory",
             "xen_major", "xen_minor", "xen_extra", "xen_caps")


def _info() -> Command:
    def add(p: argparse.ArgumentParser) -> None:
        add_host_argument(p)

    def body(host: HostClient, args: argparse.Namespace) -> int:
        info = host.request("info")
        for key in INFO_KEYS:
            print(f"{key:<23}: {info[key]}")
        print(f"{'xen_version':<23}: {info['xen_major']}.{info['xen_minor']}{info['xen_extra']}")
        return 0

    return Command("the host: CPUs, memory, version", add, with_host(body))


COMMANDS = {
    "destroy": _simple("destroy", "end a domain at once"),
    "pause": _simple("pause", "stop a domain's vCPUs"),
    "unpause": _simple("unpause", "let a paused domain run"),
    "shutdown": _shutdown_command(reboot=False),
    "reboot": _shutdown_command(reboot=True),
    "rename": _rename(),
    "domid": _lookup("domid", "domid", "a domain's id, from its name"),
    "domname": _lookup("domname", "name", "a domain's name, from its id"),
    "uptime": _uptime(),
    "dmesg": _dmesg(),
    "info": _info(),
}
