"""The kernel formats Linux ships, unwrapped down to the ELF the PVH loader reads.

A distribution boots `/boot/vmlinuz-*`: a bzImage (Linux's x86 boot format) whose payload is
the ELF vmlinux compressed with one of the kernel's seven compressors. libxenguest accepts it
(xc_dom_bzimageloader.c), and a whole kernel file gzipped (xc_dom_try_gunzip); pyxen accepts
both, a whole file compressed with any of the seven, and the two together.

Every decompressor is bounded: output past the caller's limit is refused as it is produced,
never after, so a small file cannot make pyxen allocate gigabytes (XSA-25's concern). Every
problem is an ImageError naming the format and what is wrong with it.
"""

from __future__ import annotations

import bz2
import lzma
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass

import lz4.block
import lzokay
import zstandard

from .loader import ELF_MAGIC, ImageError, too_large

# The x86 boot protocol's setup header (Linux Documentation/arch/x86/boot.rst).
SETUP_SECTS = 0x1F1  # 512-byte sectors of real-mode setup after the boot sector; 0 means 4
HEADER = 0x202  # "HdrS"
HEADER_MAGIC = b"HdrS"
VERSION = 0x206  # boot protocol version, major << 8 | minor
PAYLOAD_OFFSET = 0x248  # from the start of the protected-mode code
PAYLOAD_LENGTH = 0x24C
HEADER_END = 0x250
PAYLOAD_PROTOCOL = 0x0208  # the first protocol whose header locates the payload (Linux 2.6.26)

STEP = 8 << 20  # output asked of a streaming decompressor at a time


@dataclass(frozen=True)
class Codec:
    """One compressed format: how it starts, its name, and its bounded decompressor."""

    magic: bytes
    name: str
    decompress: Callable[[bytes, int], bytes]  # (one stream, limit) -> at most limit bytes


class _TooLarge(ImageError):
    """The output went past the limit (told apart from other errors by decompress_payload)."""


def _too_large(limit: int) -> ImageError:
    return _TooLarge(too_large("decompressed kernel", limit))


def _truncated(detail: str = "the data ends before the stream does") -> ImageError:
    return ImageError(f"truncated: {detail}")


def _corrupt(detail: object) -> ImageError:
    return ImageError(f"corrupt data ({detail})")


def _grow(out: bytearray, chunk: bytes, limit: int) -> None:
    out += chunk
    if len(out) > limit:
        raise _too_large(limit)


def _gunzip(data: bytes, limit: int) -> bytes:
    dec = zlib.decompressobj(16 + zlib.MAX_WBITS)  # gzip framing; checks its CRC and size
    out, pending = bytearray(), data
    try:
        while not dec.eof:
            chunk = dec.decompress(pending, min(limit - len(out), STEP) + 1)
            pending = dec.unconsumed_tail
            if not chunk and not pending:
                raise _truncated()
            _grow(out, chunk, limit)
    except zlib.error as e:
        raise _corrupt(e) from e
    return bytes(out)


def _drain(dec: lzma.LZMADecompressor | bz2.BZ2Decompressor, data: bytes, limit: int) -> bytes:
    """Run an lzma- or bz2-style decompressor (it keeps its unread input) to its stream end."""
    out = bytearray()
    chunk = dec.decompress(data, min(limit, STEP) + 1)
    while True:
        _grow(out, chunk, limit)
        if dec.eof:
            return bytes(out)
        if dec.needs_input:
            raise _truncated()
        chunk = dec.decompress(b"", min(limit - len(out), STEP) + 1)


# The kernel's xz and lzma dictionaries are 32 and 64 MiB; libxenguest allows 256 MiB.
LZMA_MEMLIMIT = 256 << 20


def _unxz(data: bytes, limit: int) -> bytes:
    try:
        return _drain(lzma.LZMADecompressor(lzma.FORMAT_XZ, LZMA_MEMLIMIT), data, limit)
    except lzma.LZMAError as e:
        raise _corrupt(e) from e


