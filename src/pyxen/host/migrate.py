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
import os
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
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
COMMAND_EXIT_TIMEOUT = 10.0  # an ssh command's time to end once its connection closes
LINK_TIMEOUT_MS = 15_000  # data unacknowledged this long: the link is dead
MAX_GROUP = 64  # domains migrating together
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
    side waiting to read learns of it too. (Through ssh, the link is ssh's business.)"""
    if sock.family not in (socket.AF_INET, socket.AF_INET6):
        return
    for level, option, value in ((socket.IPPROTO_TCP, socket.TCP_NODELAY, 1),
                                 (socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1),
                                 (socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, 5),
                                 (socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, 2),
                                 (socket.IPPROTO_TCP, socket.TCP_KEEPCNT, 3),
                                 (socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, LINK_TIMEOUT_MS)):
        sock.setsockopt(level, option, value)


async def _blocking(fn: Any, *args: Any) -> Any:
    return await asyncio.get_running_loop().run_in_executor(None, fn, *args)


class Target:
    """Where a migration goes: the daemon at HOST:PORT over TCP (its --migrate-listen), or,
    as xl does it, the stdin and stdout of `SSH_COMMAND HOST pyxen migrate-receive` (run
    by sh; with an empty SSH_COMMAND, HOST is the whole command). Each domain gets a
    connection of its own."""

    def __init__(self, host: str, port: int | None = None,
                 ssh_command: str | None = None) -> None:
        self.ssh_command = ssh_command
        self.host, self.port = (host, 0) if ssh_command is not None else \
            parse_target(host, port)
        self._commands: list[tuple[subprocess.Popen[bytes], Any]] = []

    def __str__(self) -> str:
        return self.host

    @property
    def address(self) -> str:
        return self.host if self.ssh_command is not None else f"{self.host}:{self.port}"

    def connect(self) -> socket.socket:
        if self.ssh_command is None:
            try:
                sock = socket.create_connection((self.host, self.port), CONNECT_TIMEOUT)
            except OSError as e:
                raise MigrationError(f"cannot reach {self.address}: {e.strerror or e}") \
                    from None
            configure_link(sock)
            return sock
        command = f"{self.ssh_command} {self.host} pyxen migrate-receive" \
            if self.ssh_command else self.host
        mine, theirs = socket.socketpair()
        stderr = tempfile.TemporaryFile()  # noqa: SIM115 - read and closed by explain/close
        try:
            proc = subprocess.Popen(["sh", "-c", command], stdin=theirs, stdout=theirs,
                                    stderr=stderr, start_new_session=True)
        except OSError as e:
            mine.close()
            stderr.close()
            raise MigrationError(f"cannot run sh: {e.strerror or e}") from None
        finally:
            theirs.close()
        self._commands.append((proc, stderr))
        return mine

    def explain(self, why: str) -> str:
        """`why`, with what the last command said on its way out (through ssh: why the
        other side went, such as no daemon there)."""
        if not self._commands:
            return why
        proc, stderr = self._commands[-1]
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(COMMAND_EXIT_TIMEOUT)
        stderr.seek(0)
        said = [line.strip() for line in stderr.read().decode(errors="replace").splitlines()
                if line.strip()]
        return f"{why} ({said[-1]})" if said else why

    def close(self) -> None:
        """The commands end with their connections (ssh sees end of file): reaped here."""
        for proc, stderr in self._commands:
            try:
                proc.wait(COMMAND_EXIT_TIMEOUT)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            stderr.close()
        self._commands = []


def parse_target(text: str, port: int | None) -> tuple[str, int]:
    """HOST, HOST:PORT or [V6]:PORT; `port` (--port) wins over none given."""
    host, sep, tail = text.rpartition(":")
    if sep and tail.isdigit() and (not host.count(":") or host.startswith("[")):
        return host.strip("[]"), int(tail)
    return text.strip("[]"), port or DEFAULT_PORT


# --- the source --------------------------------------------------------------------------
@dataclass
class _Move:
    """One domain of a migration, on its own connection."""

    dom: HostedDomain
    sock: socket.socket | None = None
    streaming: bool = False  # its process was asked to send it (and not called off since)
    sent: dict[str, Any] = field(default_factory=dict)
    sent_at: float = 0.0
    ready_at: float = 0.0
    done_at: float = 0.0
    paused_at: float = 0.0


class MigrationGroup:
    """Domains that migrate together stop at one moment, and send their last state only
    once all of them are stopped: a member still running could write into another's pages
    (through a grant) after those were sent. Each says when its own policy would stop
    (`ready`), doing more rounds until all are ready; then all stop, and once all are
    `paused` each sends the rest."""

    def __init__(self, doms: list[HostedDomain]) -> None:
        self.domids = [dom.domid for dom in doms]  # its links to them travel (save.xen_state)
        self.size = len(doms)
        self._ready: list[HostedDomain] = []
        self._paused: list[HostedDomain] = []

    def ready(self, dom: HostedDomain) -> None:
        self._ready.append(dom)
        if len(self._ready) == self.size:
            for member in self._ready:
                member.stop_migration()

    def paused(self, dom: HostedDomain) -> None:
        self._paused.append(dom)
        if len(self._paused) == self.size:
            for member in self._paused:
                member.send_final_part()


async def migrate_out(host: Host, doms: list[HostedDomain], target: Target,
                      downtime_ms: float, paused: bool = False) -> dict[str, Any]:
    """Move `doms` (one domain, or a group that shares event channels and grants, which
    moves together) to the daemon at `target`; the figures, per domain. MigrationError
    (one line) if they did not move: they then run on here (or, after GO without DONE,
    stay paused). With `paused` they stay paused there (xl migrate -p)."""
    with gc_held():
        try:
            return await _migrate_out(host, doms, target, downtime_ms, paused)
        finally:
            await _blocking(target.close)


async def _migrate_out(host: Host, doms: list[HostedDomain], target: Target,
                       downtime_ms: float, paused: bool) -> dict[str, Any]:
    started = time.monotonic()
    moves = [_Move(dom) for dom in doms]
    together = MigrationGroup(doms) if len(doms) > 1 else None
    try:
        for move in moves:
            move.sock = await _offer_domain(move.dom, target, together, paused)
        await _stream_all(moves, downtime_ms, together)
        await _each(moves, lambda m: _ready(m, target))
        handed = await asyncio.gather(*(_hand_over(m, target) for m in moves),
                                      return_exceptions=True)
    except OSError as e:
        _resume_all(moves)
        raise MigrationError(f"the connection to {target} failed: {e.strerror or e}") from None
    finally:
        for move in moves:
            if move.sock is not None:
                move.sock.close()
    for move in moves:
        if move.done_at:  # it runs there
            host.say(f"domain {move.dom.domid} ({move.dom.name}) migrated to {target.address}")
            move.dom.destroy()
            await move.dom.gone
    for failure in handed:
        if isinstance(failure, BaseException):
            raise failure
    figures = []
    for move in moves:
        dom = move.dom
        sent, paused_at = move.sent, move.paused_at
        figures.append({
            "name": dom.name, "rounds": sent.get("rounds", []), "pages": sent.get("pages", 0),
            "bytes": sent.get("bytes", 0), "predicted_ms": sent.get("predicted_ms", 0),
            "downtime_ms": round((move.done_at - paused_at) * 1000, 1),
            # where the stop went: the last copy, the target's restore, the handover
            "stop_ms": [round((b - a) * 1000, 1) for a, b in
                        ((paused_at, move.sent_at), (move.sent_at, move.ready_at),
                         (move.ready_at, move.done_at))]})
    return dict(figures[0], domains=figures, total_s=round(time.monotonic() - started, 3))


async def _offer_domain(dom: HostedDomain, target: Target, together: MigrationGroup | None,
                        paused: bool) -> socket.socket:
    """A connection to the target that has accepted to take `dom`."""
    sock = await _blocking(target.connect)
    try:
        sock.settimeout(HANDSHAKE_TIMEOUT)
        offer = dom.carried_config()
        if together is not None:
            offer["group"] = together.domids
        if paused:
            offer["paused"] = True
        await _blocking(send_line, sock, BANNER + json.dumps(offer))
        answer = await _blocking(recv_line, sock)
    except (MigrationError, OSError) as e:
        sock.close()
        why = f"the connection to {target} failed: {e.strerror or e}" \
            if isinstance(e, OSError) else str(e)
        raise MigrationError(await _blocking(target.explain, why)) from None
    except BaseException:
        sock.close()
        raise
    if answer != "OK":
        sock.close()
        who = "the domain" if together is None else f"domain {dom.name}"
        raise MigrationError(f"{target} refused {who}: {answer.removeprefix('ERROR ')}")
    sock.settimeout(None)  # the stream takes as long as it takes
    return sock


async def _stream_all(moves: list[_Move], downtime_ms: float,
                      together: MigrationGroup | None) -> None:
    """Each domain's pre-copy and stop, side by side."""
    async def stream(move: _Move) -> None:
        assert move.sock is not None
        move.streaming = True
        try:
            move.sent = await move.dom.migrate_send(move.sock.fileno(), downtime_ms, together)
        except RuntimeError as e:
            raise MigrationError(str(e)) from None
        move.sent_at = time.monotonic()
        move.paused_at = move.dom.migration_paused_at or move.sent_at

    await _each(moves, stream)


async def _ready(move: _Move, target: Target) -> None:
    """The target's READY: the domain is restored there, paused."""
    assert move.sock is not None
    move.sock.settimeout(HANDSHAKE_TIMEOUT * 5)  # the target builds the domain meanwhile
    try:
        answer = await _blocking(recv_line, move.sock)
    except (OSError, MigrationError) as e:
        raise MigrationError(f"{target} did not restore domain {move.dom.name}: {e}") from None
    if answer != "READY":
        raise MigrationError(f"{target} did not restore domain {move.dom.name}: "
                             f"{answer.removeprefix('ERROR ')}")
    move.ready_at = time.monotonic()


async def _hand_over(move: _Move, target: Target) -> None:
    """GO, and the target's DONE: it runs there. Without DONE nobody can tell whether it
    does, so the copy here stays paused."""
    assert move.sock is not None
    move.sock.settimeout(HANDSHAKE_TIMEOUT)
    try:
        await _blocking(send_line, move.sock, "GO")
        answer = await _blocking(recv_line, move.sock)
    except (OSError, MigrationError) as e:
        answer = f"no answer ({e})"
    if answer != "DONE":
        raise MigrationError(f"{target} was told to run domain {move.dom.name} but did not "
                             f"confirm ({answer}); it stays paused here: check {target}, "
                             f"then destroy one copy")
    move.done_at = time.monotonic()


async def _each(moves: list[_Move], step: Any) -> None:
    """`step` for every domain at once. When one fails, every domain runs on here at once
    (a group member waiting for the failed one is called off), the others' steps end, and
    the first failure is raised."""
    tasks = [asyncio.ensure_future(step(move)) for move in moves]
    done, running = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
    failed = [task.exception() for task in done if task.exception() is not None]
    if failed:
        _resume_all(moves)
        await asyncio.gather(*running, return_exceptions=True)
        raise failed[0]  # type: ignore[misc]


def _resume_all(moves: list[_Move]) -> None:
    for move in moves:
        if move.streaming:
            move.streaming = False
            move.dom.migrate_resume()


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
            task = loop.create_task(receive(self.host, conn, peer))
            self._connections.add(task)
            task.add_done_callback(self._connections.discard)


async def receive(host: Host, conn: socket.socket, peer: object) -> None:
    """One incoming domain on `conn` (a TCP connection to the listener, or `pyxen
    migrate-receive`'s connection to the API, at the end of an ssh); closes it."""
    with gc_held():
        await _receive(host, conn, peer)


async def _receive(host: Host, conn: socket.socket, peer: object) -> None:
    from pyxen.host.daemon import HostError

    dom = None
    configure_link(conn)
    conn.setblocking(True)
    conn.settimeout(HANDSHAKE_TIMEOUT)
    try:
        offer = await _blocking(recv_line, conn, MAX_LINE)
        spec, actions, group, paused = _offer(offer)
        host.check_new_domain(spec)
        wanted = spec.get("prefer_domid")
        if group is not None and (wanted not in group or wanted in host.domains):
            raise MigrationError(f"domain id {wanted} is taken here, and domains that "
                                 "migrate together keep their ids")
        await _blocking(send_line, conn, "OK")
        conn.settimeout(None)
        dom = await host.create(spec, actions, paused=True, restore_fd=conn.fileno())
        if group is not None and dom.domid != wanted:
            raise MigrationError(f"domain id {wanted} was taken here meanwhile")
        conn.settimeout(HANDSHAKE_TIMEOUT)
        await _blocking(send_line, conn, "READY")
        if await _blocking(recv_line, conn) != "GO":
            raise MigrationError("the source did not hand the domain over")
        if not paused:  # else it runs on `pyxen unpause` (xl migrate -p)
            dom.unpause()
        with contextlib.suppress(OSError):
            await _blocking(send_line, conn, "DONE")
        host.say(f"domain {dom.domid} ({dom.name}) migrated in from {peer}")
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


def _offer(line: str) -> tuple[dict[str, Any], dict[str, str], list[int] | None, bool]:
    """The offered domain's spec and actions, the domids of its group (None: alone), and
    whether it is to stay paused here."""
    if not line.startswith(BANNER):
        raise MigrationError("not a pyxen migration (or another version of it)")
    try:
        data = json.loads(line[len(BANNER):])
    except ValueError:
        raise MigrationError("the offered domain config is not JSON") from None
    carried = carried_config(data)
    group = data.get("group") if isinstance(data, dict) else None
    paused = data.get("paused", False) if isinstance(data, dict) else False
    if carried is None or not isinstance(paused, bool) or group is not None and not (
            isinstance(group, list) and 1 < len(group) <= MAX_GROUP and
            all(isinstance(d, int) and not isinstance(d, bool) for d in group)):
        raise MigrationError("the offered domain config is malformed")
    return (*carried, group, paused)
