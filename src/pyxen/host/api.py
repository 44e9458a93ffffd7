"""The daemon's API: one JSON request per line on a Unix socket, one JSON reply per line.

    → {"op": "list"}
    ← {"ok": true, "domains": [...]}
    ← {"ok": false, "error": "one line", "status": 1}

`console` is the one request that changes the stream: after its reply, the connection
carries the domain's console output to the client and the client's bytes to the guest, raw,
until either side closes. `wait` answers when the domain has been destroyed."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import os
import platform
import socket
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from pyxen import __version__
from pyxen.domain.builder import ImageError, check_name
from pyxen.host import sched
from pyxen.host.wire import Message, WireError, decode, encode
from pyxen.xenstore.client import Client

if TYPE_CHECKING:
    from pyxen.host.daemon import Host
    from pyxen.host.hosted import HostedDomain

log = logging.getLogger("pyxen.daemon")
MAX_REQUEST = 1 << 20
XEN_VERSION = (4, 17)  # the interface pyxen implements (XENVER_version)
Handler = Callable[["Api", Message], Awaitable[Message]]
HANDLERS: dict[str, Handler] = {}
# A long request's interim reports ({"progress": {...}} lines before its reply), for a client
# that asked with "progress": true; None otherwise.
PROGRESS: contextvars.ContextVar[Callable[[Message], None] | None] = \
    contextvars.ContextVar("progress", default=None)
# requests that change nothing a restarted daemon must know (the others make the host save)
READ_ONLY = frozenset({"list", "wait", "domid", "domname", "dmesg", "info", "vcpu_list",
                       "top", "handover"})


def handler(name: str) -> Callable[[Handler], Handler]:
    def register(fn: Handler) -> Handler:
        HANDLERS[name] = fn
        return fn

    return register


def _object(msg: Message, key: str) -> dict[str, Any]:
    """A request's JSON object field (absent: empty); HostError if it is something else."""
    from pyxen.host.daemon import HostError

    value = msg.get(key) or {}
    if not isinstance(value, dict):
        raise HostError(f"{key}: a JSON object expected, not {type(value).__name__}")
    return dict(value)


def _absolute_path(msg: Message) -> str:
    """A request's file: absolute (the daemon's working directory is not the client's)."""
    from pyxen.host.daemon import HostError

    path = msg.get("path")
    if not isinstance(path, str) or not path.startswith("/") or "\0" in path:
        raise HostError(f"{msg.get('op')}: the file must be an absolute path")
    return path


