"""Host mode: what `pyxen daemon` adds to a domain. Create to first console line, domains
created per second, host memory per idle domain, how many small idle domains fit at once,
XenStore with many domains connected, and a daemon replaced (`--replace`) under its running
domains.

References, measured in the same run on the same machine: embedded `pyxen run` of the same
kit guest (one process, no daemon; with --xenstore, as a host domain has a store) for the
first four; the bare C xsd_sockmsg server (benchmarks/xenstore_ref.c) for XenStore, where
the daemon with no domain at all is shown too; recreating the domains (this run's median
create, times their number) for the handover. The guests run on the software CPU
(`accel = "soft"`) under a daemon of the benchmark's own in a temporary state directory;
each is the kit's `block` guest with 16 MiB, idling in SCHEDOP_block once it has printed.

    python -m benchmarks host                   # every part, at most 32 domains at once
    python -m benchmarks.host --parts start,memory
    python -m benchmarks.host --parts capacity --max 64
    python -m benchmarks.host --quick           # fewer rounds and domains
"""

from __future__ import annotations

import argparse
import contextlib
import os
import selectors
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TypeVar

from benchmarks import xenstore
from benchmarks.common import median, report
from pyxen.host.client import HostClient, HostError, HostUnavailable
from pyxen.toolstack.accel import available_accels
from pyxen.toolstack.guestkit import GuestKitError, guest_image
from pyxen.toolstack.xl_create import ACTION_KEYS, domain_spec
from pyxen.toolstack.xlcfg import parse_xl_config

GUEST = "block"
IDLE = "idle=3600 idle_how=block"  # the guest stays up, blocked, until it is destroyed
HVC = "console=hvc0"  # the kit prints through the PV console ring (guests/runtime/hvc.c)
MEMORY_MIB = 16
WAIT_S = 120.0  # a generous bound for "soon" on a busy machine
RING_GRACE_S = 10.0  # after a dmesg line, how long the console ring may stay silent
FREE_FLOOR = 0.20  # capacity stops below this share of the host's memory available
PARTS = ("start", "rate", "memory", "xenstore", "readopt", "capacity")
PYXEN = [sys.executable, "-m", "pyxen.cli"]
T = TypeVar("T")


@dataclass(frozen=True)
class Settings:
    parts: tuple[str, ...] = PARTS
    rounds: int = 5  # start: samples of each mode
    burst: int = 8  # rate, memory: domains created back to back
    store_domains: int = 16  # xenstore: domains live while the store is measured
    cap: int = 32  # capacity: the most domains it creates


def parse_args(argv: Sequence[str]) -> Settings:
    p = argparse.ArgumentParser(prog="python -m benchmarks.host",
                                description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--parts", default=",".join(PARTS),
                   help=f"comma-separated, any of {', '.join(PARTS)} (default: all)")
    p.add_argument("--max", type=int, metavar="N",
                   help="capacity: create at most N domains (default 32; 12 with --quick)")
    p.add_argument("--quick", action="store_true",
                   help="3 rounds, bursts of 4, 8 domains for XenStore, at most 12 domains")
    args = p.parse_args(list(argv))
    parts = tuple(x for x in (s.strip() for s in args.parts.split(",")) if x)
    unknown = sorted(set(parts) - set(PARTS))
    if unknown or not parts:
        p.error(f"--parts: unknown part {', '.join(unknown) or '(none given)'}; "
                f"choose from {', '.join(PARTS)}")
    settings = Settings(parts=tuple(x for x in PARTS if x in parts))
    if args.quick:
        settings = replace(settings, rounds=3, burst=4, store_domains=8, cap=12)
    if args.max is not None:
        if args.max < 1:
            p.error("--max: at least 1 domain")
        settings = replace(settings, cap=args.max)
    return settings