def _unlzma(data: bytes, limit: int) -> bytes:
    try:
        return _drain(lzma.LZMADecompressor(lzma.FORMAT_ALONE, LZMA_MEMLIMIT), data, limit)
    except lzma.LZMAError as e:
        raise _corrupt(e) from e


def _bunzip2(data: bytes, limit: int) -> bytes:
    try:
        return _drain(bz2.BZ2Decompressor(), data, limit)
    except OSError as e:  # bz2 reports bad data as OSError("Invalid data stream")
        raise _corrupt(e) from e


ZSTD_FEED = 256  # input bytes per call: a 4-byte RLE block can expand to 128 KiB
ZSTD_DEFAULT_WINDOW = 1 << 27  # what `zstd -22 --ultra` (the kernel's) uses on a large input


def _unzstd(data: bytes, limit: int) -> bytes:
    # A window larger than the limit could only serve output that is refused anyway, but the
    # kernel's 128 MiB window is accepted whatever the limit (zstd's own default ceiling).
    dctx = zstandard.ZstdDecompressor(max_window_size=max(ZSTD_DEFAULT_WINDOW, limit))
    dec = dctx.decompressobj()
    out = bytearray()
    try:
        # Fed in small pieces: decompressobj has no output bound, its input is the bound.
        for pos in range(0, len(data), ZSTD_FEED):
            _grow(out, dec.decompress(data[pos:pos + ZSTD_FEED]), limit)
            if dec.eof:
                break
    except zstandard.ZstdError as e:
        raise _corrupt(e) from e
    if not dec.eof:
        raise _truncated()
    return bytes(out)


LZ4_LEGACY_MAGIC = 0x184C2102
LZ4_BLOCK = 8 << 20  # each block of the legacy frame decompresses to at most 8 MiB
LZ4_BLOCK_BOUND = LZ4_BLOCK + LZ4_BLOCK // 255 + 16  # LZ4_compressBound(8 MiB)


def _unlz4(data: bytes, limit: int) -> bytes:
    """LZ4's legacy frame (`lz4 -l`, the kernel's): the magic, then blocks of a LE32
    compressed size and the block; no end marker, so the stream ends where `data` does."""
    out, pos, block = bytearray(), 4, 0
    while pos < len(data):
        if len(data) - pos < 4:
            raise _truncated(f"{len(data) - pos} bytes left where a block size should be")
        (size,) = struct.unpack_from("<I", data, pos)
        pos += 4
        if size == LZ4_LEGACY_MAGIC:  # frames may be concatenated
            continue
        if size > LZ4_BLOCK_BOUND:
            raise _corrupt(f"block {block} claims {size} bytes, more than an 8 MiB block needs")
        if size > len(data) - pos:
            raise _truncated(f"block {block} needs {size} bytes, {len(data) - pos} remain")
        try:
            chunk = lz4.block.decompress(data[pos:pos + size], uncompressed_size=LZ4_BLOCK)
        except lz4.block.LZ4BlockError as e:
            raise _corrupt(f"block {block}: {e}") from e
        _grow(out, chunk, limit)
        pos += size
        block += 1
    return bytes(out)


LZOP_MAGIC = b"\x89LZO\x00\r\n\x1a\n"
LZOP_NEW_HEADER = 0x0940  # lzop versions from here have version_needed, level, mtime_high
LZOP_LZO1X = {1: "LZO1X-1", 2: "LZO1X-1(15)", 3: "LZO1X-999"}
F_ADLER32_D, F_ADLER32_C, F_H_EXTRA_FIELD = 0x1, 0x2, 0x40
F_CRC32_D, F_CRC32_C, F_H_FILTER = 0x100, 0x200, 0x800
LZOP_MAX_BLOCK = 64 << 20  # lzop's MAX_BLOCK_SIZE (the kernel's are 256 KiB)


