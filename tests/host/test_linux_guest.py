"""Debian's kernel as a domain of the daemon: root on a PV disk, eth0 on a PV NIC (issue 14).

The Linux kit's bzImage and initramfs with `root=/dev/xvda` on a copy of its ext4 image and
a vif on the test's own bridge, in a network namespace of the test's own: the host pings
the guest's eth0, a line typed at the guest's shell is written to the root file system,
`pyxen shutdown` powers Linux off (xenbus control/shutdown → init → ACPI S5), and the file
is then read from the image on the host. (tests/host/test_migrate.py saves, restores and
migrates the same Linux with its disk and NIC connected.)

About a minute on an idle machine; it needs root (TAP, bridge) and the kit, as
tests/integration/test_linux_boot.py does.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import AVAILABLE
from host.hostkit import Daemon
from host.linux_guest import boot_linux, linux_kit, on_disk, power_off, typed
from host.netns import NetnsUnavailable, bridged_netns, can_make_netns

pytestmark = [
    pytest.mark.skipif(not can_make_netns(), reason="needs root, /dev/net/tun and iproute2"),
]


@pytest.fixture
def netns() -> Iterator[str]:
    if "soft" not in AVAILABLE:
        pytest.skip("Linux runs on the software CPU")
    try:
        with bridged_netns() as name:
            yield name
    except NetnsUnavailable as e:
        pytest.skip(f"no network namespace here: {e}")


def test_linux_on_a_pv_disk_and_a_pv_nic(netns: str, tmp_path: Path) -> None:
    kitpy, kit, disk = linux_kit(tmp_path)
    daemon = Daemon(tmp_path, netns=netns)
    try:
        boot_linux(daemon, netns, kitpy, kit, disk, tmp_path)
        typed(daemon, b"echo on-xvda-$((6*7)) > /probe.txt; sync; cat /probe.txt", b"on-xvda-42")
        power_off(daemon)
    finally:
        daemon.stop()
    assert on_disk(disk, "/probe.txt") == "on-xvda-42"