# --- what /proc says ---------------------------------------------------------------------------
def kib_fields(text: str) -> dict[str, int]:
    """The `Key:   123 kB` lines of /proc's smaps_rollup or meminfo, in KiB."""
    fields: dict[str, int] = {}
    for line in text.splitlines():
        key, colon, rest = line.partition(":")
        words = rest.split()
        if colon and len(words) == 2 and words[1] == "kB" and words[0].isdigit():
            fields[key.strip()] = int(words[0])
    return fields


def memfd_kib(pid: int) -> int:
    """KiB allocated to the memfds process `pid` holds open (each counted once): the guest
    RAM a domain has touched, as its memfd is the guest's physical memory."""
    seen: set[tuple[int, int]] = set()
    total = 0
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):
            if not os.readlink(fd).startswith("/memfd:"):
                continue
            st = os.stat(fd)
            if (st.st_dev, st.st_ino) not in seen:
                seen.add((st.st_dev, st.st_ino))
                total += st.st_blocks * 512
    return total // 1024


@dataclass(frozen=True)
class ProcessMemory:
    pss_kib: int  # the process's proportional share of every page it maps
    shmem_kib: int  # of which shared memory: the guest RAM (memfd pages) it maps
    file_kib: int  # of which files: mostly the libraries every Python process shares
    ram_kib: int  # the memfd's allocated blocks: guest RAM touched

    @property
    def beyond_ram_kib(self) -> int:
        return self.pss_kib - self.shmem_kib

    @property
    def own_kib(self) -> int:
        """Pss without files: what the process itself grew by, whatever else runs (a file
        page's share shrinks as more processes map it)."""
        return self.pss_kib - self.file_kib


def process_memory(pid: int) -> ProcessMemory:
    fields = kib_fields(Path(f"/proc/{pid}/smaps_rollup").read_text())
    ram = memfd_kib(pid)
    return ProcessMemory(fields["Pss"], fields.get("Pss_Shmem", ram), fields.get("Pss_File", 0),
                         ram)


def host_memory_kib() -> tuple[int, int]:
    """(MemTotal, MemAvailable) of this machine."""
    fields = kib_fields(Path("/proc/meminfo").read_text())
    return fields["MemTotal"], fields["MemAvailable"]


# --- processes ---------------------------------------------------------------------------------
def read_line(fd: int, deadline: float, buf: bytes = b"") -> bytes | None:
    """The first whole line of `buf` and what is readable from `fd` after it, or None at end
    of file or past `deadline` (time.monotonic())."""
    with selectors.DefaultSelector() as sel:
        sel.register(fd, selectors.EVENT_READ)
        while b"\n" not in buf:
            left = deadline - time.monotonic()
            if left <= 0 or not sel.select(left):
                return None
            data = os.read(fd, 4096)
            if not data:
                return None
            buf += data
    return buf.split(b"\n", 1)[0].rstrip(b"\r")


def wait_for(what: str, condition: Callable[[], T | None], timeout: float = WAIT_S,
             interval: float = 0.01) -> T:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval)
    raise RuntimeError(f"timed out after {timeout:g} s waiting for {what}")


