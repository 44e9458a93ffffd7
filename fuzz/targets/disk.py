"""Disk specs (xl-disk-configuration(5)): parse_disk_spec, and its round trip.

Expected failure: XlConfigError, one line. A spec that parses must write back (to_spec,
what the daemon is sent) as a spec that parses to the same disk, or refuse with ValueError.
"""

from __future__ import annotations

from fuzz.targets._check import one_line, reads_back
from pyxen.toolstack.xl_disk import XlConfigError, parse_disk_spec

INSTRUMENT = ("pyxen.toolstack.xl_disk",)


def one_input(data: bytes) -> None:
    spec = data.decode("utf-8", "surrogateescape")
    try:
        disk = parse_disk_spec(spec)
    except XlConfigError as e:
        one_line(e)
        return
    reads_back(parse_disk_spec, spec, disk)


def seeds() -> list[bytes]:
    return [s.encode() for s in (
        "/dev/vg/guest-volume,raw,xvda,rw",
        "format=raw, vdev=xvdc, access=ro, target=/root/image.iso",
        "vdev=hdc, devtype=cdrom, format=raw, target=",
        "tap:aio:/some/where.img,xvdb,w",
        "phy:/dev/sdb,xvdd:cdrom,r",
        "iscsi:iqn.2001-05.com.example:disk,xvde,w",
        "raw:/x,hda,w,backendtype=qdisk,discard,direct-io-safe",
        ",,hdc:cdrom,r",
        "vdev=xvdf,script=block-drbd,specification=virtio,trusted,target=r0",
    )]
