"""PV network on the host: the kit's netfront guest (guests/netfront.c) on a TAP on a
bridge, all inside a network namespace the test makes: the host pings it and round-trips
UDP through it, two guests ping each other, xl's network commands, and the TAP going with
its domain."""

from __future__ import annotations

import contextlib
import re
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import AVAILABLE
from host.hostkit import Daemon, console_log, finished, wait_for
from host.netns import (
    BRIDGE,
    HOST_IP,
    PING,
    NetnsUnavailable,
    bridged_netns,
    can_make_netns,
    link_exists,
    run,
)
from pyxen.xenstore.client import Client

pytestmark = pytest.mark.skipif(not can_make_netns(),
                                reason="needs root for network namespaces, bridges and TAPs")
GUEST_A, GUEST_B = "10.77.0.2", "10.77.0.3"
UDP_ECHO = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(5)
for i in range(20):
    msg = b"echo %d " % i + bytes(range(256)) * 4
    for attempt in range(5):
        s.sendto(msg, (sys.argv[1], 7))
        try:
            data, peer = s.recvfrom(4096)
        except TimeoutError:
            continue
        break
    else:
        sys.exit("no echo for datagram %d" % i)
    assert data == msg and peer == (sys.argv[1], 7), (data[:20], peer)
print("echoed", i + 1)
"""


@pytest.fixture
def netns(guests) -> Iterator[str]:
    if "soft" not in AVAILABLE:
        pytest.skip("host-mode tests run their guests on the software CPU")
    with contextlib.ExitStack() as stack:
        try:
            name = stack.enter_context(bridged_netns())
        except NetnsUnavailable as e:
            pytest.skip(f"no network namespace here: {e}")
        yield name


@pytest.fixture
def daemon(netns: str, tmp_path: Path) -> Iterator[Daemon]:
    d = Daemon(tmp_path, netns=netns)
    try:
        yield d
    finally:
        d.stop()


def start_guest(daemon: Daemon, name: str, extra: str, **settings: object) -> int:
    domid = daemon.create(name, "netfront", f"{extra} console=hvc0", memory=32,
                          vif=settings.pop("vif", [f"bridge={BRIDGE}"]), **settings)
    ip = re.search(r"ip=(\S+)", extra)
    if "mode=serve" in extra and ip:
        wait_for(f"{name} to be ready", lambda: f"READY {ip.group(1)}".encode()
                 in console_log(daemon, name))
    return domid


def test_host_pings_a_guest_and_udp_echoes_through_it(daemon: Daemon, netns: str) -> None:
    domid = start_guest(daemon, "web", f"mode=serve ip={GUEST_A}")
    assert link_exists(netns, f"vif{domid}.0")
    master = run(netns, "ip", "-o", "link", "show", f"vif{domid}.0").stdout
    assert f"master {BRIDGE}" in master and "fe:ff:ff:ff:ff:ff" in master
    ping = run(netns, sys.executable, "-c", PING, GUEST_A, "3", check=False, timeout=120)
    assert ping.returncode == 0 and "3 of 3" in ping.stdout, ping.stdout + ping.stderr
    echo = run(netns, sys.executable, "-c", UDP_ECHO, GUEST_A, check=False, timeout=120)
    assert echo.returncode == 0 and "echoed 20" in echo.stdout, echo.stderr
    with Client(str(daemon.xenstore), timeout=60) as xs:
        mac = xs.read(f"/local/domain/{domid}/device/vif/0/mac").decode()
        assert mac.startswith("00:16:3e:")
        assert xs.read(f"/local/domain/0/backend/vif/{domid}/0/state") == b"4"
    neighbours = run(netns, "ip", "neigh", "show", GUEST_A).stdout
    assert mac in neighbours  # ARP answered with the MAC the toolstack gave it
    daemon.pyxen("shutdown", "web")
    report = wait_for("web to finish", lambda: finished(daemon, "web"))
    report.assert_all_passed()
    assert int(report.value("icmp_replies")) >= 3 and int(report.value("udp_echoes")) >= 20
    wait_for("the domain to go", lambda: "web" not in daemon.domains())
    wait_for("its TAP to go", lambda: not link_exists(netns, f"vif{domid}.0"))


def test_two_guests_on_one_bridge_ping_each_other(daemon: Daemon) -> None:
    start_guest(daemon, "a", f"mode=serve ip={GUEST_A} queues=2 split=1")
    start_guest(daemon, "b", f"mode=ping ip={GUEST_B} peer={GUEST_A} count=5")
    report = wait_for("b to finish", lambda: finished(daemon, "b"), timeout=300)
    report.assert_all_passed()
    assert {"netfront.arp_resolved", "netfront.ping"} <= set(report.passed)
    with Client(str(daemon.xenstore), timeout=60) as xs:  # a's two queues, split channels
        front = f"/local/domain/{daemon.domains()['a']['domid']}/device/vif/0"
        assert xs.read(f"{front}/multi-queue-num-queues") == b"2"
        assert xs.exists(f"{front}/queue-1/event-channel-rx")
    daemon.pyxen("shutdown", "a")
    a = wait_for("a to finish", lambda: finished(daemon, "a"))
    a.assert_all_passed()
    assert int(a.value("icmp_replies")) >= 5 and a.value("queues") == "2"


def test_network_attach_list_detach(daemon: Daemon, netns: str) -> None:
    domid = daemon.create("host", "pvguest", "console=hvc0")
    daemon.pyxen("network-attach", "host", f"bridge={BRIDGE}", "mac=00:16:3e:01:02:03")
    daemon.pyxen("network-attach", "host", f"bridge={BRIDGE}", "vifname=extra0")
    listing = daemon.pyxen("network-list", "host").stdout.splitlines()
    assert listing[0].split()[:3] == ["Idx", "BE", "Mac"]
    rows = [line.split() for line in listing[1:]]
    assert [r[0] for r in rows] == ["0", "1"]
    assert rows[0][2] == "00:16:3e:01:02:03" and rows[0][4] == "2"  # InitWait: no driver
    assert link_exists(netns, f"vif{domid}.0") and link_exists(netns, "extra0")
    refused = daemon.pyxen("network-detach", "host", "0", check=False)
    assert refused.returncode == 1 and "--force" in refused.stderr
    daemon.pyxen("network-detach", "-f", "host", "00:16:3e:01:02:03")
    wait_for("vif0's TAP to go", lambda: not link_exists(netns, f"vif{domid}.0"))
    assert link_exists(netns, "extra0")
    daemon.pyxen("destroy", "host")
    wait_for("the other TAP to go with the domain", lambda: not link_exists(netns, "extra0"))


@pytest.mark.parametrize(("vif", "message"), [
    ("bridge=nosuchbr", "bridge nosuchbr does not exist"),
    ("bridge=lo", "lo is not a bridge"),
    (f"bridge={BRIDGE},rate=10Mb/s", "rate= is not supported"),
    (f"bridge={BRIDGE},script=vif-route", "pyxen runs no hotplug scripts"),
])
def test_a_vif_that_cannot_be_made_is_one_line_and_no_domain(daemon: Daemon, netns: str,
                                                            vif: str, message: str) -> None:
    cfg = daemon.config("bad", "block", vif=[vif])
    result = daemon.pyxen("create", "-q", str(cfg), check=False)
    assert result.returncode == 1 and message in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert daemon.domains() == {}
    assert not link_exists(netns, "vif1.0")


def test_host_address_is_on_the_bridge(netns: str) -> None:
    """The namespace the other tests rely on: the host's end of the bridge answers."""
    assert HOST_IP in run(netns, "ip", "-o", "addr", "show", BRIDGE).stdout