class _Reader:
    """Big-endian fields of an lzop file, each one checked to be there."""

    def __init__(self, data: bytes, pos: int) -> None:
        self.data, self.pos = data, pos

    def take(self, n: int, what: str) -> bytes:
        if len(self.data) - self.pos < n:
            raise _truncated(f"the file ends inside the {what}")
        self.pos += n
        return self.data[self.pos - n:self.pos]

    def u8(self, what: str) -> int:
        return self.take(1, what)[0]

    def u16(self, what: str) -> int:
        return int.from_bytes(self.take(2, what), "big")

    def u32(self, what: str) -> int:
        return int.from_bytes(self.take(4, what), "big")


def _unlzo(data: bytes, limit: int) -> bytes:
    """lzop's container (the kernel's `lzop -9`, read as lib/decompress_unlzo.c does) around
    LZO1X blocks; their checksums, which the kernel skips, are checked."""
    r = _Reader(data, len(LZOP_MAGIC))
    version = r.u16("header")
    r.take(2, "header")  # library version
    if version >= LZOP_NEW_HEADER:
        r.take(2, "header")  # version needed to extract
    method = r.u8("header")
    if method not in LZOP_LZO1X:
        raise _corrupt(f"compression method {method} is not LZO1X")
    if version >= LZOP_NEW_HEADER:
        r.take(1, "header")  # level
    flags = r.u32("header")
    if flags & F_H_FILTER:
        raise ImageError("the file uses an lzop filter, which Linux's decompressor does not undo")
    r.take(8 + (4 if version >= LZOP_NEW_HEADER else 0), "header")  # mode, mtime
    r.take(r.u8("header") + 4, "header")  # file name, header checksum
    if flags & F_H_EXTRA_FIELD:
        r.take(r.u32("header") + 4, "header's extra field")
    d_checks = [c for c, f in ((zlib.adler32, F_ADLER32_D), (zlib.crc32, F_CRC32_D)) if flags & f]
    c_checks = [c for c, f in ((zlib.adler32, F_ADLER32_C), (zlib.crc32, F_CRC32_C)) if flags & f]
    out, block = bytearray(), 0
    while dst_len := r.u32(f"block {block}'s header"):
        if dst_len > LZOP_MAX_BLOCK:
            raise _corrupt(f"block {block} claims {dst_len} bytes, more than lzop's 64 MiB")
        if len(out) + dst_len > limit:
            raise _too_large(limit)
        src_len = r.u32(f"block {block}'s header")
        if not 0 < src_len <= dst_len:
            raise _corrupt(f"block {block} has {src_len} compressed bytes for {dst_len}")
        stored = src_len == dst_len  # lzop stores a block that would not shrink
        d_sums = [r.u32(f"block {block}'s header") for _ in d_checks]
        c_sums = [] if stored else [r.u32(f"block {block}'s header") for _ in c_checks]
        src = r.take(src_len, f"block {block}")
        for check, want in zip(c_checks, c_sums, strict=True):
            if check(src) != want:
                raise _corrupt(f"block {block}'s compressed data fails its {check.__name__}")
        if stored:
            chunk = src
        else:
            try:
                chunk = lzokay.decompress(src, dst_len)
            except lzokay.LzokayError as e:
                raise _corrupt(f"block {block}: {e}") from e
            if len(chunk) != dst_len:
                raise _corrupt(f"block {block} gives {len(chunk)} bytes, not {dst_len}")
        for check, want in zip(d_checks, d_sums, strict=True):
            if check(chunk) != want:
                raise _corrupt(f"block {block} fails its {check.__name__}")
        out += chunk
        block += 1
    return bytes(out)


# The one table: every format Linux can compress its kernel with (its Makefile.lib), each
# known by how its stream starts, as Linux's lib/decompress.c and libxenguest know them.
CODECS = (
    Codec(b"\x1f\x8b", "gzip", _gunzip),
    Codec(b"BZh", "bzip2", _bunzip2),
    Codec(b"\xfd7zXZ\x00", "xz", _unxz),
    Codec(b"\x5d\x00", "lzma", _unlzma),
    Codec(LZOP_MAGIC, "lzo", _unlzo),
    Codec(LZ4_LEGACY_MAGIC.to_bytes(4, "little"), "lz4", _unlz4),
    Codec(b"\x28\xb5\x2f\xfd", "zstd", _unzstd),
)
FORMAT_NAMES = ", ".join(c.name for c in CODECS)


