"""XenStore wire input: one client's byte stream (socket) or store ring page (guest) into
a real in-process store.

The first byte picks the client: dom0 (privileged) or guest dom5, over a socket-style
stream (fed in two fragments) or through its shared ring page (the rest of the input is
the page, indices included). Expected: XenStore replies and XS_ERROR replies with a known
errno name, or the connection closed for a broken frame or ring. A bug: an internal error
(the connection logs it and answers EIO), a malformed reply, a node of dom0's changed by
dom5, a store whose tree or ownership counts no longer add up, or a store that no longer
serves another client.
"""

from __future__ import annotations

import struct

from fuzz.targets._check import Bug, no_logged_errors, require
from pyxen.abi.xs_wire import (
    XENSTORE_RING_SIZE,
    XS_DIRECTORY,
    XS_ERROR,
    XS_INTRODUCE,
    XS_MKDIR,
    XS_READ,
    XS_RM,
    XS_SET_PERMS,
    XS_TRANSACTION_END,
    XS_TRANSACTION_START,
    XS_WATCH,
    XS_WATCH_EVENT,
    XS_WRITE,
    XSD_ERROR_NAMES,
    XSDI_REQ_CONS,
)
from pyxen.xenstore.codec import Framer, Message, encode
from pyxen.xenstore.connection import Connection
from pyxen.xenstore.paths import join
from pyxen.xenstore.ring import GuestRing
from pyxen.xenstore.xenstored import XenStored

INSTRUMENT = ("pyxen.xenstore",)

GUEST = 5
HOME = f"/local/domain/{GUEST}"
SECRET = "/local/domain/0/secret"


def _ask(conn: Connection, out: list[bytes], type_: int, *args: bytes | str) -> Message:
    """One request of the well-behaved client; its reply (watch events skipped)."""
    payload = b"".join(a if isinstance(a, bytes) else a.encode() + b"\0" for a in args)
    out.clear()
    conn.feed(encode(type_, 7, 0, payload))
    replies = [m for m in Framer().feed(b"".join(out)) if m.type != XS_WATCH_EVENT]
    require(len(replies) == 1, f"{len(replies)} replies to one request")
    return replies[0]


def _setup(xsd: XenStored) -> tuple[Connection, list[bytes]]:
    """dom0 as a toolstack leaves it: a private node, dom5's home, a watch on everything."""
    out: list[bytes] = []
    admin = xsd.connect(0, out.append)
    for request in ((XS_WRITE, SECRET, b"dom0 only"), (XS_MKDIR, HOME),
                    (XS_SET_PERMS, HOME, f"n{GUEST}"), (XS_INTRODUCE, str(GUEST), "1", "1"),
                    (XS_WRITE, f"{HOME}/name", b"guest"), (XS_WATCH, "/", "all")):
        reply = _ask(admin, out, *request)
        require(reply.type == request[0], f"setup {request}: {reply}")
    return admin, out


def _outside_home(xsd: XenStored) -> dict[str, tuple[bytes, object, tuple[str, ...]]]:
    """The nodes dom5 may not touch: all but its home (which it owns, so may also remove)
    and what is below."""
    return {path: (n.value, n.perms, tuple(c for c in n.children if join(path, c) != HOME))
            for path, n in xsd.store.nodes.items()
            if path != HOME and not path.startswith(HOME + "/")}


def _check_replies(data: bytes, closed: bool) -> None:
    try:
        replies = Framer().feed(data)
    except Exception as e:
        raise Bug(f"the store wrote a malformed frame: {e}") from e
    for m in replies:
        if m.type == XS_ERROR:
            name = m.payload[:-1].decode("ascii", "replace")
            require(m.payload.endswith(b"\0") and name in XSD_ERROR_NAMES,
                    f"bad error reply {m.payload!r}")
            require(name != "EIO" or closed, "EIO: an internal error")


