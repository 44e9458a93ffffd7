"""Linux KVM user API for x86-64: ioctl numbers, capabilities and struct layouts (ctypes).

Transcribed from <linux/kvm.h> and <asm/kvm.h>; tests/test_kvm_layouts.py checks every size
and offset here against the installed kernel headers.
"""

from __future__ import annotations

import ctypes as C

from pyxen.domain.backend import DescriptorTable, Regs, Segment, SpecialRegs

# --- ioctl number encoding (asm-generic/ioctl.h) --------------------------------------------
_IOC_NONE, _IOC_WRITE, _IOC_READ = 0, 1, 2
KVMIO = 0xAE


def _ioc(direction: int, nr: int, size: int) -> int:
    return (direction << 30) | (size << 16) | (KVMIO << 8) | nr


def _io(nr: int) -> int:
    return _ioc(_IOC_NONE, nr, 0)


def _iow(nr: int, size: int) -> int:
    return _ioc(_IOC_WRITE, nr, size)


def _ior(nr: int, size: int) -> int:
    return _ioc(_IOC_READ, nr, size)


def _iowr(nr: int, size: int) -> int:
    return _ioc(_IOC_READ | _IOC_WRITE, nr, size)


# --- structures -------------------------------------------------------------------------------
# The vCPU-backend interface's register structs are defined in KVM's layout on purpose (KVM
# needs no copy); they are the same types here.
kvm_regs = Regs
kvm_segment = Segment
kvm_dtable = DescriptorTable
kvm_sregs = SpecialRegs


class kvm_vcpu_events_exception(C.Structure):
    _fields_ = [("injected", C.c_uint8), ("nr", C.c_uint8), ("has_error_code", C.c_uint8),
                ("pending", C.c_uint8), ("error_code", C.c_uint32)]


class kvm_vcpu_events_interrupt(C.Structure):
    _fields_ = [("injected", C.c_uint8), ("nr", C.c_uint8), ("soft", C.c_uint8),
                ("shadow", C.c_uint8)]


class kvm_vcpu_events_nmi(C.Structure):
    _fields_ = [("injected", C.c_uint8), ("pending", C.c_uint8), ("masked", C.c_uint8),
                ("pad", C.c_uint8)]


class kvm_vcpu_events_smi(C.Structure):
    _fields_ = [("smm", C.c_uint8), ("pending", C.c_uint8), ("smm_inside_nmi", C.c_uint8),
                ("latched_init", C.c_uint8)]


class kvm_vcpu_events(C.Structure):
    """Events in flight (KVM_GET/SET_VCPU_EVENTS; also the sync-regs area's third part)."""

    _fields_ = [
        ("exception", kvm_vcpu_events_exception),
        ("interrupt", kvm_vcpu_events_interrupt),
        ("nmi", kvm_vcpu_events_nmi),
        ("sipi_vector", C.c_uint32),
        ("flags", C.c_uint32),
        ("smi", kvm_vcpu_events_smi),
        ("triple_fault", C.c_uint8),  # struct { __u8 pending; }
        ("reserved", C.c_uint8 * 26),
        ("exception_has_payload", C.c_uint8),
        ("exception_payload", C.c_uint64),
    ]


class kvm_xsave(C.Structure):
    """The XSAVE area in XSAVE's standard (non-compacted) format, legacy FXSAVE part first."""

    _fields_ = [("region", C.c_uint32 * 1024)]


class kvm_xcr(C.Structure):
    _fields_ = [("xcr", C.c_uint32), ("reserved", C.c_uint32), ("value", C.c_uint64)]


class kvm_xcrs(C.Structure):
    _fields_ = [("nr_xcrs", C.c_uint32), ("flags", C.c_uint32), ("xcrs", kvm_xcr * 16),
                ("padding", C.c_uint64 * 16)]


class kvm_debugregs(C.Structure):
    _fields_ = [("db", C.c_uint64 * 4), ("dr6", C.c_uint64), ("dr7", C.c_uint64),
                ("flags", C.c_uint64), ("reserved", C.c_uint64 * 9)]


class kvm_sync_regs(C.Structure):
    _fields_ = [("regs", kvm_regs), ("sregs", kvm_sregs), ("events", kvm_vcpu_events)]


class kvm_run_io(C.Structure):
    _fields_ = [
        ("direction", C.c_uint8),
        ("size", C.c_uint8),
        ("port", C.c_uint16),
        ("count", C.c_uint32),
        ("data_offset", C.c_uint64),
    ]


