"""A PV network interface as the toolstack and netback's xenbus half set it up (daemon
side).

libxl's part: the MAC (the config's, or a random one in Xen's 00:16:3e range), the TAP
device `vif<domid>.<devid>` (or `vifname=`) on the bridge, as the `vif-bridge` hotplug
script does, and the device's nodes. Linux netback's xenbus.c part: the features written
at probe, each queue's rings and channels read at connect. The rings are served in the
domain's process (`pyxen.backends.netback`), which gets the TAP's descriptor: when both
the daemon and the domain process have let go of it, the kernel removes the device.
"""

from __future__ import annotations

import os
import random
from typing import Any

from pyxen.backends.netback import MAX_QUEUES
from pyxen.backends.tap import MTU, attach_to_bridge, open_tap, tap_name
from pyxen.backends.xenbus import DeviceError, XenbusBackend, front_number
from pyxen.toolstack.xl_vif import DEFAULT_SCRIPT, VifSpec

XEN_OUI = "00:16:3e"


def random_mac() -> str:
    """libxl's default MAC: Xen's OUI and three random bytes."""
    return XEN_OUI + "".join(f":{random.randrange(256):02x}" for _ in range(3))


class Vif:
    """A vif's host side, opened: its TAP on its bridge."""

    def __init__(self, spec: VifSpec, domid: int, devid: int) -> None:
        if spec.backend not in (None, "0", "Domain-0"):
            raise DeviceError(f"vif {devid}: backend={spec.backend}: driver domains are not "
                              "supported, the back end is always the host")
        if spec.script != DEFAULT_SCRIPT:
            raise DeviceError(f"vif {devid}: script={spec.script}: pyxen runs no hotplug "
                              f"scripts (it does what {DEFAULT_SCRIPT} does itself)")
        if spec.rate is not None:
            raise DeviceError(f"vif {devid}: rate= is not supported by pyxen's network back "
                              "end yet; remove it to run unlimited")
        if spec.mtu is not None and not 68 <= spec.mtu <= MTU:
            raise DeviceError(f"vif {devid}: mtu={spec.mtu}: pyxen's network back end "
                              f"carries 68 to {MTU}")
        self.spec, self.devid = spec, devid
        self.mac = spec.mac or random_mac()
        self.name = spec.vifname or tap_name(domid, devid)
        self.fd = open_tap(self.name)
        try:
            attach_to_bridge(self.name, spec.bridge)
        except BaseException:
            self.close()
            raise

    @classmethod
    def adopted(cls, spec: VifSpec, domid: int, devid: int) -> Vif:
        """A vif a previous daemon made: its TAP is the domain process's alone now."""
        vif = cls.__new__(cls)
        vif.spec, vif.devid, vif.mac = spec, devid, spec.mac or ""
        vif.name, vif.fd = spec.vifname or tap_name(domid, devid), -1
        return vif

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class VifBackend(XenbusBackend):
    """One network interface of one domain."""

    kind = "vif"

    def __init__(self, vif: Vif, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.vif = vif

    def backend_entries(self) -> list[tuple[str, str]]:
        s = self.vif.spec
        entries = [("script", s.script), ("mac", self.vif.mac), ("bridge", s.bridge),
                   ("handle", str(self.devid)), ("type", "vif"), ("vifname", self.vif.name),
                   ("hotplug-status", "connected")]
        if s.ip:
            entries.append(("ip", s.ip))
        if s.mtu:
            entries.append(("mtu", str(s.mtu)))
        return entries

    def frontend_entries(self) -> list[tuple[str, str]]:
        return [("handle", str(self.devid)), ("mac", self.vif.mac)]

    def probe_entries(self) -> list[tuple[str, str]]:
        """netback_probe's features (what the data path does)."""
        return [("feature-sg", "1"), ("feature-gso-tcpv4", "1"), ("feature-rx-copy", "1"),
                ("feature-rx-flip", "0"), ("feature-split-event-channels", "1"),
                ("multi-queue-max-queues", str(MAX_QUEUES))]

    def connect_ring(self, front: dict[str, str]) -> list[tuple[str, str]]:
        """connect_data_rings for each queue; netback refuses a front end without rx-copy."""
        if front.get("request-rx-copy", "0").strip() != "1":
            raise DeviceError("the front end does not request rx-copy (page flipping is "
                              "not supported)")
        count = front_number(front, "multi-queue-num-queues", 1)
        if not 1 <= count <= MAX_QUEUES:
            raise DeviceError(f"multi-queue-num-queues {count} (1 to {MAX_QUEUES})")
        queues = []
        for i in range(count):
            prefix = f"queue-{i}/" if count > 1 else ""  # one queue: flat, as netback reads it
            if f"{prefix}event-channel-tx" in front:
                tx_port = front_number(front, f"{prefix}event-channel-tx")
                rx_port = front_number(front, f"{prefix}event-channel-rx")
            else:
                tx_port = rx_port = front_number(front, f"{prefix}event-channel")
            queues.append([front_number(front, f"{prefix}tx-ring-ref"),
                           front_number(front, f"{prefix}rx-ring-ref"), tx_port, rx_port])
        if self.vif.fd < 0:
            raise DeviceError(f"{self.vif.name} was made by the daemon before this one: its "
                              "front end cannot reconnect until the domain restarts")
        self.data_path({"op": "device_connect", "queues": queues, "mac": self.vif.mac,
                        "announce": self.restored}, self.vif.fd)
        self.restored = False
        return []

    def _front_nodes(self) -> dict[str, str]:
        """The front end's nodes, with each queue's directory flattened (queue-0/tx-ring-ref)."""
        nodes = super()._front_nodes()
        for i in range(MAX_QUEUES):
            path = f"{self.front}/queue-{i}"
            if not self.xs.exists(path):
                break
            for key in self.xs.ls(path):
                nodes[f"queue-{i}/{key}"] = self.xs.read(f"{path}/{key}").decode(errors="replace")
        return nodes

    def release(self) -> None:
        self.vif.close()

    def describe(self) -> dict[str, Any]:
        return dict(super().describe(), mac=self.vif.mac, bridge=self.vif.spec.bridge,
                    vifname=self.vif.name,
                    tx_ring_ref=self._read_int(f"{self.front}/tx-ring-ref"),
                    rx_ring_ref=self._read_int(f"{self.front}/rx-ring-ref"))
