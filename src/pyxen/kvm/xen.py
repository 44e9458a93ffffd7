"""KVM's Xen support, used for one thing: hypercalls made with `vmcall`/`vmmcall`.

Linux since the XSA-466 fixes issues Xen hypercalls with `vmcall` (Intel CPUID vendor) or
`vmmcall` (AMD) instead of calling the hypercall page. Without help KVM treats those as KVM
hypercalls (and this project's kvm_pvm hosts hang the vCPU). A host kernel built with KVM's
Xen support offers KVM_CAP_XEN_HVM; with KVM_XEN_HVM_CONFIG_INTERCEPT_HCALL set, every
such instruction leaves KVM_RUN as KVM_EXIT_XEN (type HCALL) with Xen's registers, and the
next KVM_RUN puts `hcall.result` in rax and steps over the instruction.

pyxen asks for nothing else from KVM's Xen code: no hypercall MSR (msr = 0, so the MSR keeps
reaching pyxen through the MSR filter and the page keeps pyxen's port-I/O stubs), no
in-kernel shared_info, event channels or runstate.
"""

from __future__ import annotations

import os

from . import uapi as K
from .ioctl import KvmError, ioctl

DEV_KVM = "/dev/kvm"


def xen_hvm_flags(fd: int) -> int:
    """KVM_CAP_XEN_HVM: the KVM_XEN_HVM_CONFIG flags this KVM supports (0: no Xen support).
    `fd` may be /dev/kvm's or a VM's."""
    try:
        return max(ioctl(fd, K.KVM_CHECK_EXTENSION, K.KVM_CAP_XEN_HVM), 0)
    except KvmError:
        return 0


def can_intercept_hypercalls(fd: int) -> bool:
    return bool(xen_hvm_flags(fd) & K.KVM_XEN_HVM_CONFIG_INTERCEPT_HCALL)


def host_intercepts_hypercalls() -> tuple[bool, str]:
    """Whether this host's KVM can deliver vmcall/vmmcall to pyxen, and if not, why."""
    try:
        fd = os.open(DEV_KVM, os.O_RDWR | os.O_CLOEXEC)
    except OSError as e:
        return False, f"{DEV_KVM}: {e.strerror}"
    try:
        flags = xen_hvm_flags(fd)
    finally:
        os.close(fd)
    if not flags:
        return False, "KVM_CAP_XEN_HVM is 0 (the host kernel's KVM has no Xen support)"
    if not flags & K.KVM_XEN_HVM_CONFIG_INTERCEPT_HCALL:
        return False, f"KVM_CAP_XEN_HVM ({flags:#x}) lacks KVM_XEN_HVM_CONFIG_INTERCEPT_HCALL"
    return True, "KVM_XEN_HVM_CONFIG_INTERCEPT_HCALL"


def enable_hypercall_intercept(vm_fd: int) -> bool:
    """Route vmcall/vmmcall to user space as KVM_EXIT_XEN where this KVM can; whether it did."""
    if not can_intercept_hypercalls(vm_fd):
        return False
    config = K.kvm_xen_hvm_config(flags=K.KVM_XEN_HVM_CONFIG_INTERCEPT_HCALL, msr=0)
    ioctl(vm_fd, K.KVM_XEN_HVM_CONFIG, config)
    return True
