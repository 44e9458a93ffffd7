"""PAGE_DATA records (pyxen.migration.pages): guest frames out of one GuestMemory and into
another, exactly; a record that does not add up changes nothing."""

from __future__ import annotations

import struct

import pytest

from pyxen.domain.memory import PAGE_SHIFT, PAGE_SIZE, GuestMemory
from pyxen.migration import pages
from pyxen.migration.pages import apply_page_data, page_records
from pyxen.migration.stream import StreamError

MiB = 1 << 20
FRAMES = (4 * MiB) >> PAGE_SHIFT


@pytest.fixture
def source() -> GuestMemory:
    memory = GuestMemory(4 * MiB, 4 * MiB)
    for pfn in range(0, FRAMES, 3):  # data in every third page, the rest zero
        memory.write(pfn << PAGE_SHIFT, pfn.to_bytes(4, "little") * (PAGE_SIZE // 4))
    for pfn in (5, 6, 700):  # given back
        memory.release(pfn)
    return memory


def test_frames_arrive_exactly(source: GuestMemory) -> None:
    target = GuestMemory(4 * MiB, 4 * MiB)
    target.write(1 << PAGE_SHIFT, b"stale" * 100)  # to be zeroed: pfn 1 is zero there
    bodies = list(page_records(source, range(FRAMES)))
    assert len(bodies) == FRAMES // pages.MAX_BATCH
    named = [pfn for body in bodies for pfn in apply_page_data(target, body, FRAMES)]
    assert named == list(range(FRAMES))
    assert target.populated == source.populated
    assert target.read(0, 4 * MiB) == source.read(0, 4 * MiB)
    # zero pages travel without data: about a third of the pages carry some
    assert sum(map(len, bodies)) < FRAMES // 3 * PAGE_SIZE + FRAMES * 8 + 4 * PAGE_SIZE


def record(words: list[int], data: bytes = b"") -> bytes:
    return struct.pack(f"<II{len(words)}Q", len(words), 0, *words) + data


@pytest.mark.parametrize(("body", "message"), [
    (b"\1", "too short for its count"),
    (record([]), "names 0 frames"),
    (struct.pack("<II", 1025, 0), "names 1025 frames"),
    (struct.pack("<II", 2, 0) + bytes(8), "too short for its 2 frame numbers"),
    (record([1 | 0x3 << 60]), "frame 0x1 unknown type 0x3"),
    (record([1 << 40]), "outside the domain's memory"),
    (record([1, 2]), "has 0 bytes of data for 2 pages"),
    (record([1], bytes(PAGE_SIZE + 1)), f"has {PAGE_SIZE + 1} bytes of data for 1 pages"),
    (record([1, 1 | 0xE << 60], bytes(PAGE_SIZE)), "names a frame twice"),
    (record([5 | 0xE << 60, 6 | 0xE << 60]), r"exceed the domain's 1022 frames"),
])
def test_a_bad_record_changes_nothing(source: GuestMemory, body: bytes, message: str) -> None:
    before = (bytes(source.populated), source.read(0, 4 * MiB))
    with pytest.raises(StreamError, match=message):
        apply_page_data(source, body, FRAMES - 2)
    assert (bytes(source.populated), source.read(0, 4 * MiB)) == before
