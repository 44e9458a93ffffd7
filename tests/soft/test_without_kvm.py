"""A host without /dev/kvm runs every PVH guest on the software CPU.

Not a mock: the commands run in a new mount namespace whose /dev is a fresh tmpfs holding
only the ordinary character devices, so /dev/kvm really does not exist for them.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from guestkit import image

DEVICES = ("null", "zero", "full", "random", "urandom")


def without_kvm(tmp_path: Path, *pyxen_args: str) -> subprocess.CompletedProcess[str]:
    """`pyxen ARGS` on this machine, but with no /dev/kvm."""
    real = tmp_path / "realdev"
    real.mkdir(exist_ok=True)
    binds = "; ".join(f"touch /dev/{d} && mount --bind {real}/{d} /dev/{d}" for d in DEVICES)
    script = (f"mount --make-rprivate / && mount --bind /dev {real} && "
              f"mount -t tmpfs tmpfs /dev && {binds} && "
              f'test ! -e /dev/kvm && exec "$@"')
    cmd = ["unshare", "-m", "sh", "-c", script, "sh", sys.executable, "-m", "pyxen.cli",
           *pyxen_args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def namespaces() -> None:
    if not shutil.which("unshare") or os.geteuid() != 0:
        pytest.skip("needs root and unshare(1) to hide /dev/kvm in a mount namespace")


def test_demo_runs_without_kvm(guests, namespaces, tmp_path: Path) -> None:
    done = without_kvm(tmp_path, "demo")
    assert done.returncode == 0, done.stderr
    assert "Goodbye from the demo guest." in done.stdout
    assert "pyxen: accel soft (KVM unusable: /dev/kvm:" in done.stderr


@pytest.mark.parametrize("name", ["version", "ring3", "compat32", "time"])
def test_guests_pass_without_kvm(guests, namespaces, tmp_path: Path, name: str) -> None:
    done = without_kvm(tmp_path, "run", str(image(name)))
    assert done.returncode == 0, done.stderr
    assert "RESULT" in done.stdout and " FAIL" not in done.stdout


def test_asking_for_kvm_without_kvm_is_a_clear_error(guests, namespaces, tmp_path: Path) -> None:
    done = without_kvm(tmp_path, "run", str(image("demo")), "--accel", "kvm")
    assert done.returncode == 1
    assert done.stderr.startswith("pyxen: ") and "Traceback" not in done.stderr
