"""A network namespace of the test's own, with a bridge, for PV network tests: nothing the
test does touches the machine's own interfaces, and deleting the namespace removes
everything in it."""

from __future__ import annotations

import itertools
import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager

BRIDGE = "xenbr0"  # xl's default bridge name
HOST_IP = "10.77.0.1"
PREFIX = 24
_names = itertools.count()
# `ping` as a script (a fresh machine may have no ping binary): ICMP echo requests on a raw
# socket, each reply checked (id, sequence, payload); prints "N of N" and exits 0 if all came.
ICMP = """
import os, socket, struct, sys, time
def csum(b):
    b += bytes(len(b) % 2)
    s = sum(struct.unpack("!%dH" % (len(b) // 2), b))
    s = (s >> 16) + (s & 0xFFFF)
    return ~(s + (s >> 16)) & 0xFFFF
"""
PING = ICMP + """
dest, count = sys.argv[1], int(sys.argv[2])
s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
ident, got = os.getpid() & 0xFFFF, 0
for seq in range(count):
    payload = b"pyxen ping %d " % seq + bytes(range(40))
    head = struct.pack("!BBHHH", 8, 0, 0, ident, seq)
    s.sendto(struct.pack("!BBHHH", 8, 0, csum(head + payload), ident, seq) + payload, (dest, 0))
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        s.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            data, addr = s.recvfrom(4096)
        except TimeoutError:
            break
        icmp = data[(data[0] & 15) * 4:]
        if addr[0] == dest and icmp[0] == 0 and struct.unpack("!HH", icmp[4:8]) == (ident, seq):
            assert icmp[8:] == payload and csum(icmp) == 0, "a bad reply"
            got += 1
            break
print("%d of %d" % (got, count))
sys.exit(0 if got == count else 1)
"""
# Pings every 0.1 s until the file argv[2] exists (or 10 minutes), then prints how many went
# and which were answered, as JSON.
PINGER = ICMP + """
import json
dest, stop = sys.argv[1], sys.argv[2]
s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
ident, seq, answered, start = os.getpid() & 0xFFFF, 0, set(), time.monotonic()
while not os.path.exists(stop) and time.monotonic() - start < 600:
    head = struct.pack("!BBHHH", 8, 0, 0, ident, seq)
    s.sendto(struct.pack("!BBHHH", 8, 0, csum(head), ident, seq), (dest, 0))
    seq += 1
    deadline = time.monotonic() + 0.1
    while time.monotonic() < deadline:
        s.settimeout(max(0.001, deadline - time.monotonic()))
        try:
            data, addr = s.recvfrom(4096)
        except TimeoutError:
            break
        icmp = data[(data[0] & 15) * 4:]
        if addr[0] == dest and icmp[0] == 0 and struct.unpack("!H", icmp[4:6])[0] == ident:
            answered.add(struct.unpack("!H", icmp[6:8])[0])
print(json.dumps({"sent": seq, "answered": sorted(answered)}))
"""


def run(netns: str, *argv: str, check: bool = True, timeout: float = 60,
        input: str | None = None) -> subprocess.CompletedProcess[str]:
    """A command inside the namespace."""
    return subprocess.run(["ip", "netns", "exec", netns, *argv], capture_output=True,
                          text=True, check=check, timeout=timeout, input=input)


def link_exists(netns: str, name: str) -> bool:
    return subprocess.run(["ip", "-n", netns, "link", "show", name],
                          capture_output=True).returncode == 0


class NetnsUnavailable(Exception):
    """This machine will not make a network namespace (a container without the right)."""


@contextmanager
def bridged_netns() -> Iterator[str]:
    """A fresh namespace holding `xenbr0` (up, HOST_IP/24) and a loopback."""
    name = f"pyxen-t{os.getpid()}-{next(_names)}"
    made = subprocess.run(["ip", "netns", "add", name], capture_output=True, text=True)
    if made.returncode != 0:
        raise NetnsUnavailable(made.stderr.strip() or "ip netns add failed")
    try:
        for argv in (["ip", "link", "set", "lo", "up"],
                     ["ip", "link", "add", BRIDGE, "type", "bridge"],
                     ["ip", "addr", "add", f"{HOST_IP}/{PREFIX}", "dev", BRIDGE],
                     ["ip", "link", "set", BRIDGE, "up"]):
            run(name, *argv)
        yield name
    finally:
        subprocess.run(["ip", "netns", "delete", name], capture_output=True)


def can_make_netns() -> bool:
    """Whether this machine lets the test make namespaces, bridges and TAPs (root)."""
    return os.geteuid() == 0 and os.path.exists("/dev/net/tun") and \
        subprocess.run(["ip", "-V"], capture_output=True).returncode == 0
