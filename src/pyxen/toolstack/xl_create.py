"""`pyxen create CONFIG [key=value...]`: start a domain on the host, as `xl create`.

The config is read here (errors name the file, line and key), paths are resolved against
the current directory as xl resolves them, and the daemon is asked to build the domain in
a process of its own. -c attaches the console before the guest runs, so nothing it prints
is missed; -p leaves it paused; -F stays until the domain is destroyed."""

from __future__ import annotations

import argparse
import json
import sys
import uuid
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from pyxen.host.client import HostClient

from .xl_common import Command, add_host_argument, with_host
from .xl_console import attach
from .xl_disk import DiskSpec, XlConfigError
from .xlcfg import XlConfig, parse_xl_config

ACTION_KEYS = ("on_poweroff", "on_reboot", "on_crash", "on_watchdog")
MAX_CONFIG_BYTES = 1 << 20


def read_config(path: str | None, overrides: list[str]) -> XlConfig:
    """The config from `path` ("-" or None: stdin), overrides applied."""
    if path in (None, "-"):
        text, source = sys.stdin.read(MAX_CONFIG_BYTES + 1), "<stdin>"
    else:
        source = path
        try:
            with open(path, encoding="utf-8", errors="surrogateescape") as f:
                text = f.read(MAX_CONFIG_BYTES + 1)
        except OSError as e:
            raise XlConfigError(f"cannot read the config: {e.strerror or e}",
                                source=path) from None
    if len(text) > MAX_CONFIG_BYTES:
        raise XlConfigError(f"the config is over {MAX_CONFIG_BYTES} bytes", source=source)
    return parse_xl_config(text, source, overrides)


def domain_spec(cfg: XlConfig) -> dict[str, Any]:
    """What the daemon builds: the config's settings, paths absolute, a UUID chosen."""
    if cfg.kernel is None:
        raise XlConfigError("a PVH domain needs a kernel", source=cfg.source, key="kernel")
    return {
        "name": cfg.name,
        "uuid": uuid.UUID(cfg.uuid).hex if cfg.uuid else uuid.uuid4().hex,
        "kernel": str(Path(cfg.kernel).absolute()),
        "ramdisk": str(Path(cfg.ramdisk).absolute()) if cfg.ramdisk else None,
        "memory": cfg.memory,
        "maxmem": cfg.maxmem,
        "vcpus": cfg.vcpus,
        "maxvcpus": cfg.maxvcpus,
        "cmdline": cfg.cmdline,
        "max_grant_frames": cfg.max_grant_frames,
        "max_event_channels": cfg.max_event_channels,
        "accel": cfg.accel,
        "acpi": cfg.acpi,
        "cap": cfg.cap,
        "cpu_weight": cfg.cpu_weight,
        "cpus": cfg.cpus,
        "cpus_by_vcpu": cfg.cpus_by_vcpu,
        "disks": [absolute_disk(disk, cfg.source) for disk in cfg.disk],
        "vifs": [vif.to_spec() for vif in cfg.vif],
    }


def absolute_disk(disk: DiskSpec, source: str | None = None) -> str:
    """The disk's spec with its target as an absolute path: xl resolves it where xl runs,
    the daemon opens it where the daemon runs."""
    if disk.target:
        disk = replace(disk, target=str(Path(disk.target).absolute()))
    try:
        return disk.to_spec()
    except ValueError as e:
        raise XlConfigError(str(e), source=source, key="disk") from None


def _add(p: argparse.ArgumentParser) -> None:
    p.add_argument("-c", dest="console", action="store_true",
                   help="attach to the console (before the guest's first byte)")
    p.add_argument("-p", dest="paused", action="store_true", help="leave the domain paused")
    p.add_argument("-F", dest="foreground", action="store_true",
                   help="stay until the domain is destroyed")
    p.add_argument("-q", dest="quiet", action="store_true", help="no 'Parsing config' line")
    p.add_argument("-n", dest="dry_run", action="store_true",
                   help="dry run: print the domain's settings as JSON, create nothing")
    p.add_argument("-f", dest="config_file", metavar="FILE", help="the config file")
    p.add_argument("rest", nargs="*", metavar="CONFIG [key=value ...]",
                   help="the config file ('-' for stdin), then settings that override it")
    add_host_argument(p)


def split_arguments(args: argparse.Namespace) -> tuple[str | None, list[str]]:
    """xl's rule: without -f, the first argument without '=' is the config file."""
    rest = list(args.rest)
    path = args.config_file
    if path is None and rest and "=" not in rest[0]:
        path = rest.pop(0)
    return path, rest


def _run(args: argparse.Namespace) -> int:
    path, overrides = split_arguments(args)
    try:
        if not args.quiet:
            print(f"Parsing config from {path or '<stdin>'}", file=sys.stderr)
        cfg = read_config(path, overrides)
        spec = domain_spec(cfg)
    except XlConfigError as e:
        print(f"pyxen: {e}", file=sys.stderr)
        return 1
    for warning in cfg.warnings:
        print(f"pyxen: warning: {warning}", file=sys.stderr)
    actions = {key: getattr(cfg, key) for key in ACTION_KEYS}
    if args.dry_run:
        print(json.dumps({"spec": spec, "actions": actions,
                          "extra": {k: v for k, v in asdict(cfg)["extra"].items()}},
                         indent=4, default=str))
        return 0
    return with_host(lambda host, a: _create(host, a, spec, actions))(args)


def _create(host: HostClient, args: argparse.Namespace, spec: dict[str, Any],
            actions: dict[str, str]) -> int:
    paused = args.paused or args.console
    domid = host.request("create", spec=spec, actions=actions, paused=paused)["domid"]
    if args.console:
        with HostClient(args.host) as session:
            attach(session, str(domid), attached=(
                None if args.paused else lambda: host.request("unpause", dom=str(domid))))
    if args.foreground:
        host.request("wait", dom=str(domid), gone=True)
    return 0


COMMANDS = {"create": Command("create a domain from an xl config", _add, _run)}
