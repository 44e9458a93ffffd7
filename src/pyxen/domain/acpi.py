"""ACPI tables for PVH domains, and the power registers they describe.

A PVH guest has no firmware: the toolstack builds its ACPI tables (libxl, with Xen's
tools/libacpi) and hands the RSDP's address in hvm_start_info.rsdp_paddr. Linux needs them
there: it finds its local APICs only in the MADT, and on x86 PVH it powers off and reboots
only through ACPI (Xen has no power-off hook for it). pyxen's tables describe what a PVH
domain is: a hardware-reduced ACPI 6.0 platform (no SCI, no PM1 blocks, no PM timer, no
FACS, no I/O APIC) whose only ACPI hardware is three 8-bit I/O registers of pyxen's own,
the sleep control, sleep status and reset registers (the *_PORT constants). A guest powers
off by writing SLP_EN and \\_S5's sleep type to the sleep control register, and reboots by
writing RESET_VALUE to the reset register; `power_request` decodes those writes.

The ports, 0x1F50-0x1F52, sit just above Xen's own PM1 block for HVM guests (0x1F40-0x1F4F,
which a PVH domain does not have) and clash with nothing a PVH guest uses: not the legacy
PC devices below 0x400, not PCI configuration (0xCF8-0xCFF), not Xen's debug console (0xE9)
nor pyxen's hypercall port (0xE8).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Literal

from pyxen.x86.lapic import apic_id

# Where libxl puts a PVH guest's tables (ACPI_INFO_PHYSICAL_ADDRESS): in the MMIO hole below
# 4 GiB, so never on the guest's RAM, its kernel, modules or start info.
ACPI_TABLES_GPA = 0xFC00_0000
LAPIC_ADDRESS = 0xFEE0_0000

# The power registers (FADT SLEEP_CONTROL_REG, SLEEP_STATUS_REG, RESET_REG): 8-bit System I/O.
SLEEP_CONTROL_PORT = 0x1F50
SLEEP_STATUS_PORT = 0x1F51
RESET_PORT = 0x1F52
RESET_VALUE = 0x01
# The sleep control register's fields (ACPI 6.0, 4.8.3.7) and the sleep status bit.
SLP_EN = 1 << 5
SLP_TYP_SHIFT = 2
SLP_TYP_MASK = 0x7 << SLP_TYP_SHIFT
WAK_STS = 1 << 7
S5_SLEEP_TYPE = 5  # \_S5's first element: the SLP_TYP a guest writes to power off
POWEROFF_VALUE = SLP_EN | S5_SLEEP_TYPE << SLP_TYP_SHIFT  # what ACPICA writes for S5: 0x34

OEM_ID = b"PYXEN "
OEM_TABLE_ID = b"PYXEN   "
OEM_REVISION = 1
CREATOR_ID = b"PYXN"
CREATOR_REVISION = 1

HEADER_LENGTH = 36
RSDP_LENGTH = 36
RSDP_SIGNATURE = b"RSD PTR "
XSDT_REVISION = 1
FADT_REVISION, FADT_MINOR_REVISION, FADT_LENGTH = 6, 0, 276  # ACPI 6.0
MADT_REVISION = 4  # ACPI 6.0
DSDT_REVISION = 2  # 64-bit AML integers

FADT_RESET_REG_SUP = 1 << 10
FADT_HW_REDUCED_ACPI = 1 << 20
IAPC_NO_VGA = 1 << 2  # and no 8042 (its bit is clear): Linux probes neither
IAPC_NO_CMOS_RTC = 1 << 5

MADT_LOCAL_APIC = 0
MADT_LOCAL_X2APIC = 9
MADT_ENABLED = 1
MAX_XAPIC_ID = 254  # 255 is the broadcast ID: libacpi gives larger IDs x2APIC entries

GAS_SYSTEM_IO = 1
GAS_ACCESS_BYTE = 1

# The DSDT's AML, hand-encoded:  Name (\_S5, Package (4) { 5, 0, 0, 0 })
S5_AML = bytes([
    0x08, 0x5C, *b"_S5_",  # NameOp, root prefix, NameSeg
    0x12, 0x07, 0x04,      # PackageOp, PkgLength (7 bytes, itself included), NumElements
    0x0A, S5_SLEEP_TYPE,   # BytePrefix 5: SLP_TYPa
    0x00, 0x00, 0x00,      # ZeroOp x3: SLP_TYPb and two reserved
])

PowerRequest = Literal["poweroff", "reboot"]


@dataclass(frozen=True)
class AcpiTables:
    """The RSDP and every table, laid out for guest-physical address `base`."""

    base: int
    data: bytes
    addresses: dict[str, int]  # signature ("RSD PTR ", "XSDT", "FACP", "APIC", "DSDT") → gpa

    @property
    def rsdp(self) -> int:
        return self.addresses[RSDP_SIGNATURE.decode()]


def power_request(port: int, value: int) -> PowerRequest | None:
    """What a guest's write of `value` to I/O port `port` asks of the platform: "poweroff"
    (SLP_EN with \\_S5's sleep type on the sleep control register), "reboot" (RESET_VALUE on
    the reset register) or None. The registers are 8 bits wide: only the low byte counts."""
    byte = value & 0xFF
    if (port == SLEEP_CONTROL_PORT and byte & SLP_EN
            and (byte & SLP_TYP_MASK) >> SLP_TYP_SHIFT == S5_SLEEP_TYPE):
        return "poweroff"
    if port == RESET_PORT and byte == RESET_VALUE:
        return "reboot"
    return None


def build_tables(nr_vcpus: int, base: int = ACPI_TABLES_GPA) -> AcpiTables:
    """The tables for a domain of `nr_vcpus` vCPUs at `base`: the RSDP first, then the XSDT,
    FADT, MADT and DSDT, each 16-byte aligned (as libacpi aligns them)."""
    if nr_vcpus < 1:
        raise ValueError(f"ACPI tables need at least one vCPU (got {nr_vcpus})")
    madt, dsdt = madt_table(nr_vcpus), dsdt_table()
    sizes = {"XSDT": HEADER_LENGTH + 8 * 2, "FACP": FADT_LENGTH, "APIC": len(madt),
             "DSDT": len(dsdt)}
    addresses, cursor = {RSDP_SIGNATURE.decode(): base}, RSDP_LENGTH
    for signature, size in sizes.items():
        cursor = (cursor + 15) & ~15
        addresses[signature] = base + cursor
        cursor += size
    data = bytearray(cursor)
    for signature, table in (("RSD PTR ", rsdp_struct(addresses["XSDT"])),
                             ("XSDT", xsdt_table([addresses["FACP"], addresses["APIC"]])),
                             ("FACP", fadt_table(addresses["DSDT"])),
                             ("APIC", madt), ("DSDT", dsdt)):
        offset = addresses[signature] - base
        data[offset : offset + len(table)] = table
    return AcpiTables(base, bytes(data), addresses)


def rsdp_struct(xsdt_address: int) -> bytes:
    """Revision 2 (ACPI 2.0+): no RSDT, the XSDT's address; both checksums."""
    rsdp = bytearray(struct.pack("<8sB6sBIIQB3x", RSDP_SIGNATURE, 0, OEM_ID, 2, 0,
                                 RSDP_LENGTH, xsdt_address, 0))
    rsdp[8] = -sum(rsdp[:20]) & 0xFF  # the ACPI 1.0 part
    rsdp[32] = -sum(rsdp) & 0xFF      # the whole structure
    return bytes(rsdp)


