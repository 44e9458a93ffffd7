"""The save/restore stream: what `pyxen save` writes and `pyxen restore` reads.

Framed as libxc's migration stream v2 (Xen's docs/specs/libxc-migration-stream.pandoc): an
image header, then records of type, length and body, each padded to 8 bytes, ending with
an END record. pyxen adds two things to each record's header: a CRC-32 of the body as
stored, because a saved image sits on disk and a migration crosses a network, and a flag
saying the body is zstd-compressed, which pays for guest pages (mostly code and zeroes).

A stream is read as hostile input: every size is bounded before anything is allocated, and
every problem is one `StreamError` line naming the record.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO

import zstandard

MARKER = 0xFFFF_FFFF_FFFF_FFFF  # as libxc's: not a valid start of an older format
IDENT = b"PYXF"  # libxc's is "XENF"
VERSION = 1
IMAGE_HEADER = struct.Struct("<Q4sIHHI")  # marker, ident, version, options, 2 reserved
RECORD_HEADER = struct.Struct("<IIII")  # type, body length (stored), crc32, flags
FLAG_ZSTD = 1  # the body is one zstd frame
MAX_BODY = 8 << 20  # bytes of one record's body, stored or decompressed
ALIGN = 8

# Record types. Where libxc has a record with the same meaning, the same number and name.
END = 0x00
PAGE_DATA = 0x01
HVM_CONTEXT = 0x09  # one per vCPU here: its registers, APIC and Xen state (JSON)
HVM_PARAMS = 0x0A  # libxc's layout: a count, then (index, value) pairs
TOOLSTACK = 0x0B  # the toolstack's part: the domain's XenStore subtree (JSON)
DOMAIN_CONFIG = 0x100  # pyxen: the domain's settings (libxl keeps these in its own stream)
XEN_STATE = 0x101  # pyxen: hypervisor state of the domain (events, grants, timers, ...)
SYNC = 0x102  # pyxen, live migration: the receiver acknowledges once all before it is applied

RECORD_NAMES = {END: "END", PAGE_DATA: "PAGE_DATA", HVM_CONTEXT: "HVM_CONTEXT", HVM_PARAMS: "HVM_PARAMS", TOOLSTACK: "TOOLSTACK",
                DOMAIN_CONFIG: "DOMAIN_CONFIG", XEN_STATE: "XEN_STATE", SYNC: "SYNC"}


class StreamError(Exception):
    """A stream that cannot be read: one line saying where and what."""


@dataclass(frozen=True)
class Record:
    type: int
    body: bytes

    @property
    def name(self) -> str:
        return record_name(self.type)


def record_name(rtype: int) -> str:
    return RECORD_NAMES.get(rtype, f"type {rtype:#x}")


def _pad(length: int) -> int:
    return -length % ALIGN


class StreamWriter:
    """Writes the image header at once, then records; `end()` closes the stream."""

    def __init__(self, out: BinaryIO, level: int = 3) -> None:
        self.out = out
        self.written = 0
        self._compressor = zstandard.ZstdCompressor(level=level)
        self._put(IMAGE_HEADER.pack(MARKER, IDENT, VERSION, 0, 0, 0))

    def _put(self, data: bytes) -> None:
        self.out.write(data)
        self.written += len(data)

    def record(self, rtype: int, body: bytes, compress: bool = False) -> None:
        if len(body) > MAX_BODY:
            raise ValueError(f"{record_name(rtype)} body of {len(body)} bytes is over "
                             f"{MAX_BODY}: split it")
        flags = 0
        if compress:
            packed = self._compressor.compress(body)
            if len(packed) < len(body):
                body, flags = packed, FLAG_ZSTD
        self._put(RECORD_HEADER.pack(rtype, len(body), zlib.crc32(body), flags))
        self._put(body + bytes(_pad(len(body))))

    def end(self) -> None:
        self.record(END, b"")
        self.out.flush()


def _read_exact(src: BinaryIO, length: int, what: str) -> bytes:
    data = src.read(length)
    if data is None or len(data) != length:
        raise StreamError(f"the stream ends inside {what}")
    return data


def read_header(src: BinaryIO) -> None:
    """Check the image header: a pyxen stream of a version this code reads."""
    head = _read_exact(src, IMAGE_HEADER.size, "the image header")
    marker, ident, version, options, _, _ = IMAGE_HEADER.unpack(head)
    if marker != MARKER or ident != IDENT:
        raise StreamError("not a pyxen save image (no PYXF header)")
    if version != VERSION:
        raise StreamError(f"stream version {version}; this pyxen reads version {VERSION}")
    if options:
        raise StreamError(f"stream options {options:#x} are not known to this pyxen")


def records(src: BinaryIO) -> Iterator[Record]:
    """The records after the header, bodies checked and decompressed, up to END (which is
    not yielded). A stream that stops before END is an error: it was cut short."""
    decompressor = zstandard.ZstdDecompressor()
    index = 0
    while True:
        index += 1
        where = f"record {index}"
        rtype, length, crc, flags = RECORD_HEADER.unpack(
            _read_exact(src, RECORD_HEADER.size, f"{where}'s header"))
        where = f"record {index} ({record_name(rtype)})"
        if length > MAX_BODY:
            raise StreamError(f"{where} claims {length} bytes, over the limit of {MAX_BODY}")
        if flags & ~FLAG_ZSTD:
            raise StreamError(f"{where} has unknown flags {flags:#x}")
        body = _read_exact(src, length, where)
        _read_exact(src, _pad(length), where)
        if zlib.crc32(body) != crc:
            raise StreamError(f"{where} is corrupt (checksum mismatch)")
        if flags & FLAG_ZSTD:
            try:  # a size in the frame's header is believed by decompress(): check it first
                if zstandard.frame_content_size(body) > MAX_BODY:
                    raise StreamError(f"{where} decompresses to over {MAX_BODY} bytes")
                body = decompressor.decompress(body, max_output_size=MAX_BODY)
            except zstandard.ZstdError as e:
                raise StreamError(f"{where} does not decompress: {e}") from None
        if rtype == END:
            if body:
                raise StreamError(f"{where} has a body")
            return
        yield Record(rtype, body)
