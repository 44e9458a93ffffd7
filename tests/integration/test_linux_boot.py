"""Debian 12's stock cloud kernel, from the Linux guest kit, boots on the software CPU under
`pyxen run` to the kit's busybox shell: its bzImage as shipped, the initramfs's /init loading
the PV front-end modules, busybox init's sysinit printing the kit's ready line.

About half a minute each on an idle machine, several on a busy one. It builds the kit (guests/linux/kit.py, Debian packages) into
~/.cache/pyxen/linux-kit (or PYXEN_LINUX_DIR) unless it is there already, and skips, saying
why, where it cannot. The software CPU only: this host's KVM (kvm_pvm) emulates guest ring 0
and took over 14 minutes for the same kernel.
"""

from __future__ import annotations

import os
import re
import selectors
import subprocess
import sys
import time

import pytest

from pyxen.toolstack.accel import available_accels
from pyxen.toolstack.linuxkit import kit_dir, load_kit

kitpy = load_kit()
DIR = kit_dir()
# What the kernel gets: its console on the PV ring (hvc0), early output through
# HYPERVISOR_console_io; /init (the default rdinit) from the initramfs.
CMDLINE = "console=hvc0 earlyprintk=xen panic=-1"
BOOT_TIMEOUT = 900  # generous: a busy 2-core host can make the boot several times slower

@pytest.fixture(scope="module")
def kit():  # -> kitpy.Kit
    if "soft" not in available_accels():
        pytest.skip("the software CPU (Unicorn) is not usable here")
    try:
        return kitpy.build(DIR, log=lambda line: None)
    except kitpy.KitUnavailable as e:
        pytest.skip(f"the Linux kit cannot be built here: {e}")


class Console:
    """`pyxen run` with its console on a pipe: wait for what the guest prints, type lines."""

    def __init__(self, cmd: list[str]) -> None:
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT)
        self.out = bytearray()
        self._sel = selectors.DefaultSelector()
        assert self.proc.stdout is not None
        self._sel.register(self.proc.stdout, selectors.EVENT_READ)

    def expect(self, pattern: str, timeout: float) -> re.Match[str] | None:
        """The first match of `pattern` in what is printed from now on (None: timed out or
        the domain ended first)."""
        start, deadline = len(self.out), time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = re.search(pattern, self.out[start:].decode(errors="replace"))
            if found:
                return found
            if self._sel.select(timeout=1.0):
                chunk = os.read(self.proc.stdout.fileno(), 65536)  # type: ignore[union-attr]
                if not chunk:
                    return None
                self.out += chunk
        return None

    def type(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line.encode() + b"\n")
        self.proc.stdin.flush()

    def wait(self, timeout: float) -> int | None:
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=60)
        self._sel.close()

    def context(self) -> str:
        return "\n".join(self.out.decode(errors="replace").splitlines()[-30:])


def boot(kit, vcpus: int) -> Console:  # kit: kitpy.Kit
    """`pyxen run` of the kit's kernel and initramfs, up to the kit's ready line."""
    console = Console([sys.executable, "-m", "pyxen.cli", "run", str(kit.vmlinuz), "--accel",
                       "soft", "--memory", "256", "--vcpus", str(vcpus), "--ramdisk",
                       str(kit.initrd), "--cmdline", CMDLINE, "--timeout", str(BOOT_TIMEOUT)])
    ready = f"{kitpy.MARKER} (root=initramfs) linux={kit.release} cpus={vcpus}"
    if not console.expect(re.escape(ready), BOOT_TIMEOUT):
        console.close()
        pytest.fail(f"no ready line:\n{console.context()}")
    console.expect(r"# ", 60)
    return console


def end_at_the_shell(console: Console, command: str, last_line: str, exit_code: int) -> None:
    """Type `command`; Linux's last line and `pyxen run`'s exit code must follow."""
    console.type(command)
    assert console.expect(re.escape(last_line), 300), console.context()
    status = console.wait(120)
    assert status == exit_code, f"exit {status}:\n{console.context()}"


def test_debian_kernel_boots_to_an_interactive_shell_and_powers_off(kit) -> None:
    """Two vCPUs: the second comes up through INIT/SIPI, nproc says 2."""
    console = boot(kit, vcpus=2)
    try:
        out = console.out.decode(errors="replace")
        assert "Booting kernel on Xen PVH" in out
        # The local APIC and the MADT: Linux leaves PIC mode and starts its Xen clock events.
        assert "No local APIC present" not in out and "installing Xen timer for CPU 0" in out
        assert "smp: Brought up 1 node, 2 CPUs" in out  # the AP started by INIT/SIPI
        assert "ACPI: PM: (supports S0 S5)" in out  # power-off through the FADT registers
        assert "xen_netfront: Initialising Xen virtual ethernet driver" in out  # modprobe
        assert "pyxen-linux: modprobe" not in out  # /init's line for a failure
        assert "soft lockup" not in out and "BUG:" not in out
        # Typed at the shell on hvc0; the markers are made by the shell, not echoed input.
        console.type("uname -a")
        assert console.expect(rf"Linux pyxen {re.escape(kit.release)} .*x86_64", 120), \
            console.context()
        console.type("echo nproc-says-$(nproc)")
        assert console.expect(r"nproc-says-2\b", 120), console.context()
        console.type("echo up-$(cut -d' ' -f1 /proc/uptime); sleep 2; "
                     "echo up-$(cut -d' ' -f1 /proc/uptime)")
        first = console.expect(r"up-(\d+\.\d+)\D", 120)
        second = console.expect(r"up-(\d+\.\d+)\D", 120)
        assert first and second, console.context()
        assert float(second.group(1)) - float(first.group(1)) >= 2.0  # the clock advances
        # busybox init's shutdown, then ACPI S5 through the sleep control register.
        end_at_the_shell(console, "poweroff", "reboot: Power down", 0)
    finally:
        console.close()


def test_reboot_at_the_shell_ends_the_run_as_a_reboot(kit) -> None:
    """busybox's reboot, then Linux's ACPI reset register: `pyxen run` reports a reboot (4)."""
    console = boot(kit, vcpus=1)
    try:
        end_at_the_shell(console, "reboot", "reboot: Restarting system", 4)
    finally:
        console.close()
