"""A PV disk as the toolstack and blkback's xenbus half set it up (daemon side).

libxl's part: the vdev's device number (docs/misc/vbd-interface.txt), the back end's and
front end's nodes, and the disk opened where the host can check it before the domain
exists. Linux blkback's xenbus.c part: the features written at probe, the front end's
ring read at connect, and the disk's size and flags written before Connected. The ring
itself is served in the domain's process (`pyxen.backends.blkback`): the daemon opens the
disk and hands the domain process a descriptor, so a domain process never needs a path.
"""

from __future__ import annotations

import fcntl
import os
import re
import stat
import struct
from dataclasses import dataclass
from typing import Any

from pyxen.abi import blkif as B
from pyxen.backends.blkback import MAX_INDIRECT_SEGMENTS, MAX_RING_PAGE_ORDER
from pyxen.backends.xenbus import DeviceError, XenbusBackend, front_number
from pyxen.toolstack.xl_disk import DiskSpec

BLKGETSIZE64 = 0x80081272
BLKSSZGET = 0x1268
BLKPBSZGET = 0x127B
SECTOR = 512


def vdev_number(vdev: str) -> int:
    """libxl's device number for a vdev name: xvdX[N], hdX[N], sdX[N], dN[pM] or a number."""
    m = re.fullmatch(r"xvd([a-z]+)(\d*)", vdev)
    if m:
        disk, part = _letters(m.group(1)), int(m.group(2) or 0)
        if disk < 16 and part < 16:
            return 202 << 8 | disk << 4 | part
        if disk < 1 << 20 and part < 256:
            return 1 << 28 | disk << 8 | part
    m = re.fullmatch(r"hd([a-t])(\d*)", vdev)
    if m and int(m.group(2) or 0) < 64:
        disk, part = ord(m.group(1)) - ord("a"), int(m.group(2) or 0)
        majors = (3, 22, 33, 34, 56, 57, 88, 89, 90, 91)
        return majors[disk // 2] << 8 | (disk % 2) << 6 | part
    m = re.fullmatch(r"sd([a-p])(\d*)", vdev)
    if m and int(m.group(2) or 0) < 16:
        return 8 << 8 | (ord(m.group(1)) - ord("a")) << 4 | int(m.group(2) or 0)
    m = re.fullmatch(r"d(\d+)(?:p(\d+))?", vdev)
    if m and int(m.group(1)) < 1 << 20 and int(m.group(2) or 0) < 256:
        disk, part = int(m.group(1)), int(m.group(2) or 0)
        return 202 << 8 | disk << 4 | part if disk < 16 and part < 16 else \
            1 << 28 | disk << 8 | part
    if vdev.isdigit() and 0 < int(vdev) < 1 << 31:
        return int(vdev)
    raise DeviceError(f"vdev {vdev} is not a disk name pyxen knows (xvda, xvdb1, hda, sda, d0p1)")


def _letters(text: str) -> int:
    """xvd's disk index: a..z are 0..25, then aa is 26 (bijective base 26)."""
    n = 0
    for ch in text:
        n = n * 26 + ord(ch) - ord("a") + 1
    return n - 1


@dataclass
class Disk:
    """An open disk image or block device, and what blkback reports of it."""

    fd: int
    path: str
    sectors: int
    sector_size: int
    physical_sector_size: int
    readonly: bool
    block_device: bool
    identity: tuple[int, int]  # (st_dev, st_ino): one disk, however it is named

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def open_disk(spec: DiskSpec) -> Disk:
    """The spec's disk opened as blkback would use it; DeviceError (one line) if it cannot."""
    if spec.format != "raw":
        raise DeviceError(f"disk {spec.vdev}: format={spec.format} is not served by pyxen's "
                          f"block back end (raw only); convert it with `qemu-img convert "
                          f"-O raw`")
    if spec.backend not in (None, "0", "Domain-0"):
        raise DeviceError(f"disk {spec.vdev}: backend={spec.backend}: driver domains are "
                          "not supported, the back end is always the host")
    if spec.script is not None:
        raise DeviceError(f"disk {spec.vdev}: script={spec.script}: pyxen runs no hotplug "
                          "scripts; give the file or block device itself")
    if spec.specification == "virtio":
        raise DeviceError(f"disk {spec.vdev}: specification=virtio needs a virtio device, "
                          "which a PVH guest on pyxen does not have")
    if not spec.target:
        raise DeviceError(f"disk {spec.vdev}: an empty drive is not supported")
    readonly = spec.readonly or spec.is_cdrom
    try:
        fd = os.open(spec.target, (os.O_RDONLY if readonly else os.O_RDWR) | os.O_CLOEXEC)
    except OSError as e:
        raise DeviceError(f"disk {spec.vdev}: cannot open {spec.target}: "
                          f"{e.strerror or e}") from None
    try:
        st = os.fstat(fd)
        block = stat.S_ISBLK(st.st_mode)
        if block:
            size = struct.unpack("Q", fcntl.ioctl(fd, BLKGETSIZE64, b"\0" * 8))[0]
            logical = struct.unpack("i", fcntl.ioctl(fd, BLKSSZGET, b"\0" * 4))[0]
            physical = struct.unpack("I", fcntl.ioctl(fd, BLKPBSZGET, b"\0" * 4))[0]
        elif stat.S_ISREG(st.st_mode):
            size, logical, physical = st.st_size, SECTOR, SECTOR
        else:
            raise DeviceError(f"disk {spec.vdev}: {spec.target} is neither a file nor a "
                              "block device")
        if size < SECTOR:
            raise DeviceError(f"disk {spec.vdev}: {spec.target} is smaller than one sector")
    except BaseException:
        os.close(fd)
        raise
    return Disk(fd, spec.target, size // SECTOR, logical, physical, readonly, block,
                (st.st_dev, st.st_ino))


class VbdBackend(XenbusBackend):
    """One disk of one domain."""

    kind = "vbd"

    def __init__(self, spec: DiskSpec, disk: Disk, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.spec, self.disk = spec, disk

    def backend_entries(self) -> list[tuple[str, str]]:
        s = self.spec
        return [("params", self.disk.path), ("type", "phy" if self.disk.block_device else "file"),
                ("mode", "r" if self.disk.readonly else "w"), ("removable", "0"),
                ("bootable", "1"), ("dev", s.vdev), ("device-type", s.devtype),
                ("discard-enable", "0" if s.discard is False else "1"),
                ("hotplug-status", "connected")]

    def frontend_entries(self) -> list[tuple[str, str]]:
        return [("virtual-device", str(self.devid)), ("device-type", self.spec.devtype)]

    def probe_entries(self) -> list[tuple[str, str]]:
        """xen_blkbk_probe's features."""
        return [("feature-max-indirect-segments", str(MAX_INDIRECT_SEGMENTS)),
                ("feature-persistent", "1"),
                ("max-ring-page-order", str(MAX_RING_PAGE_ORDER))]

    def connect_ring(self, front: dict[str, str]) -> list[tuple[str, str]]:
        """connect_ring: the front end's ring pages, channel, protocol and persistence;
        then blkback's connect() nodes."""
        order = front_number(front, "ring-page-order", 0)
        if order > MAX_RING_PAGE_ORDER:
            raise DeviceError(f"ring-page-order {order} is over the back end's "
                              f"max-ring-page-order {MAX_RING_PAGE_ORDER}")
        if "ring-page-order" in front:
            refs = [front_number(front, f"ring-ref{i}") for i in range(1 << order)]
        else:
            refs = [front_number(front, "ring-ref")]
        self.data_path({"op": "device_connect", "ring_refs": refs,
                        "port": front_number(front, "event-channel"),
                        "protocol": front.get("protocol", B.XEN_ABI_X86_64),
                        "persistent": front.get("feature-persistent", "0").strip() == "1",
                        "sectors": self.disk.sectors, "readonly": self.disk.readonly,
                        "discard": self.spec.discard is not False}, self.disk.fd)
        info = (B.VDISK_READONLY if self.disk.readonly else 0) | \
            (B.VDISK_CDROM | B.VDISK_REMOVABLE if self.spec.is_cdrom else 0)
        nodes = [("feature-flush-cache", "1"), ("feature-barrier", "1"),
                 ("sectors", str(self.disk.sectors)), ("info", str(info)),
                 ("sector-size", str(self.disk.sector_size)),
                 ("physical-sector-size", str(self.disk.physical_sector_size))]
        if self.spec.discard is not False and not self.disk.readonly:
            nodes += [("feature-discard", "1"), ("discard-granularity", str(SECTOR)),
                      ("discard-alignment", "0"), ("discard-secure", "0")]
        return nodes

    def release(self) -> None:
        self.disk.close()

    def describe(self) -> dict[str, Any]:
        return dict(super().describe(), vdev=self.spec.vdev, target=self.disk.path,
                    mode="r" if self.disk.readonly else "w", sectors=self.disk.sectors)