def stop_process(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    if proc.stdout is not None:
        proc.stdout.close()


class Daemon:
    """A `pyxen daemon` of the benchmark's own; stop() ends it and every domain it holds."""

    def __init__(self, state: Path, replacing: Daemon | None = None,
                 netns: str | None = None, options: Sequence[str] = ()) -> None:
        """A new daemon; with `replacing`, one started with --replace, which that daemon
        hands its domains over to (it exits first); with `netns`, inside that network
        namespace (its domains' vifs there); `options`: more of the daemon's options."""
        self.state = state
        self.socket = state / "pyxen.sock"
        self.xenstore = state / "xenstored"
        self.env = dict(os.environ, PYXEN_HOST=str(self.socket))
        self.errors_path = state / ("daemon-next.err" if replacing else "daemon.err")
        self._errors = open(self.errors_path, "wb")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(
            [*(["ip", "netns", "exec", netns] if netns else []), *PYXEN, "daemon",
             "--socket", str(self.socket),
             *(["--replace"] if replacing else []), *options],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=self._errors,
            env=self.env)
        if replacing is not None:
            wait_for("the old daemon to hand over", lambda: replacing.process.poll() is not None,
                     interval=0.01)
            replacing.client.close()
            replacing._errors.close()
        self.client: HostClient = wait_for("the daemon to answer", self._connect, interval=0.01)

    def _connect(self) -> HostClient | None:
        if self.process.poll() is not None:
            raise RuntimeError(f"the daemon exited: {self.errors()}")
        try:
            client = HostClient(self.socket)
        except (HostUnavailable, OSError):
            return None
        client.request("list")
        return client

    def errors(self) -> str:
        text = self.errors_path.read_text(errors="replace").strip()
        return text.splitlines()[-1] if text else "(nothing on stderr)"

    def request(self, op: str, **args: Any) -> dict[str, Any]:
        return self.client.request(op, **args)

    def domains(self) -> dict[str, dict[str, Any]]:
        """The host's guests by name (Domain-0 left out)."""
        return {d["name"]: d for d in self.request("list")["domains"] if d["domid"]}

    def create(self, config: Path, paused: bool = False) -> int:
        """What `pyxen create CONFIG` asks the daemon for, straight through the API."""
        cfg = parse_xl_config(config.read_text(), str(config))
        actions = {key: getattr(cfg, key) for key in ACTION_KEYS}
        return int(self.request("create", spec=domain_spec(cfg), actions=actions,
                                paused=paused)["domid"])

    def destroy(self, name: str) -> None:
        self.request("destroy", dom=name)

    def console_line(self, name: str) -> bool:
        """Whether the domain's console log holds a whole line."""
        with contextlib.suppress(FileNotFoundError):
            return b"\n" in (self.state / "console" / f"guest-{name}.log").read_bytes()
        return False

    def dmesg_line(self, domid: int) -> bool:
        """Whether the hypervisor's console holds a line of domain `domid` (console_io)."""
        return f"(d{domid}) " in self.request("dmesg")["text"]

    def stop(self) -> None:
        self.client.close()
        stop_process(self.process)
        self._errors.close()


# --- the bench ---------------------------------------------------------------------------------
class Bench:
    """The daemon, the guest, and the domains and `pyxen run` processes alive right now."""

    def __init__(self, settings: Settings, state: Path, kernel: Path) -> None:
        self.settings = settings
        self.state = state
        self.kernel = kernel
        self.daemon = Daemon(state)
        self.clients_log = open(state / "clients.err", "ab")  # noqa: SIM115 - closed in close()
        self.via_ring = True  # the first line is read from the console ring (else dmesg)
        self.fleet: dict[str, int] = {}  # idle host domains: name → domid
        self.embedded: list[subprocess.Popen[bytes]] = []  # idle `pyxen run` processes
        self.daemon_base_kib = 0  # the daemon's own memory (Pss less files) with no domain
        self.create_times: list[float] = []  # seconds each create request of the fleet took
        self.available_base_kib = 0  # the host's MemAvailable then
        self.embedded_memory: list[ProcessMemory] = []
        self._serial = 0

    @property
    def cmdline(self) -> str:
        return f"{HVC} {IDLE}" if self.via_ring else IDLE

    def config(self, name: str) -> Path:
        path = self.state / f"{name}.cfg"
        path.write_text("\n".join((
            f'name = "{name}"', 'type = "pvh"', f'kernel = "{self.kernel}"',
            f"memory = {MEMORY_MIB}", 'accel = "soft"', f'extra = "{self.cmdline}"')) + "\n")
        return path

    def name(self, prefix: str) -> str:
        self._serial += 1
        return f"{prefix}-{self._serial}"

    def printed(self, name: str, domid: int) -> bool:
        return (self.daemon.console_line(name) if self.via_ring
                else self.daemon.dmesg_line(domid))

    # --- one domain to its first line ------------------------------------------------------
    def host_first_line(self, name: str) -> float:
        """Seconds from starting `pyxen create` to the guest's first line, as a user sees it:
        `pyxen create -c` (its console attached before the guest runs), or, without the
        console ring, `pyxen create` and the first (dN) line of `pyxen dmesg`."""
        config = self.config(name)
        argv = [*PYXEN, "create", "-q", *(["-c"] if self.via_ring else []), str(config)]
        start = time.perf_counter()
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=self.clients_log, env=self.daemon.env)
        try:
            if self.via_ring:
                assert proc.stdout is not None
                line = read_line(proc.stdout.fileno(), time.monotonic() + WAIT_S)
                if line is None:
                    raise RuntimeError(f"`pyxen create -c` of {name} showed no line in "
                                       f"{WAIT_S:g} s (see {self.state})")
            else:
                wait_for(f"{name}'s first dmesg line", lambda: self._dmesg_of(name))
            elapsed = time.perf_counter() - start
        finally:
            stop_process(proc)
        self.daemon.destroy(name)
        return elapsed

    def api_first_line(self, name: str) -> float:
        """The same without a client process: what the daemon and the domain's process take.
        As `pyxen create -c` does: create paused, attach the console, unpause."""
        config = self.config(name)
        start = time.perf_counter()
        if not self.via_ring:
            domid = self.daemon.create(config)
            wait_for(f"{name}'s first dmesg line", lambda: self.daemon.dmesg_line(domid))
        else:
            domid = self.daemon.create(config, paused=True)
            with HostClient(self.daemon.socket) as session:
                session.console(str(domid))
                self.daemon.request("unpause", dom=str(domid))
                line = read_line(session.sock.fileno(), time.monotonic() + WAIT_S,
                                 session.rest)
            if line is None:
                raise RuntimeError(f"{name}'s console showed no line in {WAIT_S:g} s")
        elapsed = time.perf_counter() - start
        self.daemon.destroy(name)
        return elapsed

    def _dmesg_of(self, name: str) -> bool:
        dom = self.daemon.domains().get(name)
        return dom is not None and self.daemon.dmesg_line(int(dom["domid"]))

    def embedded_first_line(self, name: str) -> tuple[subprocess.Popen[bytes], float]:
        """`pyxen run` of the same guest: the process and seconds to its first line."""
        argv = [*PYXEN, "run", "--accel", "soft", "--memory", str(MEMORY_MIB), "--xenstore",
                "--name", name, "--cmdline", self.cmdline, str(self.kernel)]
        start = time.perf_counter()
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=self.clients_log)
        assert proc.stdout is not None
        line = read_line(proc.stdout.fileno(), time.monotonic() + WAIT_S)
        elapsed = time.perf_counter() - start
        if line is None:
            stop_process(proc)
            raise RuntimeError(f"`pyxen run` of {name} printed no line in {WAIT_S:g} s "
                               f"(see {self.state / 'clients.err'})")
        return proc, elapsed

    # --- the idle fleet --------------------------------------------------------------------
    def add_domain(self) -> float:
        """Create one more idle domain through the API; seconds the request took."""
        if not self.fleet:
            self.daemon_base_kib = process_memory(self.daemon.process.pid).own_kib
            self.available_base_kib = host_memory_kib()[1]
        name = self.name("idle")
        config = self.config(name)
        start = time.perf_counter()
        self.fleet[name] = self.daemon.create(config)
        elapsed = time.perf_counter() - start
        self.create_times.append(elapsed)
        return elapsed

    def wait_fleet_printed(self) -> None:
        for name, domid in self.fleet.items():
            wait_for(f"{name}'s first line", lambda n=name, d=domid: self.printed(n, d),
                     interval=0.02)

    def fleet_memory(self) -> list[ProcessMemory]:
        pids = [d["pid"] for n, d in self.daemon.domains().items() if n in self.fleet]
        return [process_memory(int(pid)) for pid in pids]

    def stop_embedded(self) -> None:
        for proc in self.embedded:
            stop_process(proc)
        self.embedded.clear()

    def close(self) -> None:
        self.stop_embedded()
        self.daemon.stop()
        self.clients_log.close()


