"""`pyxen daemon`: the host. What Xen's dom0 toolstack daemons do together, for pyxen.

One per machine (or per --socket): the domain registry and its IDs, the one XenStore of
every domain (Debian's xenstore-* tools work against its socket), the console back end of
every domain with its log, the hypervisor's console buffer (`dmesg`), the on_poweroff /
on_reboot / on_crash / on_watchdog actions, and the API the CLI and `pyxen.host.client`
speak (JSON lines on a Unix socket, `pyxen.host.api`). Each domain runs in its own process
(`pyxen.host.domain_process`), which outlives a daemon that dies or hands over
(`--replace`): the next daemon on the same state directory adopts it, with the XenStore as
it was (`pyxen.host.persist`, `pyxen.xenstore.snapshot`)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import select
import signal
import sys
import time
import uuid
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pyxen.abi.sched import SHUTDOWN_NAMES, SHUTDOWN_crash
from pyxen.host import (  # noqa: F401 - api_sched and devices register their requests
    api_sched,
    containment,
    devices,
    paths,
    persist,
    procstat,
    sched,
)
from pyxen.host.api import ApiServer
from pyxen.host.client import HostClient, HostUnavailable
from pyxen.host.client import HostError as ClientError
from pyxen.host.hosted import HostedDomain, ask_adopt, peer_pid
from pyxen.host.migrate import (
    MigrationError,
    MigrationListener,
    Target,
    carried_config,
    migrate_out,
    parse_target,
)
from pyxen.threads import STOP_SIGNALS
from pyxen.toolstack.console_service import remove_console_nodes
from pyxen.toolstack.xenstore_service import release_domain
from pyxen.xenstore.client import Client
from pyxen.xenstore.snapshot import Persistence, SnapshotError, restore
from pyxen.xenstore.unix import UnixServer, check_socket_path, prepare_socket_path, socket_path_arg
from pyxen.xenstore.xenstored import XenStored

log = logging.getLogger("pyxen.daemon")
DOMID_FIRST_RESERVED = 0x7FF0  # Xen's first special domid: ids run 1 .. this - 1
DMESG_LIMIT = 256 * 1024  # bytes of hypervisor console kept, as Xen's conring (16 KiB+)
ACTIONS = ("destroy", "restart", "preserve", "rename-restart", "coredump-destroy",
           "coredump-restart")
RESTART_WINDOW = 60.0  # seconds: restarts of one name closer than this count as a loop
RESTART_FREE = 2  # restarts in the window before each one waits
RESTART_DELAY_MAX = 60.0


SHUTDOWN_REASONS = {name: code for code, name in SHUTDOWN_NAMES.items()}


class HostError(Exception):
    """A request the host refuses; str() is the one-line reason, `status` xl's exit code."""

    def __init__(self, message: str, status: int = 1) -> None:
        super().__init__(message)
        self.status = status


