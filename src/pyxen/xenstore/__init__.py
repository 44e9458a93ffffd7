"""pyxen.xenstore: XenStore with Xen 4.17 xenstored semantics.

- `Store`: the database and its operations (synchronous, no I/O).
- `XenStored`: the store plus connections; `connect(domid, write)` attaches any transport.
- `UnixServer` / `ThreadedServer`: the Unix socket transport (clients are dom0).
- `Client`: a synchronous client (socket, or in-process as domain N).
"""

from pyxen.xenstore.client import Client, Transaction, Watcher, WatchEvent
from pyxen.xenstore.connection import Connection
from pyxen.xenstore.errors import XenStoreError
from pyxen.xenstore.quota import Quotas
from pyxen.xenstore.store import Store
from pyxen.xenstore.unix import ThreadedServer, UnixServer
from pyxen.xenstore.xenstored import XenStored

__all__ = [
    "Client",
    "Connection",
    "Quotas",
    "Store",
    "ThreadedServer",
    "Transaction",
    "UnixServer",
    "WatchEvent",
    "Watcher",
    "XenStoreError",
    "XenStored",
]
