"""`pyxen migrate` between two hosts: two real daemons in two network namespaces joined by a
veth pair, as two machines on a link.

The counter guest (guests/counter.c) moves from host A to host B while it counts and
rewrites its pattern in ring 3, and back;
its own checks of time, timer ticks and a 1 MiB pattern must pass across both moves, and
its count must go on from where it was. A vchan pair streaming through grants moves
together (`--with`) and streams on. When the link goes down in the middle of a
migration, the domain runs on at the source and nothing is left at the target. Linux with a
PV disk and NIC is saved, restored and migrated while it is pinged."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from conftest import AVAILABLE
from guestkit import Report
from host.hostkit import Daemon, assert_stays_still, console_log, finished, wait_for
from host.linux_guest import (
    GUEST_IP,
    boot_linux,
    linux_kit,
    on_disk,
    ping,
    power_off,
    typed,
)
from host.netns import BRIDGE, HOST_IP, PINGER, NetnsUnavailable, can_make_netns, run
from host.test_save_linked import streaming_pair
from pyxen.host.limits import remove_abandoned

PROGRESS = re.compile(rb"counter_progress count=(\d+) ticks=(\d+) now=(\d+)")
ADDRESSES = {"a": "10.78.0.1", "b": "10.78.0.2"}
GUEST_NET = {"a": HOST_IP, "b": "10.77.0.3"}  # each host's address on the guests' subnet
PORT = 8002
VCHAN_MIB = 256  # each way: mid-stream at both moves (64 MiB took ~10 s here)


def progress(daemon: Daemon, name: str) -> list[tuple[int, ...]]:
    return [tuple(map(int, m)) for m in PROGRESS.findall(console_log(daemon, name))]


@contextlib.contextmanager
def two_hosts() -> Iterator[dict[str, str]]:
    """Namespaces a and b, each with a bridge xenbr0 (its ADDRESSES, and an address on the
    guests' subnet: a has the tests' HOST_IP), linked by veth-a / veth-b on the bridges:
    one Ethernet segment, as two hosts on a switch."""
    names = {side: f"pyxen-m{side}{time.monotonic_ns() % 10**9}" for side in "ab"}
    made = []
    try:
        for name in names.values():
            result = subprocess.run(["ip", "netns", "add", name], capture_output=True, text=True)
            if result.returncode:
                raise NetnsUnavailable(result.stderr.strip())
            made.append(name)
        subprocess.run(["ip", "link", "add", "veth-a", "netns", names["a"], "type", "veth",
                        "peer", "name", "veth-b", "netns", names["b"]], check=True,
                       capture_output=True)
        for side, name in names.items():
            run(name, "ip", "link", "set", "lo", "up")
            run(name, "ip", "link", "add", BRIDGE, "type", "bridge")
            run(name, "ip", "link", "set", f"veth-{side}", "master", BRIDGE)
            run(name, "ip", "addr", "add", f"{ADDRESSES[side]}/24", "dev", BRIDGE)
            run(name, "ip", "addr", "add", f"{GUEST_NET[side]}/24", "dev", BRIDGE)
            for link in (f"veth-{side}", BRIDGE):
                run(name, "ip", "link", "set", link, "up")
        yield names
    finally:
        for name in made:
            subprocess.run(["ip", "netns", "delete", name], capture_output=True)


@pytest.fixture
def hosts(guests, tmp_path: Path) -> Iterator[dict[str, Daemon]]:
    if "soft" not in AVAILABLE:
        pytest.skip("host-mode tests run their guests on the software CPU")
    if not can_make_netns():
        pytest.skip("two hosts need network namespaces and veth (root, iproute2)")
    with contextlib.ExitStack() as stack:
        try:
            names = stack.enter_context(two_hosts())
        except NetnsUnavailable as e:
            pytest.skip(f"no network namespace here: {e}")
        daemons = {}
        for side, name in names.items():
            (tmp_path / side).mkdir()
            daemon = Daemon(tmp_path / side, "--migrate-listen", f"{ADDRESSES[side]}:{PORT}",
                            netns=name)
            stack.callback(daemon.stop)
            daemons[side] = daemon
        daemons["netns"] = names  # type: ignore[assignment]
        yield daemons


def migrate(source: Daemon, name: str, to: str, **options: str) -> str:
    args = [f"--{k.replace('_', '-')}={v}" for k, v in options.items()]
    return source.pyxen("migrate", *args, name, to, timeout=300).stdout


def test_a_counting_guest_moves_there_and_back(hosts: dict[str, Daemon]) -> None:
    a, b = hosts["a"], hosts["b"]
    a.create("counter", "counter", "seconds=12 report_ms=300 ring=3 console=hvc0")
    wait_for("a few reports", lambda: len(progress(a, "counter")) >= 3)
    out = migrate(a, "counter", ADDRESSES["b"])
    assert re.search(r"Migrated domain counter to 10\.78\.0\.2: \d+ rounds", out), out
    assert re.search(r"round 1: \d+ pages sent, \d+ dirty since, \d+ pages/s; a stop now "
                     r"would take ~[\d.]+ ms", out), out  # the progress display
    assert "counter" not in a.domains() and "counter" in b.domains()
    on_a = progress(a, "counter")
    wait_for("reports on host b", lambda: len(progress(b, "counter")) >= 3)
    out = migrate(b, "counter", f"{ADDRESSES['a']}:{PORT}")
    assert "counter" not in b.domains() and "counter" in a.domains()
    wait_for("the guest to finish on host a", lambda: finished(a, "counter"), 300)
    on_b = progress(b, "counter")
    # the guest's whole output: its first part on a, then b, then a again
    report = Report.parse(console_log(a, "counter") + console_log(b, "counter"))
    report.assert_all_passed()
    assert {"counter.time_monotonic", "counter.ticks_continue", "counter.tick_cadence",
            "counter.memory_intact", "counter.user_runs"} <= set(report.passed)
    back = progress(a, "counter")[len(on_a):]
    counts = [p[0] for p in on_a + on_b + back]
    assert counts == sorted(counts), "the count went back across a migration"
    assert on_b and back and on_b[0][0] >= on_a[-1][0] and back[0][0] >= on_b[-1][0]
    times = [p[2] for p in on_a + on_b + back]
    gaps = [later - earlier for earlier, later in zip(times, times[1:], strict=False)]
    assert max(gaps) < 2_000_000_000, gaps  # no jump in the guest's time


def test_a_vchan_pair_migrates_together_and_streams_on(hosts: dict[str, Daemon]) -> None:
    """Two guests streaming to each other through granted rings and an event channel
    (test_save_linked's vchan pair) go to host b together (--with) mid-stream, and back to
    a, joined again each time; each receiver's checks find every byte once, in order. One
    alone cannot leave its peer behind: one line says why, and both stream on."""
    a, b = hosts["a"], hosts["b"]
    domids = streaming_pair(a, VCHAN_MIB)
    out = migrate(a, "server", ADDRESSES["b"], **{"with": "client"})
    for name in ("server", "client"):
        assert re.search(rf"Migrated domain {name} to 10\.78\.0\.2: \d+ rounds", out), out
    assert not a.domains()
    assert {name: d["domid"] for name, d in b.domains().items()} == domids  # ids kept
    on_a = {name: console_log(a, name) for name in domids}
    alone = b.pyxen("migrate", "server", ADDRESSES["a"], check=False, timeout=300)
    assert alone.returncode == 1 and alone.stderr.count("\n") == 1, alone.stderr
    assert f"bound to domain {domids['client']}, which stays on this host" in alone.stderr
    assert set(b.domains()) == {"server", "client"}
    wait_for("host a to let go of what it began to receive", lambda: not a.domains())
    migrate(b, "client", f"{ADDRESSES['a']}:{PORT}", **{"with": "server"})
    assert set(a.domains()) == {"server", "client"} and not b.domains()
    on_b = {name: console_log(b, name) for name in domids}
    for name in domids:
        wait_for(f"the {name} to finish", lambda n=name: b"RESULT" in console_log(a, n),
                 timeout=600)
    logs = {name: console_log(a, name) for name in domids}  # host a's log has both visits
    for name in domids:  # each move came mid-stream: a receiver prints its result at once
        assert b"vchan.stream_" not in on_a[name] + on_b[name], name
    reports = {name: Report.parse(on_b[name] + logs[name]) for name in domids}
    for report in reports.values():
        report.assert_all_passed()
        assert int(report.value("stream_bytes")) == VCHAN_MIB << 20
    assert "vchan.stream_c2s" in reports["server"].passed
    assert "vchan.stream_s2c" in reports["client"].passed
    for host in (a, b):
        text = "".join((host.dir / "log" / f"domain-{n}.log").read_text() for n in domids)
        for left_behind in ("not there to bind", "cannot be mapped again",
                            "stays on its old page", "Traceback"):
            assert left_behind not in text


def test_a_migration_through_an_ssh_like_command(hosts: dict[str, Daemon],
                                                 tmp_path: Path) -> None:
    """`pyxen migrate -s SSHCOMMAND`, as xl's: the stream goes through the stdin and stdout
    of a command at whose far end `pyxen migrate-receive` hands it to that host's daemon
    (through its API socket: no TCP port involved). `ip netns exec` into host b stands in
    for ssh (the same pipes); with -s "" the HOST argument is the whole command. A far end
    without a daemon fails in one line that says so, and the guest runs on."""
    a, b = hosts["a"], hosts["b"]
    netns: dict[str, str] = hosts["netns"]  # type: ignore[assignment]
    a.create("counter", "counter", "seconds=10 report_ms=300 console=hvc0")
    wait_for("a few reports", lambda: len(progress(a, "counter")) >= 3)
    receive = f"{sys.executable} -m pyxen.cli migrate-receive --host"
    nowhere = a.pyxen("migrate", "-s", "", "counter", f"{receive} {b.dir}/none.sock",
                      check=False, timeout=120)
    assert nowhere.returncode == 1 and nowhere.stderr.count("\n") == 1, nowhere.stderr
    assert "no pyxen daemon at" in nowhere.stderr, nowhere.stderr
    assert "counter" in a.domains()
    far_end = f"ip netns exec {netns['b']} {receive} {b.socket}"
    out = a.pyxen("migrate", "-s", "", "counter", far_end, timeout=300).stdout
    assert f"Migrated domain counter to {far_end}: " in out, out
    assert "counter" not in a.domains() and "counter" in b.domains()
    on_a = console_log(a, "counter")
    # back, through `SSHCOMMAND HOST pyxen migrate-receive` with a stand-in for ssh
    ssh = tmp_path / "fake-ssh"
    ssh.write_text(f"""#!/bin/sh
[ "$1" = host-a ] && [ "$2" = pyxen ] || {{ echo "fake-ssh: unexpected $*" >&2; exit 255; }}
shift 2
exec ip netns exec {netns['a']} {sys.executable} -m pyxen.cli "$@" --host {a.socket}
""")
    ssh.chmod(0o755)
    b.pyxen("migrate", "-s", str(ssh), "counter", "host-a", timeout=300)
    assert "counter" in a.domains() and "counter" not in b.domains()
    wait_for("the guest to finish on host a", lambda: finished(a, "counter"), 300)
    report = Report.parse(on_a + console_log(b, "counter") + console_log(a, "counter")[len(on_a):])
    report.assert_all_passed()
    assert "counter.memory_intact" in report.passed
    assert "Traceback" not in a.errors() + b.errors()


def test_a_paused_domain_migrates_and_runs_there_unless_p(hosts: dict[str, Daemon]) -> None:
    """`pyxen pause`d, a domain still migrates (its rounds are quick: it writes nothing) and
    runs on the target, as xl's migrate resumes it; with -p it arrives paused and does
    not count until `pyxen unpause`."""
    a, b = hosts["a"], hosts["b"]
    a.create("counter", "counter", "seconds=6 report_ms=200 console=hvc0")
    wait_for("a few reports", lambda: len(progress(a, "counter")) >= 3)
    a.pyxen("pause", "counter")
    migrate(a, "counter", ADDRESSES["b"])
    assert b.domains()["counter"]["state"][2] == "-"
    wait_for("reports on host b", lambda: len(progress(b, "counter")) >= 2)
    out = b.pyxen("migrate", "-p", "counter", f"{ADDRESSES['a']}:{PORT}", timeout=300).stdout
    assert "Migrated domain counter" in out
    assert a.domains()["counter"]["state"] == "--p---"
    assert_stays_still(lambda: len(progress(a, "counter")), "the paused guest's reports")
    a.pyxen("unpause", "counter")
    wait_for("the guest to finish on host a", lambda: finished(a, "counter"), 300)
    Report.parse(console_log(a, "counter") + console_log(b, "counter")).assert_all_passed()


def fails_midway(a: Daemon, b: Daemon, fault: Callable[[], None]) -> None:
    """A 256 MiB counter (its first round takes a while) migrating from a to b while
    `fault` strikes once b is receiving it: one line of error, and it runs on at a."""
    a.create("counter", "counter", "report_ms=300 console=hvc0", memory=256)
    wait_for("a report", lambda: progress(a, "counter"))

    def strike() -> None:
        wait_for("host b to receive", lambda: "counter" in b.domains(), 120)
        fault()

    striker = threading.Thread(target=strike)
    striker.start()
    result = a.pyxen("migrate", "counter", ADDRESSES["b"], check=False, timeout=600)
    striker.join()
    assert result.returncode == 1 and result.stderr.count("\n") == 1, result.stderr
    assert "counter" in a.domains()
    seen = len(progress(a, "counter"))
    wait_for("the guest to run on at the source", lambda: len(progress(a, "counter")) > seen)
    assert "Traceback" not in a.errors()


def test_a_link_cut_mid_migration_leaves_the_domain_at_the_source(
        hosts: dict[str, Daemon]) -> None:
    a, b = hosts["a"], hosts["b"]
    names: dict[str, str] = hosts["netns"]  # type: ignore[assignment]
    fails_midway(a, b, lambda: run(names["a"], "ip", "link", "set", "veth-a", "down"))
    run(names["a"], "ip", "link", "set", "veth-a", "up")
    wait_for("host b to give up the half-received domain", lambda: not b.domains(), 300)
    assert "Traceback" not in b.errors()


def test_a_target_killed_mid_migration_leaves_the_domain_at_the_source(
        hosts: dict[str, Daemon]) -> None:
    a, b = hosts["a"], hosts["b"]

    def kill() -> None:  # host b dies: its daemon and the domain's process
        pid = wait_for("its process", lambda: b.domains().get("counter", {}).get("pid"), 120)
        os.kill(pid, signal.SIGKILL)
        b.process.kill()

    try:
        fails_midway(a, b, kill)
    finally:  # what a killed daemon cannot take away itself (a successor daemon would)
        b.process.wait(30)
        remove_abandoned(f"pyxen/host{b.process.pid}")


def test_a_target_without_room_refuses_and_the_domain_stays(hosts: dict[str, Daemon],
                                                            tmp_path: Path) -> None:
    a, b = hosts["a"], hosts["b"]
    names: dict[str, str] = hosts["netns"]  # type: ignore[assignment]
    b.stop()  # host b again, with 64 MiB for its domains
    small = Daemon(tmp_path / "b", "--migrate-listen", f"{ADDRESSES['b']}:{PORT}",
                   "--max-memory", "64", log_name="daemon-small.err", netns=names["b"])
    try:
        a.create("counter", "counter", "report_ms=300 console=hvc0", memory=128)
        wait_for("a report", lambda: progress(a, "counter"))
        result = a.pyxen("migrate", "counter", ADDRESSES["b"], check=False)
        assert result.returncode == 1, result.stdout
        assert result.stderr == ("pyxen: 10.78.0.2 refused the domain: not enough memory for "
                                 "domain counter: it needs 128 MiB, the host has 64 MiB "
                                 "free\n")
        assert "counter" in a.domains() and small.domains() == {}
        seen = len(progress(a, "counter"))
        wait_for("the guest to run on", lambda: len(progress(a, "counter")) > seen)
    finally:
        small.stop()


def test_linux_keeps_its_disk_and_network_across_a_save_and_a_migration(
        hosts: dict[str, Daemon], tmp_path: Path) -> None:
    """Linux with its root on an image both hosts reach (a shared disk) and eth0 on the
    bridged segment is saved and restored on host a, then moves to host b while host a
    pings it ten times a second. Its front ends never reconnect (the back ends carry on
    from the rings in its memory); it answers the pings from b (the stop costs a few at
    most; the new port announces the guest's MAC) and goes on writing its disk there."""
    a, b = hosts["a"], hosts["b"]
    names: dict[str, str] = hosts["netns"]  # type: ignore[assignment]
    kitpy, kit, disk = linux_kit(tmp_path)
    boot_linux(a, names["a"], kitpy, kit, disk, tmp_path)
    typed(a, b"echo before-$((6*7)) > /before.txt; sync; cat /before.txt", b"before-42")
    image = tmp_path / "linux.save"
    a.pyxen("save", "linux", str(image))
    assert "linux" not in a.domains()
    a.pyxen("restore", str(image))
    ping(names["a"])
    typed(a, b"cat /before.txt; echo saved-$((5*5)) > /saved.txt; sync; cat /saved.txt",
          b"saved-25")
    stop = tmp_path / "stop-pinging"
    pinger = subprocess.Popen(["ip", "netns", "exec", names["a"], sys.executable, "-c",
                               PINGER, GUEST_IP, str(stop)], stdout=subprocess.PIPE, text=True)
    try:
        time.sleep(3)
        out = migrate(a, "linux", ADDRESSES["b"])
        assert "linux" not in a.domains() and "linux" in b.domains(), out
        time.sleep(5)
    finally:
        stop.touch()
        result = json.loads(pinger.communicate(timeout=60)[0])
    answered = set(result["answered"])
    lost = [seq for seq in range(result["sent"]) if seq not in answered]
    assert len(answered) >= result["sent"] - 30, (result["sent"], lost)  # 3 s at most
    assert set(range(result["sent"] - 20, result["sent"] - 1)) <= answered, lost  # from b
    typed(b, b"cat /saved.txt; echo after-$((7*7)) > /after.txt; sync; cat /after.txt",
          b"after-49")
    power_off(b)
    log = (console_log(a, "linux") + console_log(b, "linux")).decode(errors="replace")
    after = log.split("before-42", 1)[1]  # from before the save on
    assert "blkfront: xvda:" not in after and "Initialising" not in after, after
    #                                      no reconnection, no driver started again
    assert [on_disk(disk, f"/{name}.txt") for name in ("before", "saved", "after")] == \
        ["before-42", "saved-25", "after-49"]
