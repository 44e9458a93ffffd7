"""Debian 12's stock cloud kernel, from the Linux guest kit, boots on the software CPU under
`pyxen run` to the kit's busybox shell: its bzImage as shipped, the initramfs's /init loading
the PV front-end modules, busybox init's sysinit printing the kit's ready line.

Slow (about a minute on an idle machine, several on a busy one), so it runs only with
PYXEN_LINUX_TEST=1. It builds the kit (guests/linux/kit.py, Debian packages) into
~/.cache/pyxen/linux-kit (or PYXEN_LINUX_DIR) unless it is there already, and skips, saying
why, where it cannot. The software CPU only: this host's KVM (kvm_pvm) emulates guest ring 0
and took over 14 minutes for the same kernel.
"""

from __future__ import annotations

import importlib.util
import os
import selectors
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType

import pytest

from pyxen.toolstack.accel import available_accels

KIT_PY = Path(__file__).resolve().parents[2] / "guests" / "linux" / "kit.py"


def load_kit() -> ModuleType:
    if "pyxen_linux_kit" in sys.modules:  # tests/linux loads it too
        return sys.modules["pyxen_linux_kit"]
    spec = importlib.util.spec_from_file_location("pyxen_linux_kit", KIT_PY)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


kitpy = load_kit()
CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "pyxen" / "linux-kit"
DIR = Path(os.environ.get("PYXEN_LINUX_DIR", CACHE))
# What the kernel gets: its console on the PV ring (hvc0), early output through
# HYPERVISOR_console_io; /init (the default rdinit) from the initramfs.
CMDLINE = "console=hvc0 earlyprintk=xen panic=-1"
BOOT_TIMEOUT = 900  # generous: a busy 2-core host can make the boot several times slower

pytestmark = pytest.mark.skipif(os.environ.get("PYXEN_LINUX_TEST") != "1",
                                reason="slow: set PYXEN_LINUX_TEST=1 to boot Debian's kernel")


@pytest.fixture(scope="module")
def kit():  # -> kitpy.Kit
    if "soft" not in available_accels():
        pytest.skip("the software CPU (Unicorn) is not usable here")
    try:
        return kitpy.build(DIR, log=lambda line: None)
    except kitpy.KitUnavailable as e:
        pytest.skip(f"the Linux kit cannot be built here: {e}")


def run_until(cmd: list[str], wanted: str, timeout: float) -> tuple[str, int | None]:
    """Run `cmd` until its stdout shows `wanted` (or it ends, or `timeout` passes); then stop
    it. Returns (stdout, its exit status if it ended by itself, else None)."""
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    assert proc.stdout is not None
    out, deadline = bytearray(), time.monotonic() + timeout
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        while wanted.encode() not in out and time.monotonic() < deadline:
            if sel.select(timeout=1.0):
                chunk = os.read(proc.stdout.fileno(), 65536)
                if not chunk:
                    break
                out += chunk
    status = proc.poll()
    if status is None:
        proc.terminate()
        proc.wait(timeout=60)
    proc.stdout.close()
    return out.decode(errors="replace"), status


def test_debian_kernel_boots_to_the_kits_shell_on_the_software_cpu(kit) -> None:
    started = time.monotonic()
    ready = f"{kitpy.MARKER} (root=initramfs) linux={kit.release} cpus="
    out, status = run_until(
        [sys.executable, "-m", "pyxen.cli", "run", str(kit.vmlinuz), "--accel", "soft",
         "--memory", "256", "--ramdisk", str(kit.initrd), "--cmdline", CMDLINE,
         "--timeout", str(BOOT_TIMEOUT)], ready, BOOT_TIMEOUT + 60)
    elapsed = time.monotonic() - started
    tail = "\n".join(out.splitlines()[-25:])
    context = f"after {elapsed:.0f} s, exit {status}:\n{tail}"
    assert "Booting kernel on Xen PVH" in out, context
    assert "Run /init as init process" in out, context
    # /init's modprobe: the same kernel's module loaded (its vermagic accepted).
    assert "xen_netfront: Initialising Xen virtual ethernet driver" in out, context
    assert "pyxen-linux: modprobe" not in out, context  # /init's line for a failure
    # Written by busybox init's sysinit through the console, with `uname -r` and `nproc`
    # run as processes of their own (fork/exec from ring 3).
    assert ready in out, context
    assert status is None, context  # still running (at the shell) until stopped
