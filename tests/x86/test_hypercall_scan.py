"""Finding guests that make Xen hypercalls with vmcall/vmmcall (pyxen.x86.hypercall_scan)."""

from __future__ import annotations

from pathlib import Path

import pytest

from pyxen.x86.hypercall_scan import (
    XEN_ELFNOTE_GUEST_OS,
    XEN_ELFNOTE_HYPERCALL_PAGE,
    vmcall_evidence,
)

from .elfimage import elf_image, xen_note

PORT_IO_CALL = bytes.fromhex("b820000000" "e7e8" "c3")  # mov $32,%eax; out %eax,$0xe8; ret
KVM_HYPERCALL = bytes.fromhex("b805000000" "0f01c1" "c3")  # what Linux's KVM-guest code has
VMWARE_BACKDOOR = bytes.fromhex("b868584d56" "0f01c1")  # mov $'VMXh',%eax; vmcall
LINUX = xen_note(XEN_ELFNOTE_GUEST_OS, b"linux\0")
PAGE_NOTE = xen_note(XEN_ELFNOTE_HYPERCALL_PAGE, (0xFFFFFFFF81001000).to_bytes(8, "little"))


def write(tmp_path: Path, image: bytes, name: str = "guest.elf") -> Path:
    path = tmp_path / name
    path.write_bytes(image)
    return path


def test_linux_without_a_hypercall_page_note_uses_vmcall(tmp_path: Path) -> None:
    why = vmcall_evidence(write(tmp_path, elf_image(KVM_HYPERCALL, LINUX)))
    assert why is not None and "Linux" in why and "XSA-466" in why


def test_linux_with_a_hypercall_page_note_calls_the_page(tmp_path: Path) -> None:
    # Its KVM-guest vmcalls are not Xen hypercalls: the notes decide for Linux.
    image = elf_image(KVM_HYPERCALL + VMWARE_BACKDOOR, LINUX + PAGE_NOTE)
    assert vmcall_evidence(write(tmp_path, image)) is None


@pytest.mark.parametrize(("code", "insn", "nr"), [
    (bytes.fromhex("b81d000000" "0f01c1" "c3"), "vmcall", 29),  # sched_op
    (bytes.fromhex("b822000000" "0f01d9" "c3"), "vmmcall", 34),  # hvm_op
])
def test_mov_nr_then_vmcall_in_code_is_a_hypercall(tmp_path: Path, code: bytes, insn: str,
                                                   nr: int) -> None:
    why = vmcall_evidence(write(tmp_path, elf_image(PORT_IO_CALL + code)))
    assert why is not None and insn in why and f"number {nr}" in why
    assert f"{0x100000 + len(PORT_IO_CALL) + 5:#x}" in why  # where the instruction is


def test_linux_style_stub_pair_is_found(tmp_path: Path) -> None:
    # xen_hypercall_amd then xen_hypercall_intel, each ending in a jmp to the return thunk.
    stubs = bytes.fromhex("0f01d9" "e938e13f00" "0f1f840000000000" "0f01c1" "e928e13f00")
    why = vmcall_evidence(write(tmp_path, elf_image(PORT_IO_CALL + stubs)))
    assert why is not None and "stubs" in why


@pytest.mark.parametrize("code", [PORT_IO_CALL, VMWARE_BACKDOOR,
                                  bytes.fromhex("f30f01d9"),  # VMGEXIT (SEV-ES), not vmmcall
                                  bytes.fromhex("b840000000" "0f01c1")])  # 64: not Xen's
def test_images_without_xen_vmcalls_are_not_flagged(tmp_path: Path, code: bytes) -> None:
    assert vmcall_evidence(write(tmp_path, elf_image(code))) is None


def test_instructions_in_data_do_not_count(tmp_path: Path) -> None:
    data = bytes.fromhex("b81d000000" "0f01c1")
    assert vmcall_evidence(write(tmp_path, elf_image(PORT_IO_CALL, data=data))) is None


def test_what_is_not_an_elf_image_is_not_judged(tmp_path: Path) -> None:
    assert vmcall_evidence(write(tmp_path, b"MZ" + bytes(200))) is None
    assert vmcall_evidence(tmp_path / "missing.elf") is None


def test_synthetic_image_is_a_valid_pvh_image(tmp_path: Path) -> None:
    from pyxen.domain.loader import parse_pvh_image

    image = parse_pvh_image(write(tmp_path, elf_image(PORT_IO_CALL)), 1 << 20)
    assert image.entry == 0x100000
