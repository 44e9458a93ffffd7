"""Small synthetic ELF64 images for loader and scanner tests: code and Xen notes, no more."""

from __future__ import annotations

import struct

PT_LOAD, PT_NOTE = 1, 4
PF_X, PF_W, PF_R = 1, 2, 4
XEN_ELFNOTE_PHYS32_ENTRY = 18


def note(name: bytes, ntype: int, desc: bytes) -> bytes:
    def pad(b: bytes) -> bytes:
        return b + b"\0" * (-len(b) % 4)

    return struct.pack("<III", len(name) + 1, len(desc), ntype) + pad(name + b"\0") + pad(desc)


def xen_note(ntype: int, desc: bytes) -> bytes:
    return note(b"Xen", ntype, desc)


def elf_image(code: bytes, notes: bytes = b"", data: bytes = b"",
              entry: int = 0x100000) -> bytes:
    """An ELF64 x86-64 executable: `code` in an R+X segment at 1 MiB, `data` in an R+W one
    after it, `notes` in a PT_NOTE segment (a PHYS32_ENTRY note is added)."""
    notes = xen_note(XEN_ELFNOTE_PHYS32_ENTRY, struct.pack("<I", entry)) + notes
    segments = [(PT_LOAD, PF_R | PF_X, code, 0x100000)]
    if data:
        segments.append((PT_LOAD, PF_R | PF_W, data, 0x100000 + ((len(code) + 0xFFF) & ~0xFFF)))
    segments.append((PT_NOTE, PF_R, notes, 0))
    ehsize, phentsize = 64, 56
    offset = ehsize + phentsize * len(segments)
    headers, blobs = b"", b""
    for ptype, flags, blob, addr in segments:
        headers += struct.pack("<IIQQQQQQ", ptype, flags, offset + len(blobs), addr, addr,
                               len(blob), len(blob), 4 if ptype == PT_NOTE else 0x1000)
        blobs += blob + b"\0" * (-len(blob) % 8)
    ident = b"\x7fELF" + bytes([2, 1, 1, 0]) + b"\0" * 8
    header = ident + struct.pack("<HHIQQQIHHHHHH", 2, 62, 1, entry, ehsize, 0, 0, ehsize,
                                 phentsize, len(segments), 64, 0, 0)
    return header + headers + blobs