def mib(kib: float) -> float:
    return kib / 1024


def row(label: str, figure: str, note: str = "") -> None:
    """One figure of a part's table: label, value with its unit, a remark."""
    print(f"  {label:<34}{figure:>12}{'  ' + note if note else ''}")


def spread(samples: Sequence[float]) -> str:
    return f"(min {min(samples):.3f}, max {max(samples):.3f})"


# --- the parts ---------------------------------------------------------------------------------
def preflight(b: Bench) -> str:
    """Warm the page cache (one untimed run of each mode) and find where a guest's first
    line shows: the console ring where the kit has hvc0, else the hypervisor's dmesg."""
    kit_hvc = b.kernel.parent.parent / "runtime" / "hvc.c"
    if not kit_hvc.exists():
        b.via_ring = False
        note = f"the kit has no PV console driver ({kit_hvc} missing)"
    else:
        name = b.name("warm-up")
        domid = b.daemon.create(b.config(name))
        seen: dict[str, float] = {}

        def settled() -> str | None:
            if b.daemon.console_line(name):
                return "ring"
            if b.daemon.dmesg_line(domid):
                first = seen.setdefault("dmesg", time.monotonic())
                if time.monotonic() - first > RING_GRACE_S:
                    return "dmesg"
            return None

        where = wait_for(f"{name}'s first line", settled, interval=0.05)
        b.daemon.destroy(name)
        b.via_ring = where == "ring"
        note = ("" if b.via_ring else
                f"console=hvc0 showed nothing in the console within {RING_GRACE_S:g} s of "
                f"its first dmesg line")
    proc, _ = b.embedded_first_line(b.name("warm-up"))
    stop_process(proc)
    if b.via_ring:
        return "the PV console ring (extra = \"console=hvc0\")"
    print(f"note: first lines are read from the daemon's dmesg, not the console: {note}")
    return "dmesg (console_io), the console ring being unavailable"


