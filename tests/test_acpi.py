"""ACPI tables for PVH domains (pyxen.domain.acpi) and where the builder puts them.

The tables are checked twice: by a small parser here (checksums, MADT entries, FADT
registers) and by ACPICA's own disassembler (`iasl -d`, from acpica-tools), which is what
an OS's ACPI code agrees with. The power-register decoder is checked against what a guest
derives from the tables as iasl reads them: \\_S5's sleep type and the FADT's registers."""

from __future__ import annotations

import ctypes as C
import re
import shutil
import struct
import subprocess
from pathlib import Path

import pytest

from guestkit import image, run_guest
from pyxen.abi.start_info import (
    XEN_HVM_MEMMAP_TYPE_ACPI,
    hvm_memmap_table_entry,
    hvm_modlist_entry,
    hvm_start_info,
)
from pyxen.domain import acpi
from pyxen.domain.acpi import (
    ACPI_TABLES_GPA,
    RESET_PORT,
    RESET_VALUE,
    SLEEP_CONTROL_PORT,
    SLEEP_STATUS_PORT,
    SLP_EN,
    WAK_STS,
    build_tables,
    power_request,
)
from pyxen.domain.builder import Module, build_domain, page_up
from pyxen.domain.domain import Domain, DomainConfig, Outcome
from pyxen.domain.loader import parse_pvh_image
from pyxen.domain.vcpu import DEBUGCON_PORT
from pyxen.hv import hypercall_table
from pyxen.hv.hypercall import HYPERCALL_PORT
from pyxen.toolstack.accel import machine_factory
from pyxen.toolstack.xl_create import domain_spec
from pyxen.toolstack.xlcfg import parse_xl_config

IASL = shutil.which("iasl")
needs_iasl = pytest.mark.skipif(IASL is None, reason="iasl (Debian's acpica-tools) is not "
                                "installed: the tables cannot be disassembled")


# ----- reading tables as an OS does ---------------------------------------------------------

def tables_at(read, rsdp: int) -> dict[str, tuple[int, bytes]]:  # type: ignore[no-untyped-def]
    """Every table reachable from the RSDP at `rsdp` (the RSDP too, as "RSDP"): signature →
    (address, bytes), read through `read(gpa, length)` as an OS walks them: RSDP → XSDT →
    its tables, FADT → DSDT."""
    found = {"RSDP": (rsdp, read(rsdp, 36))}
    assert found["RSDP"][1][:8] == b"RSD PTR "

    def table(gpa: int) -> tuple[int, bytes]:
        length = struct.unpack("<I", read(gpa + 4, 4))[0]
        return gpa, read(gpa, length)

    found["XSDT"] = table(struct.unpack_from("<Q", found["RSDP"][1], 24)[0])
    for (gpa,) in struct.iter_unpack("<Q", found["XSDT"][1][36:]):
        found[read(gpa, 4).decode()] = table(gpa)
    found["DSDT"] = table(struct.unpack_from("<Q", found["FACP"][1], 140)[0])
    return found


def tables_from(read, rsdp: int) -> dict[str, bytes]:  # type: ignore[no-untyped-def]
    return {signature: data for signature, (_, data) in tables_at(read, rsdp).items()}


def builder_tables(nr_vcpus: int) -> dict[str, bytes]:
    built = build_tables(nr_vcpus)
    return tables_from(lambda gpa, n: built.data[gpa - built.base : gpa - built.base + n],
                       built.rsdp)


def madt_entries(madt: bytes) -> list[tuple[int, int, int, int]]:
    """(type, ACPI processor id, APIC id, flags) of each processor entry."""
    entries, pos = [], 44
    while pos < len(madt):
        kind, length = madt[pos], madt[pos + 1]
        if kind == 0:
            uid, apic, flags = struct.unpack_from("<BBI", madt, pos + 2)
        else:
            assert kind == 9
            apic, flags, uid = struct.unpack_from("<III", madt, pos + 4)
        entries.append((kind, uid, apic, flags))
        pos += length
    assert pos == len(madt)
    return entries


def expected_madt(nr_vcpus: int) -> list[tuple[int, int, int, int]]:
    """libacpi's rule, with APIC ID = 2 * index: a Local APIC entry (type 0) while the ID
    fits below 255, a Local x2APIC entry (type 9) above; every vCPU enabled."""
    return [(0 if 2 * i <= 254 else 9, i, 2 * i, 1) for i in range(nr_vcpus)]


# ----- iasl ------------------------------------------------------------------------------

