"""The PVH domain builder's image side: parse a Xen PVH ELF kernel and place it in guest RAM.

Accepts ELF64 (EM_X86_64) and ELF32 wrappers (EM_386 or EM_X86_64 in an ELF32 file), finds
XEN_ELFNOTE_PHYS32_ENTRY in PT_NOTE segments or, failing that, SHT_NOTE sections, and loads
PT_LOAD segments at their physical addresses (0 included). Anything wrong is an ImageError
with a message naming the problem, raised before any vCPU runs.

The ELF may come as Linux ships it, in a bzImage (/boot/vmlinuz-*), and the file may be
compressed: pyxen.domain.bzimage unwraps both, as libxenguest does.

Only regular files are read, up to a size limit (the domain's memory, at most libxc's 1 GiB):
a directory, a device such as /dev/zero, a FIFO or a huge sparse file is refused with one
line, at once and without reading it.
"""

from __future__ import annotations

import io
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from elftools.elf.elffile import ELFFile

from pyxen.abi.start_info import XEN_ELFNOTE_NAME, XEN_ELFNOTE_PHYS32_ENTRY

EM_386 = "EM_386"
EM_X86_64 = "EM_X86_64"
ELF_MAGIC = b"\x7fELF"
# libxc's XC_DOM_DECOMPRESS_MAX: no kernel or module above 1 GiB (XSA-25: a huge image must
# not exhaust the toolstack's memory).
MAX_IMAGE_BYTES = 1 << 30


class ImageError(ValueError):
    """The kernel image cannot be booted as a Xen PVH guest."""


@dataclass(frozen=True)
class Segment:
    paddr: int
    data: bytes
    memsz: int


@dataclass(frozen=True)
class PvhImage:
    """What the builder needs from a kernel image."""

    entry: int  # 32-bit physical entry point from XEN_ELFNOTE_PHYS32_ENTRY
    segments: tuple[Segment, ...]
    elf_class: int
    note_source: str  # "PT_NOTE" or "SHT_NOTE", for --trace and tests
    unwrapped: str = ""  # what held the ELF, e.g. "bzImage (lz4)"; "" for a bare ELF

    @property
    def start(self) -> int:
        return min(s.paddr for s in self.segments)

    @property
    def end(self) -> int:
        return max(s.paddr + s.memsz for s in self.segments)


FILE_KINDS = {stat.S_IFDIR: "a directory", stat.S_IFIFO: "a FIFO", stat.S_IFCHR: "a character device",
              stat.S_IFBLK: "a block device", stat.S_IFSOCK: "a socket"}