FLOOD = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for i in range(int(sys.argv[2])):
    s.sendto(bytes(1400), (sys.argv[1], 9))
"""


def test_a_stalled_guest_costs_the_others_nothing(daemon: Daemon, netns: str) -> None:
    """A paused domain posts no pages and reads no frames: what is sent to it piles up in
    its own TAP's queue and is dropped there, while the bridge serves everyone else."""
    start_guest(daemon, "a", f"mode=serve ip={GUEST_A}")
    start_guest(daemon, "b", f"mode=serve ip={GUEST_B}")
    first = run(netns, sys.executable, "-c", PING, GUEST_B, "1", check=False, timeout=120)
    assert first.returncode == 0, first.stdout  # b's MAC is known to the host now
    daemon.pyxen("pause", "b")
    run(netns, sys.executable, "-c", FLOOD, GUEST_B, "5000", timeout=120)
    ping = run(netns, sys.executable, "-c", PING, GUEST_A, "3", check=False, timeout=120)
    assert ping.returncode == 0 and "3 of 3" in ping.stdout, ping.stdout + ping.stderr
    daemon.pyxen("unpause", "b")
    again = run(netns, sys.executable, "-c", PING, GUEST_B, "3", check=False, timeout=120)
    assert again.returncode == 0 and "3 of 3" in again.stdout, again.stdout
