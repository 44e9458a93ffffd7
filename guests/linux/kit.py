"""The Linux guest kit: Debian's stock cloud kernel, an initramfs and a root disk for pyxen.

    python3 guests/linux/kit.py [DIR]          (default guests/build/linux)
    make -C guests linux                       (the same, into guests/build/linux)

Built from Debian packages alone, without root: `apt-get download` fetches the kernel that
`linux-image-cloud-amd64` depends on and `busybox-static`, `dpkg-deb -x` unpacks them. Writes

    DIR/vmlinuz      the kernel package's bzImage, as shipped (PVH entry, HVC_XEN=y, EXT4_FS=y)
    DIR/initrd.cpio  newc initramfs: busybox, xen-blkfront + xen-netfront from the same package
                     (their modules.dep closure, decompressed), an /init that loads them and
                     either switch_roots to `root=` (ext4) or runs busybox init from itself
    DIR/root.img     a sparse ext4 image (mke2fs -d) holding the same userland
    DIR/VERSION      what the outputs were built from; a rerun with the same packages and
                     scripts does nothing, so `make` stays cheap and works offline

Both roots run busybox init: a sysinit that mounts, names the host, configures eth0 from
`pyxen.ip=ADDR/PREFIX`, and prints the MARKER line tests wait for; then a respawning shell on
the console (console=hvc0 makes /dev/console the PV console); `poweroff` and `reboot` go
through init's shutdown actions (sync, umount -a -r).
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import gzip
import hashlib
import lzma
import os
import shutil
import struct
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

DEFAULT_DIR = Path(__file__).resolve().parents[1] / "build" / "linux"
META_PACKAGE = "linux-image-cloud-amd64"
BUSYBOX_PACKAGE = "busybox-static"
# The PV front ends the config's disk and vif need (Debian builds them as modules).
MODULES = ("xen-blkfront", "xen-netfront")
ROOT_IMG_MIB = 64
# 4 KiB blocks (mke2fs would pick 1 KiB for so small a disk): whole pages per blkif segment.
MKE2FS = ("-q", "-F", "-t", "ext4", "-L", "pyxen-root", "-b", "4096", "-E", "root_owner=0:0")
ROOT_WAIT_S = 60  # how long /init waits for the root device (blkfront connects after modprobe)
MARKER = "pyxen-linux: ready"
KIT_FORMAT = 1  # bump when the layout changes in a way the scripts' hash does not show

INIT = f"""#!/bin/sh
# pyxen Linux kit: the initramfs's /init. Loads the PV front ends, then switches to the disk
# root=/dev/NAME names (ext4 unless rootfstype= says otherwise; read-write unless `ro`), or
# runs busybox init from here.
export PATH=/sbin:/bin:/usr/sbin:/usr/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
for m in $(cat /etc/modules); do
    modprobe "$m" || echo "pyxen-linux: modprobe $m failed"
