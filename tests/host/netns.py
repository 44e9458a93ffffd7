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


def run(netns: str, *argv: str, check: bool = True, timeout: float = 60,
        input: str | None = None) -> subprocess.CompletedProcess[str]:
    """A command inside the namespace."""
    return subprocess.run(["ip", "netns", "exec", netns, *argv], capture_output=True,
                          text=True, check=check, timeout=timeout, input=input)


def link_exists(netns: str, name: str) -> bool:
    return subprocess.run(["ip", "-n", netns, "link", "show", name],
                          capture_output=True).returncode == 0


@contextmanager
def bridged_netns() -> Iterator[str]:
    """A fresh namespace holding `xenbr0` (up, HOST_IP/24) and a loopback."""
    name = f"pyxen-t{os.getpid()}-{next(_names)}"
    subprocess.run(["ip", "netns", "add", name], check=True, capture_output=True)
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
