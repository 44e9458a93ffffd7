"""The PVH image loader: both note locations, both ELF classes, and no input that can make it
fail with anything but a clear ImageError (nor read without end); the domain configuration's
rules, checked before anything is read."""

from __future__ import annotations

import os
import struct
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from corruption import damaged_file
from guestkit import image
from pyxen.domain.builder import (
    check_config,
    command_line_bytes,
    host_memory_mib,
    image_limit,
    load_module,
)
from pyxen.domain.domain import DomainConfig
from pyxen.domain.loader import MAX_IMAGE_BYTES, ImageError, parse_pvh_image, read_bounded


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
    raw = image("demo").read_bytes()
    note = _note_offset(image("demo"))
    # Corrupt the headers and notes (where parsers break) more often than the payload.
    regions = [(0, 64), (64, 512), (note, note + 0x200), (0, len(raw))]
    path = damaged_file(data, raw, regions, 8, Path(tmp_path_factory.mktemp("elf")) / "k.elf")
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


# --- reading files: only regular ones, never past the limit --------------------------------

def test_only_regular_files_are_read(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)  # no writer: opening must not wait for one
    for path, kind in [("/dev/zero", "a character device"), (fifo, "a FIFO"),
                       (tmp_path, "a directory")]:
        with pytest.raises(ImageError, match=f"^{path}: is {kind}, not a kernel image file$"):
            parse_pvh_image(path)
        with pytest.raises(ImageError, match=f"is {kind}, not a module file"):
            load_module(path)


def test_a_file_larger_than_the_limit_is_refused_unread(tmp_path: Path) -> None:
    huge = tmp_path / "huge"
    with huge.open("wb") as f:
        f.truncate(1 << 40)  # sparse: a TiB that takes no disk space
    with pytest.raises(ImageError, match="larger than 1024 MiB"):
        parse_pvh_image(huge)
    small = tmp_path / "small"
    small.write_bytes(bytes(4097))
    with pytest.raises(ImageError, match="module is larger than 0.00390625 MiB"):
        read_bounded(small, 4096, "module")
    assert len(read_bounded(small, 4097, "module")) == 4097


def test_image_limit_is_the_memory_at_most_a_gib() -> None:
    assert image_limit(DomainConfig(memory_mib=64)) == 64 << 20
    assert image_limit(DomainConfig(memory_mib=4096)) == MAX_IMAGE_BYTES == 1 << 30


# --- the domain configuration's rules --------------------------------------------------------

@pytest.mark.parametrize(("changes", "message"), [
    ({"name": ""}, "1 to 128 bytes"),
    ({"name": "x" * 129}, "1 to 128 bytes"),
    ({"name": "\udcff"}, r"name '\\xff' is not valid UTF-8"),
    ({"name": "a\nb"}, r"name 'a\\nb' contains control characters"),
    ({"memory_mib": 0}, "memory must be between 1 MiB"),
    ({"memory_mib": 1 << 40}, "memory must be between 1 MiB and the host's"),
    ({"maxmem_mib": 1 << 40}, "maxmem"),
    ({"vcpus": 0}, "vcpus must be between 1 and 128"),
    ({"vcpus": 2, "max_vcpus": 1}, "maxvcpus"),
    ({"cmdline": "x" * 4096}, "longer than 4095 bytes"),
    ({"cmdline": "\ud800"}, "not valid text"),
])
def test_config_rules(changes: dict, message: str) -> None:
    with pytest.raises(ImageError, match=message):
        check_config(DomainConfig(**changes))


def test_good_config_passes() -> None:
    check_config(DomainConfig(name="ünïcode-ok", memory_mib=host_memory_mib(), vcpus=128))


def test_command_line_is_the_bytes_given() -> None:
    assert command_line_bytes("plain") == b"plain"
    assert command_line_bytes("caf\u00e9") == "café".encode()
    assert command_line_bytes(os.fsdecode(b"A\xff\xfeB")) == b"A\xff\xfeB"


def _pvh_elf64(note_zeros: int = 0, note_filesz: int | None = None) -> bytes:
    """A minimal ELF64 PVH kernel: one PT_LOAD, one PT_NOTE whose notes are `note_zeros`
    bytes of empty notes and then the PHYS32_ENTRY note."""
    xen = struct.pack("<III", 4, 4, 18) + b"Xen\0" + struct.pack("<I", 0x100000)
    notes = bytes(note_zeros) + xen
    note_off, code = 64 + 2 * 56, b"\xf4" * 16
    head = b"\x7fELF" + bytes([2, 1, 1, 0]) + bytes(8) + struct.pack(
        "<HHIQQQIHHHHHH", 2, 62, 1, 0x100000, 64, 0, 0, 64, 56, 2, 64, 0, 0)
    load = struct.pack("<IIQQQQQQ", 1, 7, note_off + len(notes), 0x100000, 0x100000, 16, 16, 16)
    note = struct.pack("<IIQQQQQQ", 4, 4, note_off, 0, 0,
                       len(notes) if note_filesz is None else note_filesz, len(notes), 4)
    return head + load + note + notes + code


def test_note_scan_is_bounded(tmp_path: Path) -> None:
    """Found by fuzzing (fuzz/crashes/image_bzimage/huge-note-segment): a PT_NOTE segment
    claiming 8 TiB made pyelftools read empty notes through the whole file, 0.1 ms each."""
    path = tmp_path / "k"
    path.write_bytes(_pvh_elf64())
    assert parse_pvh_image(path).entry == 0x100000
    path.write_bytes(_pvh_elf64(note_filesz=1 << 43))
    with pytest.raises(ImageError, match="PT_NOTE segment .* extends past its end"):
        parse_pvh_image(path)
    path.write_bytes(_pvh_elf64(note_zeros=12 * 2000))
    with pytest.raises(ImageError, match="holds more than 1024 notes"):
        parse_pvh_image(path)