done
root= fstype=ext4 mode=rw
for word in $(cat /proc/cmdline); do
    case "$word" in
        root=*) root=${{word#root=}} ;;
        rootfstype=*) fstype=${{word#rootfstype=}} ;;
        ro|rw) mode=$word ;;
    esac
done
if [ -n "$root" ]; then
    tries={ROOT_WAIT_S}
    while [ ! -b "$root" ] && [ "$tries" -gt 0 ]; do
        sleep 1
        tries=$((tries - 1))
    done
    mkdir -p /newroot
    if [ ! -b "$root" ]; then
        echo "pyxen-linux: no $root after {ROOT_WAIT_S} s: staying on the initramfs"
    elif ! mount -t "$fstype" -o "$mode" "$root" /newroot; then
        echo "pyxen-linux: cannot mount $root ($fstype): staying on the initramfs"
    else
        mount --move /dev /newroot/dev
        mount --move /proc /newroot/proc
        mount --move /sys /newroot/sys
        exec switch_root /newroot /sbin/init
    fi
fi
exec /sbin/init
"""

RCS = f"""#!/bin/sh
# pyxen Linux kit: busybox init's sysinit, the same on the initramfs and on the disk.
export PATH=/sbin:/bin:/usr/sbin:/usr/bin
[ -e /proc/self ] || mount -t proc proc /proc
[ -e /sys/kernel ] || mount -t sysfs sysfs /sys
[ -e /dev/null ] || mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts /dev/shm
mount -t devpts devpts /dev/pts
mount -t tmpfs tmpfs /run
mount -t tmpfs tmpfs /tmp
hostname -F /etc/hostname
ip link set lo up
addr=
for word in $(cat /proc/cmdline); do
    case "$word" in
        pyxen.ip=*) addr=${{word#pyxen.ip=}} ;;
    esac
done
if [ -n "$addr" ]; then
    if ip addr add "$addr" dev eth0 && ip link set eth0 up; then
        echo "pyxen-linux: eth0 $addr"
    else
        echo "pyxen-linux: eth0 not configured (pyxen.ip=$addr)"
    fi
fi
root=$(awk '$2 == "/" {{ dev = $1; type = $3 }} END {{ print (type == "rootfs" || type == "ramfs" || type == "tmpfs") ? "initramfs" : dev }}' /proc/mounts)
echo "{MARKER} (root=$root) linux=$(uname -r) cpus=$(nproc)"
"""

INITTAB = """# pyxen Linux kit: busybox init's table. console=hvc0 makes /dev/console the PV console;
# cttyhack gives the shell it as a controlling terminal (job control, Ctrl-C).
::sysinit:/etc/init.d/rcS
::respawn:/bin/cttyhack /bin/sh -l
::ctrlaltdel:/sbin/reboot
::shutdown:/bin/echo pyxen-linux: stopping
::shutdown:/bin/sync
::shutdown:/bin/umount -a -r -t ext4
"""

ETC = {
    "etc/inittab": INITTAB,
    "etc/hostname": "pyxen\n",
    "etc/profile": "export PATH=/sbin:/bin:/usr/sbin:/usr/bin\nexport PS1='\\h:\\w\\$ '\n",
    "etc/passwd": "root:x:0:0:root:/root:/bin/sh\n",
    "etc/group": "root:x:0:\n",
    "etc/modules": "".join(f"{m}\n" for m in MODULES),
}
DIRS = ("dev", "proc", "sys", "run", "tmp", "root", "mnt", "etc/init.d")
MODULE_SUFFIXES = (".ko", ".ko.xz", ".ko.zst", ".ko.gz")


class KitError(Exception):
    """The kit cannot be built; the message is one line saying why."""


class KitUnavailable(KitError):
    """What this machine lacks: a tool, a package, the network (tests skip on it)."""


@dataclass(frozen=True)
class Package:
    name: str
    version: str

    def __str__(self) -> str:
        return f"{self.name} {self.version}"


@dataclass(frozen=True)
class Module:
    """A kernel module for the initramfs: its path under /lib/modules/RELEASE (as .ko, since
    it is stored decompressed), its bytes and the paths of the modules it needs."""

    path: str
    data: bytes
    needs: tuple[str, ...]


@dataclass(frozen=True)
class Kit:
    dir: Path
    release: str  # the kernel's `uname -r`

    @property
    def vmlinuz(self) -> Path:
        return self.dir / "vmlinuz"

    @property
    def initrd(self) -> Path:
        return self.dir / "initrd.cpio"

    @property
    def root_img(self) -> Path:
        return self.dir / "root.img"


# ----- tools and packages ---------------------------------------------------------------

TOOLS = {"apt-get": "apt", "apt-cache": "apt", "dpkg-deb": "dpkg", "mke2fs": "e2fsprogs",
         "debugfs": "e2fsprogs"}


def _need(*tools: str) -> None:
    for tool in tools:
        if shutil.which(tool) is None:
            package = TOOLS.get(tool, tool)
            raise KitUnavailable(f"{tool} not found: install {package} "
                                 f"(apt-get install {package}; the kit needs a Debian system)")


def _run(cmd: list[str], *, cwd: Path | None = None, unavailable: bool = False) -> str:
    """Run a tool; its failure becomes a KitError carrying its last line of complaint."""
    _need(cmd[0])
    done = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, errors="replace")
    if done.returncode != 0:
        lines = [ln for ln in done.stderr.splitlines() if ln.startswith("E:")]
        lines = lines or done.stderr.strip().splitlines() or [f"exit status {done.returncode}"]
        error = KitUnavailable if unavailable else KitError
        raise error(f"{' '.join(cmd[:2])} failed: {lines[-1].strip()}")
    return done.stdout


def _records(names: list[str]) -> dict[str, dict[str, str]]:
    """apt-cache's record of each package's candidate version (the one apt-get downloads);
    a package apt does not know is absent from the answer."""
    _need("apt-cache")
    out = subprocess.run(["apt-cache", "show", "--no-all-versions", *names],
                         capture_output=True, text=True, errors="replace").stdout
    records: dict[str, dict[str, str]] = {}
    for block in out.split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.splitlines()
                      if ": " in line and not line.startswith(" "))
        if "Package" in fields:
            records[fields["Package"]] = fields
    return records


def _unknown(name: str) -> KitUnavailable:
    return KitUnavailable(f"apt knows no {name}: add Debian's main archive to apt's sources "
                          "and run apt-get update")


def resolve() -> tuple[Package, Package]:
    """(the versioned kernel package the meta package depends on, busybox-static), as apt
    would download them now."""
    records = _records([META_PACKAGE, BUSYBOX_PACKAGE])
    for name in (META_PACKAGE, BUSYBOX_PACKAGE):
        if name not in records:
            raise _unknown(name)
    busybox = Package(BUSYBOX_PACKAGE, records[BUSYBOX_PACKAGE]["Version"])
    for dep in records[META_PACKAGE].get("Depends", "").split(","):
        name, _, pin = dep.strip().partition(" ")
        if not name.startswith("linux-image-"):
            continue
        if pin.startswith("(= ") and pin.endswith(")"):
            return Package(name, pin[3:-1]), busybox
        kernel = _records([name]).get(name)
        if kernel is None:
            raise _unknown(name)
        return Package(name, kernel["Version"]), busybox
    raise KitUnavailable(f"{META_PACKAGE}: apt shows no linux-image dependency")


def download(packages: tuple[Package, ...], into: Path) -> None:
    """apt-get download + dpkg-deb -x of each package into `into`/root."""
    try:
        _run(["apt-get", "download", *(f"{p.name}={p.version}" for p in packages)], cwd=into,
             unavailable=True)
    except KitUnavailable as e:
        raise KitUnavailable(f"{' '.join(str(e).split())} (offline?)") from None
    for deb in sorted(into.glob("*.deb")):
        _run(["dpkg-deb", "-x", str(deb), str(into / "root")])


# ----- kernel and modules ---------------------------------------------------------------

def bzimage_release(data: bytes) -> str:
    """The release (`uname -r`) in a bzImage's setup header: the first word of the string
    kernel_version (offset 0x20e) points to, 0x200 bytes into the image."""
    if data[0x202:0x206] != b"HdrS":
        raise KitError("the kernel is not a bzImage (no HdrS setup header)")
    pointer = struct.unpack_from("<H", data, 0x20E)[0] + 0x200
    return data[pointer:data.index(b"\0", pointer)].decode(errors="replace").split()[0]


def _elf_section(elf: bytes, wanted: str) -> bytes:
    """One section of an ELF64 little-endian object (a module), by name."""
    if elf[:4] != b"\x7fELF" or elf[4] != 2:
        raise KitError("a module is not an ELF64 object")
    shoff, = struct.unpack_from("<Q", elf, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", elf, 0x3A)

    def header(i: int) -> tuple[int, int, int]:
        name, _, _, _, offset, size = struct.unpack_from("<IIQQQQ", elf, shoff + i * shentsize)
        return name, offset, size

    _, names, _ = header(shstrndx)
    for i in range(shnum):
        name, offset, size = header(i)
        if elf[names + name:elf.index(b"\0", names + name)].decode() == wanted:
            return elf[offset:offset + size]
    return b""


def modinfo(ko: bytes) -> dict[str, list[str]]:
    """A module's .modinfo (key=value strings), as modinfo(8) reads it."""
    info: dict[str, list[str]] = {}
    for entry in _elf_section(ko, ".modinfo").split(b"\0"):
        key, sep, value = entry.decode(errors="replace").partition("=")
        if sep:
            info.setdefault(key, []).append(value)
    return info


def read_module(path: Path) -> bytes:
    """A module file's ELF, whichever compression Debian shipped it with."""
    data = path.read_bytes()
    if path.name.endswith(".xz"):
        return lzma.decompress(data)
    if path.name.endswith(".gz"):
        return gzip.decompress(data)
    if path.name.endswith(".zst"):
        if shutil.which("zstd") is None:
            raise KitUnavailable("zstd not found: install zstd (the modules are .ko.zst)")
        done = subprocess.run(["zstd", "-dc", str(path)], capture_output=True)
        if done.returncode != 0:
            raise KitError(f"zstd cannot decompress {path.name}")
        return done.stdout
    return data


def _module_name(path: Path | str) -> str:
    name = Path(path).name
    for suffix in MODULE_SUFFIXES:
        name = name.removesuffix(suffix)
    return name.replace("-", "_")


def modules_closure(moddir: Path, wanted: tuple[str, ...]) -> list[Module]:
    """`wanted` with what each needs, needed ones first. The needs come from modules.dep where
    the package ships one, else from each module's own depends= (what depmod reads)."""
    files = {_module_name(p): p for p in sorted(moddir.rglob("*.ko*"))
             if p.name.endswith(MODULE_SUFFIXES)}
    shipped_dep: dict[str, list[str]] = {}
    if (moddir / "modules.dep").exists():
        for line in (moddir / "modules.dep").read_text().splitlines():
            path, _, needs = line.partition(":")
            shipped_dep[_module_name(path)] = [_module_name(n) for n in needs.split()]
    order: list[Module] = []
    seen: set[str] = set()

    def visit(name: str, chain: tuple[str, ...]) -> str:
        if name not in files:
            raise KitError(f"module {name} is not in the kernel package ({moddir})")
        path = files[name]
        rel = str(path.relative_to(moddir)).removesuffix(".xz").removesuffix(".zst")
        rel = rel.removesuffix(".gz")  # stored decompressed: always .ko
        if name in seen or name in chain:
            return rel
        data = read_module(path)
        needs = shipped_dep.get(name)
        if needs is None:
            needs = [_module_name(n) for n in ",".join(modinfo(data).get("depends", [])
                                                       ).split(",") if n]
        need_paths = tuple(visit(n, (*chain, name)) for n in needs)
        seen.add(name)
        order.append(Module(rel, data, need_paths))
        return rel

    for name in wanted:
        visit(name.replace("-", "_"), ())
    return order


def modules_dep(modules: list[Module]) -> str:
    """modules.dep for the modules the kit carries (so busybox modprobe finds them): each
    module's needs, transitively, as depmod lists them."""
    by_path = {m.path: m for m in modules}

    def closure(path: str) -> list[str]:
        out: list[str] = []
        for need in by_path[path].needs:
            for p in (need, *closure(need)):
                if p not in out:
                    out.append(p)
        return out

    return "".join(f"{m.path}: {' '.join(closure(m.path))}".rstrip() + "\n" for m in modules)


# ----- the userland tree, the initramfs and the disk --------------------------------------

def applets(busybox: Path) -> list[str]:
    """Where busybox installs its applets (bin/sh, sbin/init, usr/bin/awk, ...)."""
    try:
        out = subprocess.run([str(busybox), "--list-full"], capture_output=True, text=True,
                             check=True).stdout
    except (OSError, subprocess.CalledProcessError) as e:
        raise KitError(f"cannot run {busybox} to list its applets (an x86-64 host is needed):"
                       f" {e}") from None
    return [a for a in out.split() if "/" in a]


def userland(tree: Path, busybox: Path, release: str, modules: list[Module]) -> None:
    """The root tree both the initramfs and the disk hold: busybox and its applets, init's
    configuration, the modules with their modules.dep."""
    for d in DIRS:
        (tree / d).mkdir(parents=True, exist_ok=True)
    (tree / "bin").mkdir(exist_ok=True)
    shutil.copyfile(busybox, tree / "bin" / "busybox")
    (tree / "bin" / "busybox").chmod(0o755)
    for applet in applets(busybox):
        link = tree / applet
        if link.name != "busybox" and not link.exists():
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to("/bin/busybox")
    for name, text in ETC.items():
        (tree / name).write_text(text)
    (tree / "etc/init.d/rcS").write_text(RCS)
    (tree / "etc/init.d/rcS").chmod(0o755)
    (tree / "root").chmod(0o700)
    lib = tree / "lib" / "modules" / release
    for m in modules:
        (lib / m.path).parent.mkdir(parents=True, exist_ok=True)
        (lib / m.path).write_bytes(m.data)
    (lib / "modules.dep").write_text(modules_dep(modules))


CpioEntry = tuple[str, int, bytes, tuple[int, int]]  # name, mode, data, (rdev major, minor)


def newc(entries: list[CpioEntry]) -> bytes:
    """A cpio archive in the "newc" format the kernel unpacks as its initramfs (owner root,
    mtime 0: the same inputs give the same bytes)."""
    out = bytearray()
    for ino, (name, mode, data, rdev) in enumerate([*entries, ("TRAILER!!!", 0, b"", (0, 0))]):
        fields = (ino + 1, mode, 0, 0, 2 if mode & 0o040000 else 1, 0, len(data), 0, 0,
                  rdev[0], rdev[1], len(name) + 1, 0)
        out += b"070701" + "".join(f"{v:08X}" for v in fields).encode() + name.encode() + b"\0"
        out += b"\0" * (-len(out) % 4) + data
        out += b"\0" * (-len(out) % 4)
    return bytes(out + b"\0" * (-len(out) % 512))


def _walk(tree: Path) -> Iterator[Path]:
    for path in sorted(tree.iterdir()):
        yield path
        if path.is_dir() and not path.is_symlink():
            yield from _walk(path)


def initramfs(tree: Path) -> bytes:
    """The tree, plus /init and the console node the kernel opens before /init runs."""
    entries: list[CpioEntry] = []
    for path in _walk(tree):
        st = path.lstat()
        if path.is_symlink():
            data = os.readlink(path).encode()
        elif path.is_file():
            data = path.read_bytes()
        else:
            data = b""
        entries.append((str(path.relative_to(tree)), st.st_mode, data, (0, 0)))
    entries += [("dev/console", 0o020600, b"", (5, 1)), ("init", 0o100755, INIT.encode(), (0, 0))]
    return newc(entries)


def ext4_image(tree: Path, image: Path) -> None:
    """A sparse ext4 image of the tree; files owned by root whoever builds it."""
    image.unlink(missing_ok=True)
    _run(["mke2fs", *MKE2FS, "-d", str(tree), str(image), f"{ROOT_IMG_MIB}M"])
    fixes = [f"sif /{p.relative_to(tree)} {field} 0" for p in _walk(tree)
             for field, owner in (("uid", p.lstat().st_uid), ("gid", p.lstat().st_gid))
             if owner != 0]
    if fixes:
        with tempfile.NamedTemporaryFile("w", suffix=".debugfs") as script:
            script.write("\n".join(fixes) + "\n")
            script.flush()
            _run(["debugfs", "-w", "-f", script.name, str(image)])


# ----- the build --------------------------------------------------------------------------

def stamp(kernel: Package, busybox: Package) -> str:
    """What the outputs depend on: the packages and the kit's own scripts and layout."""
    scripts = "\0".join([INIT, RCS, *ETC.values(), *MODULES, *MKE2FS,
                         str(ROOT_IMG_MIB), str(KIT_FORMAT)])
    digest = hashlib.sha256(scripts.encode()).hexdigest()[:16]
    return f"kernel {kernel}\nbusybox {busybox}\nkit {digest}\n"


@contextlib.contextmanager
def _locked(target: Path) -> Iterator[None]:
    """One build at a time per directory (parallel test sessions share it)."""
    with open(target / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _replace(path: Path, write: Callable[[Path], object]) -> None:
    """Write through a temporary name, so a half-built output never looks finished."""
    tmp = path.with_name(path.name + ".tmp")
    write(tmp)
    os.replace(tmp, path)


def build(target: Path = DEFAULT_DIR, log: Callable[[str], None] = print) -> Kit:
    """Build whatever of the kit is missing or stale in `target`; return what is there."""
    _need(*TOOLS)
    target.mkdir(parents=True, exist_ok=True)
    with _locked(target):
        kernel, busybox = resolve()
        want = stamp(kernel, busybox)
        version = target / "VERSION"
        if version.exists() and version.read_text() != want:
            for name in ("vmlinuz", "initrd.cpio", "root.img", "VERSION"):
                (target / name).unlink(missing_ok=True)
        outputs = [target / n for n in ("vmlinuz", "initrd.cpio", "root.img")]
        if version.exists() and all(p.exists() for p in outputs):
            kit = Kit(target, bzimage_release((target / "vmlinuz").read_bytes()))
            log(f"kit: up to date in {target} (Linux {kit.release})")
            return kit
        with tempfile.TemporaryDirectory(prefix="pyxen-kit-") as tmp:
            work = Path(tmp)
            download((kernel, busybox), work)
            kit = _assemble(work / "root", target, log)
        version.write_text(want)
        return kit


def _assemble(unpacked: Path, target: Path, log: Callable[[str], None]) -> Kit:
    vmlinuz = next(iter(sorted((unpacked / "boot").glob("vmlinuz-*"))), None)
    if vmlinuz is None:
        raise KitError("the kernel package holds no boot/vmlinuz-*")
    release = bzimage_release(vmlinuz.read_bytes())
    moddir = next((d / release for d in (unpacked / "lib" / "modules",
                                         unpacked / "usr" / "lib" / "modules")
                   if (d / release).is_dir()), None)
    if moddir is None:
        raise KitError(f"the kernel package holds no modules for {release}")
    busybox = unpacked / "bin" / "busybox"
    if not busybox.exists():
        busybox = unpacked / "usr" / "bin" / "busybox"
    tree = unpacked.parent / "tree"
    userland(tree, busybox, release, modules_closure(moddir, MODULES))
    kit = Kit(target, release)
    if not kit.vmlinuz.exists():
        _replace(kit.vmlinuz, lambda p: shutil.copyfile(vmlinuz, p))
    if not kit.initrd.exists():
        _replace(kit.initrd, lambda p: p.write_bytes(initramfs(tree)))
    if not kit.root_img.exists():
        _replace(kit.root_img, lambda p: ext4_image(tree, p))
    for path in (kit.vmlinuz, kit.initrd, kit.root_img):
        used = path.stat().st_blocks * 512 >> 10
        log(f"kit: {path} ({path.stat().st_size >> 10} KiB, {used} KiB on disk)")
    log(f"kit: Linux {release}")
    return kit


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="kit.py", description=__doc__.splitlines()[0])
    parser.add_argument("dir", nargs="?", type=Path, default=DEFAULT_DIR,
                        help=f"where to build (default {DEFAULT_DIR})")
    args = parser.parse_args(argv)
    try:
        build(args.dir)
    except KitError as e:
        print(f"kit: {e}", file=sys.stderr)
        return 1
    except OSError as e:
        print(f"kit: {e.filename or args.dir}: {e.strerror}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
