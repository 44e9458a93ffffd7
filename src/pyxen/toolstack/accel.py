"""Choosing the vCPU backend: `--accel kvm|soft|auto`.

`auto` takes KVM only where it runs guest code on the hardware: /dev/kvm must be usable
*and* the CPU must have VMX or SVM. Without them a KVM may still exist (kvm_pvm, a
software, page-table based KVM for nested clouds) but it emulates guest ring-0 code at
about 2 M instructions/s, two orders of magnitude slower than the software CPU.

Nor does `auto` take KVM for a guest that makes its hypercalls with `vmcall`/`vmmcall`
(Linux since XSA-466) when the host's KVM cannot hand those to pyxen
(KVM_XEN_HVM_CONFIG_INTERCEPT_HCALL): there the guest would stop at its first hypercall.
`--accel kvm` still runs such a guest, with a warning.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from pyxen.domain.backend import MachineBackend

ACCELS = ("auto", "kvm", "soft")
MachineFactory = Callable[[list[int]], MachineBackend]


def kvm_machine(msr_exits: list[int]) -> MachineBackend:
    from pyxen.kvm.vm import KvmMachine

    return KvmMachine(msr_exits)


def soft_machine(msr_exits: list[int]) -> MachineBackend:
    from pyxen.soft.machine import SoftMachine

    return SoftMachine(msr_exits)


def hardware_virtualization(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool:
    """Whether the CPU flags include vmx (Intel VT-x) or svm (AMD-V)."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return False
    for line in text.splitlines():
        if line.startswith("flags"):
            flags = set(line.partition(":")[2].split())
            return bool(flags & {"vmx", "svm"})
    return False


def kvm_status() -> tuple[bool, str]:
    """(usable, why not): /dev/kvm usable with the capabilities pyxen needs."""
    from pyxen.kvm.vm import kvm_usable

    try:
        return kvm_usable()
    except OSError as e:  # e.g. /dev/kvm is something that is not KVM
        return False, f"/dev/kvm: {e}"


def kvm_hypercall_gap(image: str | Path | None) -> str | None:
    """Why KVM here cannot run `image`'s hypercalls (it issues vmcall/vmmcall and this KVM
    cannot intercept them), or None when nothing stands in the way."""
    if image is None:
        return None
    from pyxen.x86.hypercall_scan import vmcall_evidence

    evidence = vmcall_evidence(image)
    if evidence is None:
        return None
    from pyxen.kvm.xen import host_intercepts_hypercalls

    intercepts, why = host_intercepts_hypercalls()
    return None if intercepts else f"{Path(image).name}: {evidence}, and {why}"


def kvm_warning(image: str | Path | None) -> str | None:
    """The warning for an explicit `--accel kvm` with an image KVM here cannot serve."""
    gap = kvm_hypercall_gap(image)
    return None if gap is None else f"{gap}: its first vmcall/vmmcall will not reach pyxen " \
                                    "(use --accel soft)"


def machine_factory(accel: str, image: str | Path | None = None
                    ) -> tuple[MachineFactory, str, str]:
    """(factory, backend name, why it was chosen) for --accel ACCEL; with `auto`, `image`
    (the guest kernel) may rule KVM out."""
    if accel == "kvm":
        return kvm_machine, "kvm", "requested"
    if accel == "soft":
        return soft_machine, "soft", "requested"
    if accel != "auto":
        raise ValueError(f"unknown accelerator {accel!r} (choose from {', '.join(ACCELS)})")
    usable, why = kvm_status()
    from pyxen.soft.machine import soft_usable

    if usable and hardware_virtualization():
        gap = kvm_hypercall_gap(image)
        if gap is None:
            return kvm_machine, "kvm", "/dev/kvm with hardware virtualization"
        if soft_usable()[0]:
            return soft_machine, "soft", f"KVM cannot take this guest's hypercalls: {gap}"
        return kvm_machine, "kvm", f"the software CPU is unusable, though {gap}"
    soft_ok, soft_why = soft_usable()
    if not soft_ok and usable:  # a slow KVM still beats no backend at all
        return kvm_machine, "kvm", f"no vmx/svm, but the software CPU is unusable: {soft_why}"
    if not usable:
        return soft_machine, "soft", f"KVM unusable: {why}"
    return soft_machine, "soft", "no vmx/svm in /proc/cpuinfo: this KVM would emulate guest ring 0"


def available_accels() -> list[str]:
    """The backends that can run guests on this machine (for tests and benchmarks)."""
    names = []
    if kvm_status()[0]:
        names.append("kvm")
    from pyxen.soft.machine import soft_usable

    if soft_usable()[0]:
        names.append("soft")
    return names