class kvm_run_mmio(C.Structure):
    _fields_ = [
        ("phys_addr", C.c_uint64),
        ("data", C.c_uint8 * 8),
        ("len", C.c_uint32),
        ("is_write", C.c_uint8),
    ]


class kvm_run_msr(C.Structure):
    _fields_ = [
        ("error", C.c_uint8),
        ("pad", C.c_uint8 * 7),
        ("reason", C.c_uint32),
        ("index", C.c_uint32),
        ("data", C.c_uint64),
    ]


class kvm_run_internal(C.Structure):
    _fields_ = [("suberror", C.c_uint32), ("ndata", C.c_uint32), ("data", C.c_uint64 * 16)]


class kvm_run_fail_entry(C.Structure):
    _fields_ = [("hardware_entry_failure_reason", C.c_uint64), ("cpu", C.c_uint32)]


class kvm_run_system_event(C.Structure):
    _fields_ = [("type", C.c_uint32), ("ndata", C.c_uint32), ("data", C.c_uint64 * 16)]


class kvm_xen_hcall(C.Structure):
    """A Xen hypercall KVM intercepted (KVM_XEN_HVM_CONFIG_INTERCEPT_HCALL)."""

    _fields_ = [
        ("longmode", C.c_uint32),
        ("cpl", C.c_uint32),
        ("input", C.c_uint64),
        ("result", C.c_uint64),  # what KVM puts in rax when it completes the call
        ("params", C.c_uint64 * 6),
    ]


class kvm_xen_exit_u(C.Union):
    _fields_ = [("hcall", kvm_xen_hcall)]


class kvm_xen_exit(C.Structure):
    _fields_ = [("type", C.c_uint32), ("u", kvm_xen_exit_u)]


class kvm_xen_hvm_config(C.Structure):
    _fields_ = [
        ("flags", C.c_uint32),
        ("msr", C.c_uint32),
        ("blob_addr_32", C.c_uint64),
        ("blob_addr_64", C.c_uint64),
        ("blob_size_32", C.c_uint8),
        ("blob_size_64", C.c_uint8),
        ("pad2", C.c_uint8 * 30),
    ]


class kvm_run_exit(C.Union):
    _fields_ = [
        ("io", kvm_run_io),
        ("xen", kvm_xen_exit),
        ("mmio", kvm_run_mmio),
        ("msr", kvm_run_msr),
        ("internal", kvm_run_internal),
        ("fail_entry", kvm_run_fail_entry),
        ("system_event", kvm_run_system_event),
        ("padding", C.c_uint8 * 256),
    ]


class kvm_run_s(C.Union):
    _fields_ = [("regs", kvm_sync_regs), ("padding", C.c_uint8 * 2048)]


class kvm_run(C.Structure):
    _fields_ = [
        ("request_interrupt_window", C.c_uint8),
        ("immediate_exit", C.c_uint8),
        ("padding1", C.c_uint8 * 6),
        ("exit_reason", C.c_uint32),
        ("ready_for_interrupt_injection", C.c_uint8),
        ("if_flag", C.c_uint8),
        ("flags", C.c_uint16),
        ("cr8", C.c_uint64),
        ("apic_base", C.c_uint64),
        ("exit", kvm_run_exit),
        ("kvm_valid_regs", C.c_uint64),
        ("kvm_dirty_regs", C.c_uint64),
        ("s", kvm_run_s),
    ]


class kvm_userspace_memory_region(C.Structure):
    _fields_ = [
        ("slot", C.c_uint32),
        ("flags", C.c_uint32),
        ("guest_phys_addr", C.c_uint64),
        ("memory_size", C.c_uint64),
        ("userspace_addr", C.c_uint64),
    ]


class kvm_cpuid_entry2(C.Structure):
    _fields_ = [
        ("function", C.c_uint32),
        ("index", C.c_uint32),
        ("flags", C.c_uint32),
        ("eax", C.c_uint32),
        ("ebx", C.c_uint32),
        ("ecx", C.c_uint32),
        ("edx", C.c_uint32),
        ("padding", C.c_uint32 * 3),
    ]


class kvm_cpuid2_header(C.Structure):
    _fields_ = [("nent", C.c_uint32), ("padding", C.c_uint32)]