def disassemble(tables: dict[str, bytes], where: Path) -> dict[str, str]:
    """iasl -d on each table but the RSDP (iasl does not load one from a file): its .dsl."""
    out = {}
    for signature, data in tables.items():
        if signature == "RSDP":
            continue
        name = signature.lower()
        (where / f"{name}.dat").write_bytes(data)
        done = subprocess.run([IASL, "-d", f"{name}.dat"], cwd=where, capture_output=True,
                              text=True)
        log = done.stdout + done.stderr
        assert done.returncode == 0, log
        assert "Incorrect checksum" not in log, log
        out[signature] = (where / f"{name}.dsl").read_text()
    return out


def fields(dsl: str) -> list[tuple[str, str]]:
    """iasl's "Name : value" lines, in order (flag bits decoded as "Name (Vn) : 0|1")."""
    return [(m[1], m[2]) for m in
            re.finditer(r"^(?:\[[^\]\n]*\])?[ \t]*(.+?)(?: \(V\d\))?[ \t]+: (.*)$", dsl, re.M)]


def field(dsl: str, name: str) -> int:
    values = [v for f, v in fields(dsl) if f == name]
    assert len(values) == 1, (name, values)
    return int(values[0].split()[0], 16)


def register(dsl: str, name: str) -> dict[str, int]:
    """A Generic Address Structure as iasl decodes it."""
    items = fields(dsl)
    at = [f for f, _ in items].index(name)
    return {f: int(v.split()[0], 16) for f, v in items[at + 1 : at + 6]}


def s5_sleep_type(dsdt: str) -> int:
    m = re.search(r"Name \(\\_S5, Package \(0x04\).*?\{\s*(0x[0-9A-F]+|Zero|One),", dsdt, re.S)
    assert m, dsdt
    return {"Zero": 0, "One": 1}.get(m[1]) or int(m[1], 16)


# ----- the tables ------------------------------------------------------------------------

@pytest.mark.parametrize("nr_vcpus", [1, 2, 300])
def test_every_checksum_holds(nr_vcpus: int) -> None:
    tables = builder_tables(nr_vcpus)
    rsdp = tables.pop("RSDP")
    assert rsdp[15] == 2  # revision 2: the XSDT
    assert sum(rsdp[:20]) & 0xFF == 0 and sum(rsdp) & 0xFF == 0
    assert struct.unpack_from("<I", rsdp, 20)[0] == len(rsdp) == 36
    assert set(tables) == {"XSDT", "FACP", "APIC", "DSDT"}
    for signature, data in tables.items():
        assert sum(data) & 0xFF == 0, signature
        assert data[10:15] == b"PYXEN", signature
    assert rsdp[9:14] == b"PYXEN"


@pytest.mark.parametrize("nr_vcpus", [1, 2, 300])
def test_madt_has_one_enabled_processor_per_vcpu(nr_vcpus: int) -> None:
    madt = builder_tables(nr_vcpus)["APIC"]
    lapic_address, flags = struct.unpack_from("<II", madt, 36)
    assert lapic_address == 0xFEE0_0000
    assert flags == 0  # no PC-AT compatibility: no 8259 PICs
    assert madt_entries(madt) == expected_madt(nr_vcpus)


def test_madt_switches_to_x2apic_entries_above_apic_id_254() -> None:
    kinds = [kind for kind, *_ in madt_entries(builder_tables(300)["APIC"])]
    assert kinds == [0] * 128 + [9] * 172  # vCPU 127 has APIC ID 254; vCPU 128 has 256


def test_fadt_is_hardware_reduced_with_io_power_registers() -> None:
    tables = builder_tables(2)
    fadt = tables["FACP"]
    assert fadt[8] >= 5 and len(fadt) >= 268  # ACPI 5.0 or later: the sleep registers
    flags = struct.unpack_from("<I", fadt, 112)[0]
    assert flags & acpi.FADT_HW_REDUCED_ACPI and flags & acpi.FADT_RESET_REG_SUP
    io_byte = (1, 8, 0, 1)  # System I/O, 8 bits wide, at bit 0, byte access
    assert struct.unpack_from("<BBBBQ", fadt, 116) == (*io_byte, RESET_PORT)
    assert fadt[128] == RESET_VALUE
    assert struct.unpack_from("<BBBBQ", fadt, 244) == (*io_byte, SLEEP_CONTROL_PORT)
    assert struct.unpack_from("<BBBBQ", fadt, 256) == (*io_byte, SLEEP_STATUS_PORT)
    assert struct.unpack_from("<I", fadt, 36)[0] == 0  # no FACS (FIRMWARE_CTRL ...
    assert struct.unpack_from("<Q", fadt, 132)[0] == 0  # ... nor X_FIRMWARE_CTRL)
    assert struct.unpack_from("<I", fadt, 76)[0] == 0 and fadt[91] == 0  # no PM timer ...
    assert fadt[208:220] == bytes(12)                                    # ... nor X_PM_TMR
    assert struct.unpack_from("<Q", fadt, 140)[0] == build_tables(2).addresses["DSDT"]


def test_build_refuses_no_vcpus() -> None:
    with pytest.raises(ValueError, match="at least one vCPU"):
        build_tables(0)


