"""Compressed kernels and bzImages: unwrap (seven decompressors) and parse_pvh_image.

Expected failure: ImageError, one line. A decompression bomb must be refused at the limit,
never decompressed past it (nor take long); anything else escaping is a bug.
"""

from __future__ import annotations

from fuzz.targets._check import one_line, require
from fuzz.targets._images import COMPRESSORS, LIMIT, MemFile, bzimage, elf64, payload
from pyxen.domain.bzimage import unwrap
from pyxen.domain.loader import ImageError, parse_pvh_image

INSTRUMENT = ("pyxen.domain.loader", "pyxen.domain.bzimage", "elftools")

FILE = MemFile()


def one_input(data: bytes) -> None:
    try:
        raw, _ = unwrap(data, LIMIT)
    except ImageError as e:
        one_line(e)
    else:
        require(len(raw) <= LIMIT, f"unwrapped to {len(raw)} bytes, over the {LIMIT} limit")
    try:
        parse_pvh_image(FILE.holding(data), LIMIT)
    except ImageError as e:
        one_line(e)


def seeds() -> list[bytes]:
    elf = elf64()
    out = [bzimage(payload(name, elf)) for name in COMPRESSORS]
    out += [COMPRESSORS[name](elf) for name in COMPRESSORS]
    out.append(COMPRESSORS["gzip"](bzimage(payload("lz4", elf), setup_sects=0)))
    out.append(bzimage(payload("gzip", bytes(64 << 10))))  # a (small) bomb-like payload
    return out