def kvm_cpuid2(n: int) -> type[C.Structure]:
    """A kvm_cpuid2 with room for n entries (the kernel struct ends in a flexible array)."""

    class _Cpuid2(C.Structure):
        _fields_ = [
            ("nent", C.c_uint32),
            ("padding", C.c_uint32),
            ("entries", kvm_cpuid_entry2 * n),
        ]

    return _Cpuid2


class kvm_enable_cap(C.Structure):
    _fields_ = [
        ("cap", C.c_uint32),
        ("flags", C.c_uint32),
        ("args", C.c_uint64 * 4),
        ("pad", C.c_uint8 * 64),
    ]


class kvm_msr_filter_range(C.Structure):
    _fields_ = [
        ("flags", C.c_uint32),
        ("nmsrs", C.c_uint32),
        ("base", C.c_uint32),
        ("bitmap", C.c_void_p),
    ]


class kvm_msr_filter(C.Structure):
    _fields_ = [("flags", C.c_uint32), ("ranges", kvm_msr_filter_range * 16)]


class kvm_msr_entry(C.Structure):
    _fields_ = [("index", C.c_uint32), ("reserved", C.c_uint32), ("data", C.c_uint64)]


def kvm_msrs(n: int) -> type[C.Structure]:
    class _Msrs(C.Structure):
        _fields_ = [("nmsrs", C.c_uint32), ("pad", C.c_uint32), ("entries", kvm_msr_entry * n)]

    return _Msrs


class kvm_interrupt(C.Structure):
    _fields_ = [("irq", C.c_uint32)]


class kvm_msi(C.Structure):
    _fields_ = [
        ("address_lo", C.c_uint32),
        ("address_hi", C.c_uint32),
        ("data", C.c_uint32),
        ("flags", C.c_uint32),
        ("devid", C.c_uint32),
        ("pad", C.c_uint8 * 12),
    ]


class kvm_translation(C.Structure):
    _fields_ = [
        ("linear_address", C.c_uint64),
        ("physical_address", C.c_uint64),
        ("valid", C.c_uint8),
        ("writeable", C.c_uint8),
        ("usermode", C.c_uint8),
        ("pad", C.c_uint8 * 5),
    ]


class kvm_dirty_log(C.Structure):
    _fields_ = [("slot", C.c_uint32), ("padding1", C.c_uint32), ("dirty_bitmap", C.c_void_p)]


# --- ioctls -----------------------------------------------------------------------------------
KVM_GET_API_VERSION = _io(0x00)
KVM_CREATE_VM = _io(0x01)
KVM_CHECK_EXTENSION = _io(0x03)
KVM_GET_VCPU_MMAP_SIZE = _io(0x04)
KVM_GET_SUPPORTED_CPUID = _iowr(0x05, C.sizeof(kvm_cpuid2_header))
KVM_CREATE_VCPU = _io(0x41)
KVM_GET_DIRTY_LOG = _iow(0x42, C.sizeof(kvm_dirty_log))
KVM_SET_USER_MEMORY_REGION = _iow(0x46, C.sizeof(kvm_userspace_memory_region))
KVM_SET_TSS_ADDR = _io(0x47)
KVM_SET_IDENTITY_MAP_ADDR = _iow(0x48, 8)
KVM_CREATE_IRQCHIP = _io(0x60)
KVM_RUN = _io(0x80)
KVM_GET_REGS = _ior(0x81, C.sizeof(kvm_regs))
KVM_SET_REGS = _iow(0x82, C.sizeof(kvm_regs))
KVM_GET_SREGS = _ior(0x83, C.sizeof(kvm_sregs))
KVM_SET_SREGS = _iow(0x84, C.sizeof(kvm_sregs))
KVM_TRANSLATE = _iowr(0x85, C.sizeof(kvm_translation))
KVM_INTERRUPT = _iow(0x86, C.sizeof(kvm_interrupt))
KVM_GET_MSRS = _iowr(0x88, C.sizeof(kvm_msrs(0)))
KVM_SET_MSRS = _iow(0x89, C.sizeof(kvm_msrs(0)))
KVM_GET_VCPU_EVENTS = _ior(0x9F, C.sizeof(kvm_vcpu_events))
KVM_SET_VCPU_EVENTS = _iow(0xA0, C.sizeof(kvm_vcpu_events))
KVM_GET_DEBUGREGS = _ior(0xA1, C.sizeof(kvm_debugregs))
KVM_SET_DEBUGREGS = _iow(0xA2, C.sizeof(kvm_debugregs))
KVM_GET_XSAVE = _ior(0xA4, C.sizeof(kvm_xsave))
KVM_SET_XSAVE = _iow(0xA5, C.sizeof(kvm_xsave))
KVM_GET_XCRS = _ior(0xA6, C.sizeof(kvm_xcrs))
KVM_SET_XCRS = _iow(0xA7, C.sizeof(kvm_xcrs))
KVM_SET_CPUID2 = _iow(0x90, C.sizeof(kvm_cpuid2_header))
KVM_ENABLE_CAP = _iow(0xA3, C.sizeof(kvm_enable_cap))
KVM_SIGNAL_MSI = _iow(0xA5, C.sizeof(kvm_msi))
KVM_GET_TSC_KHZ = _io(0xA3)
KVM_X86_SET_MSR_FILTER = _iow(0xC6, C.sizeof(kvm_msr_filter))
KVM_XEN_HVM_CONFIG = _iow(0x7A, C.sizeof(kvm_xen_hvm_config))

