"""The PVH domain builder: image + config → a Domain ready to run.

Places the kernel's segments, then (page-aligned, just after the image) hvm_start_info, the
module list, the memory map, the command lines and the modules, all below 1 GiB; places the
ACPI tables (unless the config turns them off) where libxl does, in the MMIO hole, outside
RAM; sets vCPU 0 to PVH's entry state (32-bit flat protected mode, paging off, %ebx = start
info). Every problem with the image or config is an ImageError raised before any vCPU runs.
"""

from __future__ import annotations

import ctypes as C
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from pyxen.abi.start_info import (
    SIF_INITDOMAIN,
    SIF_PRIVILEGED,
    XEN_HVM_MEMMAP_TYPE_ACPI,
    XEN_HVM_MEMMAP_TYPE_RAM,
    XEN_HVM_MEMMAP_TYPE_RESERVED,
    XEN_HVM_START_MAGIC_VALUE,
    hvm_memmap_table_entry,
    hvm_modlist_entry,
    hvm_start_info,
)
from pyxen.hv.hypercall import HYPERCALL_PORT, HypercallTable
from pyxen.x86.cpuid import HYPERCALL_MSR, guest_cpuid

from .acpi import build_tables
from .backend import MachineBackend, Regs, SpecialRegs
from .domain import Domain, DomainConfig
from .loader import MAX_IMAGE_BYTES, ImageError, PvhImage, parse_pvh_image, read_bounded
from .memory import MMIO_HOLE_START, PAGE_SHIFT, PAGE_SIZE, GuestMemoryError
from .vcpu import Vcpu

SPECIAL_PAGES_START = 0xFEFF_8000  # Xen's HVM special pages: 8 frames below 0xFF000000
SPECIAL_PAGES_SIZE = 8 * 4096
START_INFO_LIMIT = 1 << 30  # some PVH guests map only their first GiB at entry
MAX_VCPUS = 128  # XEN_LEGACY_MAX_VCPUS is 32; vCPUs above it need register_vcpu_info
MAX_CMDLINE = 4096
MAX_NAME = 128  # bytes of UTF-8: a label for logs, XenStore and the memfd (which takes 249)
ACPI_FRAME = "acpi"  # the special_frames kind of the pages that hold the ACPI tables


@dataclass(frozen=True)
class Module:
    """A boot module (ramdisk, …) handed to the guest through hvm_start_info."""

    data: bytes
    cmdline: str = ""


def page_up(x: int) -> int:
    return (x + PAGE_SIZE - 1) & ~(PAGE_SIZE - 1)


def load_module(path: str | Path, max_bytes: int = MAX_IMAGE_BYTES) -> Module:
    """A module read from `path`, refused if larger than `max_bytes` (see `image_limit`)."""
    return Module(read_bounded(path, max_bytes, "module"))


def image_limit(config: DomainConfig) -> int:
    """The largest kernel or module file worth reading for this domain: one larger than its
    RAM cannot load, and libxc never loads more than 1 GiB."""
    return min(config.memory_mib << 20, MAX_IMAGE_BYTES)


