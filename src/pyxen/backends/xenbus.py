"""The back end's half of xenbus, run by the host daemon for each PV device.

On Xen three parties set up a split device: libxl writes the device's directories in
XenStore (the back end's under dom0, the front end's under the guest), the back-end driver
in dom0 watches the front end's `state` and answers each step, and the front end in the
guest does its half. Here the daemon plays libxl and the back-end driver's xenbus part;
the data path (the ring) runs in the domain's own process (`pyxen.backends.dom0`), which
the daemon tells to connect and disconnect over the domain's control channel.

The state machine is Linux's xenbus back-end drivers' (blkback's and netback's
frontend_changed): the back end probes (writes its features) and waits in InitWait; a front
end that is Initialised or Connected gets the ring connected and the back end goes
Connected; Closing is mirrored; Closed disconnects and closes, and a front end that starts
again (Initialising) after that finds the back end in InitWait again, ready to reconnect.
Removal is libxl's: `online` 0 and state Closing, then wait for Closed, then the
directories go.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from typing import Any

from pyxen.abi.xenbus import (
    XenbusStateClosed,
    XenbusStateClosing,
    XenbusStateConnected,
    XenbusStateInitialised,
    XenbusStateInitialising,
    XenbusStateInitWait,
    XenbusStateUnknown,
)
from pyxen.xenstore.client import Client, Watcher, WatchEvent
from pyxen.xenstore.errors import XenStoreError
from pyxen.xenstore.xenstored import XenStored

log = logging.getLogger("pyxen.xenbus")
BACKEND_DOMID = 0
REMOVE_TIMEOUT = 10.0  # seconds libxl waits for a back end to close (LIBXL_DESTROY_TIMEOUT)
Message = dict[str, Any]


class DeviceError(Exception):
    """A device cannot be added, connected or removed; str() is one line for the user."""


def backend_path(kind: str, domid: int, devid: int) -> str:
    return f"/local/domain/{BACKEND_DOMID}/backend/{kind}/{domid}/{devid}"


def frontend_path(kind: str, domid: int, devid: int) -> str:
    return f"/local/domain/{domid}/device/{kind}/{devid}"


def libxl_path(kind: str, domid: int, devid: int) -> str:
    return f"/libxl/{domid}/device/{kind}/{devid}"


class XenbusBackend:
    """One device of one domain: its nodes and its back end's xenbus state machine.
    Subclasses say what the device is (`kind`, the nodes, the features) and how its data
    path connects; `call` reaches the domain's process."""

    kind = ""

    def __init__(self, xenstored: XenStored, domid: int, devid: int,
                 call: Callable[[Message, list[int]], Message]) -> None:
        self.xenstored = xenstored
        self.domid, self.devid = domid, devid
        self.call = call
        self.back = backend_path(self.kind, domid, devid)
        self.front = frontend_path(self.kind, domid, devid)
        self.xs = Client.in_process(xenstored, domid=BACKEND_DOMID)
        self.lock = threading.RLock()  # one state change at a time
        self.connected = False
        self.removing = False
        self.closed_event = threading.Event()
        self.watcher: Watcher | None = None
        self.restored = False  # added for a restored domain, not connected since

    # --- what a device says about itself (subclasses) -----------------------------------------
    def backend_entries(self) -> list[tuple[str, str]]:
        """libxl's device-specific back-end nodes."""
        return []

    def frontend_entries(self) -> list[tuple[str, str]]:
        return []

    def probe_entries(self) -> list[tuple[str, str]]:
        """What the back-end driver writes before InitWait: its features."""
        return []

    def connect_ring(self, front: dict[str, str]) -> list[tuple[str, str]]:
        """Connect the data path to the ring the front end published (`front`: its nodes);
        the nodes to write before going Connected. DeviceError: refused."""
        raise NotImplementedError

    def disconnect_ring(self) -> None:
        """Stop the data path in the domain's process."""
        self.data_path({"op": "device_disconnect"})

    def data_path(self, msg: Message, fd: int = -1) -> None:
        """Tell the domain's process to connect or disconnect this device's data path
        (with a duplicate of `fd`, the device's descriptor, if given); DeviceError if it
        refuses."""
        fds = [os.dup(fd)] if fd >= 0 else []
        try:
            reply = self.call(dict(msg, kind=self.kind, devid=self.devid), fds)
        finally:
            for dup in fds:
                os.close(dup)
        if reply.get("error"):
            raise DeviceError(str(reply["error"]))

    def release(self) -> None:
        """The device has gone: let go of host resources (files, TAP devices)."""

    def describe(self) -> dict[str, Any]:
        """What `*-list` shows."""
        return {"devid": self.devid, "backend": self.back, "frontend": self.front,
                "state": self._read_int(f"{self.back}/state"),
                "frontend_state": self._read_int(f"{self.front}/state"),
                "evtchn": self._read_int(f"{self.front}/event-channel"),
                "ring_ref": next((r for r in (self._read_int(f"{self.front}/ring-ref"),
                                              self._read_int(f"{self.front}/ring-ref0"))
                                  if r is not None), None)}

    # --- adding -------------------------------------------------------------------------------
    def add(self, restored: bool = False) -> None:
        """libxl__device_add's nodes, then the driver's probe, then watch the front end.
        For a `restored` domain the front end's nodes came with it (its ring, its port,
        its Connected state): they stay, but for where its back end is, and the back end
        connects to that ring as soon as it has probed, as to a front end that is ready."""
        ro = [f"n{BACKEND_DOMID}", f"r{self.domid}"]  # libxl's backend_perms
        rw = [f"n{self.domid}", f"r{BACKEND_DOMID}"]  # its frontend_perms
        lib = libxl_path(self.kind, self.domid, self.devid)
        back = [("frontend", self.front), ("frontend-id", str(self.domid)), ("online", "1"),
                ("state", str(XenbusStateInitialising)), *self.backend_entries()]
        front = [("backend", self.back), ("backend-id", str(BACKEND_DOMID)),
                 ("state", str(XenbusStateInitialising)), *self.frontend_entries()]
        self.restored = restored
        for tx in self.xs.transactions():
            with tx:
                for path, perms, entries in ((self.back, ro, back), (self.front, rw, front)):
                    if restored and path == self.front and self.xs.exists(path, tx.id):
                        for key, value in front[:2]:  # only where its back end is now
                            self.xs.write(f"{path}/{key}", value, tx.id)
                        continue
                    if self.xs.exists(path, tx.id):
                        self.xs.rm(path, tx.id)
                    self.xs.mkdir(path, tx.id)
                    self.xs.set_perms(path, perms, tx.id)
                    for key, value in entries:
                        self.xs.write(f"{path}/{key}", value, tx.id)
                if self.xs.exists(lib, tx.id):
                    self.xs.rm(lib, tx.id)
                for key, value in (("frontend", self.front), ("backend", self.back), *back):
                    self.xs.write(f"{lib}/{key}", value, tx.id)
        self._probe()
        self.watcher = self.xs.watch(f"{self.front}/state", f"xenbus {self.front}",
                                     self._front_changed)

    def adopt(self) -> None:
        """Take over a device a previous daemon added: its nodes and data path stand."""
        self.connected = self._read_int(f"{self.back}/state") == XenbusStateConnected
        self.watcher = self.xs.watch(f"{self.front}/state", f"xenbus {self.front}",
                                     self._front_changed)

    def let_go(self) -> None:
        """The daemon hands over: stop watching; the nodes and the data path stay."""
        if self.watcher is not None:
            self.watcher.stop()
            self.watcher = None
        self.release()
        self.xs.close()

    def _probe(self) -> None:
        for key, value in self.probe_entries():
            self.xs.write(f"{self.back}/{key}", value)
        self._switch(XenbusStateInitWait)

    # --- the front end moves ------------------------------------------------------------------
    def _front_changed(self, _: WatchEvent) -> None:
        try:
            with self.lock:
                self._on_front_state(self._read_int(f"{self.front}/state"))
        except Exception:  # a bug, or the store went: this device stops, the daemon goes on
            log.exception("dom%d %s %d: front end change", self.domid, self.kind, self.devid)

    def _on_front_state(self, state: int | None) -> None:
        mine = self._read_int(f"{self.back}/state")
        if mine is None:
            return  # our directory was removed: the device is going
        if state == XenbusStateInitialising:
            if mine == XenbusStateClosed and not self.removing:
                log.info("dom%d %s %d: prepare for reconnect", self.domid, self.kind, self.devid)
                self._switch(XenbusStateInitWait)
        elif state in (XenbusStateInitialised, XenbusStateConnected):
            if mine == XenbusStateConnected or self.removing:
                return
            self._disconnect()
            try:
                nodes = self.connect_ring(self._front_nodes())
            except DeviceError as e:
                self._fatal(str(e))
                return
            self.connected = True
            for key, value in nodes:
                self.xs.write(f"{self.back}/{key}", value)
            self._switch(XenbusStateConnected)
        elif state == XenbusStateClosing:
            self._switch(XenbusStateClosing)
        elif state in (XenbusStateClosed, XenbusStateUnknown, None):
            self._disconnect()
            self._switch(XenbusStateClosed)
            self.closed_event.set()

    def _front_nodes(self) -> dict[str, str]:
        nodes = {}
        for key in self.xs.ls(self.front):
            try:
                nodes[key] = self.xs.read(f"{self.front}/{key}").decode(errors="replace")
            except XenStoreError:
                continue
        return nodes

    def _disconnect(self) -> None:
        if self.connected:
            self.connected = False
            self.disconnect_ring()

    def _fatal(self, why: str) -> None:
        """xenbus_dev_fatal: the reason where the toolstack looks, and the back end closes."""
        log.warning("dom%d %s %d: %s", self.domid, self.kind, self.devid, why)
        self.xs.write(f"/local/domain/{BACKEND_DOMID}/error{self.back}/error", why)
        self._switch(XenbusStateClosing)

    def _switch(self, state: int) -> None:
        """xenbus_switch_state: write our state (only a change)."""
        if self._read_int(f"{self.back}/state") != state:
            self.xs.write(f"{self.back}/state", str(state))

    def _read_int(self, path: str) -> int | None:
        try:
            return int(self.xs.read(path))
        except (XenStoreError, ValueError):
            return None

    # --- removing -----------------------------------------------------------------------------
    def remove(self, force: bool = False, timeout: float = REMOVE_TIMEOUT) -> None:
        """Detach the device as libxl does: ask the front end to close and wait for it
        (DeviceError if it does not within `timeout`, unless `force`), then remove it."""
        with self.lock:
            self.removing = True
            if self._read_int(f"{self.back}/state") in (XenbusStateClosed, None):
                self.closed_event.set()
            self.xs.write(f"{self.back}/online", "0")
            self._switch(XenbusStateClosing)
        if not self.closed_event.wait(timeout) and not force:
            with self.lock:
                self.removing = False
                self.xs.write(f"{self.back}/online", "1")
            raise DeviceError(f"the guest did not close {self.kind} {self.devid} within "
                              f"{timeout:.0f} s (--force removes it anyway)")
        self.gone()

    def gone(self) -> None:
        """The device goes (removed, or its domain destroyed): stop, and remove its back
        end's and libxl's nodes (the front end's go with the domain, or now)."""
        if self.watcher is not None:
            self.watcher.stop()
            self.watcher = None
        with self.lock:
            self.removing = True
            try:
                self._disconnect()
            except DeviceError as e:  # the domain's process is gone: nothing to stop
                log.debug("dom%d %s %d: %s", self.domid, self.kind, self.devid, e)
            try:
                for path in (self.back, self.front,
                             libxl_path(self.kind, self.domid, self.devid),
                             f"/local/domain/{BACKEND_DOMID}/error{self.back}"):
                    remove_path_and_empty_parents(self.xs, path)
            except (ConnectionError, TimeoutError) as e:  # the store closed first (daemon exit)
                log.debug("dom%d %s %d: nodes left: %s", self.domid, self.kind, self.devid, e)
            self.release()
        self.xs.close()


def remove_path_and_empty_parents(xs: Client, path: str) -> None:
    """libxl__xs_path_cleanup: the node, then each parent it leaves empty."""
    try:
        if xs.exists(path):
            xs.rm(path)
        parent = path.rsplit("/", 1)[0]
        while parent and xs.exists(parent) and not xs.ls(parent):
            xs.rm(parent)
            parent = parent.rsplit("/", 1)[0]
    except XenStoreError as e:
        log.debug("removing %s: %s", path, e)


def front_number(front: dict[str, str], key: str, default: int | None = None) -> int:
    """An unsigned number the front end wrote (DeviceError names a missing or bad one)."""
    text = front.get(key)
    if text is None:
        if default is not None:
            return default
        raise DeviceError(f"the front end wrote no {key}")
    try:
        value = int(text.strip(), 10)
    except ValueError:
        raise DeviceError(f"the front end's {key} is not a number: {text[:40]!r}") from None
    if not 0 <= value < 1 << 32:
        raise DeviceError(f"the front end's {key} is out of range: {value}")
    return value
