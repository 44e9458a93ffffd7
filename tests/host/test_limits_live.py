"""Issue 11, item 7: a domain's limits hold, measured from outside. A real `pyxen daemon`, real
domain processes running kit guests, and the xl commands a user types; what is checked is what
the kernel reports (/proc, the cgroup files) and what Debian's xenstore-read sees, not what
pyxen says it did."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from host.hostkit import Daemon, wait_for
from pyxen.host import sched
from pyxen.host.limits import _find_hierarchies, host_cpus
from pyxen.toolstack.xl_sched import (
    format_affinity,
    parse_mem_size_kb,
    top_lines,
    vcpu_row,
    xentop_state,
)

SPIN = "idle=600 idle_how=spin"  # busy until destroyed (never blocks)
IDLE = "idle=3600 idle_how=block"  # asleep until destroyed
MEASURE_S = 3.0
TAG = os.getpid() % 100000  # domain names (hence cgroup names) no other test run uses


def _needs_cgroups() -> str | None:
    if os.geteuid() != 0:
        return "the cgroup limits need root"
    if "cpu" not in _find_hierarchies(None):
        return "this host has no cgroup cpu controller"
    return None


needs_cgroups = pytest.mark.skipif(_needs_cgroups() is not None,
                                   reason=_needs_cgroups() or "")
needs_two_cpus = pytest.mark.skipif(len(host_cpus()) < 2 or 1 not in host_cpus(),
                                    reason="pinning to CPU 1 needs a host with CPUs 0 and 1")
needs_xenstore_utils = pytest.mark.skipif(not shutil.which("xenstore-read"),
                                          reason="Debian's xenstore-utils are not installed")


@pytest.fixture(scope="module")
def daemon(guests, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    if "soft" not in __import__("conftest").AVAILABLE:
        pytest.skip("host-mode tests run their guests on the software CPU")
    d = Daemon(tmp_path_factory.mktemp("limits"))
    try:
        yield d
    finally:
        d.stop()


class Guests:
    """The domains one test creates, destroyed at its end whatever happened."""

    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon
        self.names: list[str] = []

    def create(self, name: str, extra: str, **settings: object) -> dict[str, Any]:
        name = f"{name}-{TAG}"
        self.names.append(name)
        self.daemon.create(name, "block", extra, **settings)
        return self.daemon.domains()[name]

    def close(self) -> None:
        for name in self.names:
            if name in self.daemon.domains():
                self.daemon.request("destroy", dom=name)


@pytest.fixture
def guests_of(daemon: Daemon) -> Iterator[Guests]:
    made = Guests(daemon)
    try:
        yield made
    finally:
        made.close()


# --- what the kernel says -----------------------------------------------------------------
def stat_fields(path: str) -> list[str]:
    with open(path) as f:
        return f.read().rsplit(")", 1)[1].split()


def process_seconds(pid: int) -> float:
    fields = stat_fields(f"/proc/{pid}/stat")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def thread_seconds(pid: int, tid: int) -> float:
    fields = stat_fields(f"/proc/{pid}/task/{tid}/stat")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpus_allowed(pid: int, tid: int) -> str:
    with open(f"/proc/{pid}/task/{tid}/status") as f:
        line = next(line for line in f if line.startswith("Cpus_allowed_list:"))
    return line.split(":", 1)[1].strip()


def cpu_cgroup(pid: int) -> Path:
    """The directory of the cgroup holding `pid` for the cpu controller, from /proc."""
    hierarchy = _find_hierarchies(None)["cpu"]
    for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        if (hierarchy.v2 and controllers == "") or "cpu" in controllers.split(","):
            return Path(hierarchy.base + path)
    raise AssertionError(f"process {pid} is in no cpu cgroup")


def cpu_stat(group: Path, key: str) -> int:
    return int(dict(line.split() for line in (group / "cpu.stat").read_text().splitlines())[key])


def vcpu_thread(daemon: Daemon, name: str, index: int = 0) -> int:
    """The thread id of a domain's vCPU, once its thread runs."""
    def tid() -> int | None:
        for row in daemon.request("vcpu_list", doms=[name])["vcpus"]:
            if row["vcpu"] == index and row["tid"]:
                return int(row["tid"])
        return None

    return int(wait_for(f"vCPU {index} of {name} to start", tid))


def busy(pid: int, tid: int) -> None:
    """Wait until the vCPU thread is spinning: it keeps using CPU."""
    start = thread_seconds(pid, tid)
    wait_for("the guest to spin", lambda: thread_seconds(pid, tid) >= start + 0.3)


def one_line_refusal(result: subprocess.CompletedProcess[str], text: str) -> None:
    assert result.returncode == 1, result
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and text in lines[0], result.stderr


