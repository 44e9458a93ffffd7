"""Unix socket transport: every client of the socket is a privileged (dom0) connection.

asyncio Protocol based, no streams: bytes go straight to `Connection.feed`, and all the
replies produced by one read leave in a single write.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import socket
import stat
import threading

from pyxen.threads import start_worker
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


# sun_path holds 108 bytes with the terminating NUL (Linux's UNIX_PATH_MAX).
MAX_SOCKET_PATH = 107


def check_socket_path(path: str) -> None:
    """What any Unix socket path must be: non-empty and short enough for sun_path.

    ValueError otherwise; checked before anything is created, so the error names the path
    instead of surfacing from deep inside asyncio."""
    if not path:
        raise ValueError("the socket path is empty")
    if len(os.fsencode(path)) > MAX_SOCKET_PATH:
        raise ValueError(f"the socket path {path} is longer than {MAX_SOCKET_PATH} bytes "
                         f"(the limit of a Unix socket address)")


def socket_path_arg(text: str) -> str:
    """argparse type for a socket path option (bad usage: exit 2 with argparse's message)."""
    try:
        check_socket_path(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return text


def prepare_socket_path(path: str) -> None:
    """Check a path can be served: its directory must exist (it is never created, so a typo
    does not leave directories behind); a stale socket left by a dead daemon is removed, a
    live one is not stolen. OSError with a readable message otherwise."""
    try:
        check_socket_path(path)
    except ValueError as e:
        raise OSError(str(e)) from None
    parent = os.path.dirname(path) or "."
    if not os.path.isdir(parent):
        if os.path.exists(parent):
            raise OSError(f"{parent} is not a directory")
        raise OSError(f"no such directory: {parent}")
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
        self._server = await asyncio.get_running_loop().create_unix_server(
            lambda: _ClientProtocol(self), self.path, backlog=128
        )
        try:
            os.chmod(self.path, 0o600)
        except BaseException:
            await self.stop()
            raise
        log.info("xenstored listening on %s", self.path)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)


class ThreadedServer:
    """A UnixServer running in a background thread: for tests and embedded use.

    `stop()` works at any moment, even while `start()` is still waiting for the bind (an
    exception such as a stop signal can interrupt that wait): the request is queued on the
    loop, which then stops the server and removes the socket before its thread ends."""

    def __init__(self, path: str, xenstored: XenStored | None = None) -> None:
        self.xenstored = xenstored or XenStored()
        self.server = UnixServer(self.xenstored, path)
        self._loop = asyncio.new_event_loop()
        self._stopped = self._loop.create_future()
        self._thread = threading.Thread(target=self._run, name="xenstored", daemon=True)
        self._ready = threading.Event()
        self._error: BaseException | None = None

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(self._main())
        finally:
            self._loop.close()

    async def _main(self) -> None:
        try:
            await self.server.start()
        except BaseException as e:  # reported to the starting thread
            self._error = e
            self._ready.set()
            return
        self._ready.set()
        try:
            await self._stopped
        finally:
            await self.server.stop()

    def _request_stop(self) -> None:
        if not self._stopped.done():
            self._stopped.set_result(None)

    def start(self) -> ThreadedServer:
        start_worker(self._thread)
        try:
            self._ready.wait()
        except BaseException:
            self.stop()
            raise
        if self._error:
            raise self._error
        return self

    def stop(self) -> None:
        if self._thread.ident is None:
            return  # never started
        with contextlib.suppress(RuntimeError):  # the loop has already finished
            self._loop.call_soon_threadsafe(self._request_stop)
        self._thread.join(timeout=10)
        if self._thread.is_alive():  # wedged: still leave no socket behind
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.server.path)

    def __enter__(self) -> ThreadedServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
