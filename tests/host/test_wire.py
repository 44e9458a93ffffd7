"""pyxen.host.wire and the parsing of what reaches the daemon: the API's request lines and
the domain process's datagrams. Each case was found by fuzzing (fuzz/targets/api.py and
domain_wire.py; their inputs are in fuzz/crashes/)."""

from __future__ import annotations

import asyncio
import json
import os
import threading
from types import SimpleNamespace

import pytest
from fuzz.targets.api import Writer

from pyxen.host.api import MAX_REQUEST, Api, ApiServer
from pyxen.host.hosted import HostedDomain
from pyxen.host.wire import WireError, decode, wire_to_bytes


@pytest.mark.parametrize("data", [b"[" * 1200, b"9" * 5000, b'{"a":' + b"1" * 5000 + b"}",
                                  b"\xff", b"[]", b""])
def test_decode_refuses_with_wire_error(data: bytes) -> None:
    """Deep nesting was a RecursionError, a 5000-digit number a bare ValueError."""
    with pytest.raises(WireError) as e:
        decode(data)
    assert "\n" not in str(e.value)


def test_bytes_above_latin1_do_not_raise() -> None:
    assert wire_to_bytes("a\u20acb") == b"a?b"


def _serve(data: bytes) -> list[dict]:
    async def run() -> bytes:
        server = ApiServer.__new__(ApiServer)
        server.api = Api(SimpleNamespace(create=None))  # type: ignore[arg-type]  # refused first
        reader = asyncio.StreamReader(limit=MAX_REQUEST)
        reader.feed_data(data)
        reader.feed_eof()
        writer = Writer()
        await server._serve(reader, writer)  # type: ignore[arg-type]
        return bytes(writer.data)

    return [json.loads(line) for line in asyncio.run(run()).splitlines()]


def test_api_answers_a_malformed_create_in_one_line() -> None:
    replies = _serve(b'{"op":"create","spec":"ab"}\n{"op":"create","actions":[1]}\n'
                     + b"[" * 1200 + b"\n")
    assert [r["ok"] for r in replies] == [False, False, False]
    assert replies[0]["error"] == "spec: a JSON object expected, not str"
    assert replies[1]["error"] == "actions: a JSON object expected, not list"
    assert replies[2]["error"] == "not a JSON message: nested too deeply"


def test_api_answers_a_line_over_the_limit_and_ends() -> None:
    """It was an exception in the connection's task: no answer, a traceback in the log."""
    replies = _serve(b" " * (MAX_REQUEST + 1) + b'\n{"op":"info"}\n')
    assert replies == [{"ok": False, "status": 1,
                        "error": f"a request line is limited to {MAX_REQUEST} bytes"}]


def _domain() -> HostedDomain:
    dom = HostedDomain.__new__(HostedDomain)
    dom.domid, dom.pid, dom._built = 4, os.getpid(), None
    dom.vcpu_tids, dom.on_vcpu_thread, dom.stopped_as = {}, None, None
    dom._calls_lock, dom._calls = threading.Lock(), {}
    dom.on_stopped = lambda dom, outcome, detail: None
    return dom


@pytest.mark.parametrize("msg", [{"vcpu": [1], "tid": os.getpid()}, {"vcpu": 0, "tid": "1"},
                                 {"vcpu": 0, "tid": 1}, {"vcpu": True, "tid": os.getpid()},
                                 {"vcpu": -1, "tid": os.getpid()}])
def test_vcpu_thread_must_name_a_thread_of_the_process(msg: dict) -> None:
    """int() on a list was a TypeError; tid 1 would have had the daemon pin init."""
    dom = _domain()
    dom._handle({"op": "vcpu_thread", **msg}, [])
    assert dom.vcpu_tids == {}
    dom._handle({"op": "vcpu_thread", "vcpu": 2, "tid": os.getpid()}, [])
    assert dom.vcpu_tids == {2: os.getpid()}


@pytest.mark.parametrize("runs, want", [(None, []), ([[0, 16], [256, 4]], [(0, 16), (256, 4)]),
                                        (5, None), ([[1, 2, 3]], None), ([[1, "x"]], None),
                                        ([[-1, 2]], None)])
def test_stopped_memory_runs_are_checked(runs: object, want: object) -> None:
    dom = _domain()
    dom._handle({"op": "stopped", "outcome": "crash", "runs": runs}, [])
    assert dom.stopped_as == "crash" and dom.memory_runs == want


def test_device_reply_with_an_unhashable_seq_is_ignored() -> None:
    _domain()._handle({"op": "device_reply", "seq": []}, [])