# --- capabilities -------------------------------------------------------------------------------
KVM_CAP_IRQCHIP = 0
KVM_CAP_NR_MEMSLOTS = 10
KVM_CAP_XEN_HVM = 38  # the answer is a mask of KVM_XEN_HVM_CONFIG_* flags
KVM_CAP_SYNC_REGS = 74
KVM_CAP_READONLY_MEM = 81
KVM_CAP_IMMEDIATE_EXIT = 136
KVM_CAP_X86_USER_SPACE_MSR = 188
KVM_CAP_X86_MSR_FILTER = 189

KVM_SYNC_X86_REGS = 1 << 0
KVM_SYNC_X86_SREGS = 1 << 1
KVM_SYNC_X86_EVENTS = 1 << 2

# kvm_vcpu_events.flags: which optional parts KVM_SET_VCPU_EVENTS takes from the struct
KVM_VCPUEVENT_VALID_NMI_PENDING = 1 << 0
KVM_VCPUEVENT_VALID_SIPI_VECTOR = 1 << 1
KVM_VCPUEVENT_VALID_SHADOW = 1 << 2
KVM_VCPUEVENT_VALID_SMM = 1 << 3
KVM_X86_SHADOW_INT_MOV_SS = 1  # kvm_vcpu_events.interrupt.shadow
KVM_X86_SHADOW_INT_STI = 2

KVM_MSR_EXIT_REASON_INVAL = 1 << 0
KVM_MSR_EXIT_REASON_UNKNOWN = 1 << 1
KVM_MSR_EXIT_REASON_FILTER = 1 << 2
KVM_MSR_FILTER_READ = 1 << 0
KVM_MSR_FILTER_WRITE = 1 << 1
KVM_MSR_FILTER_DEFAULT_ALLOW = 0

KVM_MEM_LOG_DIRTY_PAGES = 1 << 0
KVM_MEM_READONLY = 1 << 1

# --- exit reasons -----------------------------------------------------------------------------
KVM_EXIT_UNKNOWN = 0
KVM_EXIT_EXCEPTION = 1
KVM_EXIT_IO = 2
KVM_EXIT_HYPERCALL = 3
KVM_EXIT_DEBUG = 4
KVM_EXIT_HLT = 5
KVM_EXIT_MMIO = 6
KVM_EXIT_IRQ_WINDOW_OPEN = 7
KVM_EXIT_SHUTDOWN = 8
KVM_EXIT_FAIL_ENTRY = 9
KVM_EXIT_INTR = 10
KVM_EXIT_INTERNAL_ERROR = 17
KVM_EXIT_SYSTEM_EVENT = 24
KVM_EXIT_X86_RDMSR = 29
KVM_EXIT_X86_WRMSR = 30
KVM_EXIT_XEN = 34
KVM_EXIT_XEN_HCALL = 1

# KVM_XEN_HVM_CONFIG flags (and the KVM_CAP_XEN_HVM answer's bits).
KVM_XEN_HVM_CONFIG_HYPERCALL_MSR = 1 << 0
KVM_XEN_HVM_CONFIG_INTERCEPT_HCALL = 1 << 1

KVM_EXIT_IO_IN = 0
KVM_EXIT_IO_OUT = 1
