"""Connection: one client's byte stream, framed into requests and answered by the store.

Transport-agnostic: it is fed bytes (`feed`) and hands its output to a `write` callable,
so a Unix socket, an in-process test client or (later) a guest's shared ring page with its
event channel all use it the same way. A client that breaks the framing rules is closed;
nobody else notices.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

from pyxen.abi.xs_wire import XS_TRANSACTION_START, XS_WATCH_EVENT, XsdSockmsgType
from pyxen.xenstore.codec import Framer, Message, ProtocolError, encode, encode_error
from pyxen.xenstore.errors import XenStoreError
from pyxen.xenstore.handlers import HANDLERS, PRIVILEGED

if TYPE_CHECKING:
    from pyxen.xenstore.xenstored import XenStored

log = logging.getLogger("pyxen.xenstore")
Writer = Callable[[bytes], None]


class Connection:
    """A client of domain `domid`; create it with `XenStored.connect`."""

    def __init__(
        self,
        xenstored: XenStored,
        domid: int,
        write: Writer,
        on_close: Callable[[], None] | None = None,
    ) -> None:
        self.xenstored = xenstored
        self.domid = domid
        self._write = write
        self._on_close = on_close
        self._framer = Framer()
        self._out: list[bytes] = []
        self.closed = False
        self.session = xenstored.store.open_session(domid, self._event)

    def __repr__(self) -> str:
        return f"<Connection dom{self.domid}{' closed' if self.closed else ''}>"

    def feed(self, data: bytes) -> None:
        """Handle the bytes a client sent; replies and events go out before returning."""
        xsd = self.xenstored
        with xsd.lock:
            if self.closed:
                return
            try:
                messages = self._framer.feed(data)
            except ProtocolError as e:
                log.warning("dom%d: %s; closing its connection", self.domid, e)
                self._drop()
                self._settled()
                return
            for m in messages:
                self._handle(m)
                if self.closed:
                    break
            self._settled()
            xsd.flush()

    def _settled(self) -> None:
        """Let persistence write what the requests changed before any reply says it is done."""
        journal = self.xenstored.store.journal
        if journal is not None:
            journal.batch_end()

    def _handle(self, m: Message) -> None:
        store = self.xenstored.store
        session = self.session
        if store.trace:
            store.trace(f"IN dom{self.domid} {_name(m.type)} {m.payload!r}")
        handler = HANDLERS.get(m.type)
        try:
            if handler is None:
                raise XenStoreError("ENOSYS", f"unknown operation {m.type}")
            if m.type in PRIVILEGED and not store.is_privileged(session):
                raise XenStoreError("EACCES", "privileged operation")
            if m.tx_id and m.tx_id not in session.transactions and m.type != XS_TRANSACTION_START:
                lost = "EAGAIN" if session.restored else "ENOENT"
                raise XenStoreError(lost, f"no transaction {m.tx_id}")
            reply = handler(store, session, m)
        except XenStoreError as e:
            session.deferred.clear()
            self._queue(encode_error(e.name, m.req_id, m.tx_id))
            return
        except Exception:  # a bug must not take the daemon or other clients down
            log.exception("dom%d: internal error on %s", self.domid, _name(m.type))
            session.deferred.clear()
            self._queue(encode_error("EIO", m.req_id, m.tx_id))
            return
        if len(reply) > 4096:
            self._queue(encode_error("E2BIG", m.req_id, m.tx_id))
        else:
            self._queue(encode(m.type, m.req_id, m.tx_id, reply))
        if session.deferred:
            for path, token in session.deferred:
                self._event(path, token)
            session.deferred.clear()

    def _event(self, path: str, token: str) -> None:
        payload = path.encode() + b"\0" + token.encode() + b"\0"
        self._queue(encode(XS_WATCH_EVENT, 0, 0, payload))

    def _queue(self, data: bytes) -> None:
        if not self._out:
            self.xenstored.dirty.append(self)
        self._out.append(data)

    def flush(self) -> None:
        """Write everything queued in one go (called by XenStored.flush)."""
        if self._out and not self.closed:
            data = b"".join(self._out)
            self._out.clear()
            try:
                self._write(data)
            except OSError as e:
                log.info("dom%d: write failed (%s); closing", self.domid, e)
                self._drop()
        else:
            self._out.clear()

    def close(self) -> None:
        """The transport went away: forget the session's watches and transactions."""
        with self.xenstored.lock:
            self._drop(notify=False)

    def _drop(self, notify: bool = True) -> None:
        if self.closed:
            return
        self.closed = True
        self._out.clear()
        self.xenstored.forget(self)
        if notify and self._on_close:
            self._on_close()


def _name(type_: int) -> str:
    try:
        return XsdSockmsgType(type_).name
    except ValueError:
        return f"type {type_}"
