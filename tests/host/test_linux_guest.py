"""Debian's kernel as a domain of the daemon: root on a PV disk, eth0 on a PV NIC (issue 14).

The Linux kit's bzImage and initramfs with `root=/dev/xvda` on a copy of its ext4 image and
a vif on the test's own bridge, in a network namespace of the test's own: the host pings
the guest's eth0, a line typed at the guest's shell is written to the root file system,
`pyxen shutdown` powers Linux off (xenbus control/shutdown → init → ACPI S5), and the file
is then read from the image on the host.

About a minute on an idle machine; it needs root (TAP, bridge) and the kit, as
tests/integration/test_linux_boot.py does.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import AVAILABLE
from host.hostkit import Daemon, console_log, type_into_console, wait_for
from host.netns import PING, NetnsUnavailable, bridged_netns, can_make_netns, run
from pyxen.toolstack.linuxkit import kit_dir, load_kit

GUEST_IP = "10.77.0.2"
BOOT_S = 900  # a busy 2-core host makes the boot several times slower

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
    kitpy = load_kit()
    try:
        kit = kitpy.build(kit_dir(), log=lambda line: None)
    except kitpy.KitUnavailable as e:
        pytest.skip(f"the Linux kit cannot be built here: {e}")
    if shutil.which("debugfs") is None:
        pytest.skip("needs debugfs (e2fsprogs) to read the guest's disk afterwards")
    disk = tmp_path / "root.img"
    shutil.copyfile(kit.root_img, disk)
    daemon = Daemon(tmp_path, netns=netns)
    try:
        config = tmp_path / "linux.cfg"
        config.write_text("\n".join([
            'name = "linux"', 'type = "pvh"', 'accel = "soft"', "memory = 256", "vcpus = 2",
            f'kernel = "{kit.vmlinuz}"', f'ramdisk = "{kit.initrd}"', 'root = "/dev/xvda"',
            f'extra = "console=hvc0 pyxen.ip={GUEST_IP}/24"',
            f"disk = ['{disk},raw,xvda,rw']", "vif = ['bridge=xenbr0']"]) + "\n")
        daemon.pyxen("create", "-q", str(config))
        ready = f"{kitpy.MARKER} (root=/dev/xvda)".encode()
        wait_for("Linux to reach its shell from xvda",
                 lambda: ready in console_log(daemon, "linux"), timeout=BOOT_S)
        ping = run(netns, sys.executable, "-c", PING, GUEST_IP, "3", check=False, timeout=300)
        assert ping.returncode == 0 and "3 of 3" in ping.stdout, ping.stdout + ping.stderr
        type_into_console(daemon, "linux",
                          b"echo on-xvda-$((6*7)) > /probe.txt; sync; cat /probe.txt\n")
        wait_for("the line written and read back",
                 lambda: b"\non-xvda-42" in console_log(daemon, "linux"), timeout=300)
        daemon.pyxen("shutdown", "linux")
        wait_for("Linux to power off", lambda: "linux" not in daemon.domains(), timeout=600)
        log = console_log(daemon, "linux").decode(errors="replace")
        assert "reboot: Power down" in log, log[-3000:]
    finally:
        daemon.stop()
    on_disk = subprocess.run(["debugfs", "-R", "cat /probe.txt", str(disk)],
                             capture_output=True, text=True)
    assert on_disk.stdout.strip() == "on-xvda-42", on_disk.stderr
