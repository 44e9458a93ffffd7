"""The daemon's API: JSON request lines from a local client, served by ApiServer._serve.

The bytes are what a client writes on its connection; the requests run against a stand-in
host with one domain (so nothing is started). Expected: one JSON reply line per request,
{"ok": false, "error": one line} for a bad one. A bug: a request that reaches the
daemon's "failed on this request" catch-all (it logs the exception), a reply that is not
one JSON object line, an exception escaping the connection's handler.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any

from fuzz.targets._check import no_logged_errors, require
from pyxen.host import api as api_mod
from pyxen.host.api import MAX_REQUEST, ApiServer
from pyxen.host.daemon import Host, HostError
from pyxen.host.hosted import ConsoleTap
from pyxen.xenstore.xenstored import XenStored

INSTRUMENT = ("pyxen.host.api", "pyxen.host.wire", "pyxen.host.daemon")

LOOP = asyncio.new_event_loop()


class _Tap(ConsoleTap):
    def __post_init__(self) -> None:  # no log file
        pass


class FakeDomain:
    """What the API handlers use of a HostedDomain, doing nothing."""

    def __init__(self, domid: int, name: str) -> None:
        self.domid, self.name, self.state = domid, name, "r"
        self.spec: dict[str, Any] = {"memory": 64, "name": name}
        self.console = None
        self.tap = _Tap(log_path=None)  # type: ignore[arg-type]
        self.gone: asyncio.Future[None] = LOOP.create_future()
        self.gone.set_result(None)
        self.ended = self.gone

    def destroy(self) -> None:
        pass

    def pause(self) -> None:
        pass

    def unpause(self) -> None:
        pass


class FakeHost:
    """What the API uses of a Host: its lookup rule, one domain, a real XenStore."""

    lookup = Host.lookup
    free_memory_mib = Host.free_memory_mib

    def __init__(self) -> None:
        self.memory_mib = 1024
        self.xenstored = XenStored()
        self.domains = {3: FakeDomain(3, "guest")}
        self.dmesg = bytearray(b"(XEN) booted\n")
        self.started = 0.0
        self.stopping: asyncio.Future[int | str] = LOOP.create_future()

    def changed(self) -> None:
        pass

    async def create(self, spec: dict[str, Any], actions: dict[str, str],
                     paused: bool) -> FakeDomain:
        raise HostError("creating domains is not fuzzed")

    async def save(self, dom: FakeDomain, path: str, **_: Any) -> dict[str, Any]:
        raise HostError("saving domains is not fuzzed (fuzz target savestream reads files)")

    async def restore(self, path: str, **_: Any) -> FakeDomain:
        raise HostError("restoring domains is not fuzzed (fuzz target savestream reads files)")

    async def migrate(self, dom: FakeDomain, *_: Any) -> dict[str, Any]:
        raise HostError("migrating domains is not fuzzed")

    def domain_info(self, dom: FakeDomain) -> dict[str, Any]:
        return {"domid": dom.domid, "name": dom.name}

    def domain0_info(self) -> dict[str, Any]:
        return {"domid": 0, "name": "Domain-0"}


class Writer:
    def __init__(self) -> None:
        self.data = bytearray()

    def write(self, data: bytes) -> None:
        self.data += data

    async def drain(self) -> None:
        pass

    def get_extra_info(self, name: str) -> None:
        return None  # no socket: migrate_receive is refused


def _no_live(xenstored: XenStored, dom: FakeDomain) -> dict[str, Any]:
    return {}


async def _serve(data: bytes) -> Writer:
    server = ApiServer.__new__(ApiServer)
    server.api = api_mod.Api(FakeHost())  # type: ignore[arg-type]
    reader = asyncio.StreamReader(limit=MAX_REQUEST)
    reader.feed_data(data)
    reader.feed_eof()
    writer = Writer()
    # what ApiServer._client lets end a connection
    with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError,
                             asyncio.LimitOverrunError):
        await server._serve(reader, writer)  # type: ignore[arg-type]
    return writer


def one_input(data: bytes) -> None:
    live_config, api_mod.sched.live_config = api_mod.sched.live_config, _no_live
    try:
        # the catch-all for a request the daemon failed on logs it: a bug
        with no_logged_errors("pyxen.daemon"):
            writer = LOOP.run_until_complete(_serve(data))
    finally:
        api_mod.sched.live_config = live_config
    text = bytes(writer.data)
    if b'"op":"console"' in text or not text:
        return
    for line in text.split(b"\n")[:-1]:
        if not line.startswith(b"{"):
            break  # a console session's raw bytes follow its reply
        reply = json.loads(line)
        require(isinstance(reply, dict) and "ok" in reply, f"bad reply {line!r}")
        if not reply["ok"]:
            error = reply.get("error")
            require(isinstance(error, str) and "\n" not in error, f"bad error {error!r}")


def seeds() -> list[bytes]:
    requests = [
        {"op": "list"}, {"op": "list", "live": True}, {"op": "info"}, {"op": "dmesg"},
        {"op": "domid", "dom": "guest"}, {"op": "domname", "dom": "3"},
        {"op": "pause", "dom": "3"}, {"op": "unpause", "dom": "guest"},
        {"op": "shutdown", "dom": "3", "reboot": True}, {"op": "wait", "dom": "3"},
        {"op": "rename", "dom": "3", "name": "other"}, {"op": "destroy", "dom": "guest"},
        {"op": "create", "spec": {"name": "x"}, "actions": {}, "paused": True},
        {"op": "nope"}, {"op": "dmesg", "clear": True}, {"op": "handover"},
        {"op": "migrate_receive"},
        {"op": "save", "dom": "3", "path": "/tmp/x.save", "checkpoint": True},
        {"op": "restore", "path": "/tmp/x.save", "paused": True},
        {"op": "migrate", "dom": "guest", "host": "[::1]:8002", "downtime_ms": 20,
         "progress": True},
    ]
    lines = [json.dumps(r).encode() + b"\n" for r in requests]
    return [*lines, b"".join(lines),
            json.dumps({"op": "console", "dom": "3", "backlog": True}).encode() + b"\nraw"]
