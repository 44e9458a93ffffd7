"""Live migration between two daemons over TCP: `pyxen migrate DOMAIN HOST`.

The target daemon listens when started with `--migrate-listen [ADDR:]PORT`. A connection
carries, as xl's migrate does around libxl's stream, a few lines around the save stream:

    source → target   PYXEN-MIGRATE 1 {"spec": ..., "actions": ...}\\n   the domain's config
    target → source   OK\\n | ERROR why\\n                               room for it here?
    source → target   the save stream (migration/live.py: rounds, then the state)
    target → source   READY\\n | ERROR why\\n                            restored, paused
    source → target   GO\\n                                             the source gave it up
    target → source   DONE\\n                                           running there

The domain is never running on both hosts: the target starts it only on GO, and the
source sends GO only once its copy is stopped for good. Until GO a failure anywhere leaves
the domain running on the source and nothing on the target. After GO without DONE the
source cannot know whether the target runs it: it keeps its copy paused and says so (xl
does the same). The connection is not authenticated (as QEMU's tcp: migration): listen
on a trusted network, or tunnel it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
import time
from typing import TYPE_CHECKING, Any

from pyxen.host.gc_hold import gc_held

if TYPE_CHECKING:
    from pyxen.host.daemon import Host
    from pyxen.host.hosted import HostedDomain

log = logging.getLogger("pyxen.daemon")
BANNER = "PYXEN-MIGRATE 1 "
MAX_LINE = 1 << 20  # the offer: a domain's spec and actions
HANDSHAKE_TIMEOUT = 60.0  # seconds to wait for the other side's next line
CONNECT_TIMEOUT = 20.0
LINK_TIMEOUT_MS = 15_000  # data unacknowledged this long: the link is dead
DEFAULT_PORT = 8002  # xl's migration over ssh has none; QEMU's examples use 4444


class MigrationError(Exception):
    """One line: why the migration did not happen (the domain runs where it was)."""


def recv_line(sock: socket.socket, limit: int = 256) -> str:
    """One line from a blocking socket, byte by byte (what follows is not ours to read)."""
    data = bytearray()
    while len(data) <= limit:
        byte = sock.recv(1)
        if not byte:
            raise MigrationError("the other side closed the connection")
        if byte == b"\n":
            return data.decode(errors="replace")
        data += byte
    raise MigrationError("the other side sent a line that is too long")


def send_line(sock: socket.socket, text: str) -> None:
    sock.sendall(text.encode() + b"\n")


def configure_link(sock: socket.socket) -> None:
    """A dead link must end the migration within seconds, not TCP's minutes: unacknowledged
    data times out (TCP_USER_TIMEOUT), and an idle connection is probed (keepalive), so a
    side waiting to read learns of it too."""
    for level, option, value in ((socket.IPPROTO_TCP, socket.TCP_NODELAY, 1),
                                 (socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1),
                                 (socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, 5),
                                 (socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, 2),
                                 (socket.IPPROTO_TCP, socket.TCP_KEEPCNT, 3),
                                 (socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, LINK_TIMEOUT_MS)):
        sock.setsockopt(level, option, value)


async def _blocking(fn: Any, *args: Any) -> Any:
    return await asyncio.get_running_loop().run_in_executor(None, fn, *args)


def parse_target(text: str, port: int | None) -> tuple[str, int]:
    """HOST, HOST:PORT or [V6]:PORT; `port` (--port) wins over none given."""
    host, sep, tail = text.rpartition(":")
    if sep and tail.isdigit() and (not host.count(":") or host.startswith("[")):
        return host.strip("[]"), int(tail)
    return text.strip("[]"), port or DEFAULT_PORT


# --- the source --------------------------------------------------------------------------
async def migrate_out(host: Host, dom: HostedDomain, target: str, port: int,
                      downtime_ms: float) -> dict[str, Any]:
    """Move `dom` to the daemon at target:port; its figures. MigrationError (one line) if
    it did not move: it then runs on here (or, after GO without DONE, stays paused)."""
    with gc_held():
        return await _migrate_out(host, dom, target, port, downtime_ms)


async def _migrate_out(host: Host, dom: HostedDomain, target: str, port: int,
                       downtime_ms: float) -> dict[str, Any]:
    started = time.monotonic()
    try:
        sock = await _blocking(socket.create_connection, (target, port), CONNECT_TIMEOUT)
    except OSError as e:
        raise MigrationError(f"cannot reach {target}:{port}: {e.strerror or e}") from None
    try:
        configure_link(sock)
        sock.settimeout(HANDSHAKE_TIMEOUT)
        offer = json.dumps(dom.carried_config())
        await _blocking(send_line, sock, BANNER + offer)
        answer = await _blocking(recv_line, sock)
        if answer != "OK":
            raise MigrationError(f"{target} refused the domain: {answer.removeprefix('ERROR ')}")
        sock.settimeout(None)  # the stream takes as long as it takes
        try:
            sent = await dom.migrate_send(sock.fileno(), downtime_ms)
        except RuntimeError as e:
            raise MigrationError(str(e)) from None
        sent_at = time.monotonic()
        sock.settimeout(HANDSHAKE_TIMEOUT * 5)  # the target builds the domain meanwhile
        try:
            answer = await _blocking(recv_line, sock)
        except (OSError, MigrationError) as e:
            dom.migrate_resume()
            raise MigrationError(f"{target} did not restore the domain: {e}") from None
        if answer != "READY":
            dom.migrate_resume()
            raise MigrationError(f"{target} did not restore the domain: "
                                 f"{answer.removeprefix('ERROR ')}")
        ready_at = time.monotonic()
        sock.settimeout(HANDSHAKE_TIMEOUT)
        try:
            await _blocking(send_line, sock, "GO")
            answer = await _blocking(recv_line, sock)
        except (OSError, MigrationError) as e:
            answer = f"no answer ({e})"
        if answer != "DONE":
            raise MigrationError(f"{target} was told to run the domain but did not confirm "
                                 f"({answer}); it stays paused here: check {target}, then "
                                 f"destroy one copy")
        done_at = time.monotonic()
        paused_at = dom.migration_paused_at or done_at
        downtime = done_at - paused_at
    except OSError as e:
        if dom.migration_paused_at is not None:
            dom.migrate_resume()
        raise MigrationError(f"the connection to {target} failed: {e.strerror or e}") from None
    finally:
        sock.close()
    host.say(f"domain {dom.domid} ({dom.name}) migrated to {target}:{port}")
    dom.destroy()
    await dom.gone
    return {"rounds": sent.get("rounds", []), "pages": sent.get("pages", 0),
            "bytes": sent.get("bytes", 0), "predicted_ms": sent.get("predicted_ms", 0),
            "downtime_ms": round(downtime * 1000, 1),
            # where the stop went: the last copy, the target's restore, the handover
            "stop_ms": [round((b - a) * 1000, 1) for a, b in
                        ((paused_at, sent_at), (sent_at, ready_at), (ready_at, done_at))],
            "total_s": round(time.monotonic() - started, 3)}


# --- the target --------------------------------------------------------------------------
class MigrationListener:
    """The target's end: one domain per connection."""

    def __init__(self, host: Host, address: str, port: int) -> None:
        self.host = host
        family = socket.AF_INET6 if ":" in address else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((address, port))
        self.sock.listen(4)
        self.sock.setblocking(False)
        self.address = self.sock.getsockname()
        self._task: asyncio.Task[None] | None = None
        self._connections: set[asyncio.Task[None]] = set()

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._accept())

    async def stop(self) -> None:
        for task in [self._task, *self._connections]:
            if task is not None:
                task.cancel()
        self.sock.close()

    async def _accept(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            conn, peer = await loop.sock_accept(self.sock)
            task = loop.create_task(self._receive(conn, peer))
            self._connections.add(task)
            task.add_done_callback(self._connections.discard)

    async def _receive(self, conn: socket.socket, peer: object) -> None:
        with gc_held():
            await self._receive_held(conn, peer)

    async def _receive_held(self, conn: socket.socket, peer: object) -> None:
        from pyxen.host.daemon import HostError

        dom = None
        configure_link(conn)
        conn.setblocking(True)
        conn.settimeout(HANDSHAKE_TIMEOUT)
        try:
            offer = await _blocking(recv_line, conn, MAX_LINE)
            spec, actions = _offer(offer)
            self.host.check_new_domain(spec)
            await _blocking(send_line, conn, "OK")
            conn.settimeout(None)
            dom = await self.host.create(spec, actions, paused=True, restore_fd=conn.fileno())
            conn.settimeout(HANDSHAKE_TIMEOUT)
            await _blocking(send_line, conn, "READY")
            if await _blocking(recv_line, conn) != "GO":
                raise MigrationError("the source did not hand the domain over")
            dom.unpause()
            with contextlib.suppress(OSError):
                await _blocking(send_line, conn, "DONE")
            self.host.say(f"domain {dom.domid} ({dom.name}) migrated in from {peer}")
        except (MigrationError, HostError, OSError) as e:
            why = str(e) if not isinstance(e, OSError) else (e.strerror or str(e))
            log.warning("incoming migration from %s: %s", peer, why)
            with contextlib.suppress(OSError):
                await _blocking(send_line, conn, f"ERROR {why}")
            if dom is not None:
                dom.destroy()
                await dom.gone
        finally:
            conn.close()


def carried_config(data: object) -> tuple[dict[str, Any], dict[str, str]] | None:
    """The spec (its domid only as a wish) and on_* actions of a domain as a save file or a
    migration carries them, {"spec": ..., "actions": ...}; None if `data` is not that."""
    spec = data.get("spec") if isinstance(data, dict) else None
    actions = data.get("actions") if isinstance(data, dict) else None
    if not isinstance(spec, dict) or not isinstance(actions, dict) or \
            not all(isinstance(v, str) for v in actions.values()):
        return None
    carried = {k: v for k, v in spec.items() if k not in ("domid", "prefer_domid")}
    domid = spec.get("domid")
    if isinstance(domid, int) and not isinstance(domid, bool):
        carried["prefer_domid"] = domid  # kept where free (create checks it)
    return carried, actions


def _offer(line: str) -> tuple[dict[str, Any], dict[str, str]]:
    if not line.startswith(BANNER):
        raise MigrationError("not a pyxen migration (or another version of it)")
    try:
        carried = carried_config(json.loads(line[len(BANNER):]))
    except ValueError:
        raise MigrationError("the offered domain config is not JSON") from None
    if carried is None:
        raise MigrationError("the offered domain config is malformed")
    return carried
