"""The Python client of the host daemon: what the CLI uses, usable from scripts.

    with HostClient() as host:
        domid = host.request("create", spec={...}, actions={...})["domid"]
        for dom in host.request("list")["domains"]: ...
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pyxen.host import paths
from pyxen.host.wire import MAX_MESSAGE, Message, WireError, decode, encode


class HostUnavailable(ConnectionError):
    """No daemon answers on the socket; str() says how to start one."""


class HostError(RuntimeError):
    """The daemon refused a request: str() is its one-line reason, `status` the exit code."""

    def __init__(self, message: str, status: int = 1) -> None:
        super().__init__(message)
        self.status = status


class HostClient:
    def __init__(self, socket_path: str | Path | None = None) -> None:
        self.path = paths.host_socket(str(socket_path) if socket_path else None)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self.sock.connect(str(self.path))
        except (FileNotFoundError, ConnectionRefusedError) as e:
            self.sock.close()
            raise HostUnavailable(
                f"no pyxen daemon at {self.path} ({e.strerror}); start one with "
                f"`pyxen daemon --detach`, or name its socket with --host or "
                f"${paths.HOST_ENV}") from None
        self.rest = b""  # bytes received past the last reply line

    def request(self, op: str, on_progress: Callable[[Message], None] | None = None,
                **args: Any) -> Message:
        """Send one request, return its reply; HostError if the daemon refused it. With
        `on_progress`, a long request's interim reports go there first."""
        if on_progress is not None:
            args["progress"] = True
        self.sock.sendall(encode({"op": op, **args}) + b"\n")
        reply = self._reply()
        while on_progress is not None and "progress" in reply and "ok" not in reply:
            on_progress(reply["progress"])
            reply = self._reply()
        if not reply.get("ok"):
            raise HostError(str(reply.get("error", "refused")), int(reply.get("status", 1)))
        return reply

    def _reply(self) -> Message:
        while b"\n" not in self.rest:
            if len(self.rest) > MAX_MESSAGE:
                raise WireError("the daemon's reply is too long")
            data = self.sock.recv(65536)
            if not data:
                raise WireError("the daemon closed the connection")
            self.rest += data
        line, _, self.rest = self.rest.partition(b"\n")
        return decode(line)

    def console(self, dom: str, backlog: bool = False) -> Message:
        """Turn this connection into `dom`'s console: afterwards `sock` carries raw bytes
        both ways (console output that came with the reply is in `rest`)."""
        return self.request("console", dom=dom, backlog=backlog)

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> HostClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
