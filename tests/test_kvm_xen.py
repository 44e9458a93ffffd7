"""KVM's Xen hypercall intercept (pyxen.kvm.xen) and what `--accel` makes of vmcall guests."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from clayout import check_layout, compile_layouts
from pyxen.kvm import uapi as K
from pyxen.kvm import xen
from pyxen.toolstack import accel, run_cmd
from pyxen.x86.hypercall_scan import XEN_ELFNOTE_GUEST_OS
from x86.elfimage import elf_image, xen_note

LAYOUTS = [("struct kvm_xen_hvm_config", K.kvm_xen_hvm_config, {}),
           ("struct kvm_xen_exit", K.kvm_xen_exit, {})]
CONSTANTS = ["KVM_XEN_HVM_CONFIG", "KVM_CAP_XEN_HVM", "KVM_EXIT_XEN", "KVM_EXIT_XEN_HCALL",
             "KVM_XEN_HVM_CONFIG_INTERCEPT_HCALL", "KVM_XEN_HVM_CONFIG_HYPERCALL_MSR"]
NO_INTERCEPT = (False, "KVM_CAP_XEN_HVM is 0 (the host kernel's KVM has no Xen support)")


@pytest.fixture(scope="module")
def c_layouts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, int]:
    prints = " ".join(f'printf("{n} %lu\\n", (unsigned long){n});' for n in CONSTANTS)
    includes = ("#include <linux/kvm.h>\n__attribute__((constructor)) static void c(void) "
                f"{{ {prints} }}\n")
    return compile_layouts(tmp_path_factory.mktemp("kvmxen"), includes, LAYOUTS)


@pytest.mark.parametrize(("ctype", "cls", "renames"), LAYOUTS, ids=[x[0] for x in LAYOUTS])
def test_layouts_match_linux_headers(c_layouts, ctype, cls, renames) -> None:
    check_layout(c_layouts, ctype, cls, renames)


@pytest.mark.parametrize("name", CONSTANTS)
def test_constants_match_linux_headers(c_layouts, name: str) -> None:
    assert getattr(K, name) == c_layouts[name]


def test_hcall_result_sits_where_kvm_reads_it(c_layouts) -> None:
    exit_at = K.kvm_run.exit.offset
    hcall_at = exit_at + K.kvm_xen_exit.u.offset
    assert hcall_at + K.kvm_xen_hcall.result.offset == exit_at + 8 + 16  # type, pad; cpl, input


@pytest.mark.skipif(not os.path.exists("/dev/kvm"), reason="no /dev/kvm on this machine")
def test_detection_matches_the_capability_and_configures_only_where_offered() -> None:
    from pyxen.kvm.vm import KvmMachine

    intercepts, why = xen.host_intercepts_hypercalls()
    machine = KvmMachine([0x4000_0000])
    try:
        assert machine.xen_hypercalls == intercepts, why
        flags = xen.xen_hvm_flags(machine.kvm_fd)
        assert intercepts == bool(flags & K.KVM_XEN_HVM_CONFIG_INTERCEPT_HCALL)
        if not intercepts:
            assert "KVM_CAP_XEN_HVM" in why
    finally:
        machine.close()


# --- --accel with a guest that issues vmcall ---------------------------------------------------
@pytest.fixture
def images(tmp_path: Path) -> dict[str, Path]:
    vmcall = tmp_path / "linux-xsa466.elf"
    vmcall.write_bytes(elf_image(b"\xc3", xen_note(XEN_ELFNOTE_GUEST_OS, b"linux\0")))
    plain = tmp_path / "plain.elf"
    plain.write_bytes(elf_image(bytes.fromhex("b820000000e7e8c3")))
    return {"vmcall": vmcall, "plain": plain}


@pytest.fixture
def vmx_host(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """A host with a usable KVM on VMX/SVM and a usable software CPU; machines are stubs."""
    import pyxen.soft.machine as soft

    monkeypatch.setattr(accel, "kvm_status", lambda: (True, "ok"))
    monkeypatch.setattr(accel, "hardware_virtualization", lambda *_: True)
    monkeypatch.setattr(soft, "soft_usable", lambda: (True, "ok"))
    monkeypatch.setattr(accel, "kvm_machine", lambda _msrs: "kvm machine")
    monkeypatch.setattr(accel, "soft_machine", lambda _msrs: "soft machine")
    monkeypatch.setattr(xen, "host_intercepts_hypercalls", lambda: NO_INTERCEPT)
    return monkeypatch


def test_auto_does_not_pick_kvm_for_a_vmcall_guest_it_cannot_intercept(vmx_host, images) -> None:
    _, chosen, why = accel.machine_factory("auto", images["vmcall"])
    assert chosen == "soft"
    assert "linux-xsa466.elf" in why and "vmcall" in why and "KVM_CAP_XEN_HVM is 0" in why


def test_auto_still_picks_kvm_for_guests_that_call_the_page(vmx_host, images) -> None:
    assert accel.machine_factory("auto", images["plain"])[1] == "kvm"
    assert accel.machine_factory("auto")[1] == "kvm"  # no image: nothing to judge


def test_auto_picks_kvm_for_a_vmcall_guest_where_kvm_intercepts(vmx_host, images) -> None:
    vmx_host.setattr(xen, "host_intercepts_hypercalls", lambda: (True, "ok"))
    assert accel.machine_factory("auto", images["vmcall"])[1] == "kvm"


def test_auto_says_why_on_stderr(vmx_host, images, capsys: pytest.CaptureFixture[str]) -> None:
    factory = run_cmd.select_machine("auto", str(images["vmcall"]))
    assert factory([]) == "soft machine"
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("pyxen: accel soft (KVM cannot take")


def test_explicit_kvm_warns_but_runs(vmx_host, images, capsys: pytest.CaptureFixture[str]) -> None:
    factory = run_cmd.select_machine("kvm", str(images["vmcall"]))
    assert factory([]) == "kvm machine"
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("pyxen: warning: linux-xsa466.elf")
    assert "--accel soft" in err[0]


def test_explicit_kvm_is_quiet_for_other_guests(vmx_host, images,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    assert run_cmd.select_machine("kvm", str(images["plain"]))([]) == "kvm machine"
    assert capsys.readouterr().err == ""