def build_domain(
    image_path: str | Path,
    config: DomainConfig,
    machine_factory: Callable[[list[int]], MachineBackend],
    hypercalls: HypercallTable,
    console: Callable[[bytes], None],
    modules: list[Module] | None = None,
) -> Domain:
    """Build a PVH domain. ImageError on any problem with the image or the config."""
    modules = modules or []
    check_config(config)  # first: the image's size limit depends on the memory
    image = parse_pvh_image(image_path, image_limit(config))
    mem_bytes = config.memory_mib << 20
    low_ram = min(mem_bytes, MMIO_HOLE_START)  # the boot data must sit below the MMIO hole
    start_info_gpa = page_up(image.end)
    layout_end = _boot_data_end(start_info_gpa, config, modules)
    if image.end > low_ram or layout_end > low_ram:
        below = "" if low_ram == mem_bytes else f" ({low_ram >> 20} MiB below the MMIO hole)"
        raise ImageError(
            f"{image_path}: the image and its boot data need {layout_end / (1 << 20):.1f} MiB "
            f"but the domain has {config.memory_mib} MiB of memory{below}"
        )
    if start_info_gpa >= START_INFO_LIMIT:
        raise ImageError(f"{image_path}: the image ends above 1 GiB; no room for the start info")

    domain = new_domain(config, machine_factory, hypercalls, console)
    try:
        _load_segments(domain, image)
        rsdp = _place_acpi_tables(domain) if config.acpi else 0
        _write_start_info(domain, start_info_gpa, config, modules, rsdp)
        # What the toolstack hands Xen with XENMEM_set_memory_map: the same map as start info.
        domain.e820 = [(e.addr, e.size, e.type) for e in boot_memmap(domain)]
        create_vcpus(domain)
        _set_pvh_entry_state(domain.vcpus[0], image.entry, start_info_gpa)
    except BaseException:
        domain.close()
        raise
    return domain


def new_domain(config: DomainConfig, machine_factory: Callable[[list[int]], MachineBackend],
               hypercalls: HypercallTable, console: Callable[[bytes], None]) -> Domain:
    """A domain on a new machine, nothing loaded yet (the machine closed if that fails)."""
    machine = machine_factory([HYPERCALL_MSR])
    try:
        return Domain(config, machine, hypercalls, console)
    except BaseException:
        machine.close()
        raise


def create_vcpus(domain: Domain) -> None:
    """Every vCPU the domain may bring up, each with the domain's CPUID policy (its TSC
    rate: the machine's, unless the domain has one already, as a restored one does)."""
    machine = domain.machine
    host_cpuid = machine.host_cpuid()
    for index in range(domain.max_vcpus):
        backend = machine.create_vcpu(index, HYPERCALL_PORT)
        domain.tsc_khz = domain.tsc_khz or machine.tsc_khz  # KVM knows it once a vCPU exists
        backend.set_cpuid(guest_cpuid(host_cpuid, domain.domid, index, domain.tsc_khz))
        domain.add_vcpu(Vcpu(domain, index, backend))


def host_memory_mib() -> int:
    """The host's RAM: a domain cannot be given (or grow to) more, as on Xen."""
    return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") >> 20


def command_line_bytes(text: str) -> bytes:
    """A command line as the guest sees it. hvm_start_info carries bytes: a str that came
    from argv holds any non-UTF-8 bytes as surrogate escapes, and they go through as the
    bytes the user typed (os.fsencode), as xl passes its argument through."""
    try:
        return os.fsencode(text)
    except UnicodeEncodeError:
        raise ImageError("the command line is not valid text (it has unpaired surrogates "
                         "that stand for no byte)") from None


def _shown(text: str) -> str:
    """Text from argv, quoted for a one-line message: bytes that are not UTF-8 as \\xNN
    (not the surrogates Python decoded them to), control characters escaped."""
    try:
        decoded = os.fsencode(text).decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:
        return ascii(text)
    return "'" + "".join(c if c.isprintable() else c.encode("unicode_escape").decode()
                         for c in decoded) + "'"


def check_name(name: str) -> None:
    """The rules a domain name follows wherever it is given (a config, `--name`, a rename):
    ImageError naming the broken one."""
    try:
        encoded = name.encode()
    except UnicodeEncodeError:
        raise ImageError(f"the domain name {_shown(name)} is not valid UTF-8 "
                         f"(XenStore names are UTF-8)") from None
    if not encoded or len(encoded) > MAX_NAME:
        raise ImageError(f"the domain name must be 1 to {MAX_NAME} bytes long "
                         f"(got {len(encoded)})")
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in name):
        raise ImageError(f"the domain name {_shown(name)} contains control characters")


