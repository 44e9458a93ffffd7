"""The Linux guest kit (guests/linux/kit.py): Debian's cloud kernel as shipped, an initramfs
whose PV front-end modules come from that same kernel, and a clean ext4 root disk with the
same userland. Built once per session into ~/.cache/pyxen/linux-kit (PYXEN_LINUX_DIR
overrides), not into guests/build/linux, whose root.img the example guest writes to. Skips,
saying why, where the packages cannot be fetched (no apt, offline)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from pyxen.toolstack.linuxkit import KIT_PY, kit_dir, load_kit

kitpy = load_kit()
DIR = kit_dir()


@pytest.fixture(scope="session")
def kit():  # -> kitpy.Kit
    try:
        return kitpy.build(DIR, log=lambda line: None)
    except kitpy.KitUnavailable as e:
        pytest.skip(f"the Linux kit cannot be built here: {e}")


def read_newc(data: bytes) -> dict[str, tuple[int, bytes, tuple[int, int]]]:
    """name -> (mode, data, (rdev major, minor)) of a newc cpio archive."""
    entries, pos = {}, 0
    while True:
        assert data[pos:pos + 6] == b"070701", f"no newc header at {pos}"
        field = [int(data[pos + 6 + 8 * i:pos + 14 + 8 * i], 16) for i in range(13)]
        name_end = pos + 110 + field[11] - 1
        name = data[pos + 110:name_end].decode()
        start = name_end + 1 + (-(name_end + 1) % 4)
        if name == "TRAILER!!!":
            return entries
        entries[name] = (field[1], data[start:start + field[6]], (field[9], field[10]))
        pos = start + field[6] + (-(start + field[6]) % 4)


def debugfs(image: Path, request: str) -> str:
    done = subprocess.run(["debugfs", "-R", request, str(image)], capture_output=True,
                          text=True, errors="replace")
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_vmlinuz_is_the_kernel_packages_bzimage(kit) -> None:
    data = kit.vmlinuz.read_bytes()
    assert data[0x202:0x206] == b"HdrS"  # the setup header the bzImage loader reads
    version = (kit.dir / "VERSION").read_text()
    assert f"kernel linux-image-{kit.release} " in version


def test_initramfs_holds_init_busybox_and_the_front_ends_of_the_same_kernel(kit) -> None:
    files = read_newc(kit.initrd.read_bytes())
    mode, init, _ = files["init"]
    assert mode & 0o170111 == 0o100111 and init.startswith(b"#!/bin/sh\n")
    assert b"switch_root" in init and b"exec /sbin/init" in init
    assert files["dev/console"][0] & 0o170000 == 0o020000  # the kernel opens it before /init
    assert files["dev/console"][2] == (5, 1)
    assert files["bin/busybox"][1][:4] == b"\x7fELF"
    for applet in ("bin/sh", "sbin/init", "sbin/switch_root", "sbin/modprobe", "bin/cttyhack"):
        assert files[applet][0] & 0o170000 == 0o120000, applet
        assert files[applet][1] == b"/bin/busybox", applet
    assert b"::sysinit:/etc/init.d/rcS" in files["etc/inittab"][1]
    assert b"::shutdown:" in files["etc/inittab"][1]
    assert kitpy.MARKER.encode() in files["etc/init.d/rcS"][1]
    lib = f"lib/modules/{kit.release}/"
    dep = files[lib + "modules.dep"][1].decode()
    for module in kitpy.MODULES:
        found = [n for n in files if n.startswith(lib) and n.endswith(f"/{module}.ko")]
        assert len(found) == 1, (module, found)
        info = kitpy.modinfo(files[found[0]][1])
        assert info["vermagic"][0].split()[0] == kit.release, module
        assert f"{found[0].removeprefix(lib)}:" in dep  # busybox modprobe finds it
        assert module.encode() in files["etc/modules"][1]


def test_root_image_is_a_clean_ext4_with_the_same_userland(kit) -> None:
    if shutil.which("debugfs") is None or shutil.which("e2fsck") is None:
        pytest.skip("e2fsprogs (debugfs, e2fsck) not installed")
    files = read_newc(kit.initrd.read_bytes())
    assert kit.root_img.stat().st_blocks * 512 < kit.root_img.stat().st_size  # sparse
    top = debugfs(kit.root_img, "ls -l /")
    for name in ("bin", "sbin", "etc", "dev", "proc", "sys", "lib"):
        assert f" {name}\n" in top, top
    init = debugfs(kit.root_img, "stat /sbin/init")
    assert "Type: symlink" in init and '"/bin/busybox"' in init, init
    assert "User:     0   Group:     0" in debugfs(kit.root_img, "stat /bin/busybox")
    for name in ("etc/inittab", "etc/init.d/rcS", f"lib/modules/{kit.release}/modules.dep"):
        assert debugfs(kit.root_img, f"cat /{name}").encode() == files[name][1], name
    assert "init" not in top.split()  # /init is the initramfs's alone
    fsck = subprocess.run(["e2fsck", "-f", "-n", str(kit.root_img)], capture_output=True,
                          text=True)
    assert fsck.returncode == 0, fsck.stdout + fsck.stderr


def test_a_second_build_with_the_same_packages_does_nothing(kit) -> None:
    before = {p: p.stat().st_mtime_ns for p in (kit.vmlinuz, kit.initrd, kit.root_img)}
    said: list[str] = []
    again = kitpy.build(kit.dir, log=said.append)
    assert again == kit
    assert said == [f"kit: up to date in {kit.dir} (Linux {kit.release})"]
    assert {p: p.stat().st_mtime_ns for p in before} == before


def test_missing_tools_are_named_in_one_line(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, str(KIT_PY), str(tmp_path / "kit")],
                          capture_output=True, text=True, env={**os.environ, "PATH": "/nonexistent"})
    assert done.returncode == 1
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr
    assert done.stderr.startswith("kit: apt-get not found: install apt"), done.stderr


def test_a_package_apt_does_not_know_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    if shutil.which("apt-cache") is None:
        pytest.skip("no apt-cache here")
    monkeypatch.setattr(kitpy, "META_PACKAGE", "pyxen-no-such-kernel-package")
    with pytest.raises(kitpy.KitUnavailable, match="apt knows no pyxen-no-such-kernel-package"):
        kitpy.resolve()
