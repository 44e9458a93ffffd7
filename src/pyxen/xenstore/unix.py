"""Unix socket transport: every client of the socket is a privileged (dom0) connection.

asyncio Protocol based, no streams: bytes go straight to `Connection.feed`, and all the
replies produced by one read leave in a single write.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import stat
import threading

from pyxen.xenstore.connection import Connection
from pyxen.xenstore.xenstored import XenStored

log = logging.getLogger("pyxen.xenstore")


class _ClientProtocol(asyncio.Protocol):
    def __init__(self, server: UnixServer) -> None:
        self.server = server
        self.conn: Connection | None = None
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.conn = self.server.xenstored.connect(0, self._write, transport.close)

    def _write(self, data: bytes) -> None:
        # Events for this client may be produced by another thread (an in-process or
        # guest connection): hand them to the loop that owns the transport.
        assert self.transport is not None
        if threading.get_ident() == self.server.loop_thread:
            self.transport.write(data)
        else:
            assert self.server.loop is not None
            self.server.loop.call_soon_threadsafe(self.transport.write, data)

    def data_received(self, data: bytes) -> None:
        assert self.conn is not None
        self.conn.feed(data)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.conn is not None:
            self.conn.close()


def prepare_socket_path(path: str) -> None:
    """Remove a stale socket left by a dead daemon; refuse to steal a live one."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise OSError(f"{path} exists and is not a socket")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(path)
    except OSError:
        os.unlink(path)
        return
    finally:
        probe.close()
    raise OSError(f"{path} is in use by a running daemon")


class UnixServer:
    """Serves a XenStored on a Unix socket from an asyncio loop."""

    def __init__(self, xenstored: XenStored, path: str) -> None:
        self.xenstored = xenstored
        self.path = path
        self.loop: asyncio.AbstractEventLoop | None = None
        self.loop_thread = 0
        self._server: asyncio.base_events.Server | None = None

    async def start(self) -> None:
        """Bind and listen; raises OSError if the path cannot be bound."""
        self.loop = asyncio.get_running_loop()
        self.loop_thread = threading.get_ident()
        prepare_socket_path(self.path)
        parent = os.path.dirname(self.path)
        if parent:
            os.makedirs(parent, exist_ok=True)
        self._server = await asyncio.get_running_loop().create_unix_server(
            lambda: _ClientProtocol(self), self.path, backlog=128
        )
        os.chmod(self.path, 0o600)
        log.info("xenstored listening on %s", self.path)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)


class ThreadedServer:
    """A UnixServer running in a background thread: for tests and embedded use."""

    def __init__(self, path: str, xenstored: XenStored | None = None) -> None:
        self.xenstored = xenstored or XenStored()
        self.server = UnixServer(self.xenstored, path)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name="xenstored", daemon=True)
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._stop: asyncio.Event | None = None

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_until_complete(self._main())

    async def _main(self) -> None:
        self._stop = asyncio.Event()
        try:
            await self.server.start()
        except BaseException as e:  # reported to the starting thread
            self._error = e
            self._ready.set()
            return
        self._ready.set()
        await self._stop.wait()
        await self.server.stop()

    def start(self) -> ThreadedServer:
        self._thread.start()
        self._ready.wait()
        if self._error:
            raise self._error
        return self

    def stop(self) -> None:
        if self._stop is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(timeout=10)

    def __enter__(self) -> ThreadedServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