class Host:
    """The registry and the lifecycle of the host's domains."""

    def __init__(self, state_dir: Path, contain: bool = True,
                 memory_mib: int | None = None) -> None:
        self.state_dir = state_dir
        self.memory_mib = memory_mib or host_memory_mib()  # what the domains get in all
        self.contain = contain  # domain processes contained (containment.py)
        self._said_uncontained = False
        self.xenstored = XenStored()
        self.domains: dict[int, HostedDomain] = {}
        self.dmesg = bytearray()
        self.started = time.time()
        self._rover = 0  # Xen's domid allocator: the last id handed out
        self._restarts: dict[str, deque[float]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._write_dom0_nodes()
        self.persistence = Persistence(self.xenstored, state_dir)
        self.persistence.on_structure = self.changed
        self.stopping: asyncio.Future[int | str] = asyncio.get_running_loop().create_future()
        self._save_pending = False
        self._saving = True  # off while closing: the state then says "no domains"
        self._loop = asyncio.get_running_loop()

    def _write_dom0_nodes(self) -> None:
        xs = Client.in_process(self.xenstored, domid=0)
        try:
            xs.write("/local/domain/0/name", "Domain-0")
            xs.write("/local/domain/0/domid", "0")
        finally:
            xs.close()

    # --- what a restarted daemon takes back ----------------------------------------------------
    def changed(self) -> None:
        """Something a restarted daemon must know has changed: saved once this turn of the
        loop is over (so a burst of changes costs one save). Any thread may call it."""
        if self._save_pending or not self._saving:
            return
        self._save_pending = True
        self._loop.call_soon_threadsafe(self._save)

    def _save(self) -> None:
        self._save_pending = False
        if not self._saving:
            return
        records = [dict(dom.record(), sched=sched.record(dom))
                   for dom in self.domains.values() if dom.introduced and not dom.destroying]
        try:
            persist.save(self.state_dir, self._rover, records)
            self.persistence.save()
        except OSError as e:
            log.warning("cannot save the host's state in %s: %s", self.state_dir, e)

    async def recover(self) -> None:
        """Take back the domains a previous daemon on this state directory left running.
        persist.StateError or SnapshotError (one line) if its record is unusable."""
        saved = persist.load(self.state_dir)
        store = Persistence.load(self.state_dir)
        if saved is None or store is None:
            persist.clear(self.state_dir)
            return
        restore(self.xenstored, store)
        self._rover = saved["rover"]
        sessions = store.get("sessions") or {}
        await asyncio.gather(*(self._adopt(entry, sessions) for entry in saved["domains"]))
        await self._destroy_unfinished({entry["spec"]["domid"] for entry in saved["domains"]})
        old = saved.get("daemon_pid")
        if isinstance(old, int) and old > 0 and procstat.stat_fields(old) is None:
            # the adopted processes have moved to this daemon's groups: the dead daemon's
            # groups (theirs, lost domains', unfinished ones') are empty now. (A daemon that
            # handed over may still be a zombie its parent has not reaped: gone all the same.)
            sched.forget_group(f"pyxen/host{old}")
        self.changed()  # the record now names this daemon's processes and groups

    async def _adopt(self, entry: dict[str, Any], sessions: dict[str, Any]) -> None:
        domid, name = entry["spec"]["domid"], entry.get("name", "?")
        try:
            dom = await HostedDomain.adopt(entry, self.state_dir, self.xenstored, self._stopped,
                                           self._dmesg, sessions.get(str(domid)))
        except (RuntimeError, KeyError, TypeError, ValueError) as e:
            self.say(f"domain {domid} ({name}) did not survive its daemon: {e}")
            self._forget(domid, bytes.fromhex(entry["spec"]["uuid"]))
            return
        self.domains[domid] = dom
        dom.find_domain = self.domains.get
        self._watch_gone(dom)
        sched.adopt(dom, entry.get("sched") or {})
        devices.adopt_devices(self, dom)
        self.say(f"domain {domid} ({name}) adopted (process {dom.pid})")
        log.info("dom%d (%s) adopted", domid, name)
        dom.catch_up()

    def _forget(self, domid: int, handle: bytes | None) -> None:
        """A domain whose process is gone (or never finished): its nodes and its
        introduction go, as when Xen destroys a domain. Without its handle, its /vm entry
        is found through its `vm` node."""
        if handle is None:
            with contextlib.suppress(Exception), Client.in_process(self.xenstored) as xs:
                handle = uuid.UUID(xs.read(f"/local/domain/{domid}/vm").decode()[4:]).bytes
        with contextlib.suppress(Exception):
            remove_console_nodes(self.xenstored, domid)
            release_domain(self.xenstored, domid, handle or bytes(16))
        with contextlib.suppress(OSError):
            (self.state_dir / "domains" / f"{domid}.sock").unlink()

    async def _destroy_unfinished(self, recorded: set[int]) -> None:
        """Domain processes the old daemon was still creating when it died (never recorded
        as created): destroyed, as libxl destroys a domain whose creation failed."""
        directory = self.state_dir / "domains"
        for path in sorted(directory.glob("*.sock")) if directory.is_dir() else []:
            if not path.stem.isdigit() or int(path.stem) in recorded:
                continue
            with contextlib.suppress(RuntimeError):
                pid = await asyncio.get_running_loop().run_in_executor(None, kill_unadopted,
                                                                       str(path))
                self.say(f"domain {path.stem} was still being created by the daemon that "
                          f"died: destroyed (process {pid})")
            self._forget(int(path.stem), None)

    def hand_over(self) -> None:
        """`pyxen daemon --replace`: everything saved, the domains left running for the next
        daemon, which adopts them."""
        self._save()
        self._saving = False
        self.persistence.close()
        for dom in self.domains.values():
            dom.let_go()

    # --- ids and names ---------------------------------------------------------------------
    def allocate_domid(self, prefer: object = None) -> int:
        """As Xen's domain_create: the next free id after the last one given, wrapping; or
        `prefer` if it is free (a restored or migrated domain keeps its id where it can:
        the domains it shares event channels and grants with know it by that id)."""
        if isinstance(prefer, int) and not isinstance(prefer, bool) and \
                0 < prefer < DOMID_FIRST_RESERVED and prefer not in self.domains:
            return prefer
        for _ in range(DOMID_FIRST_RESERVED):
            self._rover = self._rover + 1 if self._rover + 1 < DOMID_FIRST_RESERVED else 1
            if self._rover not in self.domains:
                return self._rover
        raise HostError("no free domain id")

    def lookup(self, ref: str | int) -> HostedDomain:
        """A domain by id (all digits) or by name, as xl's find_domain."""
        text = str(ref)
        if text.isdigit():
            dom = self.domains.get(int(text))
            if dom is None:
                raise HostError(f"domain {text} does not exist" if int(text) else
                                "Domain-0 is the host itself")
            return dom
        for dom in self.domains.values():
            if dom.name == text:
                return dom
        raise HostError(f"'{text}' is an invalid domain identifier")

    # --- save / restore ----------------------------------------------------------------------
    async def save(self, dom: HostedDomain, path: str, checkpoint: bool,
                   paused: bool) -> dict[str, Any]:
        """xl save: the domain written to `path`, then destroyed; with `checkpoint` it runs
        on (paused if `paused`). A failed save leaves the domain running and no file."""
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        except OSError as e:
            raise HostError(f"cannot write {path}: {e.strerror}") from None
        try:
            reply = await dom.save(fd, resume=checkpoint)
        except RuntimeError as e:
            with contextlib.suppress(OSError):
                os.unlink(path)
            raise HostError(str(e)) from None
        finally:
            os.close(fd)
        self.say(f"domain {dom.domid} ({dom.name}) saved to {path}")
        if not checkpoint:
            dom.destroy()
            await dom.gone
        elif paused:
            dom.pause()
        return {"pages": reply.get("pages", 0), "bytes": reply.get("bytes", 0)}

    async def restore(self, path: str, paused: bool) -> HostedDomain:
        """xl restore: the domain in `path` (written by save), under its saved name and
        config and a free id; running unless `paused`."""
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as e:
            raise HostError(f"cannot read {path}: {e.strerror}") from None
        try:
            spec, actions = _saved_config(fd, path)
            return await self.create(spec, actions, paused, restore_fd=fd)
        finally:
            os.close(fd)

    async def migrate(self, doms: list[HostedDomain], target: Target, downtime_ms: float,
                      progress: Callable[[dict[str, Any]], None] | None = None,
                      paused: bool = False) -> dict[str, Any]:
        """pyxen migrate: `doms` (a domain, and those that go with it) moved live to the
        daemon at `target` (see migrate.py); `progress` hears each pre-copy round."""
        if len({dom.domid for dom in doms}) != len(doms):
            raise HostError("migrate: a domain is named twice")
        for dom in doms:
            if progress is not None:
                dom.on_migration_progress = lambda msg, name=dom.name: progress(
                    dict(msg, name=name))
        try:
            return await migrate_out(self, doms, target, downtime_ms, paused)
        except MigrationError as e:
            raise HostError(str(e)) from None
        finally:
            for dom in doms:
                dom.on_migration_progress = lambda msg: None

    # --- lifecycle -------------------------------------------------------------------------
    def free_memory_mib(self) -> int:
        """What xl info calls free_memory: the host's memory for domains, less theirs."""
        return max(0, self.memory_mib - sum(int(d.spec.get("memory") or 0)
                                            for d in self.domains.values()))

    def check_new_domain(self, spec: dict[str, Any]) -> None:
        """A new domain's name is given and no domain has it (as xl's), and the host has
        its memory free (as Xen refuses to build a domain it cannot give its pages)."""
        name = spec.get("name")
        if not isinstance(name, str) or not name:
            raise HostError("the config names no domain (name=)")
        if name == "Domain-0" or any(d.name == name for d in self.domains.values()):
            raise HostError(f"domain with name {name} already exists")
        memory, free = spec.get("memory"), self.free_memory_mib()
        if isinstance(memory, int) and memory > free:
            raise HostError(f"not enough memory for domain {name}: it needs {memory} MiB, "
                            f"the host has {free} MiB free")

    async def create(self, spec: dict[str, Any], actions: dict[str, str], paused: bool,
                     restore_fd: int | None = None) -> HostedDomain:
        self.check_new_domain(spec)
        for key, action in actions.items():
            if action not in ACTIONS:
                raise HostError(f"{key}: unknown action {action!r} (one of {', '.join(ACTIONS)})")
        spec = {k: v for k, v in spec.items() if k != "prefer_domid"} | \
            {"domid": self.allocate_domid(spec.get("prefer_domid"))}
        disks = devices.open_disks(self, _spec_list(spec, "disks"), spec["domid"])
        vifs: list = []

        def close_unused() -> None:  # what was opened and not (yet) given to the domain
            for _, _, disk in disks:
                disk.close()
            for vif in vifs:
                vif.close()

        try:
            # on a thread: pyroute2 runs an event loop of its own
            vifs = await asyncio.get_running_loop().run_in_executor(
                None, devices.open_vifs, _spec_list(spec, "vifs"), spec["domid"])
        except BaseException:
            close_unused()
            raise
        dom = HostedDomain(spec, actions, self.state_dir, self.xenstored, self._stopped,
                           self._dmesg)
        self.domains[dom.domid] = dom
        dom.find_domain = self.domains.get
        dom.contain = self.contain
        self.changed()
        try:
            sched.prepare(dom)
            await dom.launch(restore_fd, (lambda: sched.spawned(dom)) if restore_fd is not None
                             else lambda: None)
            devices.add_disks(self, dom, disks, restored=restore_fd is not None)
            disks = []
            devices.add_vifs(self, dom, vifs, restored=restore_fd is not None)
            vifs = []
            sched.started(dom, self.xenstored)
        except BaseException as e:
            close_unused()
            dom.destroy()
            await dom.gone
            self.domains.pop(dom.domid, None)
            if isinstance(e, RuntimeError):
                raise HostError(str(e)) from None
            raise
        self._watch_gone(dom)
        if not paused:
            dom.unpause()
        log.info("dom%d (%s) created: process %s, containment %s", dom.domid, dom.name,
                 dom.pid, dom.containment)
        self._check_contained(dom)
        return dom

    def _check_contained(self, dom: HostedDomain) -> None:
        """Say once (log and dmesg) when domain processes run uncontained against the
        daemon's wish: a host without libseccomp."""
        if not self.contain or dom.containment == containment.CONTAINED \
                or self._said_uncontained:
            return
        self._said_uncontained = True
        text = f"domain processes run uncontained: {dom.containment}"
        log.warning("%s", text)
        self.say(text)

    def _watch_gone(self, dom: HostedDomain) -> None:
        def forget(_: object) -> None:
            if self.domains.get(dom.domid) is dom:
                del self.domains[dom.domid]
                self.changed()

        dom.gone.add_done_callback(forget)

    def destroy(self, dom: HostedDomain) -> None:
        dom.destroy()

    def _dmesg(self, domid: int, data: bytes) -> None:
        """A guest's CONSOLEIO_write: Xen's console shows it line by line as (dN) ..."""
        self._console_lines(f"(d{domid}) ".encode(), data)

    def say(self, text: str) -> None:
        """The host's own console line, as Xen prints its own: (XEN) ..."""
        self._console_lines(b"(XEN) ", text.encode() + b"\n")

    def _console_lines(self, prefix: bytes, data: bytes) -> None:
        for line in data.splitlines(keepends=True):
            self.dmesg += prefix + line
        del self.dmesg[:-DMESG_LIMIT]

    def _stopped(self, dom: HostedDomain, outcome: str, detail: str) -> None:
        """The domain shut down or crashed: its on_* action, as xl's domain_death handler."""
        key = {"poweroff": "on_poweroff", "reboot": "on_reboot", "watchdog": "on_watchdog",
               "soft_reset": "on_reboot"}.get(outcome, "on_crash")
        action = "preserve" if outcome == "suspend" else dom.actions.get(key, "destroy")
        dom.mark_stopped(SHUTDOWN_REASONS.get(outcome, SHUTDOWN_crash))
        self.changed()
        self.say(f"domain {dom.domid} ({dom.name}) {outcome}"
                  f"{': ' + detail if detail else ''}; {key.removeprefix('on_')} action {action}")
        log.info("dom%d (%s) %s%s: %s", dom.domid, dom.name, outcome,
                 f" ({detail})" if detail else "", action)
        task = asyncio.get_running_loop().create_task(self._act(dom, action))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _act(self, dom: HostedDomain, action: str) -> None:
        if action == "preserve":
            return
        if action.startswith("coredump-"):
            await self._coredump(dom)
        if action == "rename-restart":
            dom.name = f"{dom.name}-{time.strftime('%Y%m%dT%H%MZ', time.gmtime())}-{dom.domid}"
            self.changed()
        else:
            dom.destroy()
            await dom.gone
        if action.endswith("restart"):
            await self._restart(dom)

    async def _restart(self, old: HostedDomain) -> None:
        """A new domain (new id, same name and config); a name that keeps coming back waits
        longer each time, so a crash loop cannot take the host."""
        name = old.spec["name"]
        now = time.monotonic()
        times = self._restarts.setdefault(name, deque())
        while times and now - times[0] > RESTART_WINDOW:
            times.popleft()
        times.append(now)
        excess = len(times) - RESTART_FREE
        if excess > 0:
            delay = min(2.0 ** (excess - 1), RESTART_DELAY_MAX)
            self.say(f"domain {name} restarting too often: waiting {delay:g} s")
            await asyncio.sleep(delay)
        spec = {k: v for k, v in old.spec.items() if k != "domid"}
        try:
            await self.create(spec, old.actions, paused=False)
        except HostError as e:
            self.say(f"domain {name} could not restart: {e}")

    async def _coredump(self, dom: HostedDomain) -> None:
        """xl's coredump-* actions: the guest's memory written to the dump directory."""
        from pyxen.host.coredump import write_core

        target = self.state_dir / "dump" / f"{dom.name}-{time.strftime('%Y%m%dT%H%M%S')}.core"
        try:
            await asyncio.get_running_loop().run_in_executor(None, write_core, dom, target)
            self.say(f"domain {dom.domid} ({dom.name}) core dumped to {target}")
        except OSError as e:
            self.say(f"domain {dom.domid} core dump failed: {e}")

    async def close(self) -> None:
        """The host stops: its domains go with it, and nothing is left to adopt."""
        self._saving = False
        for dom in list(self.domains.values()):
            dom.destroy()
        for dom in list(self.domains.values()):
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(asyncio.shield(dom.gone), 10)
        self.persistence.close()
        if not self.domains:
            persist.clear(self.state_dir)

    # --- views -------------------------------------------------------------------------------
    def domain_info(self, dom: HostedDomain) -> dict[str, Any]:
        return {"domid": dom.domid, "name": dom.name, "uuid": str(uuid.UUID(dom.uuid)),
                "memory": dom.spec["memory"], "maxmem": dom.spec.get("maxmem") or dom.spec["memory"],
                "vcpus": dom.spec.get("vcpus", 1), "state": dom.state_letters(),
                "shutdown_reason": dom.shutdown_reason,
                "cpu_time": round(dom.cpu_seconds(), 1), "created": dom.created,
                "pid": dom.live_pid(), "containment": dom.containment,
                "console_log": str(dom.tap.log_path), "spec": dom.spec, "actions": dom.actions}

    def domain0_info(self) -> dict[str, Any]:
        return {"domid": 0, "name": "Domain-0", "uuid": "00000000-0000-0000-0000-000000000000",
                "memory": host_memory_mib(), "maxmem": host_memory_mib(),
                "vcpus": os.cpu_count() or 1, "state": "r-----", "shutdown_reason": None,
                "cpu_time": round(time.process_time(), 1), "created": self.started,
                "pid": os.getpid()}


KILL_WAIT = 30.0  # seconds a SIGKILLed domain process may take to be gone


def _saved_config(fd: int, path: str) -> tuple[dict[str, Any], dict[str, str]]:
    """The spec and actions a save file carries (its DOMAIN_CONFIG record), the file left
    at its start for the domain process. HostError (one line) if it is not such a file."""
    from pyxen.migration.restore import read_description
    from pyxen.migration.stream import StreamError

    try:
        with os.fdopen(os.dup(fd), "rb") as src:
            description, _ = read_description(src)
        os.lseek(fd, 0, os.SEEK_SET)
    except (StreamError, OSError) as e:
        raise HostError(f"{path}: {e}") from None
    carried = carried_config(description.data.get("toolstack"))
    if carried is None:
        raise HostError(f"{path}: not saved by a pyxen daemon (no domain config in it)")
    spec, actions = carried
    spec["accel"] = description.data.get("backend")  # the vCPUs' TSC rate must match
    return spec, actions


def _spec_list(spec: dict[str, Any], key: str) -> list[str]:
    """The device specs `spec[key]` (disks, vifs): a list of strings, else HostError."""
    specs = spec.get(key) or []
    if not isinstance(specs, list) or not all(isinstance(s, str) for s in specs):
        raise HostError(f"{key}: a list of device specs expected")
    return specs


def wait_exit(pid: int, timeout: float, kill: bool = False) -> bool:
    """Whether process `pid` (SIGKILLed first if `kill`) has exited within `timeout` s;
    through a pidfd, so it need not be a child."""
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    try:
        if kill:
            signal.pidfd_send_signal(pidfd, signal.SIGKILL)
        return bool(select.select([pidfd], [], [], timeout)[0])
    finally:
        os.close(pidfd)


def kill_unadopted(path: str) -> int:
    """Take a domain process through its adopt socket only to SIGKILL it, and wait until it
    has exited (so its cgroup is empty and can go); its pid."""
    reply_fds, control = ask_adopt(path, None)[1:]
    try:
        pid = peer_pid(control)
        wait_exit(pid, KILL_WAIT, kill=True)
        return pid
    finally:
        control.close()
        for fd in reply_fds:
            os.close(fd)


def host_memory_mib() -> int:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") >> 20


# --- the command ---------------------------------------------------------------------------
def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--socket", metavar="PATH", default=None, type=socket_path_arg,
                   help=f"the API socket (default $PYXEN_HOST or {paths.default_socket()})")
    p.add_argument("--state-dir", metavar="DIR", default=None, type=directory_arg,
                   help="console logs, domain logs, dumps, the XenStore socket "
                        "(default: the API socket's directory)")
    p.add_argument("--xenstore-socket", metavar="PATH", default=None, type=socket_path_arg,
                   help="where xenstore-* tools find the store (default STATE_DIR/xenstored)")
    p.add_argument("--detach", action="store_true",
                   help="go to the background once serving (with --pid-file)")
    p.add_argument("--pid-file", metavar="FILE", help="write the daemon's pid there")
    p.add_argument("--verbose", action="store_true", help="log each domain event on stderr")
    p.add_argument("--no-containment", action="store_true",
                   help="run domain processes without no_new_privs and their seccomp "
                        "filter (for strace or gdb on one; see pyxen.host.containment)")
    p.add_argument("--migrate-listen", metavar="[ADDR:]PORT", default=None, type=listen_arg,
                   help="accept live migrations (pyxen migrate) on this TCP port (all "
                        "addresses unless ADDR; unauthenticated: a trusted network only)")
    p.add_argument("--max-memory", metavar="MiB", type=memory_arg, default=None,
                   help="the memory this host gives its domains in all (default: its RAM); "
                        "a domain that does not fit is refused, as on Xen")
    p.add_argument("--replace", action="store_true",
                   help="take over from the daemon serving on this socket: it hands its "
                        "domains over and exits, and this one adopts them (an upgrade "
                        "without stopping a domain)")


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="pyxen daemon: %(message)s", stream=sys.stderr)
    socket_path = Path(args.socket or paths.host_socket(None))
    state_dir = Path(args.state_dir) if args.state_dir else socket_path.parent
    xs_path = Path(args.xenstore_socket) if args.xenstore_socket else state_dir / "xenstored"
    created: list[Path] = []
    try:
        for path in (socket_path, xs_path):
            check_socket_path(str(path))
        created = make_dirs(state_dir) + make_dirs(socket_path.parent)
        if args.replace:
            take_over(socket_path)
    except (OSError, ValueError, ClientError) as e:
        print(f"pyxen daemon: {e}", file=sys.stderr)
        remove_empty_dirs(created)
        return 1
    ready_w = -1
    if args.detach:
        ready_r, ready_w = os.pipe()
        if os.fork():
            os.close(ready_w)
            ok = os.read(ready_r, 1)  # the child says when it serves, or that it failed
            return 0 if ok == b"1" else 1
        os.close(ready_r)
        os.setsid()
    try:
        return asyncio.run(serve(socket_path, state_dir, xs_path, args.pid_file, ready_w,
                                 contain=not args.no_containment,
                                 migrate_listen=args.migrate_listen,
                                 memory_mib=args.max_memory))
    except (OSError, persist.StateError, SnapshotError) as e:
        print(f"pyxen daemon: {e}", file=sys.stderr)
        return 1
    finally:
        remove_empty_dirs(created)