def part_start(b: Bench) -> dict[str, float]:
    host, api, embedded = [], [], []
    for _ in range(b.settings.rounds):  # interleaved, so that load changes hit each alike
        host.append(b.host_first_line(b.name("start")))
        api.append(b.api_first_line(b.name("start")))
        proc, seconds = b.embedded_first_line(b.name("start"))
        stop_process(proc)
        embedded.append(seconds)
    h, a, e = median(host), median(api), median(embedded)
    how = "pyxen create -c" if b.via_ring else "pyxen create, then dmesg"
    print(f"start: `pyxen create` to the guest's first line, median of {len(host)}")
    row(f"host ({how})", f"{h:.3f} s", spread(host))
    row("host, API (no client process)", f"{a:.3f} s", spread(api))
    row("embedded (pyxen run)", f"{e:.3f} s", spread(embedded))
    row("ratio host/embedded", f"{h / e:.3f}", f"(API: {a / e:.3f})")
    return {"start_host_s": h, "start_api_s": a, "start_embedded_s": e, "start_ratio": h / e,
            "start_api_ratio": a / e}


def part_rate(b: Bench, show: bool) -> dict[str, float]:
    """Create a burst of idle domains back to back, then as many `pyxen run` processes one
    after another, each to its first line; both stay up for the memory part."""
    n = b.settings.burst
    start = time.perf_counter()
    creates = [b.add_domain() for _ in range(n)]
    created = time.perf_counter() - start
    b.wait_fleet_printed()
    printed = time.perf_counter() - start
    start = time.perf_counter()
    for _ in range(n):
        b.embedded.append(b.embedded_first_line(b.name("idle"))[0])
    embedded = time.perf_counter() - start
    host_rate, host_printed, ref_rate = n / created, n / printed, n / embedded
    if show:
        print(f"rate: {n} idle domains created back to back")
        row("host, API `create` requests", f"{host_rate:.2f} /s",
            f"(median request {median(creates):.3f} s)")
        row("host, until all printed", f"{host_printed:.2f} /s")
        row("embedded, `pyxen run`s in turn", f"{ref_rate:.2f} /s", "(each to its first line)")
        row("ratio host/embedded", f"{host_rate / ref_rate:.3f}",
            f"(until all printed: {host_printed / ref_rate:.3f})")
    return {"rate_host_per_s": host_rate, "rate_host_printed_per_s": host_printed,
            "rate_embedded_per_s": ref_rate, "rate_ratio": host_rate / ref_rate}


