"""A domain's part of the store, as a save carries it and a restore puts it back.

Xen's libxl rebuilds the toolstack's nodes of a restored domain from its config and leaves
the guest to write its own again (Linux's xenbus does so on resume). pyxen restores a guest
that never knew it was saved, so the guest's own nodes and its watches travel too: the
subtree /local/domain/ID (node values and permissions, ID rewritten to the new domain's id
wherever it names the domain) and the watches of the guest's ring connection. Nodes the
toolstack writes afresh for the new domain (its name, id, console, store) keep their new
values.
"""

from __future__ import annotations

from typing import Any

from .client import Client
from .errors import XenStoreError
from .perms import parse_perm, perms_to_strings
from .snapshot import SnapshotError, _session_out, restore_session
from .xenstored import XenStored

MAX_NODES = 10_000  # a domain's quota of nodes is 1000 by default


def home(domid: int) -> str:
    return f"/local/domain/{domid}"


def save_domain_nodes(xenstored: XenStored, domid: int) -> dict[str, Any]:
    """The domain's subtree (paths relative to its home) and its ring session's watches."""
    store, prefix = xenstored.store, home(domid)
    with xenstored.lock:
        nodes = {path[len(prefix):]: {"value": node.value.decode("latin-1"),
                                      "perms": perms_to_strings(node.perms)}
                 for path, node in store.nodes.items()
                 if path == prefix or path.startswith(prefix + "/")}
        session = next((s for s in store.sessions if s.domid == domid and not s.closed), None)
        watches = None if session is None else _session_out(session)
    return {"domid": domid, "nodes": nodes, "session": watches}


def _rehome(text: object, old: int, new: int) -> object:
    """A path in the old home names the same place in the new one."""
    if isinstance(text, str) and (text == home(old) or text.startswith(home(old) + "/")):
        return home(new) + text[len(home(old)):]
    return text


def restore_domain_nodes(xenstored: XenStored, domid: int, data: object,
                         connection: Any) -> None:
    """Put a saved subtree under domain `domid`'s home (nodes that exist keep their value)
    and give its ring `connection` the saved watches. ValueError names what is malformed."""
    if not isinstance(data, dict) or not isinstance(data.get("nodes"), dict) or \
            not isinstance(data.get("domid"), int):
        raise ValueError("the saved store data is malformed")
    old, nodes = data["domid"], data["nodes"]
    if len(nodes) > MAX_NODES:
        raise ValueError(f"the saved store data has {len(nodes)} nodes")
    planned = []
    for rel, node in sorted(nodes.items()):  # parents before children
        if not isinstance(rel, str) or (rel and not rel.startswith("/")) or \
                not isinstance(node, dict) or not isinstance(node.get("value"), str) or \
                not isinstance(node.get("perms"), list):
            raise ValueError(f"the saved store node {rel!r} is malformed")
        try:
            perms = [str(parse_perm(p)._replace(domid=domid) if parse_perm(p).domid == old
                         else parse_perm(p)) for p in node["perms"]]
            value = node["value"].encode("latin-1")
        except (XenStoreError, UnicodeEncodeError, TypeError):
            raise ValueError(f"the saved store node {rel!r} is malformed") from None
        planned.append((home(domid) + rel, value, perms))
    with Client.in_process(xenstored, domid=0) as toolstack:
        for path, value, perms in planned:
            try:
                if not toolstack.exists(path):
                    toolstack.write(path, value)
                    toolstack.set_perms(path, perms)
            except XenStoreError as e:
                raise ValueError(f"the saved store node {path}: {e}") from None
    session = data.get("session")
    if session is not None:
        if not isinstance(session, dict) or not isinstance(session.get("watches"), list):
            raise ValueError("the saved store session is malformed")
        watches = [[_rehome(w[0], old, domid), w[1], _rehome(w[2], old, domid)]
                   if isinstance(w, list) and len(w) == 3 else w for w in session["watches"]]
        try:
            restore_session(connection, dict(session, watches=watches))
        except SnapshotError as e:
            raise ValueError(str(e)) from None
