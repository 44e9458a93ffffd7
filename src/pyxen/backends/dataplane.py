"""The data paths a domain's process serves for the domain's PV devices.

The daemon's xenbus half (`pyxen.backends.xenbus`) decides when a device connects and
disconnects; this side does it, in the domain's process, on the daemon's control
channel: `device_connect` (with the disk's descriptor) maps the ring and binds the
channel as domain 0, `device_disconnect` drains and releases everything. Each request is
answered with `device_reply`, carrying the request's `seq` and an `error` when refused."""

from __future__ import annotations

import contextlib
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from pyxen.backends.blkback import IO_THREADS, BlkBack, VbdConnection
from pyxen.backends.dom0 import Dom0
from pyxen.backends.netback import NetBack, QueueRings, VifConnection
from pyxen.domain.domain import Domain

log = logging.getLogger("pyxen.dataplane")
Message = dict[str, Any]
Served = BlkBack | NetBack


class DataPlane:
    """This process's back ends, by (kind, devid)."""

    def __init__(self, domain: Domain) -> None:
        self.dom0 = Dom0(domain)
        self.served: dict[tuple[str, int], Served] = {}
        self._pool: ThreadPoolExecutor | None = None

    @property
    def pool(self) -> ThreadPoolExecutor:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(IO_THREADS, thread_name_prefix="blkback-io")
        return self._pool

    def handle(self, msg: Message, fds: list[int]) -> Message:
        """One request of the daemon's; the reply to send."""
        reply: Message = {"op": "device_reply", "seq": msg.get("seq")}
        try:
            if msg.get("op") == "device_connect":
                self._connect(msg, fds)
                fds = []
            else:
                self._disconnect(msg)
        except (ValueError, TypeError, KeyError, OSError) as e:
            reply["error"] = str(e) or type(e).__name__
        finally:
            for fd in fds:
                with contextlib.suppress(OSError):
                    os.close(fd)
        return reply

    def _connect(self, msg: Message, fds: list[int]) -> None:
        kind, devid = msg["kind"], int(msg["devid"])
        if kind not in ("vbd", "vif"):
            raise ValueError(f"no {kind} back end")
        if len(fds) != 1:
            raise ValueError("device_connect without the device's descriptor")
        if (kind, devid) in self.served:
            raise ValueError(f"{kind} {devid} is connected already")
        try:
            back: Served
            if kind == "vbd":
                conn = VbdConnection(
                    devid=devid, ring_refs=[int(r) for r in msg["ring_refs"]],
                    port=int(msg["port"]), sectors=int(msg["sectors"]),
                    readonly=bool(msg["readonly"]), persistent=bool(msg["persistent"]),
                    discard=bool(msg["discard"]), protocol=str(msg["protocol"]))
                back = BlkBack(self.dom0, conn, fds[0], self.pool)
            else:
                queues = [QueueRings(*(int(x) for x in q)) for q in msg["queues"]]
                back = NetBack(self.dom0, VifConnection(devid, queues), fds[0])
            back.connect()
        except BaseException:
            os.close(fds[0])
            raise
        self.served[kind, devid] = back

    def _disconnect(self, msg: Message) -> None:
        back = self.served.pop((str(msg.get("kind")), int(msg["devid"])), None)
        if back is not None:
            back.disconnect()