def codec_for(data: bytes) -> Codec | None:
    """The format whose magic `data` starts with, if any."""
    return next((c for c in CODECS if data.startswith(c.magic)), None)


def is_bzimage(raw: bytes) -> bool:
    return raw[HEADER:HEADER + 4] == HEADER_MAGIC


def bzimage_payload(raw: bytes) -> bytes:
    """The compressed payload the setup header locates (boot protocol 2.08 and later)."""
    if len(raw) < HEADER_END:
        raise ImageError(f"bzImage: the setup header is truncated ({len(raw)} bytes)")
    (version,) = struct.unpack_from("<H", raw, VERSION)
    if version < PAYLOAD_PROTOCOL:
        raise ImageError(f"bzImage: boot protocol {version >> 8}.{version & 0xFF:02d} is too "
                         "old (2.08, Linux 2.6.26, is the first to say where the kernel is)")
    offset, length = struct.unpack_from("<II", raw, PAYLOAD_OFFSET)
    start = ((raw[SETUP_SECTS] or 4) + 1) * 512 + offset
    if start >= len(raw):
        raise ImageError(f"bzImage: the payload offset ({start:#x}) is beyond the end of the "
                         f"file ({len(raw):#x} bytes)")
    if start + length > len(raw):
        raise ImageError(f"bzImage: the payload ({length:#x} bytes at {start:#x}) extends past "
                         f"the end of the file ({len(raw):#x} bytes): truncated?")
    return raw[start:start + length]


def decompress_payload(payload: bytes, limit: int) -> tuple[bytes, str]:
    """A bzImage payload decompressed, and its format's name. Linux's build appends the
    decompressed size (LE32) to every payload, gzip's own trailer ending with it: no more than
    that is decompressed, and a stream that decompresses to another size is corrupt."""
    codec = codec_for(payload)
    if codec is None:
        raise ImageError(f"bzImage payload: unknown compression (it starts "
                         f"{payload[:4].hex(' ')}; known: {FORMAT_NAMES})")
    where = f"bzImage payload ({codec.name})"
    if len(payload) < len(codec.magic) + 4:
        raise ImageError(f"{where}: truncated: {len(payload)} bytes")
    (size,) = struct.unpack_from("<I", payload, len(payload) - 4)
    stream = payload if codec.name == "gzip" else payload[:-4]
    mismatch = (f"{where}: corrupt data (it decompresses to {{}} bytes, but the payload's size "
                f"field says {size:#x})")
    try:
        elf = _decompress(codec, stream, min(size, limit), where)
    except _TooLarge:
        if size < limit:
            raise ImageError(mismatch.format("more")) from None
        raise
    if len(elf) != size:
        raise ImageError(mismatch.format(f"{len(elf):#x}"))
    return elf, codec.name


def _decompress(codec: Codec, data: bytes, limit: int, where: str) -> bytes:
    try:
        return codec.decompress(data, limit)
    except ImageError as e:
        raise type(e)(f"{where}: {e}") from e


def unwrap(raw: bytes, limit: int) -> tuple[bytes, str]:
    """`raw` with any whole-file compression and any bzImage wrapping removed, and what was
    unwrapped ("" for anything else, which is returned as it is): "bzImage (lz4)",
    "xz-compressed file", "gzip-compressed file, bzImage (lz4)". Nothing is ever larger
    than `limit`."""
    layers = []
    if raw.startswith(ELF_MAGIC):
        return raw, ""
    if not is_bzimage(raw) and (codec := codec_for(raw)) is not None:
        raw = _decompress(codec, raw, limit, f"{codec.name}-compressed file")
        layers.append(f"{codec.name}-compressed file")
    if not raw.startswith(ELF_MAGIC) and is_bzimage(raw):
        raw, name = decompress_payload(bzimage_payload(raw), limit)
        layers.append(f"bzImage ({name})")
    return raw, ", ".join(layers)