def memory_arg(text: str) -> int:
    """argparse type for --max-memory: MiB, at least 1, at most the host's RAM."""
    if not text.isdigit() or not 0 < int(text) <= host_memory_mib():
        raise argparse.ArgumentTypeError(f"{text!r} is not a size in MiB between 1 and the "
                                         f"host's {host_memory_mib()}")
    return int(text)


def listen_arg(text: str) -> tuple[str, int]:
    """argparse type for --migrate-listen: [ADDR:]PORT."""
    address, port = parse_target(text if ":" in text else f"0.0.0.0:{text}", None)
    if not 0 < port < 65536 or not address:
        raise argparse.ArgumentTypeError(f"{text!r} is not [ADDR:]PORT (a port 1-65535)")
    return address, port


def directory_arg(text: str) -> str:
    """argparse type for a directory option: a path, not an empty string."""
    if not text:
        raise argparse.ArgumentTypeError("the directory path is empty")
    return text


def make_dirs(path: Path) -> list[Path]:
    """Create `path` and its missing parents (private to this user); the ones created,
    outermost first, so that the daemon can take them away again when it ends."""
    missing = [p for p in (path, *path.parents) if not p.exists()]
    for p in reversed(missing):
        p.mkdir(mode=0o700, exist_ok=True)
    return list(reversed(missing))


