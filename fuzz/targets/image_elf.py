"""PVH ELF kernels: parse_pvh_image on ELF64 and ELF32 files (pyelftools underneath).

Expected failure: ImageError, one line. Anything else, a hang, or memory out of proportion
to the file is a bug. A parsed image's segments must come from the file.
"""

from __future__ import annotations

from fuzz.targets._check import one_line, require
from fuzz.targets._images import LIMIT, MemFile, elf32, elf64
from pyxen.domain.loader import ImageError, parse_pvh_image

INSTRUMENT = ("pyxen.domain.loader", "pyxen.domain.bzimage", "elftools")

FILE = MemFile()


def one_input(data: bytes) -> None:
    try:
        image = parse_pvh_image(FILE.holding(data), LIMIT)
    except ImageError as e:
        one_line(e)
        return
    require(image.segments, "an image without segments was accepted")
    loaded = sum(len(s.data) for s in image.segments)
    require(loaded <= len(data) * len(image.segments), "segments larger than the file")
    require(all(len(s.data) <= s.memsz for s in image.segments), "filesz > memsz accepted")
    require(0 <= image.entry < 1 << 32, f"entry {image.entry:#x} is not 32-bit")


def seeds() -> list[bytes]:
    return [elf64(), elf64(section_note=True), elf32(), elf64(entry=0)]