class Api:
    """The requests, against one Host."""

    def __init__(self, host: Host) -> None:
        self.host = host

    def _dom(self, msg: Message) -> HostedDomain:
        return self.host.lookup(msg.get("dom", ""))

    @handler("create")
    async def create(self, msg: Message) -> Message:
        dom = await self.host.create(_object(msg, "spec"), _object(msg, "actions"),
                                     paused=bool(msg.get("paused")))
        return {"domid": dom.domid, "name": dom.name}

    @handler("save")
    async def save(self, msg: Message) -> Message:
        return await self.host.save(self._dom(msg), _absolute_path(msg),
                                    checkpoint=bool(msg.get("checkpoint")),
                                    paused=bool(msg.get("paused")))

    @handler("restore")
    async def restore(self, msg: Message) -> Message:
        dom = await self.host.restore(_absolute_path(msg), paused=bool(msg.get("paused")))
        return {"domid": dom.domid, "name": dom.name}

    @handler("migrate")
    async def migrate(self, msg: Message) -> Message:
        from pyxen.host.daemon import HostError
        from pyxen.host.migrate import Target

        target, port, downtime = msg.get("host"), msg.get("port"), msg.get("downtime_ms", 100)
        along, ssh, paused = msg.get("with", []), msg.get("ssh"), msg.get("paused", False)
        if not isinstance(target, str) or not target or \
                not (port is None or isinstance(port, int) and 0 < port < 65536) or \
                not isinstance(downtime, (int, float)) or not 0 < downtime < 1e7 or \
                not isinstance(along, list) or \
                not all(isinstance(d, (str, int)) for d in along) or \
                not (ssh is None or isinstance(ssh, str)) or not isinstance(paused, bool):
            raise HostError("migrate: a HOST, a port 1-65535, a downtime in ms, a list of "
                            "domains to go with it, an ssh command and whether to leave it "
                            "paused expected")
        if ssh is not None and port is not None:
            raise HostError("migrate: --port is for TCP; through ssh there is none")
        where = Target(target, port, ssh)
        if not 0 < where.port < 65536 and ssh is None:
            raise HostError(f"migrate: {where.port} is not a port (1-65535)")
        doms = [self._dom(msg), *(self.host.lookup(d) for d in along)]
        return await self.host.migrate(doms, where, float(downtime), PROGRESS.get(), paused)

    @handler("list")
    async def list_(self, msg: Message) -> Message:
        doms = [self.host.domain0_info()]
        for _, dom in sorted(self.host.domains.items()):
            info = self.host.domain_info(dom)
            if msg.get("live"):  # xl list -l: the config as it is now
                info["live"] = sched.live_config(self.host.xenstored, dom)
            doms.append(info)
        return {"domains": doms}

    @handler("destroy")
    async def destroy(self, msg: Message) -> Message:
        dom = self._dom(msg)
        dom.destroy()
        await dom.gone
        return {}

    @handler("pause")
    async def pause(self, msg: Message) -> Message:
        self._dom(msg).pause()
        return {}

    @handler("unpause")
    async def unpause(self, msg: Message) -> Message:
        self._dom(msg).unpause()
        return {}

    @handler("shutdown")
    async def shutdown(self, msg: Message) -> Message:
        """libxl_domain_shutdown/reboot for a PV-aware guest: ask through control/shutdown;
        the guest decides (xl's -w waits for it with `wait`)."""
        from pyxen.host.daemon import HostError

        dom = self._dom(msg)
        if dom.state in ("s", "c", "d"):
            raise HostError(f"domain {dom.domid} is already shut down")
        request = "reboot" if msg.get("reboot") else "poweroff"
        xs = Client.in_process(self.host.xenstored, domid=0)
        try:
            xs.write(f"/local/domain/{dom.domid}/control/shutdown", request)
        finally:
            xs.close()
        return {"domid": dom.domid}

    @handler("wait")
    async def wait(self, msg: Message) -> Message:
        """Answer once the domain has shut down (as `xl shutdown -w` waits) or, with
        "gone", once it has been destroyed (as `xl create -F` waits)."""
        dom = self._dom(msg)
        await asyncio.shield(dom.gone if msg.get("gone") else dom.ended)
        return {"domid": dom.domid, "state": dom.state}

    @handler("rename")
    async def rename(self, msg: Message) -> Message:
        from pyxen.host.daemon import HostError

        dom, new = self._dom(msg), str(msg.get("name", ""))
        try:
            check_name(new)
        except ImageError as e:
            raise HostError(str(e)) from None
        if new.isdigit():
            raise HostError(f"'{new}' is not a domain name")
        if new == "Domain-0" or any(d.name == new for d in self.host.domains.values()
                                    if d is not dom):
            raise HostError(f"domain with name {new} already exists")
        dom.name = new
        xs = Client.in_process(self.host.xenstored, domid=0)
        try:
            xs.write(f"/local/domain/{dom.domid}/name", new)
        finally:
            xs.close()
        return {}

    @handler("domid")
    async def domid(self, msg: Message) -> Message:
        if msg.get("dom") == "Domain-0":
            return {"domid": 0}
        return {"domid": self._dom(msg).domid}

    @handler("domname")
    async def domname(self, msg: Message) -> Message:
        if str(msg.get("dom")) == "0":
            return {"name": "Domain-0"}
        return {"name": self._dom(msg).name}

    @handler("dmesg")
    async def dmesg(self, msg: Message) -> Message:
        text = bytes(self.host.dmesg).decode("utf-8", "replace")
        if msg.get("clear"):
            self.host.dmesg.clear()
        return {"text": text}

    @handler("info")
    async def info(self, msg: Message) -> Message:
        return {"host": platform.node(), "release": platform.release(),
                "machine": platform.machine(), "nr_cpus": os.cpu_count() or 1,
                "total_memory": self.host.memory_mib,
                "free_memory": self.host.free_memory_mib(),
                "xen_major": XEN_VERSION[0], "xen_minor": XEN_VERSION[1],
                "xen_extra": f"-pyxen{__version__}", "xen_caps": "hvm-3.0-x86_64",
                "uptime": time.time() - self.host.started, "domains": len(self.host.domains),
                "pid": os.getpid()}

    @handler("handover")
    async def handover(self, msg: Message) -> Message:
        """`pyxen daemon --replace`: this daemon saves its state and exits once this reply
        is out, leaving its domains running for the new one."""
        stopping = self.host.stopping
        if not stopping.done():
            # the reply is written (to the socket's buffer) before the loop runs this
            asyncio.get_running_loop().call_soon(lambda: stopping.done() or
                                                 stopping.set_result("handover"))
        return {"pid": os.getpid()}


