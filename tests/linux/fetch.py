"""Prepare Debian 12's stock cloud kernel and a busybox initramfs for the Linux boot test.

    python3 tests/linux/fetch.py [DIR]      (default: ~/.cache/pyxen/linux)

Needs a Debian (bookworm) apt: `apt-get download` fetches `linux-image-cloud-amd64`'s versioned
kernel package and `busybox-static`; `dpkg-deb -x` unpacks them. The kernel's vmlinuz is a
bzImage whose payload is the ELF vmlinux (with the PVH note pyxen enters through), compressed
(Debian 12: LZ4, the legacy frame format); this script writes that ELF as DIR/vmlinux. The
initramfs (DIR/initrd.cpio, newc) holds busybox and an /init script that makes system calls a
user can see: it mounts /proc and devtmpfs, writes lines to /dev/kmsg, then exits -- which
panics the kernel ("Attempted to kill init"), whose Xen panic notifier ends the domain with
SCHEDOP_shutdown(crash). (x86 PVH has no Xen power-off hook; `poweroff` needs ACPI.)
"""

from __future__ import annotations

import gzip
import io
import lzma
import shutil
import struct
import subprocess
import sys
import tempfile
from pathlib import Path

DEFAULT_DIR = Path.home() / ".cache" / "pyxen" / "linux"
META_PACKAGE = "linux-image-cloud-amd64"
HELLO = "pyxen-init: hello from user space"
DONE = "pyxen-init: done"
INIT = f"""#!/bin/busybox sh
/bin/busybox mount -t proc proc /proc
/bin/busybox mount -t devtmpfs devtmpfs /dev
echo "{HELLO}" > /dev/kmsg
/bin/busybox uname -a > /dev/kmsg
echo "{DONE}" > /dev/kmsg
exit 0
"""
LZ4_LEGACY_MAGIC = b"\x02\x21\x4c\x18"
LZ4_LEGACY_BLOCK = 8 << 20  # each block decompresses to at most 8 MiB
ELF_MAGIC = b"\x7fELF"


def kernel_package() -> str:
    """The versioned package the meta package depends on (linux-image-6.1.0-N-cloud-amd64)."""
    out = subprocess.run(["apt-cache", "depends", META_PACKAGE], capture_output=True,
                         text=True, check=True).stdout
    for line in out.splitlines():
        kind, _, name = line.strip().partition(": ")
        if kind == "Depends" and name.startswith("linux-image-"):
            return name
    raise RuntimeError(f"{META_PACKAGE}: no linux-image dependency in apt-cache's answer")


def download(packages: list[str], into: Path) -> None:
    subprocess.run(["apt-get", "download", *packages], cwd=into, check=True,
                   stdout=subprocess.DEVNULL)
    for deb in into.glob("*.deb"):
        subprocess.run(["dpkg-deb", "-x", str(deb), str(into / "root")], check=True)


def _lz4_legacy(data: bytes) -> bytes:
    """LZ4's legacy frame: magic, then blocks of (32-bit LE compressed size, data)."""
    try:
        import lz4.block  # type: ignore[import-not-found]
    except ImportError:  # the lz4 command knows the legacy format too
        return subprocess.run(["lz4", "-dc"], input=data, capture_output=True).stdout
    out, pos = bytearray(), 4
    while pos + 4 <= len(data):
        size = struct.unpack_from("<I", data, pos)[0]
        if size in (0, int.from_bytes(LZ4_LEGACY_MAGIC, "little")) or pos + 4 + size > len(data):
            break
        out += lz4.block.decompress(data[pos + 4 : pos + 4 + size],
                                    uncompressed_size=LZ4_LEGACY_BLOCK)
        pos += 4 + size
    return bytes(out)


def _decompressors() -> list[tuple[bytes, object]]:
    def gz(d: bytes) -> bytes:
        return gzip.GzipFile(fileobj=io.BytesIO(d)).read()

    def xz(d: bytes) -> bytes:
        return lzma.LZMADecompressor().decompress(d)

    def zstd(d: bytes) -> bytes:
        return subprocess.run(["zstd", "-dc"], input=d, capture_output=True).stdout

    return [(LZ4_LEGACY_MAGIC, _lz4_legacy), (b"\xfd7zXZ\x00", xz), (b"\x28\xb5\x2f\xfd", zstd),
            (b"\x1f\x8b\x08", gz)]


def extract_vmlinux(bzimage: bytes) -> bytes:
    """The ELF inside a bzImage: try each compressed stream found in it until one decompresses
    to an ELF (what scripts/extract-vmlinux does)."""
    for magic, decompress in _decompressors():
        start = bzimage.find(magic)
        while start >= 0:
            try:
                elf = decompress(bzimage[start:])  # type: ignore[operator]
            except Exception:  # noqa: BLE001 - a false match of the magic: try the next one
                elf = b""
            if elf[:4] == ELF_MAGIC:
                return elf
            start = bzimage.find(magic, start + 1)
    raise RuntimeError("no compressed ELF found in the bzImage")


def newc(entries: list[tuple[str, int, bytes, tuple[int, int]]]) -> bytes:
    """A cpio archive in the "newc" format the kernel unpacks as its initramfs."""
    out = bytearray()
    for ino, (name, mode, data, rdev) in enumerate([*entries, ("TRAILER!!!", 0, b"", (0, 0))]):
        fields = (ino + 1, mode, 0, 0, 2 if mode & 0o040000 else 1, 0, len(data), 0, 0,
                  rdev[0], rdev[1], len(name) + 1, 0)
        out += b"070701" + "".join(f"{v:08X}" for v in fields).encode() + name.encode() + b"\0"
        out += b"\0" * (-len(out) % 4) + data
        out += b"\0" * (-len(out) % 4)
    return bytes(out + b"\0" * (-len(out) % 512))


def initramfs(busybox: bytes) -> bytes:
    return newc([(d, 0o040755, b"", (0, 0)) for d in ("bin", "dev", "proc", "sys")] + [
        ("dev/console", 0o020600, b"", (5, 1)),
        ("bin/busybox", 0o100755, busybox, (0, 0)),
        ("bin/sh", 0o120777, b"busybox", (0, 0)),
        ("init", 0o100755, INIT.encode(), (0, 0)),
    ])


def prepare(target: Path) -> None:
    target.mkdir(parents=True, exist_ok=True)
    package = kernel_package()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        download([package, "busybox-static"], work)
        root = work / "root"
        vmlinuz = next((root / "boot").glob("vmlinuz-*"))
        (target / "vmlinux").write_bytes(extract_vmlinux(vmlinuz.read_bytes()))
        (target / "initrd.cpio").write_bytes(initramfs((root / "bin" / "busybox").read_bytes()))
        shutil.copy(next((root / "boot").glob("config-*")), target / "config")
    (target / "VERSION").write_text(package + "\n")


def main() -> int:
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_DIR
    for tool in ("apt-get", "apt-cache", "dpkg-deb"):
        if shutil.which(tool) is None:
            print(f"fetch: {tool} not found: this needs a Debian system", file=sys.stderr)
            return 1
    prepare(target)
    print(f"fetch: {(target / 'VERSION').read_text().strip()} -> {target}/vmlinux, "
          f"{target}/initrd.cpio")
    return 0


if __name__ == "__main__":
    sys.exit(main())
