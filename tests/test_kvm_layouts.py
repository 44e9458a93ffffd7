"""pyxen.kvm's ctypes view of the KVM API must match the installed <linux/kvm.h>."""

from __future__ import annotations

import pytest

from clayout import check_layout, compile_layouts
from pyxen.kvm import uapi as K

LAYOUTS = [
    ("struct kvm_regs", K.kvm_regs, {}),
    ("struct kvm_segment", K.kvm_segment, {}),
    ("struct kvm_dtable", K.kvm_dtable, {}),
    ("struct kvm_sregs", K.kvm_sregs, {}),
    ("struct kvm_sync_regs", K.kvm_sync_regs, {}),
    ("struct kvm_run", K.kvm_run, {"exit": "io"}),
    ("struct kvm_userspace_memory_region", K.kvm_userspace_memory_region, {}),
    ("struct kvm_cpuid_entry2", K.kvm_cpuid_entry2, {}),
    ("struct kvm_enable_cap", K.kvm_enable_cap, {}),
    ("struct kvm_msr_filter_range", K.kvm_msr_filter_range, {}),
    ("struct kvm_msr_filter", K.kvm_msr_filter, {}),
    ("struct kvm_msr_entry", K.kvm_msr_entry, {}),
    ("struct kvm_interrupt", K.kvm_interrupt, {}),
    ("struct kvm_msi", K.kvm_msi, {}),
    ("struct kvm_translation", K.kvm_translation, {}),
]
IOCTLS = ["KVM_RUN", "KVM_CREATE_VM", "KVM_CREATE_VCPU", "KVM_SET_USER_MEMORY_REGION",
          "KVM_GET_SREGS", "KVM_SET_SREGS", "KVM_SET_REGS", "KVM_SET_CPUID2",
          "KVM_GET_SUPPORTED_CPUID", "KVM_ENABLE_CAP", "KVM_X86_SET_MSR_FILTER",
          "KVM_INTERRUPT", "KVM_GET_MSRS", "KVM_GET_TSC_KHZ", "KVM_SIGNAL_MSI"]


@pytest.fixture(scope="module")
def c_layouts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, int]:
    consts = "\n".join(f'static void print_{n}(void) {{ printf("{n} %lu\\n", (unsigned long){n}); }}'
                       for n in IOCTLS)
    calls = " ".join(f"print_{n}();" for n in IOCTLS)
    includes = f"#include <linux/kvm.h>\n{consts}\n__attribute__((constructor)) static void c(void) {{ {calls} }}"
    return compile_layouts(tmp_path_factory.mktemp("kvm"), includes, LAYOUTS)


@pytest.mark.parametrize(("ctype", "cls", "renames"), LAYOUTS, ids=[x[0] for x in LAYOUTS])
def test_layout_matches_linux_headers(c_layouts, ctype, cls, renames) -> None:
    check_layout(c_layouts, ctype, cls, renames)


@pytest.mark.parametrize("name", IOCTLS)
def test_ioctl_numbers_match(c_layouts, name: str) -> None:
    assert getattr(K, name) == c_layouts[name]