def remove_empty_dirs(created: list[Path]) -> None:
    """Take away the directories this daemon created that nothing was left in (a state
    directory that keeps logs or a journal stays)."""
    for p in reversed(created):
        with contextlib.suppress(OSError):  # not empty, or already gone
            p.rmdir()


HANDOVER_TIMEOUT = 60.0  # seconds the old daemon has to save its state and exit


def take_over(socket_path: Path) -> None:
    """Ask the daemon on `socket_path` to hand over and wait until it has exited."""
    try:
        host = HostClient(socket_path)
    except HostUnavailable:
        raise OSError(f"--replace: no daemon serves on {socket_path} to take over from "
                      f"(start one without --replace)") from None
    with host:
        pid = int(host.request("handover")["pid"])
    if not wait_exit(pid, HANDOVER_TIMEOUT):
        raise OSError(f"the daemon (pid {pid}) did not exit within {HANDOVER_TIMEOUT:g} s "
                      f"of handing over")


async def serve(socket_path: Path, state_dir: Path, xs_path: Path, pid_file: str | None,
                ready_fd: int, contain: bool = True,
                migrate_listen: tuple[str, int] | None = None,
                memory_mib: int | None = None) -> int:
    loop = asyncio.get_running_loop()
    host = Host(state_dir, contain, memory_mib)
    if not contain:
        log.warning("--no-containment: new domain processes run without their seccomp filter")
    stop = host.stopping
    for sig in STOP_SIGNALS:
        loop.add_signal_handler(sig, lambda s=sig: stop.done() or stop.set_result(s))
    store_server = UnixServer(host.xenstored, str(xs_path))
    api = ApiServer(host, str(socket_path))
    prepare_socket_path(str(socket_path))  # a live daemon there is not replaced silently
    prepare_socket_path(str(xs_path))
    await host.recover()
    host.persistence.start()
    handed_over = False
    listener = None if migrate_listen is None else MigrationListener(host, *migrate_listen)
    try:
        await store_server.start()
        await api.start()
        if listener is not None:
            listener.start()
        if pid_file:
            Path(pid_file).write_text(f"{os.getpid()}\n")
        print(f"pyxen daemon: serving on {socket_path} (XenStore: {xs_path})", file=sys.stderr)
        if ready_fd >= 0:
            os.write(ready_fd, b"1")
            os.close(ready_fd)
            devnull = os.open(os.devnull, os.O_RDWR)
            for fd in (0, 1, 2):
                os.dup2(devnull, fd)
        signum = await stop
        if signum == "handover":
            handed_over = True
            log.info("handing the domains over to the next daemon")
            return 0
        assert isinstance(signum, int)
        log.info("stopping on %s", signal.Signals(signum).name)
        return 128 + signum  # as a shell reports a command stopped by that signal
    finally:
        await api.stop()
        if listener is not None:
            await listener.stop()
        if handed_over:
            host.hand_over()
        else:
            await host.close()
        await store_server.stop()
        if pid_file:
            with contextlib.suppress(FileNotFoundError):
                Path(pid_file).unlink()