@needs_iasl
@pytest.mark.parametrize("nr_vcpus", [1, 2, 300])
def test_iasl_decodes_every_table(nr_vcpus: int, tmp_path: Path) -> None:
    dsl = disassemble(builder_tables(nr_vcpus), tmp_path)
    assert field(dsl["APIC"], "Local Apic Address") == 0xFEE0_0000
    assert field(dsl["APIC"], "PC-AT Compatibility") == 0
    decoded, entry = [], None
    for name, value in fields(dsl["APIC"]):
        number = int(value.split()[0], 16) if re.match(r"[0-9A-F]+\b", value) else None
        if name == "Subtable Type":
            entry = {"type": number}
            decoded.append(entry)
        elif entry is not None and name in ("Processor ID", "Processor UID"):
            entry["uid"] = number
        elif entry is not None and name in ("Local Apic ID", "Processor x2Apic ID"):
            entry["apic"] = number
        elif entry is not None and name == "Processor Enabled":
            entry["enabled"] = number
    assert [(e["type"], e["uid"], e["apic"], e["enabled"]) for e in decoded] == \
        expected_madt(nr_vcpus)


@needs_iasl
def test_iasl_reads_the_fadt_as_hardware_reduced(tmp_path: Path) -> None:
    fadt = disassemble(builder_tables(1), tmp_path)["FACP"]
    assert field(fadt, "Revision") >= 5
    assert field(fadt, "Hardware Reduced") == 1
    assert field(fadt, "Reset Register Supported") == 1
    for name, port in (("Reset Register", RESET_PORT),
                       ("Sleep Control Register", SLEEP_CONTROL_PORT),
                       ("Sleep Status Register", SLEEP_STATUS_PORT)):
        assert register(fadt, name) == {"Space ID": 1, "Bit Width": 8, "Bit Offset": 0,
                                        "Encoded Access Width": 1, "Address": port}, name
    assert register(fadt, "PM Timer Block")["Address"] == 0
    assert field(fadt, "PM Timer Block Address") == 0
    assert [v for f, v in fields(fadt) if f == "FACS Address"] == ["00000000",
                                                                    "0000000000000000"]


@needs_iasl
def test_iasl_finds_s5_in_the_dsdt(tmp_path: Path) -> None:
    dsdt = disassemble(builder_tables(1), tmp_path)["DSDT"]
    assert "Name (\\_S5, Package (0x04)" in dsdt
    assert s5_sleep_type(dsdt) == acpi.S5_SLEEP_TYPE


@needs_iasl
def test_what_a_guest_derives_from_the_tables_powers_off_and_reboots(tmp_path: Path) -> None:
    """ACPICA's hardware-reduced S5 entry: clear WAK_STS in the sleep status register, then
    write SLP_TYP (\\_S5's first element, bits 2-4) | SLP_EN (bit 5) to the sleep control
    register. Its reset: the FADT's reset value to the reset register."""
    dsl = disassemble(builder_tables(1), tmp_path)
    fadt = dsl["FACP"]
    status = register(fadt, "Sleep Status Register")["Address"]
    control = register(fadt, "Sleep Control Register")["Address"]
    assert power_request(status, WAK_STS) is None
    assert power_request(control, (s5_sleep_type(dsl["DSDT"]) << 2) & 0x1C | 0x20) == "poweroff"
    reset = register(fadt, "Reset Register")["Address"]
    assert power_request(reset, field(fadt, "Value to cause reset")) == "reboot"


# ----- decoding the guest's writes ---------------------------------------------------------

@pytest.mark.parametrize(("port", "value", "asked"), [
    (SLEEP_CONTROL_PORT, SLP_EN | 5 << 2, "poweroff"),
    (SLEEP_CONTROL_PORT, 0x300 | SLP_EN | 5 << 2, "poweroff"),  # a wider write: its low byte
    (SLEEP_CONTROL_PORT, 5 << 2, None),                # the type without SLP_EN
    (SLEEP_CONTROL_PORT, SLP_EN, None),                # SLP_EN with sleep type 0
    (SLEEP_CONTROL_PORT, SLP_EN | 3 << 2, None),       # another sleep type (S3's usual)
    (SLEEP_STATUS_PORT, WAK_STS, None),                # clearing the wake status first
    (SLEEP_STATUS_PORT, SLP_EN | 5 << 2, None),        # the S5 value on the wrong register
    (RESET_PORT, RESET_VALUE, "reboot"),
    (RESET_PORT, RESET_VALUE + 1, None),
    (RESET_PORT, 0, None),
    (SLEEP_CONTROL_PORT, RESET_VALUE, None),           # the reset value on the wrong register
    (DEBUGCON_PORT, SLP_EN | 5 << 2, None),
    (0xCF9, 0x06, None),                               # the PC's reset control port: not ours
    (0x64, 0xFE, None),                                # the 8042's pulse-reset: not ours
])
def test_power_request(port: int, value: int, asked: str | None) -> None:
    assert power_request(port, value) == asked