def check_config(config: DomainConfig) -> None:
    """Every rule a domain configuration must follow, in one place (the CLI relies on it):
    ImageError naming the first broken one."""
    check_name(config.name)
    host = host_memory_mib()
    if not 1 <= config.memory_mib <= host:
        raise ImageError(f"memory must be between 1 MiB and the host's {host} MiB "
                         f"(got {config.memory_mib})")
    if config.maxmem_mib is not None and not config.memory_mib <= config.maxmem_mib <= host:
        raise ImageError(f"maxmem ({config.maxmem_mib} MiB) must be between memory "
                         f"({config.memory_mib} MiB) and the host's {host} MiB")
    if not 1 <= config.vcpus <= MAX_VCPUS:
        raise ImageError(f"vcpus must be between 1 and {MAX_VCPUS} (got {config.vcpus})")
    if config.max_vcpus is not None and not config.vcpus <= config.max_vcpus <= MAX_VCPUS:
        raise ImageError(f"maxvcpus must be between vcpus and {MAX_VCPUS} "
                         f"(got {config.max_vcpus})")
    if len(command_line_bytes(config.cmdline)) >= MAX_CMDLINE:
        raise ImageError(f"the command line is longer than {MAX_CMDLINE - 1} bytes")


def _boot_data_end(start: int, config: DomainConfig, modules: list[Module]) -> int:
    size = C.sizeof(hvm_start_info) + len(modules) * C.sizeof(hvm_modlist_entry)
    # the memory map: RAM below and above the MMIO hole, the special pages, the ACPI tables
    size += 4 * C.sizeof(hvm_memmap_table_entry) + len(command_line_bytes(config.cmdline)) + 1
    size += sum(len(command_line_bytes(m.cmdline)) + 1 for m in modules)
    end = page_up(start + size)
    for m in modules:
        end = page_up(end + len(m.data))
    return end


def _load_segments(domain: Domain, image: PvhImage) -> None:
    for seg in image.segments:
        try:
            domain.memory.check_populated(seg.paddr, seg.memsz)
        except GuestMemoryError as e:
            raise ImageError(f"a segment at {seg.paddr:#x} (+{seg.memsz:#x}) is not in the "
                             f"domain's RAM") from e
        domain.memory.write(seg.paddr, seg.data)
        if seg.memsz > len(seg.data):  # .bss: guest RAM starts zeroed, but be explicit
            domain.memory.write(seg.paddr + len(seg.data), bytes(seg.memsz - len(seg.data)))


def _place_acpi_tables(domain: Domain) -> int:
    """Put the ACPI tables (every vCPU the domain may bring up in the MADT, as libxl) in
    frames of their own outside RAM, populated as the special pages are: the guest's memory
    reservation does not pay for them. Returns the RSDP's address."""
    tables = build_tables(domain.max_vcpus)
    first = tables.base >> PAGE_SHIFT
    frames = range(first, first + (page_up(len(tables.data)) >> PAGE_SHIFT))
    with domain.memory_lock:
        for gfn in frames:
            domain.memory.populate(gfn)
        domain.memory.commit()
    domain.special_frames.update(dict.fromkeys(frames, ACPI_FRAME))
    domain.memory.write(tables.base, tables.data)
    return tables.rsdp


