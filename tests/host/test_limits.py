"""Per-domain limits, checked from outside on real processes in real cgroups: what the kernel
reports (/proc, cpu.stat) and what the processes get, not what pyxen wrote."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator

import pytest

from pyxen.host.limits import (
    DomainLimits,
    LimitsUnavailable,
    _find_hierarchies,
    host_cpus,
    pin_process,
    pin_thread,
)

BUSY = "while True: pass"
# A process with a second thread; prints that thread's TID and waits for stdin to close.
THREADED = ("import sys, threading, time\n"
            "t = threading.Thread(target=time.sleep, args=(600,), daemon=True)\n"
            "t.start()\n"
            "print(t.native_id, flush=True)\n"
            "sys.stdin.read()\n")
# Waits for a line, then touches `n` MiB (bytes repetition writes every page).
ALLOC = ("import sys\n"
         "sys.stdin.readline()\n"
         "b = b'\\x01' * ({n} << 20)\n"
         "print('survived', len(b), flush=True)\n")
MEASURE_S = 3.0


class Harness:
    """Child processes and cgroups of one test; close() kills and reaps the children first,
    then removes the groups, whatever the test did."""

    def __init__(self) -> None:
        self.tag = f"pyxen-test-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.procs: list[subprocess.Popen[str]] = []
        self.groups: list[DomainLimits] = []

    def spawn(self, code: str = BUSY) -> subprocess.Popen[str]:
        proc = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, text=True)
        self.procs.append(proc)
        return proc

    def limits(self, leaf: str) -> DomainLimits:
        limits = DomainLimits.create(f"{self.tag}/{leaf}")
        self.groups.append(limits)
        return limits

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
            for stream in (proc.stdin, proc.stdout):
                if stream is not None:
                    stream.close()
        errors = []
        for limits in self.groups:
            try:
                limits.remove()
            except Exception as e:  # noqa: BLE001 - remove every group, then report
                errors.append(str(e))
        assert not errors, errors


@pytest.fixture
def host() -> Iterator[Harness]:
    if os.geteuid() != 0:
        pytest.skip("cgroup limits need root")
    if "cpu" not in _find_hierarchies(None):
        pytest.skip("this host has no cgroup cpu controller")
    harness = Harness()
    try:
        yield harness
    finally:
        harness.close()


def cpu_seconds(pid: int) -> float:
    """User + system time of a process, from /proc (not from the cgroup under test)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu_stat(limits: DomainLimits, key: str) -> int:
    with open(os.path.join(limits.path, "cpu.stat")) as f:
        return dict(line.split() for line in f)[key]  # type: ignore[return-value]


def cpus_allowed(pid: int, tid: int) -> set[int]:
    with open(f"/proc/{pid}/task/{tid}/status") as f:
        text = next(line for line in f if line.startswith("Cpus_allowed_list:"))
    cpus: set[int] = set()
    for item in text.split(":", 1)[1].strip().split(","):
        low, _, high = item.partition("-")
        cpus.update(range(int(low), int(high or low) + 1))
    return cpus


