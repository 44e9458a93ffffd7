"""The domain-process wire, daemon side: one SOCK_SEQPACKET datagram from a domain process
(wire.decode, then HostedDomain._handle).

A domain process runs a guest: the daemon must not trust what it sends. Expected: WireError
for a datagram that is not a JSON object, anything else ignored or refused. A bug: any
other exception, which would escape into the daemon's event loop.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import threading
from typing import Any

from fuzz.targets._check import no_logged_errors
from pyxen.host.hosted import HostedDomain
from pyxen.host.wire import WireError, decode

INSTRUMENT = ("pyxen.host.wire", "pyxen.host.hosted")

LOOP = asyncio.new_event_loop()
# the daemon's end of the control channel (for peer_link's refusal), and the process's end
DAEMON_END, PROCESS_END = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
PROCESS_END.setblocking(False)


def _domain() -> HostedDomain:
    """A HostedDomain as launch leaves it waiting for "built" (no process, no files)."""
    dom = HostedDomain.__new__(HostedDomain)
    dom.domid, dom.name, dom.pid = 4, "guest", os.getpid()
    dom.control = DAEMON_END
    dom.fds, dom.vcpu_tids, dom.on_vcpu_thread = [], {}, None
    dom.on_dmesg = lambda domid, data: None
    dom.on_stopped = lambda dom, outcome, detail: None
    dom.find_domain = lambda domid: None
    dom.stopped_as, dom.memory_runs = None, None
    dom._built = LOOP.create_future()
    dom._saved = LOOP.create_future()  # as save() leaves it waiting for "saved"
    dom._migrated, dom._together, dom.migration_paused_at = None, None, None  # not migrating
    dom.on_migration_progress = lambda msg: None
    dom._calls_lock = threading.Lock()
    dom._calls = {}
    return dom


def one_input(data: bytes) -> None:
    try:
        msg = decode(data)
    except WireError:
        return
    dom = _domain()
    dom._calls[1] = asyncio.Future(loop=LOOP)
    with no_logged_errors("pyxen.daemon"):
        dom._handle(msg, [])
    if dom._built.done() and not dom._built.cancelled():
        dom._built.exception()  # retrieved: "failed" sets it
    try:
        while PROCESS_END.recv(65536):
            pass
    except BlockingIOError:
        pass


def seeds() -> list[bytes]:
    messages: list[dict[str, Any]] = [
        {"op": "built", "max_pages": 16384, "store_gfn": 1, "console_gfn": 2},
        {"op": "failed", "error": "no kernel"}, {"op": "vcpu_thread", "vcpu": 1, "tid": os.getpid()},
        {"op": "console_io", "data": "hello\n"}, {"op": "peer_link", "domid": 7, "seq": 1},
        {"op": "device_reply", "seq": 1, "ok": True},
        {"op": "stopped", "outcome": "poweroff", "runs": [[0, 16], [256, 4]], "detail": ""},
    ]
    return [json.dumps(m).encode() for m in messages]