class ApiServer:
    """Serves Api on a Unix socket from the daemon's loop."""

    def __init__(self, host: Host, path: str) -> None:
        self.api = Api(host)
        self.path = path
        self._server: asyncio.base_events.Server | None = None
        self._clients: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_unix_server(self._client, self.path,
                                                       limit=MAX_REQUEST)
        os.chmod(self.path, 0o600)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        clients = list(self._clients)
        for task in clients:
            task.cancel()
        await asyncio.gather(*clients, return_exceptions=True)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._clients.add(task)
        try:
            await self._serve(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass
        except asyncio.CancelledError:  # stop(): the daemon is going; a client just goes too
            pass
        finally:
            self._clients.discard(task)
            writer.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        from pyxen.host.daemon import HostError

        while True:
            try:
                line = await reader.readline()
            except ValueError:  # no newline within MAX_REQUEST: the stream cannot be framed
                writer.write(encode({"ok": False, "status": 1, "error": "a request line is "
                                     f"limited to {MAX_REQUEST} bytes"}) + b"\n")
                await writer.drain()
                return
            if not line:
                return
            msg: Message = {}
            try:
                msg = decode(line)
                op = str(msg.get("op"))
                if op == "console":  # the requests that turn the stream into bytes
                    await self._console(msg, reader, writer)
                    return
                if op == "migrate_receive":
                    await self._migrate_receive(writer)
                    return
                fn = HANDLERS.get(op)
                if fn is None:
                    raise HostError(f"unknown request {op!r}")
                PROGRESS.set((lambda update: writer.write(encode({"progress": update}) + b"\n"))
                             if msg.get("progress") is True else None)
                reply: Message = {"ok": True, **await fn(self.api, msg)}
                if op not in READ_ONLY:
                    self.api.host.changed()
            except HostError as e:
                reply = {"ok": False, "error": str(e), "status": e.status}
            except WireError as e:
                reply = {"ok": False, "error": str(e), "status": 1}
            except Exception as e:  # a bug of ours: the daemon's log has it, the client a line
                log.exception("the %r request failed", msg.get("op"))
                reply = {"ok": False, "error": f"the daemon failed on this request ({e!r}); "
                         f"its log has the details", "status": 1}
            writer.write(encode(reply) + b"\n")
            await writer.drain()

    async def _migrate_receive(self, writer: asyncio.StreamWriter) -> None:
        """`pyxen migrate-receive` (at the end of a migration's ssh): from the reply on, the
        connection carries an incoming domain, as a TCP connection to --migrate-listen
        does. The client sends nothing before the reply, so nothing is read ahead."""
        from pyxen.host.daemon import HostError
        from pyxen.host.migrate import receive

        sock = writer.get_extra_info("socket")
        if sock is None:
            raise HostError("migrate_receive needs the API socket itself")
        writer.transport.pause_reading()
        writer.write(encode({"ok": True}) + b"\n")
        await writer.drain()
        conn = socket.socket(fileno=os.dup(sock.fileno()))
        writer.close()
        await receive(self.api.host, conn, "migrate-receive")

    async def _console(self, msg: Message, reader: asyncio.StreamReader,
                       writer: asyncio.StreamWriter) -> None:
        """The console session: output to the client, the client's bytes to the guest."""
        dom = self.api._dom(msg)
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[bytes | None] = asyncio.Queue()

        def output(data: bytes) -> None:  # any thread (the console's rate-limit timer)
            loop.call_soon_threadsafe(queue.put_nowait, data)

        writer.write(encode({"ok": True, "domid": dom.domid, "name": dom.name}) + b"\n")
        with dom.tap.lock:
            backlog = bytes(dom.tap.backlog) if msg.get("backlog") else b""
            dom.tap.clients.add(output)
        dom.gone.add_done_callback(lambda _: queue.put_nowait(None))
        if backlog:
            writer.write(backlog)

        async def pump_out() -> None:
            while (data := await queue.get()) is not None:
                writer.write(data)
                await writer.drain()

        async def pump_in() -> None:
            while data := await reader.read(4096):
                console = dom.console
                if console is None:
                    return
                await loop.run_in_executor(None, console.feed, data)

        out_task = loop.create_task(pump_out())
        in_task = loop.create_task(pump_in())
        try:
            await asyncio.wait({out_task, in_task}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            with dom.tap.lock:
                dom.tap.clients.discard(output)
            for task in (out_task, in_task):
                task.cancel()
            with contextlib.suppress(ConnectionError):
                await writer.drain()
