"""The PVH image loader: both note locations, both ELF classes, and no input that can make it
fail with anything but a clear ImageError."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from guestkit import image
from pyxen.domain.loader import ImageError, parse_pvh_image


def test_elf64_with_pt_note(guests) -> None:
    img = parse_pvh_image(image("demo"))
    assert img.elf_class == 64
    assert img.note_source == "PT_NOTE"
    assert img.start == 0x100000
    assert img.start <= img.entry < img.end


def test_elf32_wrapper_at_zero_with_section_note(guests) -> None:
    img = parse_pvh_image(image("demo32"))
    assert img.elf_class == 32
    assert img.note_source == "SHT_NOTE"
    assert img.start == 0


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_corrupted_images_fail_cleanly(guests, tmp_path_factory, data) -> None:
    raw = bytearray(image("demo").read_bytes())
    note = _note_offset(image("demo"))
    # Corrupt the headers and notes (where parsers break) more often than the payload.
    regions = [(0, 64), (64, 512), (note, note + 0x200), (0, len(raw))]
    for _ in range(data.draw(st.integers(1, 8))):
        lo, hi = data.draw(st.sampled_from(regions))
        raw[data.draw(st.integers(lo, hi - 1))] = data.draw(st.integers(0, 255))
    cut = data.draw(st.one_of(st.none(), st.integers(0, len(raw))))
    path = Path(tmp_path_factory.mktemp("elf")) / "k.elf"
    path.write_bytes(raw[:cut])
    try:
        img = parse_pvh_image(path)
    except ImageError as e:
        assert str(e).startswith(str(path))
    else:
        assert img.segments and all(s.memsz >= len(s.data) for s in img.segments)


def _note_offset(path: Path) -> int:
    from elftools.elf.elffile import ELFFile

    with path.open("rb") as f:
        return next(s["p_offset"] for s in ELFFile(f).iter_segments() if s["p_type"] == "PT_NOTE")


def test_empty_file(tmp_path: Path) -> None:
    p = tmp_path / "empty"
    p.write_bytes(b"")
    with pytest.raises(ImageError, match="not an ELF file"):
        parse_pvh_image(p)
