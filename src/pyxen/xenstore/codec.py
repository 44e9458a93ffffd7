"""Wire codec: xsd_sockmsg framing and payload strings, shared by server and client."""

from __future__ import annotations

from dataclasses import dataclass

from pyxen.abi.xs_wire import XENSTORE_PAYLOAD_MAX, XS_ERROR, XSD_SOCKMSG, XSD_SOCKMSG_SIZE
from pyxen.xenstore.errors import XenStoreError

_pack = XSD_SOCKMSG.pack
_unpack_from = XSD_SOCKMSG.unpack_from


@dataclass(slots=True)
class Message:
    type: int
    req_id: int
    tx_id: int
    payload: bytes


class ProtocolError(Exception):
    """The peer broke the framing rules: its connection must be dropped."""


def encode(type_: int, req_id: int, tx_id: int, payload: bytes) -> bytes:
    return _pack(type_, req_id, tx_id, len(payload)) + payload


def encode_error(name: str, req_id: int, tx_id: int) -> bytes:
    return encode(XS_ERROR, req_id, tx_id, name.encode() + b"\0")


class Framer:
    """Splits a byte stream into messages; bytes may arrive in any fragments."""

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[Message]:
        buf = self._buf
        buf += data
        out: list[Message] = []
        pos = 0
        end = len(buf)
        while end - pos >= XSD_SOCKMSG_SIZE:
            type_, req_id, tx_id, length = _unpack_from(buf, pos)
            if length > XENSTORE_PAYLOAD_MAX:
                raise ProtocolError(f"payload of {length} bytes exceeds {XENSTORE_PAYLOAD_MAX}")
            stop = pos + XSD_SOCKMSG_SIZE + length
            if stop > end:
                break
            out.append(Message(type_, req_id, tx_id, bytes(buf[pos + XSD_SOCKMSG_SIZE : stop])))
            pos = stop
        if pos:
            del buf[:pos]
        return out


def one_arg(payload: bytes) -> str:
    """A payload of exactly one NUL-terminated string (Xen's onearg)."""
    if not payload or payload.find(b"\0") != len(payload) - 1:
        raise XenStoreError("EINVAL", "expected one string")
    return decode(payload[:-1])


def args(payload: bytes, count: int) -> list[str]:
    """The first `count` NUL-terminated strings; fewer is EINVAL."""
    parts = payload.split(b"\0", count)
    if len(parts) <= count:
        raise XenStoreError("EINVAL", f"expected {count} strings")
    return [decode(p) for p in parts[:count]]


def all_args(payload: bytes) -> list[str]:
    """Every NUL-terminated string of the payload (a trailing fragment is ignored)."""
    return [decode(p) for p in payload.split(b"\0")[:-1]]


def decode(raw: bytes) -> str:
    try:
        return raw.decode("ascii")
    except UnicodeDecodeError:
        raise XenStoreError("EINVAL", "non-ASCII string") from None


def strings(items: list[str] | tuple[str, ...]) -> bytes:
    return b"".join(i.encode() + b"\0" for i in items)


def atoi(text: str) -> int:
    """C atoi: leading decimal digits (with sign), 0 if none."""
    text = text.strip()
    i = 1 if text[:1] in "+-" else 0
    while i < len(text) and text[i].isdigit():
        i += 1
    try:
        return int(text[:i])
    except ValueError:
        return 0