def xsdt_table(addresses: list[int]) -> bytes:
    return _table(b"XSDT", XSDT_REVISION, b"".join(struct.pack("<Q", a) for a in addresses))


def fadt_table(dsdt_address: int) -> bytes:
    """Hardware-reduced: every PM block, the FACS and the SCI are absent (zero); only the
    reset and sleep registers, and the DSDT (in DSDT and X_DSDT, as libacpi fills both)."""
    fadt = bytearray(FADT_LENGTH)
    struct.pack_into("<I", fadt, 40, dsdt_address)
    struct.pack_into("<H", fadt, 109, IAPC_NO_VGA | IAPC_NO_CMOS_RTC)
    struct.pack_into("<I", fadt, 112, FADT_HW_REDUCED_ACPI | FADT_RESET_REG_SUP)
    fadt[116:128] = _io_register(RESET_PORT)
    fadt[128] = RESET_VALUE
    fadt[131] = FADT_MINOR_REVISION
    struct.pack_into("<Q", fadt, 140, dsdt_address)
    fadt[244:256] = _io_register(SLEEP_CONTROL_PORT)
    fadt[256:268] = _io_register(SLEEP_STATUS_PORT)
    return _table(b"FACP", FADT_REVISION, bytes(fadt[HEADER_LENGTH:]))


def madt_table(nr_vcpus: int) -> bytes:
    """One enabled processor entry per vCPU, ACPI processor id = vCPU index: a Local APIC
    entry where the APIC ID fits in a byte, else a Local x2APIC entry (as libacpi). No
    PC-AT flag (no 8259 PICs) and no I/O APIC: a PVH domain has neither."""
    entries = []
    for index in range(nr_vcpus):
        apic = apic_id(index)
        if apic <= MAX_XAPIC_ID:
            entries.append(struct.pack("<BBBBI", MADT_LOCAL_APIC, 8, index, apic,
                                       MADT_ENABLED))
        else:
            entries.append(struct.pack("<BBHIII", MADT_LOCAL_X2APIC, 16, 0, apic,
                                       MADT_ENABLED, index))
    return _table(b"APIC", MADT_REVISION, struct.pack("<II", LAPIC_ADDRESS, 0)
                  + b"".join(entries))


def dsdt_table() -> bytes:
    return _table(b"DSDT", DSDT_REVISION, S5_AML)


def _io_register(port: int) -> bytes:
    """A Generic Address Structure for an 8-bit System I/O register."""
    return struct.pack("<BBBBQ", GAS_SYSTEM_IO, 8, 0, GAS_ACCESS_BYTE, port)


def _table(signature: bytes, revision: int, body: bytes) -> bytes:
    """A system description table: the common header, then `body`; bytes sum to zero."""
    table = bytearray(struct.pack("<4sIBB6s8sI4sI", signature, HEADER_LENGTH + len(body),
                                  revision, 0, OEM_ID, OEM_TABLE_ID, OEM_REVISION,
                                  CREATOR_ID, CREATOR_REVISION) + body)
    table[9] = -sum(table) & 0xFF
    return bytes(table)
