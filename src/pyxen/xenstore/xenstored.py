"""XenStored: the store plus its live connections, independent of any transport.

This is the object the hypervisor holds. A transport asks it for a `Connection` for
domain N (`connect`), feeds that connection the bytes the client sends, and writes out
what the connection gives back. Unix-socket clients are dom0; a guest ring is domain N.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from pyxen.xenstore.connection import Connection, Writer
from pyxen.xenstore.domains import Domain
from pyxen.xenstore.quota import Quotas
from pyxen.xenstore.store import Store, StoreHooks


class XenStored:
    """Thread-safe front of a `Store`: one lock serialises every request."""

    def __init__(
        self,
        quotas: Quotas | None = None,
        on_introduce: Callable[[Domain], None] | None = None,
        on_release: Callable[[int], None] | None = None,
    ) -> None:
        self.lock = threading.RLock()
        self.on_introduce = on_introduce
        self.on_release = on_release
        hooks = StoreHooks(introduce=self._introduced, release=self._released)
        self.store = Store(quotas=quotas or Quotas(), hooks=hooks)
        self.connections: list[Connection] = []
        self.dirty: list[Connection] = []

    def connect(
        self, domid: int, write: Writer, on_close: Callable[[], None] | None = None
    ) -> Connection:
        """A new client connection belonging to domain `domid` (0 = privileged).

        `write(bytes)` receives replies and watch events; `on_close()` is called if the
        daemon drops the client (protocol violation, domain released).
        """
        with self.lock:
            conn = Connection(self, domid, write, on_close)
            self.connections.append(conn)
            return conn

    def flush(self) -> None:
        """Send what every connection has queued (replies, watch events)."""
        dirty, self.dirty = self.dirty, []
        for conn in dirty:
            conn.flush()

    def forget(self, conn: Connection) -> None:
        self.store.close_session(conn.session)
        if conn in self.connections:
            self.connections.remove(conn)

    def _introduced(self, domain: Domain) -> None:
        if self.on_introduce:
            self.on_introduce(domain)

    def _released(self, domid: int) -> None:
        for conn in [c for c in self.connections if c.domid == domid]:
            conn._drop()
        if self.on_release:
            self.on_release(domid)