def part_memory(b: Bench) -> dict[str, float]:
    domains = b.fleet_memory()
    daemon_now = process_memory(b.daemon.process.pid).own_kib
    daemon_share = (daemon_now - b.daemon_base_kib) / len(b.fleet)
    embedded = [process_memory(p.pid) for p in b.embedded]
    b.embedded_memory = embedded
    own = median([m.beyond_ram_kib for m in domains])
    ref = median([m.beyond_ram_kib for m in embedded])
    ram = median([m.ram_kib for m in domains])
    total = own + daemon_share
    print(f"memory: host memory per idle domain beyond its RAM (Pss less the guest RAM it "
          f"maps), median of {len(domains)} / {len(embedded)} processes")
    private = median([m.own_kib - m.shmem_kib for m in domains])
    ref_private = median([m.own_kib - m.shmem_kib for m in embedded])
    row("host: domain process", f"{mib(own):.1f} MiB",
        f"({mib(private):.1f} without shared files)")
    row("host: daemon, per domain", f"{mib(daemon_share):.1f} MiB",
        f"(its Pss less files: {mib(b.daemon_base_kib):.1f} → {mib(daemon_now):.1f} MiB "
        f"with {len(b.fleet)})")
    row("host: together", f"{mib(total):.1f} MiB")
    row("embedded (pyxen run)", f"{mib(ref):.1f} MiB",
        f"({mib(ref_private):.1f} without shared files)")
    row("guest RAM touched", f"{mib(ram):.1f} MiB",
        f"of {MEMORY_MIB} (memfd blocks; embedded "
        f"{mib(median([m.ram_kib for m in embedded])):.1f})")
    row("ratio host/embedded", f"{total / ref:.3f}", f"(domain process alone: {own / ref:.3f})")
    return {"mem_domain_process_mib": mib(own), "mem_daemon_per_domain_mib": mib(daemon_share),
            "mem_host_mib": mib(total), "mem_embedded_mib": mib(ref),
            "mem_ram_touched_mib": mib(ram), "mem_ratio": total / ref,
            "mem_domain_private_mib": mib(private), "mem_embedded_private_mib": mib(ref_private)}


def store_figures(path: str) -> dict[str, float]:
    """Writes per second (1 and 32 in flight) and watch-event latency, as
    benchmarks/xenstore.py measures them."""
    conn = xenstore.Conn(path)
    try:
        figures = {f"write_{n}": xenstore.rate(xenstore.simple_op(
            conn, xenstore.msg(xenstore.XS_WRITE, b"/bench/x\0value"), n)) for n in (1, 32)}
    finally:
        conn.close()
    figures["watch_latency_us"] = xenstore.watch_latency(path)
    return figures