def test_power_ports_clash_with_pyxens_own() -> None:
    ports = {SLEEP_CONTROL_PORT, SLEEP_STATUS_PORT, RESET_PORT}
    assert len(ports) == 3
    assert not ports & {DEBUGCON_PORT, HYPERCALL_PORT}
    assert all(port >= 0x400 for port in ports)  # above the legacy PC devices


# ----- a built domain ----------------------------------------------------------------------

def build(accel: str, modules: list[Module] | None = None, **config: object) -> Domain:
    cfg = DomainConfig(name="acpi", **config)  # type: ignore[arg-type]
    return build_domain(image("demo"), cfg, machine_factory(accel)[0], hypercall_table(),
                        lambda _: None, modules)


def start_info(domain: Domain) -> hvm_start_info:
    gpa = page_up(parse_pvh_image(image("demo")).end)
    return hvm_start_info.from_buffer_copy(domain.memory.read(gpa, C.sizeof(hvm_start_info)))


def memmap(domain: Domain) -> list[tuple[int, int, int]]:
    info = start_info(domain)
    size = C.sizeof(hvm_memmap_table_entry)
    raw = domain.memory.read(info.memmap_paddr, info.memmap_entries * size)
    return [(e.addr, e.size, e.type) for e in
            (hvm_memmap_table_entry.from_buffer_copy(raw, i * size)
             for i in range(info.memmap_entries))]


def test_a_built_domain_has_its_tables_at_rsdp_paddr(guests, accel: str, tmp_path: Path) -> None:
    module = Module(b"ramdisk" * 1000, "mod")
    domain = build(accel, [module], vcpus=2, max_vcpus=3)
    try:
        info = start_info(domain)
        assert info.rsdp_paddr == ACPI_TABLES_GPA
        found = tables_at(domain.memory.read, info.rsdp_paddr)
        tables = {signature: data for signature, (_, data) in found.items()}
        assert madt_entries(tables["APIC"]) == expected_madt(3)  # every vCPU it may bring up
        if IASL:
            disassemble(tables, tmp_path)
        # One ACPI range in the memory map, holding every table, on no RAM.
        ranges = [(a, s) for a, s, t in memmap(domain) if t == XEN_HVM_MEMMAP_TYPE_ACPI]
        assert len(ranges) == 1
        start, end = ranges[0][0], sum(ranges[0])
        for gpa, data in found.values():
            assert start <= gpa and gpa + len(data) <= end
        for addr, size, kind in memmap(domain):
            assert kind != 1 or addr + size <= start or addr >= end
        assert domain.e820 == memmap(domain)  # XENMEM_memory_map says the same
        assert domain.tot_pages == 64 << 8  # DomainConfig's 64 MiB: the tables are not RAM
        # Nothing else the guest was given is there.
        assert parse_pvh_image(image("demo")).end <= start
        modules = domain.memory.struct_at(hvm_modlist_entry, info.modlist_paddr)
        for gpa, size in ((info.modlist_paddr, 32), (info.cmdline_paddr, 1),
                          (info.memmap_paddr, 24 * info.memmap_entries),
                          (modules.paddr, modules.size)):
            assert gpa + size <= start
    finally:
        domain.close()


def test_acpi_off_gives_no_tables(guests, accel: str) -> None:
    domain = build(accel, acpi=False)
    try:
        assert start_info(domain).rsdp_paddr == 0
        assert all(kind != XEN_HVM_MEMMAP_TYPE_ACPI for _, _, kind in memmap(domain))
        assert not domain.memory.is_populated(ACPI_TABLES_GPA >> 12)
    finally:
        domain.close()


def test_the_guest_sees_the_acpi_range_in_its_memory_map(guests, accel: str) -> None:
    outcome, report = run_guest("demo", accel=accel)
    assert outcome.result.outcome is Outcome.POWEROFF
    types = {entry.split()[0]: int(entry.split()[2]) for entry in report.info["memmap"]}
    assert types[f"{ACPI_TABLES_GPA:#x}"] == XEN_HVM_MEMMAP_TYPE_ACPI


# ----- the toolstack ----------------------------------------------------------------------

@pytest.mark.parametrize(("text", "acpi_on"), [("", True), ("acpi = 0\n", False),
                                               ("acpi = 1\n", True)])
def test_xl_create_hands_acpi_to_the_daemon(text: str, acpi_on: bool) -> None:
    cfg = parse_xl_config(f'name = "vm"\nkernel = "/k"\ntype = "pvh"\n{text}', "vm.cfg")
    assert domain_spec(cfg)["acpi"] is acpi_on
