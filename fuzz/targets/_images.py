"""Kernel images for the image targets: small PVH ELFs built in code, and the wrappings
Linux puts around them (a bzImage, each of its seven compressors), so no binary need be
committed."""

from __future__ import annotations

import bz2
import gzip
import lzma
import os
import struct
import zlib

import lz4.block
import lzokay
import zstandard

from pyxen.domain.bzimage import LZ4_LEGACY_MAGIC, LZOP_MAGIC

LIMIT = 8 << 20  # the image limit under fuzzing: a bomb must stop here, fast


class MemFile:
    """The input as a file with a path (a memfd: nothing left on disk when libFuzzer
    ends the process)."""

    def __init__(self) -> None:
        self.fd = os.memfd_create("fuzz-image", os.MFD_CLOEXEC)
        self.path = f"/proc/self/fd/{self.fd}"

    def holding(self, data: bytes) -> str:
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, data, 0)
        return self.path


def _note(name: bytes, kind: int, desc: bytes) -> bytes:
    def pad(b: bytes) -> bytes:
        return b + b"\0" * (-len(b) % 4)
    return struct.pack("<III", len(name) + 1, len(desc), kind) + pad(name + b"\0") + pad(desc)


def elf64(entry: int = 0x100000, code: bytes = b"\xf4" * 16, section_note: bool = False) -> bytes:
    """An x86-64 PVH ELF: a PT_LOAD of `code` and the PHYS32_ENTRY note (a PT_NOTE, or an
    SHT_NOTE section with `section_note`)."""
    note = _note(b"Xen", 18, struct.pack("<I", entry))
    ehsize, phsize, shsize = 64, 56, 64
    phnum = 1 if section_note else 2
    note_off = ehsize + phnum * phsize
    code_off = note_off + len(note)
    shoff = code_off + len(code) if section_note else 0
    shnum = 2 if section_note else 0
    head = b"\x7fELF" + bytes([2, 1, 1, 0]) + bytes(8)
    head += struct.pack("<HHIQQQIHHHHHH", 2, 62, 1, entry, ehsize, shoff, 0, ehsize, phsize,
                        phnum, shsize, shnum, 0)
    phdrs = struct.pack("<IIQQQQQQ", 1, 7, code_off, entry, entry, len(code), len(code), 16)
    if not section_note:
        phdrs += struct.pack("<IIQQQQQQ", 4, 4, note_off, 0, 0, len(note), len(note), 4)
    shdrs = b""
    if section_note:
        shdrs = bytes(shsize) + struct.pack("<IIQQQQIIQQ", 0, 7, 2, 0, note_off, len(note),
                                             0, 0, 4, 0)
    return head + phdrs + note + code + shdrs


def elf32(entry: int = 0x100000) -> bytes:
    """An ELF32 (EM_386) PVH wrapper: one PT_LOAD and a PT_NOTE."""
    note = _note(b"Xen", 18, struct.pack("<I", entry))
    code = b"\xf4" * 8
    note_off = 52 + 2 * 32
    code_off = note_off + len(note)
    head = b"\x7fELF" + bytes([1, 1, 1, 0]) + bytes(8)
    head += struct.pack("<HHIIIIIHHHHHH", 2, 3, 1, entry, 52, 0, 0, 52, 32, 2, 40, 0, 0)
    phdrs = struct.pack("<IIIIIIII", 1, code_off, entry, entry, len(code), len(code), 7, 16)
    phdrs += struct.pack("<IIIIIIII", 4, note_off, 0, 0, len(note), len(note), 4, 4)
    return head + phdrs + note + code


def _lz4_legacy(data: bytes) -> bytes:
    block = lz4.block.compress(data, store_size=False)
    return struct.pack("<II", LZ4_LEGACY_MAGIC, len(block)) + block


def _lzop(data: bytes) -> bytes:
    """lzop's container: a new-style header (no checksums asked), one block, the end."""
    header = struct.pack(">HHHBBIIIIB", 0x1040, 0x2080, 0x0940, 1, 5, 0, 0o100644, 0, 0, 0)
    header += struct.pack(">I", zlib.adler32(header))
    block = lzokay.compress(data)
    return LZOP_MAGIC + header + struct.pack(">II", len(data), len(block)) + block + bytes(4)


COMPRESSORS = {
    "gzip": lambda d: gzip.compress(d, 9, mtime=0),
    "bzip2": lambda d: bz2.compress(d, 9),
    "xz": lambda d: lzma.compress(d, lzma.FORMAT_XZ, check=lzma.CHECK_CRC32),
    "lzma": lambda d: lzma.compress(d, lzma.FORMAT_ALONE),
    "lzo": _lzop,
    "lz4": _lz4_legacy,
    "zstd": lambda d: zstandard.ZstdCompressor(level=3).compress(d),
}


def payload(name: str, elf: bytes) -> bytes:
    """A bzImage payload: compressed, the size appended (gzip's trailer already ends so)."""
    data = COMPRESSORS[name](elf)
    return data if name == "gzip" else data + struct.pack("<I", len(elf))


def bzimage(payload: bytes, *, setup_sects: int = 3, version: int = 0x020F,
            offset: int | None = None, length: int | None = None) -> bytes:
    """A bzImage as Linux's arch/x86/boot lays it out: boot sector and setup (setup_sects
    sectors after the first), then the protected-mode code, the payload inside it."""
    setup = bytearray((setup_sects or 4) * 512 + 512)
    setup[0:2] = b"MZ"
    setup[0x1F1] = setup_sects
    setup[0x1FE:0x200] = b"\x55\xaa"
    setup[0x202:0x206] = b"HdrS"
    struct.pack_into("<H", setup, 0x206, version)
    code = b"\x90" * 0x2CC  # the decompressor's own code comes first
    struct.pack_into("<II", setup, 0x248, len(code) if offset is None else offset,
                     len(payload) if length is None else length)
    return bytes(setup) + code + payload + b"\xcc" * 0x1000
