"""The Linux kit's guest under a daemon, for the host tests that boot it: root on a PV disk
(a copy of the kit's ext4 image), eth0 on a PV NIC on the test's bridge (GUEST_IP)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from host.hostkit import Daemon, console_log, type_into_console, wait_for
from host.netns import PING, run
from pyxen.toolstack.linuxkit import kit_dir, load_kit

GUEST_IP = "10.77.0.2"
BOOT_S = 900  # a busy 2-core host makes the boot several times slower


def linux_kit(tmp_path: Path):  # type: ignore[no-untyped-def]
    """The Linux kit (or a skip), and a copy of its root image for the guest's disk."""
    kitpy = load_kit()
    try:
        kit = kitpy.build(kit_dir(), log=lambda line: None)
    except kitpy.KitUnavailable as e:
        pytest.skip(f"the Linux kit cannot be built here: {e}")
    if shutil.which("debugfs") is None:
        pytest.skip("needs debugfs (e2fsprogs) to read the guest's disk afterwards")
    disk = tmp_path / "root.img"
    shutil.copyfile(kit.root_img, disk)
    return kitpy, kit, disk


def boot_linux(daemon: Daemon, netns: str, kitpy, kit, disk: Path,  # type: ignore[no-untyped-def]
               tmp_path: Path) -> None:
    """Linux with root on `disk` (xvda) and eth0 on the test's bridge, up to its shell;
    then the host pings it."""
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
    ping(netns)


def ping(netns: str, count: int = 3) -> None:
    got = run(netns, sys.executable, "-c", PING, GUEST_IP, str(count), check=False,
              timeout=300)
    assert got.returncode == 0 and f"{count} of {count}" in got.stdout, got.stdout + got.stderr


def typed(daemon: Daemon, line: bytes, answer: bytes) -> None:
    """`line` typed at the guest's shell; waits for `answer` at the start of a line."""
    type_into_console(daemon, "linux", line + b"\n")
    wait_for(f"{answer!r} from the guest", lambda: b"\n" + answer in console_log(daemon, "linux"),
             timeout=300)


def power_off(daemon: Daemon) -> None:
    daemon.pyxen("shutdown", "linux")
    wait_for("Linux to power off", lambda: "linux" not in daemon.domains(), timeout=600)
    log = console_log(daemon, "linux").decode(errors="replace")
    assert "reboot: Power down" in log, log[-3000:]


def on_disk(disk: Path, path: str) -> str:
    return subprocess.run(["debugfs", "-R", f"cat {path}", str(disk)],
                          capture_output=True, text=True).stdout.strip()