def part_xenstore(b: Bench, empty: dict[str, float]) -> dict[str, float]:
    while len(b.fleet) < b.settings.store_domains:
        b.add_domain()
    b.wait_fleet_printed()
    k = len(b.fleet)
    ours = store_figures(str(b.daemon.xenstore))
    ref: dict[str, float] | None = None
    if xenstore.build_reference():
        path = str(b.state / "ref.sock")
        ref = xenstore.run_server([str(xenstore.REF_BIN), path], path, store_figures)
    else:
        print("xenstore: reference skipped: gcc not found to build benchmarks/xenstore_ref.c")
    nan = float("nan")
    print(f"xenstore: the daemon's store socket with {k} domains' rings introduced")
    print(f"  {'figure':<16}{f'{k} domains':>14}{'no domain':>14}{'C reference':>14}"
          f"{'ratio':>8}")
    figures: dict[str, float] = {}
    for key in ("write_1", "write_32"):
        r = ours[key] / ref[key] if ref else nan
        ref_txt = f"{ref[key]:>12.0f}/s" if ref else f"{'-':>14}"
        print(f"  {key:<16}{ours[key]:>12.0f}/s{empty.get(key, nan):>12.0f}/s{ref_txt}{r:>8.3f}")
        figures.update({f"xs_{key}_per_s": ours[key], f"xs_{key}_ratio": r})
    lat, lat0 = ours["watch_latency_us"], empty.get("watch_latency_us", nan)
    ref_lat = ref["watch_latency_us"] if ref else nan
    print(f"  {'watch latency':<16}{lat:>11.1f} us{lat0:>11.1f} us{ref_lat:>11.1f} us"
          f"{ref_lat / lat:>8.3f}")
    print("  (ratio: pyxen's speed over the C reference's; below 1 = slower)")
    figures.update({"xs_domains": float(k), "xs_watch_latency_us": lat,
                    "xs_watch_ratio": ref_lat / lat})
    figures.update({f"xs_empty_{key}": value for key, value in empty.items()})
    if ref:
        figures.update({f"xs_ref_{key}": value for key, value in ref.items()})
    return figures


def part_readopt(b: Bench) -> dict[str, float]:
    """`pyxen daemon --replace` with the idle fleet running: from starting the new daemon
    until it lists every domain, adopted. The reference is what a restart without
    re-adoption would cost: creating the same domains again (this run's median create)."""
    while len(b.fleet) < b.settings.store_domains:
        b.add_domain()
    b.wait_fleet_printed()
    k = len(b.fleet)
    pids = {n: d["pid"] for n, d in b.daemon.domains().items()}
    start = time.perf_counter()
    b.daemon = Daemon(b.state, replacing=b.daemon)
    adopted = wait_for("every domain adopted", lambda: b.daemon.domains() if set(b.fleet) <= set(
        b.daemon.domains()) else None, interval=0.01)
    elapsed = time.perf_counter() - start
    if any(adopted[n]["pid"] != pids[n] for n in b.fleet):
        raise RuntimeError("readopt: a domain came back with another process")
    ref = k * median(b.create_times)
    print(f"readopt: `pyxen daemon --replace` with {k} idle domains running")
    row("until all listed, adopted", f"{elapsed:.2f} s", f"({elapsed / k * 1000:.0f} ms each)")
    row("creating them again", f"{ref:.2f} s", f"({k} x the median create, {median(b.create_times):.3f} s)")
    row("ratio (handover/recreate)", f"{elapsed / ref:.3f}")
    return {"readopt_domains": float(k), "readopt_s": elapsed, "readopt_recreate_s": ref,
            "readopt_ratio": elapsed / ref}