def wait_for(condition, timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def one_line(excinfo: pytest.ExceptionInfo[BaseException]) -> str:
    text = str(excinfo.value)
    assert text and "\n" not in text
    return text


# ---------------------------------------------------------------------------------------------
# CPU


def test_cap_holds_a_busy_process_below_one_core(host: Harness) -> None:
    proc = host.spawn()
    limits = host.limits("capped")
    limits.add_process(proc.pid)
    limits.set_cap(50)
    cpu0, wall0 = cpu_seconds(proc.pid), time.monotonic()
    time.sleep(MEASURE_S)
    share = (cpu_seconds(proc.pid) - cpu0) / (time.monotonic() - wall0)
    assert share < 0.75, f"capped at 50% yet used {share:.0%} of a core"
    assert int(cpu_stat(limits, "nr_throttled")) > 0   # the kernel enforced the quota

    limits.set_cap(0)                                    # no cap: throttling stops
    time.sleep(0.3)                                      # let the current period end
    before = int(cpu_stat(limits, "nr_throttled"))
    time.sleep(1.0)
    assert int(cpu_stat(limits, "nr_throttled")) == before


def test_heavier_weight_gets_more_of_a_shared_core(host: Harness) -> None:
    core = {max(os.sched_getaffinity(0))}
    light, heavy = host.spawn(), host.spawn()
    for proc, leaf, weight in ((light, "light", 256), (heavy, "heavy", 1024)):
        pin_process(proc.pid, core)
        limits = host.limits(leaf)
        limits.add_process(proc.pid)
        limits.set_weight(weight)
    start = {p.pid: cpu_seconds(p.pid) for p in (light, heavy)}
    time.sleep(MEASURE_S)
    used = {p.pid: cpu_seconds(p.pid) - start[p.pid] for p in (light, heavy)}
    assert used[heavy.pid] > 1.5 * used[light.pid], used


def test_cpu_usage_counts_the_group_time(host: Harness) -> None:
    proc = host.spawn()
    limits = host.limits("usage")
    limits.add_process(proc.pid)
    first = limits.cpu_usage_ns()
    assert wait_for(lambda: limits.cpu_usage_ns() > first + 200_000_000)
    proc.kill()
    proc.wait()
    final = limits.cpu_usage_ns()
    assert final >= first + 200_000_000              # cumulative: kept after the exit
    assert limits.cpu_usage_ns() == final


def test_add_process_moves_every_thread(host: Harness) -> None:
    proc = host.spawn(THREADED)
    assert proc.stdout is not None
    proc.stdout.readline()
    limits = host.limits("threads")
    limits.add_process(proc.pid)
    tids = os.listdir(f"/proc/{proc.pid}/task")
    assert len(tids) >= 2
    for tid in tids:
        with open(f"/proc/{proc.pid}/task/{tid}/cgroup") as f:
            assert any(line.rstrip().endswith(f":/{host.tag}/threads") for line in f), tid


# ---------------------------------------------------------------------------------------------
# Pinning


def test_pin_thread_sets_that_thread_only() -> None:
    proc = subprocess.Popen([sys.executable, "-c", THREADED], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        tid = int(proc.stdout.readline())
        allowed = os.sched_getaffinity(0)
        one = {min(allowed)}
        pin_thread(tid, one)
        assert cpus_allowed(proc.pid, tid) == one
        assert cpus_allowed(proc.pid, proc.pid) == allowed
        pin_process(proc.pid, allowed)
        for task in os.listdir(f"/proc/{proc.pid}/task"):
            assert cpus_allowed(proc.pid, int(task)) == allowed

        with pytest.raises(ValueError) as bad:
            pin_thread(tid, {max(host_cpus()) + 1})
        assert "not on this host" in one_line(bad)
        with pytest.raises(ValueError) as empty:
            pin_thread(tid, set())
        one_line(empty)
    finally:
        proc.kill()
        proc.wait()
        proc.stdin.close()  # type: ignore[union-attr]
        proc.stdout.close()  # type: ignore[union-attr]
    with pytest.raises(ProcessLookupError) as gone:
        pin_thread(tid, one)
    one_line(gone)


# ---------------------------------------------------------------------------------------------
# Memory


def test_memory_max_kills_a_process_over_it_and_none_lifts_it(host: Harness) -> None:
    limits = host.limits("memory")
    limits.set_memory_max(64 << 20)
    hog = host.spawn(ALLOC.format(n=256))
    limits.add_process(hog.pid)
    out, _ = hog.communicate("go\n", timeout=60)
    assert hog.returncode == -signal.SIGKILL and "survived" not in out

    limits.set_memory_max(None)
    fine = host.spawn(ALLOC.format(n=128))
    limits.add_process(fine.pid)
    out, _ = fine.communicate("go\n", timeout=60)
    assert fine.returncode == 0 and "survived" in out


# ---------------------------------------------------------------------------------------------
# Removal


def test_remove_deletes_the_groups_and_may_be_repeated(host: Harness) -> None:
    proc = host.spawn()
    limits = host.limits("gone")
    limits.add_process(proc.pid)
    limits.set_cap(30)
    path = limits.path
    assert os.path.isdir(path)
    with pytest.raises(RuntimeError) as busy:
        limits.remove()                                 # the process still lives
    assert "still holds processes" in one_line(busy)
    proc.kill()
    proc.wait()
    limits.remove()
    assert not os.path.exists(path)
    assert not os.path.exists(os.path.dirname(path))    # the parent it made, now empty
    limits.remove()


# ---------------------------------------------------------------------------------------------
# Bad input and hosts without cgroups (a directory with no hierarchy in it)


def test_bad_values_are_one_line_value_errors(tmp_path) -> None:
    limits = DomainLimits.create("pyxen/dom1", root=str(tmp_path))
    for bad in (0, 65536, -5, True, "256", 2.5):
        with pytest.raises(ValueError) as e:
            limits.set_weight(bad)  # type: ignore[arg-type]
        assert "weight" in one_line(e)
    for bad in (-1, 65536, None):
        with pytest.raises(ValueError) as e:
            limits.set_cap(bad)  # type: ignore[arg-type]
        assert "cap" in one_line(e)
    with pytest.raises(ValueError) as e:
        limits.set_cap(201, vcpus=2)
    assert "0 to 200 for 2 vCPUs" in one_line(e)
    with pytest.raises(ValueError) as e:
        limits.set_memory_max(0)
    one_line(e)
    for name in ("", "/abs", "pyxen/../etc", "pyxen//dom1"):
        with pytest.raises(ValueError) as e:
            DomainLimits.create(name, root=str(tmp_path))
        one_line(e)


def test_host_without_cgroups_fails_only_when_a_limit_is_asked(tmp_path) -> None:
    limits = DomainLimits.create("pyxen/dom1", root=str(tmp_path))
    limits.add_process(os.getpid())
    limits.set_cap(0)
    limits.set_weight(256)
    limits.set_memory_max(None)
    assert limits.path == ""
    assert limits.cpu_usage_ns() > 0                      # from /proc instead
    for ask in (lambda: limits.set_cap(50), lambda: limits.set_weight(512),
                lambda: limits.set_memory_max(1 << 30)):
        with pytest.raises(LimitsUnavailable) as e:
            ask()
        assert "no cgroup" in one_line(e)
    limits.remove()
    assert os.listdir(tmp_path) == []


# ---------------------------------------------------------------------------------------------
# The v2 interface files. This host's cpu controller is on v1, so these are checked on a
# directory laid out as cgroup2 lays one out (the files the kernel makes in each group).


def _v2_dir(path, controllers: str, subtree: str = "") -> None:
    path.mkdir(exist_ok=True)
    files = {"cgroup.controllers": controllers, "cgroup.subtree_control": subtree,
             "cgroup.procs": "", "cpu.max": "max 100000", "cpu.weight": "100",
             "memory.max": "max", "cpu.stat": "usage_usec 1234\nuser_usec 1000\n"}
    for name, text in files.items():
        (path / name).write_text(text)


def test_v2_files(tmp_path) -> None:
    _v2_dir(tmp_path, "cpuset cpu io memory", "cpu")
    _v2_dir(tmp_path / "pyxen", "cpu memory", "cpu")
    _v2_dir(tmp_path / "pyxen" / "dom1", "cpu memory")
    limits = DomainLimits.create("pyxen/dom1", root=str(tmp_path))
    group = tmp_path / "pyxen" / "dom1"
    assert limits.path == str(group)
    assert (tmp_path / "cgroup.subtree_control").read_text() == "+memory"  # cpu was there

    def read(name: str) -> str:
        return (group / name).read_text().strip()

    limits.add_process(4321)
    assert read("cgroup.procs") == "4321"
    limits.set_cap(50)
    assert read("cpu.max") == "50000 100000"
    limits.set_cap(250, vcpus=4)
    assert read("cpu.max") == "250000 100000"
    limits.set_cap(0)
    assert read("cpu.max") == "max 100000"
    for weight, expected in ((256, "100"), (1024, "400"), (1, "1"), (65535, "10000")):
        limits.set_weight(weight)
        assert read("cpu.weight") == expected
    limits.set_memory_max(1 << 30)
    assert read("memory.max") == str(1 << 30)
    limits.set_memory_max(None)
    assert read("memory.max") == "max"
    assert limits.cpu_usage_ns() == 1_234_000


def test_v2_without_cpu_controller(tmp_path) -> None:
    _v2_dir(tmp_path, "io memory")
    limits = DomainLimits.create("dom1", root=str(tmp_path))
    limits.set_cap(0)
    with pytest.raises(LimitsUnavailable) as e:
        limits.set_cap(50)
    assert "cpu controller" in one_line(e)
