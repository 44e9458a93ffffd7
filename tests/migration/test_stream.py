"""The save/restore stream's framing (pyxen.migration.stream): what is written reads back,
and a damaged or foreign stream is refused with one line naming the record."""

from __future__ import annotations

import io
import os
import struct

import pytest
import zstandard
from hypothesis import given
from hypothesis import strategies as st

from pyxen.migration import stream
from pyxen.migration.stream import Record, StreamError, StreamWriter, read_header, records


def written(recs: list[tuple[int, bytes, bool]], end: bool = True) -> bytes:
    out = io.BytesIO()
    writer = StreamWriter(out)
    for rtype, body, compress in recs:
        writer.record(rtype, body, compress)
    if end:
        writer.end()
    assert writer.written == len(out.getvalue())
    return out.getvalue()


def read_all(data: bytes) -> list[Record]:
    src = io.BytesIO(data)
    read_header(src)
    return list(records(src))


@given(st.lists(st.tuples(st.integers(1, 0xFFFF_FFFF), st.binary(max_size=3000),
                          st.booleans()), max_size=8))
def test_records_read_back_as_written(recs: list[tuple[int, bytes, bool]]) -> None:
    data = written(recs)
    assert len(data) % 8 == 0
    assert read_all(data) == [Record(t, b) for t, b, _ in recs]


def test_compression_is_used_only_where_it_pays() -> None:
    zeros, noise = bytes(1 << 20), os.urandom(1024)
    assert len(written([(stream.PAGE_DATA, zeros, True)])) < 1000
    assert len(written([(stream.PAGE_DATA, noise, True)])) == \
        len(written([(stream.PAGE_DATA, noise, False)]))


def test_a_body_over_the_limit_is_refused_by_the_writer() -> None:
    with pytest.raises(ValueError, match="split it"):
        written([(stream.PAGE_DATA, bytes(stream.MAX_BODY + 1), False)])


def damaged(data: bytes, offset: int, value: bytes) -> bytes:
    return data[:offset] + value + data[offset + len(value):]


GOOD = written([(stream.DOMAIN_CONFIG, b'{"name": "a"}', False),
                (stream.PAGE_DATA, bytes(8192), True)])
FIRST = stream.IMAGE_HEADER.size  # the first record's header
SECOND = FIRST + stream.RECORD_HEADER.size + 16  # {"name": "a"} padded to 16


@pytest.mark.parametrize(("data", "message"), [
    (b"", "the stream ends inside the image header"),
    (b"\x7fELF" + bytes(40), "not a pyxen save image"),
    (damaged(GOOD, 12, struct.pack("<I", 2)), "stream version 2; this pyxen reads version 1"),
    (damaged(GOOD, 16, b"\x01\x00"), "stream options 0x1"),
    (GOOD[:FIRST + 4], "the stream ends inside record 1's header"),
    (GOOD[:FIRST + 20], r"the stream ends inside record 1 \(DOMAIN_CONFIG\)"),
    (GOOD[:-stream.RECORD_HEADER.size], "the stream ends inside record 3's header"),
    (damaged(GOOD, FIRST + 16, b"X"), r"record 1 \(DOMAIN_CONFIG\) is corrupt"),
    (damaged(GOOD, FIRST + 4, struct.pack("<I", stream.MAX_BODY + 1)),
     "record 1 .* claims 8388609 bytes"),
    (damaged(GOOD, FIRST + 12, struct.pack("<I", 6)), "record 1 .* unknown flags 0x6"),
    (damaged(GOOD, SECOND + 8, struct.pack("<I", 0)), r"record 2 \(PAGE_DATA\) is corrupt"),
])
def test_a_damaged_stream_is_one_line_naming_the_record(data: bytes, message: str) -> None:
    with pytest.raises(StreamError, match=message) as err:
        read_all(data)
    assert "\n" not in str(err.value)


def raw_record(rtype: int, body: bytes, flags: int) -> bytes:
    import zlib
    head = stream.RECORD_HEADER.pack(rtype, len(body), zlib.crc32(body), flags)
    return head + body + bytes(-len(body) % 8)


def test_a_decompression_bomb_is_refused_before_it_is_unpacked() -> None:
    bomb = zstandard.ZstdCompressor().compress(bytes(stream.MAX_BODY + 1))
    data = GOOD[:FIRST] + raw_record(stream.PAGE_DATA, bomb, stream.FLAG_ZSTD)
    with pytest.raises(StreamError, match="decompresses to over"):
        read_all(data)
    data = GOOD[:FIRST] + raw_record(stream.PAGE_DATA, b"not zstd", stream.FLAG_ZSTD)
    with pytest.raises(StreamError, match=r"record 1 \(PAGE_DATA\) does not decompress"):
        read_all(data)


def test_an_end_record_with_a_body_is_refused() -> None:
    data = GOOD[:FIRST] + raw_record(stream.END, b"x", 0)
    with pytest.raises(StreamError, match=r"record 1 \(END\) has a body"):
        read_all(data)
