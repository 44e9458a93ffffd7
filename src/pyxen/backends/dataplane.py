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
import threading
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
        # each connected device's request and a descriptor of its own for a reconnection
        self.connected: dict[tuple[str, int], tuple[Message, int]] = {}
        self.suspended: list[tuple[str, int]] = []
        # the daemon's requests come on the main loop, a migration's suspend on its thread
        self.lock = threading.RLock()
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
            with self.lock:
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
                announce = str(msg["mac"]) if msg.get("announce") else None
                back = NetBack(self.dom0, VifConnection(devid, queues), fds[0], announce)
            back.connect()
        except BaseException:
            os.close(fds[0])
            raise
        self.served[kind, devid] = back
        self.connected[kind, devid] = (dict(msg, announce=False), os.dup(fds[0]))

    def _disconnect(self, msg: Message) -> None:
        key = (str(msg.get("kind")), int(msg["devid"]))
        back = self.served.pop(key, None)
        if back is not None:
            back.disconnect()
        _, fd = self.connected.pop(key, (None, -1))
        if fd >= 0:
            os.close(fd)

    # --- a save or a migration ------------------------------------------------------------------
    def suspend(self) -> None:
        """The domain is paused for a save: every back end finishes the requests it took
        and lets go of the guest (its grants, its ports, unbound for domain 0 again), so
        the rings' pages hold everything and the guest's state refers to nothing of this
        process. The rings stay as they are; `resume` (or a restored domain's back ends)
        carries on from them."""
        with self.lock:
            for key, back in list(self.served.items()):
                back.disconnect()
                del self.served[key]
                self.suspended.append(key)

    def resume(self) -> None:
        """The save is done and the domain runs on: connect each back end again."""
        with self.lock:
            suspended, self.suspended = self.suspended, []
            for key in suspended:
                msg, fd = self.connected.pop(key)
                try:
                    self._connect(msg, [os.dup(fd)])
                except (ValueError, TypeError, KeyError, OSError) as e:
                    log.warning("%s %d does not connect again after the save: %s", *key, e)
                finally:
                    os.close(fd)
