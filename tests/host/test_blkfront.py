"""PV disks on the host: the kit's blkfront guest (guests/blkfront.c) against pyxen's block
back end, with real disk files that the test checks byte for byte afterwards; the xl disk
commands; the errors a user gets for disks that cannot be served."""

from __future__ import annotations

import os
import struct
import subprocess
from pathlib import Path

import pytest

from host.hostkit import Daemon, finished, wait_for
from pyxen.xenstore.client import Client

MIB = 1 << 20
DISK_BYTES = 4 * MIB
DISCARDED = range(1 * MIB, 2 * MIB)  # what the guest's .discard punches out
MASK64 = (1 << 64) - 1


def pattern(size: int, seed: int) -> bytes:
    """The guest's disk pattern: word o/8 = (o/8) * golden ratio + seed * FNV prime."""
    words = (((i * 0x9E3779B97F4A7C15) + seed * 0x100000001B3) & MASK64 for i in range(size // 8))
    return struct.pack(f"<{size // 8}Q", *words)


def run_guest(daemon: Daemon, name: str, extra: str, disk: str, timeout: float = 600):
    daemon.create(name, "blkfront", f"{extra} console=hvc0", memory=64, disk=[disk])
    report = wait_for(f"{name} to finish", lambda: finished(daemon, name), timeout=timeout)
    report.assert_all_passed()
    return report


def backend_dirs(daemon: Daemon) -> list[str]:
    with Client(str(daemon.xenstore), timeout=60) as xs:
        return xs.ls("/local/domain/0/backend/vbd") if xs.exists(
            "/local/domain/0/backend/vbd") else []


@pytest.mark.parametrize("options", [
    "",  # one ring page, persistent grants
    "ring_order=2 persistent=0",  # a 4-page ring; every request maps and unmaps its pages
])
def test_guest_writes_its_disk_and_the_host_finds_every_byte(daemon: Daemon, tmp_path: Path,
                                                              options: str) -> None:
    image = tmp_path / "disk.img"
    image.write_bytes(bytes(DISK_BYTES))
    report = run_guest(daemon, "disky", f"mode=rw seed=7 {options}", f"{image},raw,xvda,rw")
    assert report.value("sectors") == str(DISK_BYTES // 512)
    assert report.value("ring_pages") == ("4" if "ring_order=2" in options else "1")
    assert report.value("persistent") == ("0" if "persistent=0" in options else "1")
    assert {"blkfront.write_indirect", "blkfront.discard", "blkfront.reconnect",
            "blkfront.unknown_op"} <= set(report.passed)
    check_pattern_with_hole(image.read_bytes())
    with open(image, "rb") as f:  # the discarded MiB is a hole the host can see
        assert os.lseek(f.fileno(), DISCARDED.start, os.SEEK_HOLE) == DISCARDED.start
        assert os.lseek(f.fileno(), DISCARDED.start, os.SEEK_DATA) == DISCARDED.stop
    wait_for("the domain to go", lambda: "disky" not in daemon.domains())
    wait_for("its back end's nodes to go", lambda: not backend_dirs(daemon))


def check_pattern_with_hole(data: bytes) -> None:
    """Every byte as the guest's rw run leaves it: its pattern, the discarded MiB zeros."""
    expected = bytearray(pattern(DISK_BYTES, 7))
    expected[DISCARDED.start : DISCARDED.stop] = bytes(len(DISCARDED))
    assert len(data) == DISK_BYTES
    first_bad = next((i for i in range(0, DISK_BYTES, 4096)
                      if data[i : i + 4096] != expected[i : i + 4096]), None)
    assert first_bad is None, f"the disk differs from the guest's pattern at {first_bad:#x}"


@pytest.fixture
def loop_device(tmp_path: Path):
    """A loop block device over a zeroed file (skips where the host has none to give)."""
    backing = tmp_path / "backing.img"
    backing.write_bytes(bytes(DISK_BYTES))
    made = subprocess.run(["losetup", "--find", "--show", str(backing)], capture_output=True,
                          text=True)
    if made.returncode != 0:
        pytest.skip(f"no loop device on this host: {made.stderr.strip()}")
    device = made.stdout.strip()
    try:
        yield device
    finally:
        subprocess.run(["losetup", "-d", device], capture_output=True)


def test_a_block_device_is_a_disk_too(daemon: Daemon, loop_device: str) -> None:
    report = run_guest(daemon, "phy", "mode=rw seed=7", f"phy:{loop_device},xvda,w")
    assert report.value("sectors") == str(DISK_BYTES // 512)
    with open(loop_device, "rb") as f:
        check_pattern_with_hole(f.read(DISK_BYTES))


def test_read_only_disk_refuses_writes_and_stays_as_it_was(daemon: Daemon,
                                                           tmp_path: Path) -> None:
    image = tmp_path / "ro.img"
    content = pattern(DISK_BYTES, 3)
    image.write_bytes(content)
    report = run_guest(daemon, "rodisk", "mode=ro seed=3", f"{image},raw,xvda,ro")
    assert {"blkfront.write_refused", "blkfront.read_all"} <= set(report.passed)
    assert image.read_bytes() == content


def test_block_attach_list_and_detach_while_the_domain_runs(daemon: Daemon,
                                                            tmp_path: Path) -> None:
    first, second = tmp_path / "a.img", tmp_path / "b.img"
    for path in (first, second):
        path.write_bytes(bytes(MIB))
    domid = daemon.create("host", "pvguest", "console=hvc0")
    daemon.pyxen("block-attach", "host", f"{first},raw,xvdb,rw")
    daemon.pyxen("block-attach", "host", f"format=raw, vdev=xvdc, access=ro, target={second}")
    listing = daemon.pyxen("block-list", "host").stdout.splitlines()
    assert listing[0].split() == ["Vdev", "BE", "handle", "state", "evt-ch", "ring-ref",
                                  "BE-path"]
    rows = {line.split()[0]: line.split() for line in listing[1:]}
    assert set(rows) == {"51728", "51744"}  # xvdb, xvdc
    assert rows["51728"][1:4] == ["0", str(domid), "2"]  # InitWait: the guest has no driver
    assert rows["51728"][6] == f"/local/domain/0/backend/vbd/{domid}/51728"
    with Client(str(daemon.xenstore), timeout=60) as xs:
        back = f"/local/domain/0/backend/vbd/{domid}/51744"
        assert xs.read(f"{back}/mode") == b"r" and xs.read(f"{back}/params") == str(second).encode()
        assert xs.read(f"/local/domain/{domid}/device/vbd/51744/backend") == back.encode()
        assert xs.get_perms(f"/local/domain/{domid}/device/vbd/51744")[0] == f"n{domid}"
    # the disk is writable here: nobody else may have it, read-only or not
    other = daemon.pyxen("block-attach", "host", f"{first},raw,xvdd,ro", check=False)
    assert other.returncode == 1 and "is in use by domain" in other.stderr
    # a guest that never connected does not let go: detach needs -f, as with xl
    refused = daemon.pyxen("block-detach", "host", "xvdb", check=False, timeout=120)
    assert refused.returncode == 1 and "--force" in refused.stderr
    daemon.pyxen("block-detach", "-f", "host", "51728")
    daemon.pyxen("block-detach", "-f", "host", "xvdc")
    assert daemon.pyxen("block-list", "host").stdout.splitlines()[1:] == []
    with Client(str(daemon.xenstore), timeout=60) as xs:
        assert not xs.exists(f"/local/domain/0/backend/vbd/{domid}")
        assert not xs.exists(f"/local/domain/{domid}/device/vbd")
    # detached: the file is free for another domain again
    daemon.pyxen("block-attach", "host", f"{first},raw,xvdb,rw")
    daemon.pyxen("destroy", "host")
    wait_for("the back end's nodes to go", lambda: not backend_dirs(daemon))


@pytest.mark.parametrize(("spec", "message"), [
    ("{dir}/q.qcow2,qcow2,xvda,rw", "format=qcow2 is not served by pyxen's block back end"),
    ("/dev/null,raw,xvda,rw", "/dev/null is neither a file nor a block device"),
    ("{dir},raw,xvda,rw", "cannot open {dir}: Is a directory"),
    ("{dir}/none.img,raw,xvda,rw", "cannot open {dir}/none.img: No such file or directory"),
    ("{dir}/a.img,raw,xvda,rw,script=block-iscsi", "pyxen runs no hotplug scripts"),
    ("{dir}/a.img,raw,zzz,rw", "vdev zzz is not a disk name"),
])
def test_a_disk_that_cannot_be_served_is_one_line_and_no_domain(daemon: Daemon, tmp_path: Path,
                                                                spec: str, message: str) -> None:
    (tmp_path / "a.img").write_bytes(bytes(MIB))
    (tmp_path / "q.qcow2").write_bytes(bytes(MIB))
    cfg = daemon.config("bad", "block", disk=[spec.format(dir=tmp_path)])
    result = daemon.pyxen("create", "-q", str(cfg), check=False)
    assert result.returncode == 1, result.stderr
    assert message.format(dir=tmp_path) in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr
    assert daemon.domains() == {}


def test_a_replacing_daemon_takes_the_disks_over(daemon: Daemon, tmp_path: Path) -> None:
    image = tmp_path / "kept.img"
    image.write_bytes(bytes(MIB))
    domid = daemon.create("keeper", "pvguest", "console=hvc0")
    daemon.pyxen("block-attach", "keeper", f"{image},raw,xvdb,rw")
    second = Daemon(tmp_path, "--replace", log_name="daemon-2.err")
    try:
        assert daemon.process.wait(timeout=120) == 0
        wait_for("the new daemon to serve", second.answers)
        rows = second.pyxen("block-list", "keeper").stdout.splitlines()[1:]
        assert [row.split()[:3] for row in rows] == [["51728", "0", str(domid)]]
        # the new daemon knows the disk is taken...
        other = second.pyxen("block-attach", "keeper", f"{image},raw,xvdc,ro", check=False)
        assert other.returncode == 1 and "is in use by domain" in other.stderr
        # ...and lets it go
        second.pyxen("block-detach", "-f", "keeper", "xvdb")
        second.pyxen("block-attach", "keeper", f"{image},raw,xvdc,ro")
        second.pyxen("destroy", "keeper")
        wait_for("the back end's nodes to go", lambda: not backend_dirs(second))
    finally:
        second.stop()