def _write_start_info(domain: Domain, gpa: int, config: DomainConfig,
                      modules: list[Module], rsdp: int) -> None:
    mem = domain.memory
    cursor = gpa + C.sizeof(hvm_start_info)

    def place(data: bytes, align: int = 8) -> int:
        nonlocal cursor
        cursor = (cursor + align - 1) & ~(align - 1)
        where = cursor
        mem.write(where, data)
        cursor += len(data)
        return where

    info = hvm_start_info(magic=XEN_HVM_START_MAGIC_VALUE, version=1, rsdp_paddr=rsdp)
    if config.privileged:
        info.flags = SIF_PRIVILEGED | SIF_INITDOMAIN
    memmap = boot_memmap(domain)
    info.memmap_paddr = place(b"".join(bytes(e) for e in memmap))
    info.memmap_entries = len(memmap)
    info.cmdline_paddr = place(command_line_bytes(config.cmdline) + b"\0", 1)
    entries = []
    mod_cmdlines = [place(command_line_bytes(m.cmdline) + b"\0", 1) if m.cmdline else 0
                    for m in modules]
    data_cursor = page_up(cursor + len(modules) * C.sizeof(hvm_modlist_entry) + 8)
    for m, cmd in zip(modules, mod_cmdlines, strict=True):
        mem.write(data_cursor, m.data)
        entries.append(hvm_modlist_entry(paddr=data_cursor, size=len(m.data), cmdline_paddr=cmd))
        data_cursor = page_up(data_cursor + len(m.data))
    if entries:
        info.modlist_paddr = place(b"".join(bytes(e) for e in entries))
        info.nr_modules = len(entries)
    mem.write(gpa, bytes(info))


def boot_memmap(domain: Domain) -> list[hvm_memmap_table_entry]:
    """The memory map a domain boots with: its RAM, around the MMIO hole, Xen's
    special-page region (store and console rings) reserved below 0xFF000000, and the ACPI
    tables' frames (if any) as ACPI, as libxl lays it out. Populated frames that hold
    Xen's or the toolstack's pages are not RAM."""
    special = domain.special_frames
    ram = [hvm_memmap_table_entry(addr=first << PAGE_SHIFT, size=count << PAGE_SHIFT,
                                  type=XEN_HVM_MEMMAP_TYPE_RAM)
           for first, count in domain.memory.runs()
           if not all(gfn in special for gfn in range(first, first + count))]
    reserved = hvm_memmap_table_entry(addr=SPECIAL_PAGES_START, size=SPECIAL_PAGES_SIZE,
                                      type=XEN_HVM_MEMMAP_TYPE_RESERVED)
    entries = [*ram, reserved]
    acpi = sorted(gfn for gfn, kind in special.items() if kind == ACPI_FRAME)
    if acpi:
        entries.append(hvm_memmap_table_entry(addr=acpi[0] << PAGE_SHIFT,
                                              size=len(acpi) << PAGE_SHIFT,
                                              type=XEN_HVM_MEMMAP_TYPE_ACPI))
    return sorted(entries, key=lambda e: e.addr)


def _set_pvh_entry_state(vcpu: Vcpu, entry: int, start_info_gpa: int) -> None:
    """Xen's PVH entry: 32-bit flat code/data, TR a busy 32-bit TSS, CR0 = PE|ET, paging off."""
    s = SpecialRegs()
    vcpu.load_sregs(_flat_segments(s))
    regs = Regs()
    regs.rip = entry
    regs.rbx = start_info_gpa
    regs.rflags = 0x2
    vcpu.backend.set_initial_regs(regs)


def _flat_segments(s: SpecialRegs) -> SpecialRegs:
    def flat(seg, selector: int, type_: int) -> None:  # type: ignore[no-untyped-def]
        seg.base, seg.limit, seg.selector, seg.type = 0, 0xFFFF_FFFF, selector, type_
        seg.present, seg.dpl, seg.db, seg.s, seg.l, seg.g, seg.unusable = 1, 0, 1, 1, 0, 1, 0

    flat(s.cs, 0x08, 0xB)  # execute/read, accessed
    for seg in (s.ds, s.es, s.fs, s.gs, s.ss):
        flat(seg, 0x10, 0x3)  # read/write, accessed
    s.tr.base, s.tr.limit, s.tr.selector, s.tr.type = 0, 0x67, 0x18, 0xB
    s.tr.present, s.tr.s = 1, 0
    s.ldt.type, s.ldt.present, s.ldt.unusable = 0x2, 1, 1
    s.gdt.base, s.gdt.limit = 0, 0xFFFF
    s.idt.base, s.idt.limit = 0, 0xFFFF
    s.cr0 = 0x11  # PE | ET
    s.cr4 = 0
    s.efer = 0
    return s
