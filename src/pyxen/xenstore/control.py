"""XS_CONTROL commands (xenstore-control): help, log, quota, quota-soft, check, print."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from pyxen.xenstore.codec import atoi
from pyxen.xenstore.errors import XenStoreError
from pyxen.xenstore.quota import Quotas

if TYPE_CHECKING:
    from pyxen.xenstore.store import Store

log = logging.getLogger("pyxen.xenstore")
trace_log = logging.getLogger("pyxen.xenstore.trace")

COMMANDS = {
    "check": "",
    "help": "",
    "log": "[on|off]",
    "print": "<string>",
    "quota": "[set <name> <val>|<domid>]",
    "quota-soft": "[set <name> <val>]",
}


def do_control(store: Store, argv: list[str]) -> bytes:
    if not argv:
        raise XenStoreError("EINVAL", "no control command")
    cmd, rest = argv[0], argv[1:]
    if cmd == "help":
        text = "".join(f"{name} {params}".rstrip() + "\n" for name, params in COMMANDS.items())
    elif cmd == "log":
        text = _log(store, rest)
    elif cmd == "quota":
        text = _quota(store, rest)
    elif cmd == "quota-soft":
        if rest:
            raise XenStoreError("EINVAL", "no soft quotas")
        text = "Quota settings:\n"
    elif cmd == "check":
        text = _check(store)
    elif cmd == "print":
        if len(rest) != 1:
            raise XenStoreError("EINVAL", "print <string>")
        log.info("%s", rest[0])
        text = "OK"
    else:
        raise XenStoreError("EINVAL", f"unknown control command {cmd!r}")
    return text.encode() + b"\0"


def _log(store: Store, rest: list[str]) -> str:
    if rest == ["on"]:
        store.trace = trace_log.info
    elif rest == ["off"]:
        store.trace = None
    elif rest:
        raise XenStoreError("EINVAL", "log [on|off]")
    return "OK" if rest else f"log is {'on' if store.trace else 'off'}\n"


def _quota(store: Store, rest: list[str]) -> str:
    if not rest:
        lines = ["Quota settings:\n"]
        for name in Quotas.NAMES:
            lines.append(f"{name:<17}: {store.quotas.get(name):8d} {Quotas.DESCRIPTIONS[name]}\n")
        return "".join(lines)
    if rest[0] == "set" and len(rest) == 3:
        if rest[1] not in Quotas.NAMES or not rest[2].isdigit():
            raise XenStoreError("EINVAL", f"unknown quota {rest[1]!r}")
        store.set_quota(None, rest[1], int(rest[2]))
        return "OK"
    if len(rest) == 1 and rest[0].isdigit():
        domid = atoi(rest[0])
        if not store.is_domain_introduced(domid):
            raise XenStoreError("ENOENT", f"no domain {domid}")
        return "".join(f"{k:<16}: {v:8d}\n" for k, v in store.usage(domid).items())
    raise XenStoreError("EINVAL", "quota [set <name> <val>|<domid>]")


def _check(store: Store) -> str:
    """Verify parent/child links and owner counts: the C daemon's check_store."""
    counts: dict[int, int] = {}
    for path, node in store.nodes.items():
        counts[node.owner] = counts.get(node.owner, 0) + 1
        for child in node.children:
            child_path = f"/{child}" if path == "/" else f"{path}/{child}"
            if child_path not in store.nodes:
                raise XenStoreError("EIO", f"missing child {child_path}")
    if {k: v for k, v in store.owned.items() if v} != counts:
        raise XenStoreError("EIO", "node accounting is inconsistent")
    return "OK"