def read_bounded(path: str | Path, limit: int, what: str) -> bytes:
    """The contents of the regular file `path`; ImageError naming it if it is anything else
    (like libxc, which maps the file) or larger than `limit`. A FIFO is opened without
    waiting for a writer; no more than the size checked against `limit` is ever read."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as e:
        raise ImageError(f"{path}: cannot read {what}: {e.strerror}") from e
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            kind = FILE_KINDS.get(stat.S_IFMT(st.st_mode), "not a regular file")
            raise ImageError(f"{path}: is {kind}, not a {what} file")
        if st.st_size > limit:
            raise ImageError(f"{path}: {too_large(what, limit)}")
        with os.fdopen(fd, "rb", closefd=False) as f:
            data = f.read(st.st_size + 1)
    except OSError as e:
        raise ImageError(f"{path}: cannot read {what}: {e.strerror}") from e
    finally:
        os.close(fd)
    if len(data) > st.st_size:
        raise ImageError(f"{path}: the {what} grew while it was being read")
    return data


def too_large(what: str, limit: int) -> str:
    return (f"the {what} is larger than {limit / (1 << 20):g} MiB (a domain loads at most "
            f"its memory, and never more than {MAX_IMAGE_BYTES >> 20} MiB)")


def read_kernel(path: str | Path, max_bytes: int = MAX_IMAGE_BYTES) -> tuple[bytes, str]:
    """The kernel file at `path` unwrapped (bzImage, compressed file), at most `max_bytes`
    read and at most `max_bytes` decompressed, and what was unwrapped ("" if nothing)."""
    from .bzimage import unwrap  # here: bzimage imports ImageError from this module

    raw = read_bounded(path, max_bytes, "kernel image")
    try:
        return unwrap(raw, max_bytes)
    except ImageError as e:
        raise ImageError(f"{path}: {e}") from e


def parse_pvh_image(path: str | Path, max_bytes: int = MAX_IMAGE_BYTES) -> PvhImage:
    """Parse a PVH kernel image of at most `max_bytes` (an ELF, or a bzImage or compressed
    file holding one: at most `max_bytes` once decompressed); every problem is an ImageError
    naming the file."""
    raw, unwrapped = read_kernel(path, max_bytes)
    where = f"{path}: {unwrapped}" if unwrapped else str(path)
    try:
        return _parse(raw, unwrapped)
    except ImageError as e:
        raise ImageError(f"{where}: {e}") from e
    except Exception as e:  # noqa: BLE001 - pyelftools raises all kinds on malformed input
        raise ImageError(f"{where}: malformed ELF file ({type(e).__name__}: {e})") from e


# The formats are bzimage.CODECS' (a test keeps the two lists the same).
NOT_ELF = ("not an ELF file, bzImage or compressed kernel (pyxen boots a Xen PVH kernel as an "
           "ELF file or a bzImage such as /boot/vmlinuz-*, either of them bare or compressed "
           "with gzip, bzip2, xz, lzma, lzo, lz4 or zstd)")


def _parse(raw: bytes, unwrapped: str = "") -> PvhImage:
    if raw[:4] != ELF_MAGIC:
        if unwrapped:
            raise ImageError("the decompressed kernel is not an ELF file (it must be the PVH "
                             "kernel's ELF vmlinux)")
        raise ImageError(NOT_ELF)
    elf = ELFFile(io.BytesIO(raw))
    machine = elf["e_machine"]
    if machine not in (EM_386, EM_X86_64):
        raise ImageError(f"ELF machine {machine} is not x86 (EM_386 or EM_X86_64)")
    entry, source = _find_phys32_entry(elf, len(raw))
    if entry is None:
        raise ImageError(
            "no XEN_ELFNOTE_PHYS32_ENTRY note: not a Xen PVH kernel "
            "(PVH kernels carry a 'Xen' note of type 18 with their 32-bit entry point; "
            "Linux has it when built with CONFIG_XEN_PVH=y)"
        )
    segments = []
    for seg in elf.iter_segments():
        if seg["p_type"] != "PT_LOAD" or seg["p_memsz"] == 0:
            continue
        if seg["p_filesz"] > seg["p_memsz"]:
            raise ImageError("a PT_LOAD segment's file size exceeds its memory size")
        data = seg.data()
        if len(data) != seg["p_filesz"]:
            raise ImageError("truncated file: a PT_LOAD segment extends past its end")
        segments.append(Segment(seg["p_paddr"], data, seg["p_memsz"]))
    if not segments:
        raise ImageError("no loadable (PT_LOAD) segments")
    return PvhImage(entry, tuple(segments), elf.elfclass, source, unwrapped)


# Notes read per note segment or section: Linux has a dozen. pyelftools takes ~0.1 ms a
# note, and a note can be 12 zero bytes: unbounded, a large image would take hours.
MAX_NOTES = 1024
MAX_SECTIONS = 1 << 16  # what e_shnum can say; a vmlinux has about a hundred


def _find_phys32_entry(elf: ELFFile, size: int) -> tuple[int | None, str]:
    for seg in elf.iter_segments():
        if seg["p_type"] == "PT_NOTE":
            _in_file(seg["p_offset"], seg["p_filesz"], size, "a PT_NOTE segment")
            entry = _entry_from_notes(seg.iter_notes(), "a PT_NOTE segment")
            if entry is not None:
                return entry, "PT_NOTE"
    for index, sec in enumerate(elf.iter_sections()):
        if index == MAX_SECTIONS:  # e_shnum 0 says section 0 holds the count: any number
            raise ImageError(f"more than {MAX_SECTIONS} sections")
        if sec["sh_type"] == "SHT_NOTE":
            _in_file(sec["sh_offset"], sec["sh_size"], size, "an SHT_NOTE section")
            entry = _entry_from_notes(sec.iter_notes(), "an SHT_NOTE section")
            if entry is not None:
                return entry, "SHT_NOTE"
    return None, ""


def _in_file(offset: int, length: int, size: int, what: str) -> None:
    if offset + length > size:
        raise ImageError(f"truncated file: {what} ({length:#x} bytes at {offset:#x}) "
                         f"extends past its end ({size:#x} bytes)")


def _entry_from_notes(notes, where: str) -> int | None:  # type: ignore[no-untyped-def]
    for count, note in enumerate(notes):
        if count == MAX_NOTES:
            raise ImageError(f"{where} holds more than {MAX_NOTES} notes")
        if note["n_name"] == XEN_ELFNOTE_NAME.decode() and note["n_type"] == XEN_ELFNOTE_PHYS32_ENTRY:
            desc = note["n_desc"]
            if isinstance(desc, str):  # pyelftools returns unknown descs as latin-1 strings
                desc = desc.encode("latin-1")
            if len(desc) not in (4, 8):
                raise ImageError(f"XEN_ELFNOTE_PHYS32_ENTRY has a {len(desc)}-byte value")
            return int.from_bytes(desc[:4], "little")
    return None
