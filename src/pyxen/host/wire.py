"""The messages of host mode: one JSON object each.

Between the daemon and a domain process: a SOCK_SEQPACKET socketpair, so a message is one
datagram and can carry file descriptors (the domain's memfd, its eventfds). Between the
daemon and a client (the CLI, the Python client): a stream socket with one JSON object per
line; a console session then turns the same stream into raw bytes both ways.

Guest bytes travel as latin-1 strings, which map every byte to one code point and back."""

from __future__ import annotations

import json
import socket
from typing import Any

MAX_MESSAGE = 1 << 20
MAX_FDS = 16
Message = dict[str, Any]


class WireError(RuntimeError):
    """A peer sent something that is not a message of this protocol."""


def encode(msg: Message) -> bytes:
    return json.dumps(msg, separators=(",", ":")).encode()


def decode(data: bytes) -> Message:
    try:
        msg = json.loads(data)
    except ValueError as e:  # JSONDecodeError, UnicodeDecodeError, an int of 5000 digits
        raise WireError(f"not a JSON message: {e}") from None
    except RecursionError:  # [[[[...: JSON has no nesting limit, Python's parser has
        raise WireError("not a JSON message: nested too deeply") from None
    if not isinstance(msg, dict):
        raise WireError("a message must be a JSON object")
    return msg


def send_packet(sock: socket.socket, msg: Message, fds: list[int] | None = None) -> None:
    """One message (with `fds`) on a SOCK_SEQPACKET control channel."""
    socket.send_fds(sock, [encode(msg)], fds or [])


def recv_packet(sock: socket.socket) -> tuple[Message | None, list[int]]:
    """The next message and the fds it carried; (None, []) at end of file."""
    data, fds, _flags, _addr = socket.recv_fds(sock, MAX_MESSAGE, MAX_FDS)
    if not data:
        for fd in fds:
            socket.close(fd)
        return None, []
    return decode(data), fds


def bytes_to_wire(data: bytes) -> str:
    return data.decode("latin-1")


def wire_to_bytes(text: str) -> bytes:
    """The bytes of a latin-1 string; a code point above U+00FF (which no byte gives: the
    peer is broken) becomes '?' rather than an exception."""
    return text.encode("latin-1", "replace")