def xenstore_read(daemon: Daemon, path: str) -> str:
    result = subprocess.run(["xenstore-read", path], env=daemon.env, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


# --- CPU ------------------------------------------------------------------------------------
@needs_cgroups
def test_a_cap_of_50_holds_a_spinning_guest_under_three_quarters_of_a_core(
        daemon: Daemon, guests_of: Guests) -> None:
    dom = guests_of.create("capped", SPIN, cap=50)
    pid = dom["pid"]
    group = cpu_cgroup(pid)
    assert group.name == f"dom{dom['domid']}-capped-{TAG}" and group.parent.parent.name == "pyxen"
    busy(pid, vcpu_thread(daemon, dom["name"]))
    throttled0 = cpu_stat(group, "nr_throttled")
    cpu0, wall0 = process_seconds(pid), time.monotonic()
    time.sleep(MEASURE_S)
    share = (process_seconds(pid) - cpu0) / (time.monotonic() - wall0)
    assert share < 0.75, f"capped at 50% yet used {share:.0%} of a core"
    assert cpu_stat(group, "nr_throttled") > throttled0  # it wanted more: the cap held it
    daemon.request("destroy", dom=dom["name"])
    wait_for("the domain's cgroup to be removed", lambda: not group.exists())


@needs_cgroups
def test_a_restored_domain_is_in_its_own_cgroup_capped_or_not(
        daemon: Daemon, guests_of: Guests, tmp_path: Path) -> None:
    """A restoring process joins its cgroup as soon as it exists (out of a migration's
    stop), unless the domain is capped: a cap must not slow the restore (it joins once
    built). Either way the restored domain runs in its own group, with its cap."""
    for name, settings in (("free", {}), ("capped", {"cap": 50})):
        dom = guests_of.create(name, SPIN, **settings)
        image = tmp_path / f"{name}.save"
        daemon.pyxen("save", dom["name"], str(image))
        daemon.pyxen("restore", str(image))
        again = daemon.domains()[dom["name"]]
        group = cpu_cgroup(again["pid"])
        assert group.name == f"dom{again['domid']}-{dom['name']}"
        if settings:  # the cap holds after the restore: CFS quota 50 % of the period
            if (group / "cpu.max").exists():  # cgroup v2: "quota period"
                quota, period = map(int, (group / "cpu.max").read_text().split())
            else:
                quota, period = (int((group / f"cpu.cfs_{key}_us").read_text())
                                 for key in ("quota", "period"))
            assert quota * 2 == period


@needs_cgroups
@needs_two_cpus
def test_weights_256_and_1024_on_one_core_share_it_unevenly(daemon: Daemon,
                                                           guests_of: Guests) -> None:
    heavy = guests_of.create("heavy", SPIN, cpu_weight=1024, cpus=["1"])
    light = guests_of.create("light", SPIN, cpus=["1"])
    # every domain has a group, the default weight's too: siblings compared by weight
    assert cpu_cgroup(light["pid"]).name == f"dom{light['domid']}-{light['name']}"
    assert cpu_cgroup(light["pid"]).parent == cpu_cgroup(heavy["pid"]).parent
    threads = {}
    for dom in (heavy, light):
        tid = vcpu_thread(daemon, dom["name"])
        assert cpus_allowed(dom["pid"], tid) == "1"
        busy(dom["pid"], tid)
        threads[dom["name"]] = (dom["pid"], tid)
    before = {name: thread_seconds(*t) for name, t in threads.items()}
    time.sleep(MEASURE_S + 1)
    used = {name: thread_seconds(*t) - before[name] for name, t in threads.items()}
    ratio = used[heavy["name"]] / max(used[light["name"]], 0.01)
    assert ratio > 1.5, f"weights 1024 and 256 on one core, CPU seconds {used}"
    listed = daemon.pyxen("sched-credit").stdout.splitlines()
    assert f"{heavy['name']:<33} {heavy['domid']:>4}   1024    0" in listed
    assert f"{light['name']:<33} {light['domid']:>4}    256    0" in listed


@needs_two_cpus
def test_cpus_pins_the_vcpu_thread_and_vcpu_pin_moves_it_live(daemon: Daemon,
                                                              guests_of: Guests) -> None:
    dom = guests_of.create("pinned", IDLE, cpus=["1"])
    pid, name = dom["pid"], dom["name"]
    tid = vcpu_thread(daemon, name)
    assert cpus_allowed(pid, tid) == "1"
    rows = daemon.pyxen("vcpu-list", name).stdout.splitlines()
    assert rows[0] == ("Name                                ID  VCPU   CPU State   Time(s) "
                       "Affinity (Hard / Soft)")
    assert len(rows) == 2 and rows[1].startswith(f"{name:<32} {dom['domid']:>5}     0 ")
    assert rows[1].endswith("  1 / all") and rows[1].split()[3].isdigit()
    daemon.pyxen("vcpu-pin", name, "0", "0")
    assert cpus_allowed(pid, tid) == "0"
    assert daemon.pyxen("vcpu-list", name).stdout.splitlines()[1].endswith("  0 / all")
    daemon.pyxen("vcpu-pin", name, "all", "all")
    every = sched.format_cpus(host_cpus())
    assert cpus_allowed(pid, tid) == every
    one_line_refusal(daemon.pyxen("vcpu-pin", name, "3", "0", check=False),
                     "Could not set affinity for vcpu `3'")
    one_line_refusal(daemon.pyxen("vcpu-pin", name, "0", "0", "1", check=False),
                     "no soft affinity")
    assert cpus_allowed(pid, tid) == every


# --- memory, vCPUs and the credit table through XenStore and the cgroup files -----------------
@needs_xenstore_utils
def test_mem_set_mem_max_and_vcpu_set_write_what_libxl_writes(daemon: Daemon,
                                                              guests_of: Guests) -> None:
    dom = guests_of.create("balloon", IDLE, maxmem=48, maxvcpus=2)
    name, home = dom["name"], f"/local/domain/{dom['domid']}"
    vm = xenstore_read(daemon, f"{home}/vm")
    assert [xenstore_read(daemon, f"{home}/cpu/{i}/availability") for i in (0, 1)] == \
        ["online", "offline"]
    daemon.pyxen("mem-set", name, "40m")
    assert xenstore_read(daemon, f"{home}/memory/target") == "40960"
    assert xenstore_read(daemon, f"{vm}/memory") == "40"
    one_line_refusal(daemon.pyxen("mem-set", name, "64", check=False),
                     "memory_dynamic_max must be less than or equal to memory_static_max")
    one_line_refusal(daemon.pyxen("mem-max", name, "20480k", check=False),
                     "memory_static_max must be greater than or equal to memory_dynamic_max")
    assert xenstore_read(daemon, f"{home}/memory/target") == "40960"
    assert xenstore_read(daemon, f"{home}/memory/static-max") == "49152"
    daemon.pyxen("mem-max", name, "64M")
    assert xenstore_read(daemon, f"{home}/memory/static-max") == "65536"
    daemon.pyxen("mem-set", name, "64")  # now within the new static-max
    assert xenstore_read(daemon, f"{home}/memory/target") == "65536"
    top = daemon.pyxen("top", "-b", "-i", "1", "-d", "0").stdout.splitlines()
    assert top[0].split()[:9] == ["NAME", "STATE", "CPU(sec)", "CPU(%)", "MEM(k)", "MEM(%)",
                                  "MAXMEM(k)", "MAXMEM(%)", "VCPUS"]
    row = next(line.split() for line in top if line.split()[0] == name[:10])
    assert row[4] == "32768" and row[6] == str(65536 + 1024) and row[8] == "2"
    daemon.pyxen("vcpu-set", name, "2")
    assert [xenstore_read(daemon, f"{home}/cpu/{i}/availability") for i in (0, 1)] == \
        ["online", "online"]
    daemon.request("vcpu_set", dom=name, count=1)
    assert xenstore_read(daemon, f"{home}/cpu/1/availability") == "offline"
    one_line_refusal(daemon.pyxen("vcpu-set", name, "3", check=False),
                     "Requested 3 VCPUs, however maxcpus is 2!")


@needs_cgroups
def test_sched_credit_prints_xls_table_and_sets_weight_and_cap_live(daemon: Daemon,
                                                                    guests_of: Guests) -> None:
    dom = guests_of.create("credit", IDLE)
    name, domid = dom["name"], dom["domid"]
    listed = daemon.pyxen("sched-credit").stdout.splitlines()
    assert listed[:3] == ["Cpupool Pool-0: [sched params unavailable]",
                          "Name                                ID Weight  Cap",
                          "Domain-0                             0    256    0"]
    assert f"{name:<33} {domid:>4}    256    0" in listed[3:]
    daemon.pyxen("sched-credit", "-d", name, "-w", "512", "-c", "20")
    assert daemon.pyxen("sched-credit", "-d", name).stdout.splitlines() == [
        "Name                                ID Weight  Cap", f"{name:<33} {domid:>4}    512   20"]
    group = cpu_cgroup(dom["pid"])
    assert group.name == f"dom{domid}-{name}"
    if (group / "cpu.max").exists():  # the unified hierarchy
        assert (group / "cpu.max").read_text().split() == ["20000", "100000"]
        assert (group / "cpu.weight").read_text().strip() == "200"
    else:
        assert (group / "cpu.cfs_quota_us").read_text().strip() == "20000"
        assert (group / "cpu.shares").read_text().strip() == "2048"
    one_line_refusal(daemon.pyxen("sched-credit", "-d", name, "-w", "0", check=False),
                     "Cpu weight out of range, valid values are within range from 1 to 65535")
    one_line_refusal(daemon.pyxen("sched-credit", "-d", name, "-c", "101", check=False),
                     "Cpu cap out of range, valid range is from 0 to 100")


# --- a host without cgroups -------------------------------------------------------------------
class _Domain:
    """Enough of a HostedDomain for sched.prepare."""

    def __init__(self, spec: dict[str, Any]) -> None:
        self.spec, self.domid, self.name = spec, 7, spec["name"]
        self.gone: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.on_vcpu_thread = None


def test_without_cgroups_a_domain_asking_for_a_cap_is_refused_in_one_line(monkeypatch) -> None:
    monkeypatch.setattr("pyxen.host.limits._find_hierarchies", lambda root: {})

    async def prepare(spec: dict[str, Any]) -> str:
        try:
            sched.prepare(_Domain(spec))  # type: ignore[arg-type]
        except RuntimeError as e:  # the daemon makes this its create's HostError
            return str(e)
        return ""

    plain = asyncio.run(prepare({"name": "plain", "cap": 0, "cpu_weight": 256}))
    assert plain == ""  # the defaults need no cgroup: such a host still runs domains
    capped = asyncio.run(prepare({"name": "capped", "cap": 50, "cpu_weight": 256}))
    assert capped == "this host has no cgroup cpu controller"
    weighted = asyncio.run(prepare({"name": "weighted", "cap": 0, "cpu_weight": 512}))
    assert weighted == "this host has no cgroup cpu controller"


# --- xl's syntax and formats, without a daemon ----------------------------------------------------
@pytest.mark.parametrize(("text", "kib"), [
    ("64", 65536), ("40m", 40960), ("64M", 65536), ("2g", 2 << 20), ("1T", 1 << 30),
    ("20480k", 20480), ("4096b", 4), ("5000B", 4), (" +8", 8192),
    ("12q", None), ("1kb", None), ("-5", None), ("", None), ("m", None), ("0x10", None),
])
def test_memory_sizes_read_as_xl_reads_them(text: str, kib: int | None) -> None:
    assert parse_mem_size_kb(text) == kib


def test_vcpu_list_rows_and_affinities_are_printed_as_xl_prints_them() -> None:
    assert [format_affinity(cpus, 4) for cpus in ([0, 1, 2, 3], [1], [], [0, 1, 3])] == \
        ["all", "1", "none", "0-1,3"]
    online = {"name": "web", "domid": 3, "vcpu": 0, "online": True, "cpu": 1, "running": False,
              "blocked": True, "time": 12.34, "hard": [1], "soft": [0, 1]}
    assert vcpu_row(online, 2) == ("web                                  3     0     1   -b-"
                                   "      12.3  1 / all")
    offline = dict(online, vcpu=1, online=False, time=0.0, hard=[0, 1])
    assert vcpu_row(offline, 2) == ("web                                  3     1     -   --p"
                                    "       0.0  all / all")


def test_top_batch_lines_follow_xentop() -> None:
    assert [xentop_state(s) for s in ("r-----", "-b----", "--p---", "---sc-", "-----d")] == \
        ["-----r", "--b---", "----p-", "-s-c--", "d-----"]
    dom = {"domid": 4, "name": "a-long-domain-name", "state": "r-----", "cpu_ns": 7_500_000_000,
           "mem_kib": 32768, "maxmem_kib": 33792, "vcpus": 2, "vcpu_seconds": [7.2, None],
           "sampled_ns": 5_000_000_000}
    snapshot = {"domains": [dom], "total_kib": 1 << 20, "free_kib": 1 << 19, "nr_cpus": 2,
                "cpu_mhz": 0, "xen_version": "4.17-pyxen"}
    before = dict(dom, cpu_ns=6_500_000_000, sampled_ns=3_000_000_000)
    args = type("Args", (), {"batch": True, "dom0_first": False, "full_name": False,
                             "repeat_header": False, "vcpus": True})()
    header, row, vcpus = top_lines(snapshot, {4: before}, args)
    assert header.startswith("      NAME  STATE   CPU(sec) CPU(%)     MEM(k) MEM(%)  MAXMEM(k) "
                              "MAXMEM(%) VCPUS")
    assert row.startswith("a-long-dom -----r          7   50.0      32768    3.1      33792"
                          "       3.2     2")
    assert vcpus == "VCPUs(sec):   0:          7s"