def _check_tree(xsd: XenStored) -> None:
    store = xsd.store
    owned: dict[int, int] = {}
    for path, node in store.nodes.items():
        owned[node.owner] = owned.get(node.owner, 0) + 1
        for child in node.children:
            require(join(path, child) in store.nodes, f"{path} lists a missing child {child}")
        if path != "/":
            parent, _, name = path.rpartition("/")
            parent_node = store.nodes.get(parent or "/")
            require(parent_node is not None and name in parent_node.children,
                    f"{path} is not its parent's child")
    counted = {d: n for d, n in store.owned.items() if n}
    require(counted == owned, f"owned counts {counted} but the tree has {owned}")


def one_input(data: bytes) -> None:
    if data:
        with no_logged_errors("pyxen.xenstore"):  # an internal error: the store logs it
            _one_input(data)


def _one_input(data: bytes) -> None:
    mode, rest = data[0], data[1:]
    domid = 0 if mode & 1 else GUEST
    xsd = XenStored()
    admin, admin_out = _setup(xsd)
    before = _outside_home(xsd)
    out: list[bytes] = []
    if mode & 2:  # the guest's ring page
        page = bytearray(4096)
        page[:len(rest)] = rest[:4096]
        if mode & 4:  # sane indices: the requests are the page's first bytes
            used = min(len(rest), XENSTORE_RING_SIZE)
            struct.pack_into("<II", page, XSDI_REQ_CONS, 0, used)
        ring = GuestRing(xsd, domid, memoryview(page), lambda: None)
        ring.kick()
        conn = ring.conn
    else:
        conn = xsd.connect(domid, out.append)
        cut = rest[0] if rest else 0
        conn.feed(rest[1:cut + 1])
        conn.feed(rest[cut + 1:])
    _check_replies(b"".join(out), conn.closed)
    conn.close()
    _check_tree(xsd)
    require(all(s is admin.session for s in xsd.store.sessions), "a closed session is kept")
    if domid == GUEST:
        after = _outside_home(xsd)
        require(after == before, f"dom{GUEST} changed nodes outside its home: "
                f"{set(after.items()) ^ set(before.items())}")
    # the store still serves: dom0 writes, reads, lists, and uses a transaction
    require(_ask(admin, admin_out, XS_WRITE, "/after", b"ok").type == XS_WRITE, "write")
    require(_ask(admin, admin_out, XS_READ, "/after").payload == b"ok", "read back")
    require(_ask(admin, admin_out, XS_DIRECTORY, "/").type == XS_DIRECTORY, "directory")
    tx = _ask(admin, admin_out, XS_TRANSACTION_START, "")
    require(tx.type == XS_TRANSACTION_START, f"transaction start: {tx}")
    require(_ask(admin, admin_out, XS_RM, "/after").type == XS_RM, "rm")


def seeds() -> list[bytes]:
    def msg(type_: int, *args: str, tx: int = 0, raw: bytes = b"") -> bytes:
        return encode(type_, 1, tx, b"".join(a.encode() + b"\0" for a in args) + raw)

    session = b"".join([
        msg(XS_WRITE, f"{HOME}/data", raw=b"value"), msg(XS_READ, "data"),
        msg(XS_MKDIR, "a/b/c"), msg(XS_DIRECTORY, HOME), msg(XS_WATCH, "a", "tok"),
        msg(XS_TRANSACTION_START, ""), msg(XS_WRITE, "a/x", tx=1, raw=b"1"),
        msg(XS_TRANSACTION_END, "T", tx=1), msg(XS_SET_PERMS, "a", "b5", "r0"),
        msg(XS_RM, "a"), msg(XS_READ, SECRET), msg(99, "x"),
    ])
    ring = session[:XENSTORE_RING_SIZE]
    return [bytes([0, 40]) + session, bytes([1, 0]) + session, bytes([6]) + ring,
            bytes([7]) + ring, bytes([1, 0]) + encode(XS_WRITE, 1, 0, b"x" * 5000)]
