"""Linux boot: Debian 12's stock cloud kernel from its entry to its first user-space line.

The Linux guest kit (guests/linux/kit.py: the kernel package's bzImage and the kit's busybox
initramfs) under `pyxen run --accel soft`, timed from the kernel's first line ("Linux
version ...") to the kit's ready line, which busybox init's sysinit prints from user space
after /init has loaded the front-end modules. Wall-clock time on the host, one vCPU.

Reference, measured in the same run on the same machine: QEMU's own emulator (TCG, no
KVM) booting the same bzImage and initramfs on its serial console, timed between the same
two lines (there /init's modprobe of the Xen front ends fails quickly; everything else is
the same). The ratio is pyxen / QEMU (lower is better; the issue's target is 1.5).

    python -m benchmarks linux
    python -m benchmarks.linux --runs 3
"""

from __future__ import annotations

import argparse
import os
import re
import selectors
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence

from benchmarks.common import report
from pyxen.toolstack.linuxkit import kit_dir, load_kit

FIRST = re.compile(rb"Linux version \d")
TIMEOUT_S = 1200.0


def time_boot(cmd: list[str], ready: bytes) -> float:
    """Seconds between the kernel's first line and `ready` in `cmd`'s output."""
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    assert proc.stdout is not None
    out, first, deadline = bytearray(), None, time.monotonic() + TIMEOUT_S
    try:
        with selectors.DefaultSelector() as sel:
            sel.register(proc.stdout, selectors.EVENT_READ)
            while time.monotonic() < deadline:
                if not sel.select(timeout=1.0):
                    continue
                chunk = os.read(proc.stdout.fileno(), 65536)
                if not chunk:
                    break
                out += chunk
                now = time.monotonic()
                if first is None and FIRST.search(out):
                    first = now
                if first is not None and ready in out:
                    return now - first
    finally:
        proc.kill()
        proc.wait()
        proc.stdout.close()
    tail = out[-2000:].decode(errors="replace")
    raise RuntimeError(f"{cmd[0]}: no ready line within {TIMEOUT_S:.0f} s:\n{tail}")


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks linux", description=__doc__)
    p.add_argument("--runs", type=int, default=1, help="boots of each (median reported)")
    args = p.parse_args(list(argv or []))
    qemu = shutil.which("qemu-system-x86_64")
    if qemu is None:
        sys.exit("benchmarks linux: needs qemu-system-x86_64 (apt-get install qemu-system-x86)")
    kitpy = load_kit()
    try:
        kit = kitpy.build(kit_dir(), log=lambda line: None)
    except kitpy.KitError as e:
        sys.exit(f"benchmarks linux: the Linux kit cannot be built here: {e}")
    ready = f"{kitpy.MARKER} (root=initramfs)".encode()
    pyxen_cmd = [sys.executable, "-m", "pyxen.cli", "run", str(kit.vmlinuz), "--accel", "soft",
                 "--memory", "256", "--ramdisk", str(kit.initrd), "--cmdline",
                 "console=hvc0 earlyprintk=xen", "--timeout", str(int(TIMEOUT_S))]
    qemu_cmd = [qemu, "-accel", "tcg", "-m", "256", "-smp", "1", "-kernel", str(kit.vmlinuz),
                "-initrd", str(kit.initrd), "-append", "console=ttyS0", "-display", "none",
                "-serial", "stdio", "-monitor", "none", "-no-reboot", "-nodefaults"]
    pyxen_s, qemu_s = [], []
    for _ in range(args.runs):
        qemu_s.append(time_boot(qemu_cmd, ready))
        pyxen_s.append(time_boot(pyxen_cmd, ready))
    pyxen_m, qemu_m = statistics.median(pyxen_s), statistics.median(qemu_s)
    print(f"kernel entry -> first user-space line, Linux {kit.release}, 1 vCPU, "
          f"median of {args.runs}:")
    print(f"  pyxen (soft CPU): {pyxen_m:.1f} s   QEMU TCG: {qemu_m:.1f} s   "
          f"ratio {pyxen_m / qemu_m:.1f} x")
    report("linux", pyxen_m / qemu_m, "QEMU TCG booting the same kernel and initramfs",
           pyxen_s=pyxen_m, qemu_s=qemu_m, kernel=kit.release)


if __name__ == "__main__":
    main(sys.argv[1:])
