"""Client: a synchronous XenStore client, over the Unix socket or in-process as domain N.

Used by the toolstack and the tests. Watch events that arrive while waiting for a reply are
kept for `events()`/`next_event()`; `watch(..., callback=f)` instead runs `f` on its own
connection in a background thread. Failures raise XenStoreError with the Xen errno name.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import queue
import socket
import threading
from collections import deque
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, NamedTuple, Protocol

from pyxen.abi.xs_wire import (
    XS_CONTROL,
    XS_DIRECTORY,
    XS_DIRECTORY_PART,
    XS_ERROR,
    XS_GET_DOMAIN_PATH,
    XS_GET_FEATURE,
    XS_GET_PERMS,
    XS_GET_QUOTA,
    XS_INTRODUCE,
    XS_IS_DOMAIN_INTRODUCED,
    XS_MKDIR,
    XS_READ,
    XS_RELEASE,
    XS_RESET_WATCHES,
    XS_RESUME,
    XS_RM,
    XS_SET_FEATURE,
    XS_SET_PERMS,
    XS_SET_QUOTA,
    XS_SET_TARGET,
    XS_TRANSACTION_END,
    XS_TRANSACTION_START,
    XS_UNWATCH,
    XS_WATCH,
    XS_WATCH_EVENT,
    XS_WRITE,
)
from pyxen.threads import start_worker
from pyxen.xenstore.codec import Framer, Message, encode
from pyxen.xenstore.errors import XenStoreError

if TYPE_CHECKING:
    from pyxen.xenstore.xenstored import XenStored

DEFAULT_PATH = "/var/run/xenstored/socket"


class WatchEvent(NamedTuple):
    path: str
    token: str


class Transport(Protocol):
    def send(self, data: bytes) -> None: ...
    def recv(self, timeout: float | None) -> bytes: ...
    def close(self) -> None: ...
    def clone(self) -> Transport: ...


class SocketTransport:
    def __init__(self, path: str) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self.sock.connect(path)
        except OSError:
            self.sock.close()
            raise

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def recv(self, timeout: float | None) -> bytes:
        self.sock.settimeout(timeout)
        try:
            data = self.sock.recv(65536)
        except TimeoutError:
            raise TimeoutError("no message from xenstored") from None
        if not data:
            raise ConnectionError("xenstored closed the connection")
        return data

    def close(self) -> None:
        self.sock.close()

    def clone(self) -> SocketTransport:
        return SocketTransport(self.path)


class InProcessTransport:
    """A connection of domain `domid` made directly on a XenStored object (no socket)."""

    def __init__(self, xenstored: XenStored, domid: int) -> None:
        self.xenstored, self.domid = xenstored, domid
        self._inbox: queue.Queue[bytes | None] = queue.Queue()
        self.conn = xenstored.connect(domid, self._inbox.put, lambda: self._inbox.put(None))

    def send(self, data: bytes) -> None:
        if self.conn.closed:
            raise ConnectionError("connection closed by xenstored")
        self.conn.feed(data)

    def recv(self, timeout: float | None) -> bytes:
        try:
            data = self._inbox.get(timeout=timeout)
        except queue.Empty:
            raise TimeoutError("no message from xenstored") from None
        if data is None:
            raise ConnectionError("connection closed by xenstored")
        return data

    def close(self) -> None:
        self.conn.close()

    def clone(self) -> InProcessTransport:
        return InProcessTransport(self.xenstored, self.domid)


class Client:
    """Synchronous XenStore client; one request at a time (thread-safe)."""

    def __init__(
        self,
        path: str | None = None,
        *,
        transport: Transport | None = None,
        timeout: float | None = 30.0,
    ) -> None:
        self.path = path or os.environ.get("XENSTORED_PATH", DEFAULT_PATH)
        self.transport: Transport = transport or SocketTransport(self.path)
        self.timeout = timeout
        self._framer = Framer()
        self._pending: deque[Message] = deque()
        self._events: deque[WatchEvent] = deque()
        self._req_ids = itertools.count(1)
        self._lock = threading.RLock()
        self._watchers: list[Watcher] = []

    @classmethod
    def in_process(cls, xenstored: XenStored, domid: int = 0) -> Client:
        """A client acting as domain `domid`, talking to `xenstored` without a socket."""
        return cls(transport=InProcessTransport(xenstored, domid), timeout=5.0)

    # ---- plumbing ----------------------------------------------------------------------

    def close(self) -> None:
        for w in self._watchers:
            w.stop()
        self.transport.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _next_message(self, timeout: float | None) -> Message:
        while not self._pending:
            self._pending.extend(self._framer.feed(self.transport.recv(timeout)))
        return self._pending.popleft()

    def request(self, type_: int, payload: bytes, tx: int = 0) -> bytes:
        """Send one request and return its reply payload (raising XenStoreError)."""
        with self._lock:
            req_id = next(self._req_ids) & 0xFFFFFFFF
            self.transport.send(encode(type_, req_id, tx, payload))
            while True:
                m = self._next_message(self.timeout)
                if m.type == XS_WATCH_EVENT:
                    self._events.append(_event(m.payload))
                    continue
                if m.req_id != req_id:
                    continue
                if m.type == XS_ERROR:
                    raise XenStoreError(m.payload.rstrip(b"\0").decode())
                return m.payload

    # ---- watches -----------------------------------------------------------------------

    def next_event(self, timeout: float | None = None) -> WatchEvent:
        """The next watch event (TimeoutError if none arrives in `timeout` seconds)."""
        with self._lock:
            while not self._events:
                m = self._next_message(timeout)
                if m.type == XS_WATCH_EVENT:
                    self._events.append(_event(m.payload))
            return self._events.popleft()

    def events(self, timeout: float | None = None) -> Iterator[WatchEvent]:
        """Iterate over watch events; stops after `timeout` seconds of silence."""
        while True:
            try:
                yield self.next_event(timeout)
            except TimeoutError:
                return

    def watch(
        self, path: str, token: str = "", callback: Callable[[WatchEvent], None] | None = None
    ) -> Watcher | None:
        """Watch `path` (and below). With a callback, events run it in a background thread
        on a connection of its own; the returned Watcher stops it."""
        if callback is None:
            self.request(XS_WATCH, _strings(path, token or path))
            return None
        other = Client(transport=self.transport.clone(), timeout=self.timeout)
        watcher = Watcher(other, path, token or path, callback)
        self._watchers.append(watcher)
        return watcher

    def unwatch(self, path: str, token: str = "") -> None:
        self.request(XS_UNWATCH, _strings(path, token or path))

    def reset_watches(self) -> None:
        self.request(XS_RESET_WATCHES, b"\0")
        self._events.clear()

    # ---- nodes -------------------------------------------------------------------------

    def read(self, path: str, tx: int = 0) -> bytes:
        return self.request(XS_READ, _strings(path), tx)

    def write(self, path: str, value: bytes | str, tx: int = 0) -> None:
        data = value.encode() if isinstance(value, str) else value
        self.request(XS_WRITE, path.encode() + b"\0" + data, tx)

    def mkdir(self, path: str, tx: int = 0) -> None:
        self.request(XS_MKDIR, _strings(path), tx)

    def rm(self, path: str, tx: int = 0) -> None:
        self.request(XS_RM, _strings(path), tx)

    def ls(self, path: str, tx: int = 0) -> list[str]:
        """Child names of `path` (XS_DIRECTORY, or DIRECTORY_PART when the list is long)."""
        try:
            return _split(self.request(XS_DIRECTORY, _strings(path), tx))
        except XenStoreError as e:
            if e.name != "E2BIG":
                raise
        return self.directory_part(path, tx)

    directory = ls

    def directory_part(self, path: str, tx: int = 0) -> list[str]:
        children: list[str] = []
        offset, gen = 0, None
        while True:
            reply = self.request(XS_DIRECTORY_PART, _strings(path, str(offset)), tx)
            this_gen, _, rest = reply.partition(b"\0")
            if gen is not None and this_gen != gen:  # changed meanwhile: start over
                children, offset = [], 0
            gen = this_gen
            if rest.endswith(b"\0\0") or rest == b"\0":
                children += _split(rest[:-1])
                return children
            children += _split(rest)
            offset += len(rest)

    def get_perms(self, path: str, tx: int = 0) -> list[str]:
        return _split(self.request(XS_GET_PERMS, _strings(path), tx))

    def set_perms(self, path: str, perms: list[str], tx: int = 0) -> None:
        self.request(XS_SET_PERMS, _strings(path, *perms), tx)

    def exists(self, path: str, tx: int = 0) -> bool:
        try:
            self.read(path, tx)
        except XenStoreError as e:
            if e.name == "ENOENT":
                return False
            raise
        return True

    # ---- transactions ------------------------------------------------------------------

    def transaction_start(self) -> int:
        return int(self.request(XS_TRANSACTION_START, b"\0").rstrip(b"\0"))

    def transaction_end(self, tx: int, commit: bool = True) -> None:
        self.request(XS_TRANSACTION_END, b"T\0" if commit else b"F\0", tx)

    def transaction(self) -> Transaction:
        """A transaction as a context manager: commits on success, aborts on exception.

        A conflicting commit raises XenStoreError("EAGAIN"); use `transactions()` or
        `transact()` to retry automatically.
        """
        return Transaction(self)

    def transactions(self, attempts: int = 100) -> Iterator[Transaction]:
        """Retrying transactions: `for t in c.transactions(): with t: ...`.

        Each `with` block commits when it ends; on EAGAIN the loop runs the block again on
        a fresh transaction, otherwise it stops.
        """
        for _ in range(attempts):
            t = Transaction(self, retry=True)
            yield t
            if t.committed:
                return
        raise XenStoreError("EAGAIN", f"transaction still conflicting after {attempts} tries")

    def transact(self, fn: Callable[[Transaction], object], attempts: int = 100) -> object:
        """Run fn(t) in a transaction until it commits without conflict; returns its result."""
        result: object = None
        for t in self.transactions(attempts):
            with t:
                result = fn(t)
        return result

    # ---- domains and daemon ------------------------------------------------------------

    def introduce(self, domid: int, mfn: int, evtchn: int) -> None:
        self.request(XS_INTRODUCE, _strings(str(domid), str(mfn), str(evtchn)))

    def release(self, domid: int) -> None:
        self.request(XS_RELEASE, _strings(str(domid)))

    def resume(self, domid: int) -> None:
        self.request(XS_RESUME, _strings(str(domid)))

    def set_target(self, domid: int, target: int) -> None:
        self.request(XS_SET_TARGET, _strings(str(domid), str(target)))

    def get_domain_path(self, domid: int) -> str:
        return self.request(XS_GET_DOMAIN_PATH, _strings(str(domid))).rstrip(b"\0").decode()

    def is_domain_introduced(self, domid: int) -> bool:
        return self.request(XS_IS_DOMAIN_INTRODUCED, _strings(str(domid))) == b"T\0"

    def control(self, *argv: str) -> str:
        return self.request(XS_CONTROL, _strings(*argv)).rstrip(b"\0").decode()

    def get_feature(self, domid: int | None = None) -> int:
        payload = b"" if domid is None else _strings(str(domid))
        return int(self.request(XS_GET_FEATURE, payload).rstrip(b"\0"))

    def set_feature(self, domid: int, features: int) -> None:
        self.request(XS_SET_FEATURE, _strings(str(domid), str(features)))

    def get_quota(self, name: str, domid: int | None = None) -> int:
        args = (name,) if domid is None else (str(domid), name)
        return int(self.request(XS_GET_QUOTA, _strings(*args)).rstrip(b"\0"))

    def quota_names(self) -> list[str]:
        return self.request(XS_GET_QUOTA, b"").rstrip(b"\0").decode().split()

    def set_quota(self, name: str, value: int, domid: int | None = None) -> None:
        args = (name, str(value)) if domid is None else (str(domid), name, str(value))
        self.request(XS_SET_QUOTA, _strings(*args))


class Transaction:
    """Node operations bound to one transaction id."""

    def __init__(self, client: Client, retry: bool = False) -> None:
        self.client = client
        self.retry = retry
        self.id = 0
        self.committed = False

    def __enter__(self) -> Transaction:
        self.id = self.client.transaction_start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: object, tb: object) -> bool:
        if exc_type is not None:
            with contextlib.suppress(XenStoreError, OSError):
                self.client.transaction_end(self.id, commit=False)
            return False
        try:
            self.client.transaction_end(self.id, commit=True)
        except XenStoreError as e:
            if self.retry and e.name == "EAGAIN":
                return False
            raise
        self.committed = True
        return False

    def read(self, path: str) -> bytes:
        return self.client.read(path, self.id)

    def write(self, path: str, value: bytes | str) -> None:
        self.client.write(path, value, self.id)

    def mkdir(self, path: str) -> None:
        self.client.mkdir(path, self.id)

    def rm(self, path: str) -> None:
        self.client.rm(path, self.id)

    def ls(self, path: str) -> list[str]:
        return self.client.ls(path, self.id)

    def get_perms(self, path: str) -> list[str]:
        return self.client.get_perms(path, self.id)

    def set_perms(self, path: str, perms: list[str]) -> None:
        self.client.set_perms(path, perms, self.id)

    def exists(self, path: str) -> bool:
        return self.client.exists(path, self.id)


class Watcher:
    """A watch whose events run a callback in a background thread."""

    def __init__(
        self, client: Client, path: str, token: str, callback: Callable[[WatchEvent], None]
    ) -> None:
        self.client = client
        self.callback = callback
        self._stopped = threading.Event()
        client.watch(path, token)
        self.thread = threading.Thread(target=self._run, name=f"xs-watch {path}", daemon=True)
        start_worker(self.thread)

    def _run(self) -> None:
        while not self._stopped.is_set():
            try:
                event = self.client.next_event(timeout=0.2)
            except TimeoutError:
                continue
            except (OSError, ConnectionError):
                return
            self.callback(event)

    def stop(self) -> None:
        self._stopped.set()
        if threading.current_thread() is not self.thread:
            self.thread.join(timeout=5)
        self.client.transport.close()


def _strings(*items: str) -> bytes:
    return b"".join(i.encode() + b"\0" for i in items)


def _split(payload: bytes) -> list[str]:
    return [p.decode() for p in payload.split(b"\0")[:-1]]


def _event(payload: bytes) -> WatchEvent:
    parts = payload.split(b"\0")
    return WatchEvent(parts[0].decode(), parts[1].decode() if len(parts) > 1 else "")
