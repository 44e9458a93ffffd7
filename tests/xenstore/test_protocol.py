"""Malformed traffic over the real socket hurts only the client that sends it."""

from __future__ import annotations

import socket
import struct
from collections.abc import Iterator
from pathlib import Path

import pytest

from pyxen.xenstore import Client, ThreadedServer
from pyxen.xenstore.codec import Framer, encode


@pytest.fixture
def server(tmp_path: Path) -> Iterator[str]:
    path = str(tmp_path / "s.sock")
    with ThreadedServer(path):
        yield path


def raw(path: str) -> socket.socket:
    s = socket.socket(socket.AF_UNIX)
    s.connect(path)
    s.settimeout(5)
    return s


def reply(s: socket.socket) -> tuple[int, int, bytes]:
    framer = Framer()
    while True:
        msgs = framer.feed(s.recv(65536))
        if msgs:
            return msgs[0].type, msgs[0].req_id, msgs[0].payload


def test_requests_split_across_reads_and_pipelined(server: str) -> None:
    s = raw(server)
    data = b"".join(encode(11, i, 0, f"/p{i}\0v{i}".encode()) for i in range(1, 4))
    data += encode(2, 9, 0, b"/p2\0")
    for i in range(0, len(data), 5):  # dribble bytes
        s.sendall(data[i : i + 5])
    framer, msgs = Framer(), []
    while len(msgs) < 4:
        msgs += framer.feed(s.recv(65536))
    assert [(m.req_id, m.payload) for m in msgs] == [(1, b"OK\0"), (2, b"OK\0"), (3, b"OK\0"), (9, b"v2")]


def test_oversized_payload_closes_only_that_client(server: str) -> None:
    good = Client(server)
    bad = raw(server)
    bad.sendall(struct.pack("=IIII", 2, 1, 0, 4097))
    assert bad.recv(100) == b""  # closed by the daemon
    good.write("/still", "fine")
    assert good.read("/still") == b"fine"


def test_missing_nul_is_einval(server: str) -> None:
    s = raw(server)
    s.sendall(encode(2, 7, 0, b"/tool"))
    assert reply(s) == (16, 7, b"EINVAL\0")


def test_unknown_type_is_enosys_and_connection_lives_on(server: str) -> None:
    s = raw(server)
    s.sendall(encode(999, 3, 0, b"x\0"))
    assert reply(s) == (16, 3, b"ENOSYS\0")
    s.sendall(encode(2, 4, 0, b"/tool\0"))
    assert reply(s) == (2, 4, b"")


def test_garbage_header_is_dropped(server: str) -> None:
    s = raw(server)
    s.sendall(b"\xff" * 16)  # len 0xffffffff
    assert s.recv(100) == b""
    assert Client(server).ls("/") == ["tool"]


def test_client_disconnect_drops_its_watches(server: str) -> None:
    a = Client(server)
    a.watch("/gone", "t")
    a.close()
    b = Client(server)
    b.write("/gone", "x")  # no one left to deliver to; the daemon carries on
    assert b.read("/gone") == b"x"
