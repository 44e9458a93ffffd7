"""xen/hvm/hvm_vcpu.h: the register state VCPUOP_initialise gives an HVM vCPU."""

from __future__ import annotations

import ctypes as C

VCPU_HVM_MODE_32B = 0
VCPU_HVM_MODE_64B = 1


class vcpu_hvm_x86_32(C.Structure):
    _fields_ = [
        *[(r, C.c_uint32) for r in ["eax", "ecx", "edx", "ebx", "esp", "ebp", "esi", "edi", "eip", "eflags"]],
        ("cr0", C.c_uint32), ("cr3", C.c_uint32), ("cr4", C.c_uint32), ("pad1", C.c_uint32),
        ("efer", C.c_uint64),
        *[(f"{s}_base", C.c_uint32) for s in ("cs", "ds", "ss", "es", "tr")],
        *[(f"{s}_limit", C.c_uint32) for s in ("cs", "ds", "ss", "es", "tr")],
        *[(f"{s}_ar", C.c_uint16) for s in ("cs", "ds", "ss", "es", "tr")],
        ("pad2", C.c_uint16 * 3),
    ]


class vcpu_hvm_x86_64(C.Structure):
    _fields_ = [
        (r, C.c_uint64)
        for r in ["rax", "rcx", "rdx", "rbx", "rsp", "rbp", "rsi", "rdi", "rip", "rflags", "cr0", "cr3", "cr4", "efer"]
    ]


class vcpu_hvm_regs(C.Union):
    _fields_ = [("x86_32", vcpu_hvm_x86_32), ("x86_64", vcpu_hvm_x86_64)]


class vcpu_hvm_context(C.Structure):
    _fields_ = [("mode", C.c_uint32), ("pad", C.c_uint32), ("cpu_regs", vcpu_hvm_regs)]