def part_capacity(b: Bench) -> dict[str, float | str]:
    """Idle 16 MiB domains until creation fails, the cap, or the host runs short."""
    total_kib = host_memory_kib()[0]
    creates: list[float] = []
    reason = f"the cap of {b.settings.cap} (--max)"
    while len(b.fleet) < b.settings.cap:
        total_kib, available = host_memory_kib()
        if available < FREE_FLOOR * total_kib:
            reason = f"host memory available below {FREE_FLOOR:.0%}"
            break
        try:
            creates.append(b.add_domain())
        except HostError as e:
            reason = f"creation failed: {e}"
            break
    b.wait_fleet_printed()
    alive = [n for n, d in b.daemon.domains().items()
             if n in b.fleet and d["state"][3] == "-"]  # not shut down or crashed
    count = len(alive)
    domains = b.fleet_memory()
    daemon_now = process_memory(b.daemon.process.pid).own_kib
    per_domain = (sum(m.pss_kib for m in domains) + daemon_now - b.daemon_base_kib) / count
    available_now = host_memory_kib()[1]
    fell = (b.available_base_kib - available_now) / count
    if not b.embedded_memory:
        proc, _ = b.embedded_first_line(b.name("idle"))
        b.embedded_memory = [process_memory(proc.pid)]
        stop_process(proc)
    ref = median([m.pss_kib for m in b.embedded_memory])
    start = time.perf_counter()
    for name in list(b.fleet):
        b.daemon.destroy(name)
    destroyed = len(b.fleet) / (time.perf_counter() - start)
    b.fleet.clear()
    print(f"capacity: {count} idle {MEMORY_MIB} MiB domains at once; stopped at {reason}")
    row("host memory per domain", f"{mib(per_domain):.1f} MiB",
        "(Pss of its process and its share of the daemon's, guest RAM included)")
    row("embedded (pyxen run), Pss", f"{mib(ref):.1f} MiB")
    row("ratio host/embedded", f"{per_domain / ref:.3f}")
    row("host MemAvailable fell by", f"{mib(fell):.1f} MiB",
        f"per domain (other work moves it too); {mib(available_now):.0f} of "
        f"{mib(total_kib):.0f} MiB left")
    if creates:
        row("create request, median", f"{median(creates):.3f} s",
            f"(first {creates[0]:.3f} s, last {creates[-1]:.3f} s)")
    row("destroyed, all of them", f"{destroyed:.1f} /s")
    return {"capacity_domains": float(count), "capacity_stopped_at": reason,
            "capacity_mib_per_domain": mib(per_domain), "capacity_embedded_mib": mib(ref),
            "capacity_ratio": per_domain / ref, "capacity_memavailable_mib_per_domain": mib(fell),
            "destroy_per_s": destroyed}


def run(settings: Settings) -> None:
    if "soft" not in available_accels():
        raise SystemExit("host: the software CPU (pip unicorn) is not available here")
    try:
        kernel = guest_image(GUEST)
    except GuestKitError as e:
        raise SystemExit(f"host: {e}") from None
    load_start = os.getloadavg()
    print(f"load average at start: {' '.join(f'{x:.2f}' for x in load_start)} "
          f"({os.cpu_count()} CPUs)")
    figures: dict[str, float | str] = {}
    with tempfile.TemporaryDirectory(prefix="pyxen-bench-") as tmp:
        b = Bench(settings, Path(tmp), kernel)
        try:
            figures["first_line_via"] = preflight(b)
            if "start" in settings.parts:
                figures.update(part_start(b))
            empty = store_figures(str(b.daemon.xenstore)) if "xenstore" in settings.parts else {}
            if "rate" in settings.parts or "memory" in settings.parts:
                rate = part_rate(b, show="rate" in settings.parts)
                if "rate" in settings.parts:
                    figures.update(rate)
                if "memory" in settings.parts:
                    figures.update(part_memory(b))
                b.stop_embedded()
            if "xenstore" in settings.parts:
                figures.update(part_xenstore(b, empty))
            if "readopt" in settings.parts:
                figures.update(part_readopt(b))
            if "capacity" in settings.parts:
                figures.update(part_capacity(b))
        finally:
            b.close()
    load_end = os.getloadavg()
    print(f"load average at end: {' '.join(f'{x:.2f}' for x in load_end)}")
    ratio_key = next(k for k in ("start_ratio", "rate_ratio", "mem_ratio", "xs_write_32_ratio",
                                 "readopt_ratio", "capacity_ratio") if k in figures)
    reference = ("recreating the same domains (the run's median create, times their number)"
                 if ratio_key == "readopt_ratio" else
                 "embedded `pyxen run` of the same guest, same run (XenStore: the bare C "
                 "xsd_sockmsg server)")
    report("host", float(figures[ratio_key]), f"{ratio_key}: {reference}",
           load_start=load_start[0], load_end=load_end[0], **figures)


def main(argv: Sequence[str] | None = None) -> None:
    """`python -m benchmarks host` runs every part with the defaults; run this module
    directly for the options."""
    run(parse_args(argv or []))


if __name__ == "__main__":
    main(sys.argv[1:])
