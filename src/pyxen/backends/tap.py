"""The host side of a vif: a TAP device named as xl names it, on a bridge as xl's default
`vif-bridge` hotplug script puts it.

The daemon opens the TAP (so the device lives exactly as long as a descriptor to it is
open: when the domain and the daemon let go, the kernel removes it) and hands the domain's
process a duplicate. Frames carry a virtio-net header (IFF_VNET_HDR): on the way in, it
tells the kernel which frames still need their checksum (a guest's NETTXF_csum_blank) and
which are TCP segments to cut (feature-gso-tcpv4); on the way out the kernel is asked for
plain, checksummed, MTU-sized frames only (no offloads), which any front end can take.
Netlink (link up, bridge, MAC) goes through pyroute2."""

from __future__ import annotations

import fcntl
import os
import struct

from pyxen.backends.xenbus import DeviceError

TUNSETIFF = 0x400454CA
TUNSETOFFLOAD = 0x400454D0
TUNSETVNETHDRSZ = 0x400454D8
IFF_TAP = 0x0002
IFF_NO_PI = 0x1000
IFF_VNET_HDR = 0x4000
IFNAMSIZ = 16
VNET_HDR = struct.Struct("<BBHHHH")  # flags, gso_type, hdr_len, gso_size, csum_start, csum_offset
VIRTIO_NET_HDR_F_NEEDS_CSUM = 1
VIRTIO_NET_HDR_GSO_NONE = 0
VIRTIO_NET_HDR_GSO_TCPV4 = 1
HOST_SIDE_MAC = "fe:ff:ff:ff:ff:ff"  # what vif-bridge gives the host's end of every vif
MTU = 1500


def tap_name(domid: int, devid: int) -> str:
    """xl's name for the host side of a domain's vif (`vif<domid>.<devid>`)."""
    return f"vif{domid}.{devid}"


def open_tap(name: str) -> int:
    """Create TAP device `name` and return its descriptor (DeviceError if it cannot be)."""
    if not 0 < len(name.encode()) < IFNAMSIZ:
        raise DeviceError(f"interface name {name!r} is not 1 to {IFNAMSIZ - 1} bytes")
    try:
        fd = os.open("/dev/net/tun", os.O_RDWR | os.O_CLOEXEC)
    except OSError as e:
        raise DeviceError(f"cannot open /dev/net/tun: {e.strerror or e}") from None
    try:
        ifreq = struct.pack(f"{IFNAMSIZ}sH", name.encode(), IFF_TAP | IFF_NO_PI | IFF_VNET_HDR)
        fcntl.ioctl(fd, TUNSETIFF, ifreq.ljust(40, b"\0"))
        fcntl.ioctl(fd, TUNSETVNETHDRSZ, struct.pack("i", VNET_HDR.size))
        fcntl.ioctl(fd, TUNSETOFFLOAD, 0)
    except OSError as e:
        os.close(fd)
        raise DeviceError(f"cannot create {name}: {e.strerror or e}") from None
    return fd


def attach_to_bridge(name: str, bridge: str) -> None:
    """vif-bridge's `online`: the host end gets fe:ff:ff:ff:ff:ff, MTU 1500, joins
    `bridge` and goes up. DeviceError names what is missing."""
    # imported here: pyroute2 takes a second to import, which every domain process and
    # daemon start would pay, and only the daemon, making a vif, needs it
    from pyroute2 import IPRoute
    from pyroute2.netlink.exceptions import NetlinkError

    with IPRoute() as ipr:
        found = ipr.link_lookup(ifname=bridge)
        if not found:
            raise DeviceError(f"bridge {bridge} does not exist (create it, e.g. `ip link add "
                              f"{bridge} type bridge`, or give bridge= in the vif spec)")
        link = ipr.get_links(found[0])[0]
        info = link.get_attr("IFLA_LINKINFO")
        if info is None or info.get_attr("IFLA_INFO_KIND") != "bridge":
            raise DeviceError(f"{bridge} is not a bridge")
        try:
            index = ipr.link_lookup(ifname=name)[0]
            ipr.link("set", index=index, address=HOST_SIDE_MAC, mtu=MTU)
            ipr.link("set", index=index, master=found[0])
            ipr.link("set", index=index, state="up")
        except (NetlinkError, IndexError) as e:
            raise DeviceError(f"cannot put {name} on {bridge}: {e}") from None
