"""Does a guest image make Xen hypercalls with `vmcall`/`vmmcall`? (for `--accel auto`)

A guest that calls the hypercall page runs on any backend: pyxen fills the page with
port-I/O stubs. A guest that issues `vmcall` (0f 01 c1) or `vmmcall` (0f 01 d9) itself needs
a backend that turns those into hypercalls: the software CPU does, KVM only where the host
offers KVM_XEN_HVM_CONFIG_INTERCEPT_HCALL. Two kinds of evidence, strongest first:

- Linux says so in its ELF notes: it has a Xen GUEST_OS note "linux", and since the XSA-466
  fixes ("x86/xen: remove hypercall page") no XEN_ELFNOTE_HYPERCALL_PAGE note; its
  xen_hypercall_setfunc then picks xen_hypercall_intel (vmcall) or _amd (vmmcall) by the
  CPUID vendor. Older Linux has the note and calls the page. A Linux image is judged by its
  notes alone: its KVM-guest code (kvm_hypercall*, `mov $nr,%eax; vmcall`) and VMware
  backdoor calls contain the same instructions without being Xen hypercalls.
- Any other image: its executable segments contain `mov $nr,%eax` with a Xen hypercall
  number right before `vmcall`/`vmmcall`, or Linux's pair of one-instruction stubs
  (`vmmcall; ret` then `vmcall; ret`, `ret` possibly `jmp` to a return thunk).
"""

from __future__ import annotations

import io
import re
import struct
from pathlib import Path

from elftools.common.exceptions import ELFError
from elftools.elf.elffile import ELFFile

XEN_ELFNOTE_HYPERCALL_PAGE = 2
XEN_ELFNOTE_GUEST_OS = 6
PF_X = 1

_MOV_EAX_THEN_CALL = re.compile(
    rb"\xb8[\x00-\x3f]\x00\x00\x00\x0f\x01[\xc1\xd9]", re.DOTALL)  # Xen: 0..41, 48..55
_RET = rb"(?:\xc3|\xe9....)"  # ret, or jmp __x86_return_thunk
_LINUX_STUB_PAIR = re.compile(
    rb"\x0f\x01\xd9" + _RET + rb".{0,16}?\x0f\x01\xc1" + _RET, re.DOTALL)


def xen_notes(elf: ELFFile) -> dict[int, bytes]:
    """The image's Xen ELF notes, type → descriptor (PT_NOTE segments and SHT_NOTE sections).
    Parsed by hand: pyelftools names Xen's note types after GNU's numbers."""
    notes: dict[int, bytes] = {}
    blobs = [seg.data() for seg in elf.iter_segments() if seg["p_type"] == "PT_NOTE"]
    blobs += [sec.data() for sec in elf.iter_sections() if sec["sh_type"] == "SHT_NOTE"]
    for blob in blobs:
        offset = 0
        while offset + 12 <= len(blob):
            namesz, descsz, ntype = struct.unpack_from("<III", blob, offset)
            name_at = offset + 12
            desc_at = name_at + ((namesz + 3) & ~3)
            end = desc_at + ((descsz + 3) & ~3)
            if end > len(blob):
                break
            if blob[name_at:name_at + namesz].rstrip(b"\0") == b"Xen":
                notes.setdefault(ntype, blob[desc_at:desc_at + descsz])
            offset = end
    return notes


def _executable_segments(elf: ELFFile) -> list[tuple[int, bytes]]:
    return [(seg["p_vaddr"], seg.data()) for seg in elf.iter_segments()
            if seg["p_type"] == "PT_LOAD" and seg["p_flags"] & PF_X]


def vmcall_evidence(path: str | Path) -> str | None:
    """Why the image at `path` issues vmcall/vmmcall as Xen hypercalls, or None if it does
    not seem to (or is not an ELF image pyxen can judge)."""
    from pyxen.domain.loader import read_kernel  # the x86 rules never need the loader else

    try:
        raw, _ = read_kernel(path)  # a bzImage or compressed kernel: the ELF inside
        elf = ELFFile(io.BytesIO(raw))
        notes = xen_notes(elf)
        if notes.get(XEN_ELFNOTE_GUEST_OS, b"").rstrip(b"\0") == b"linux":
            if XEN_ELFNOTE_HYPERCALL_PAGE in notes:
                return None
            return ("a Linux kernel without a Xen hypercall-page note (XSA-466 or later): "
                    "it makes hypercalls with vmcall/vmmcall")
        for vaddr, data in _executable_segments(elf):
            found = _MOV_EAX_THEN_CALL.search(data)
            if found:
                nr = data[found.start() + 1]
                insn = "vmcall" if data[found.end() - 1] == 0xC1 else "vmmcall"
                return (f"it issues {insn} with hypercall number {nr} in %eax "
                        f"(at {vaddr + found.start() + 5:#x})")
            found = _LINUX_STUB_PAIR.search(data)
            if found:
                return f"it has vmmcall/vmcall hypercall stubs (at {vaddr + found.start():#x})"
    except (OSError, ELFError, ValueError, struct.error):
        return None
    return None
