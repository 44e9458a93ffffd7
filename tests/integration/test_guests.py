"""Every guest of the kit boots on pyxen, runs its tests, and powers off with all passing,
on each vCPU backend (the `accel` fixture).

The guests assert Xen 4.17's results from inside (good and bad input for every implemented
hypercall and sub-op); here the host side checks that they all passed and that the facts
they report (INFO lines) match what pyxen configured.
"""

from __future__ import annotations

import subprocess
import sys
import time
import uuid

import pytest

from guestkit import GUEST_TIMEOUT, image, run_guest
from pyxen.domain.domain import Outcome
from pyxen.hv import version as hv_version
from pyxen.toolstack.accel import machine_factory

KIT = ["demo", "demo32", "version", "console", "sched", "hvm_param", "memory", "vcpu",
       "multicall", "time", "ring3", "compat32", "pagetables", "unknown"]


@pytest.mark.parametrize("name", KIT)
def test_guest_passes_all_its_tests(guests, accel: str, name: str) -> None:
    outcome, report = run_guest(name, accel=accel)
    report.assert_all_passed()
    assert outcome.result.outcome is Outcome.POWEROFF, outcome.result


@pytest.mark.parametrize("name", ["version", "console", "hvm_param", "memory", "demo"])
def test_guest_passes_as_dom0(guests, accel: str, name: str) -> None:
    """The privileged paths: SIF_INITDOMAIN, XENFEAT_dom0, commandline, build_id, read."""
    outcome, report = run_guest(name, domid=0, privileged=True, accel=accel)
    report.assert_all_passed()
    assert outcome.result.outcome is Outcome.POWEROFF


def test_demo_reports_what_the_domain_was_given(guests, accel: str) -> None:
    before = time.time()
    outcome, report = run_guest("demo", cmdline="console=hvc0 hello", memory_mib=48,
                                accel=accel)
    assert report.value("cmdline") == "console=hvc0 hello"
    assert report.value("memmap") == f"{0:#x} {48 << 20:#x} 1"
    assert report.value("domid") == "1"
    assert report.value("dom0") == "0"
    assert report.value("xen_version") == "4.17"
    assert report.value("extraversion") == hv_version.EXTRAVERSION
    assert before - 1 <= int(report.value("wallclock")) <= time.time()
    assert "Goodbye from the demo guest." in report.console


def test_demo_sees_its_ramdisk_module(guests, accel: str) -> None:
    from pyxen.domain.builder import Module

    outcome, report = run_guest("demo", modules=[Module(b"initrd-contents-0123456789" * 100)],
                                accel=accel)
    assert report.value("modules") == "1"
    index, address, size, preview = report.value("module").split(maxsplit=3)
    assert (index, size) == ("0", str(26 * 100))
    assert int(address, 16) % 4096 == 0
    assert preview.startswith("initrd-contents")


def test_time_guest_agrees_with_the_host_clock(guests, accel: str) -> None:
    before = time.time()
    outcome, report = run_guest("time", accel=accel)
    report.assert_all_passed()
    sec, _, nsec = report.value("wallclock").partition(".")
    assert before - 0.5 <= int(sec) + int(nsec) / 1e9 <= time.time() + 0.5
    machine = machine_factory(accel)[0]([])
    try:
        machine.create_vcpu(0, 0xE8)
        backend_khz = machine.tsc_khz
    finally:
        machine.close()
    assert int(report.value("tsc_khz")) == backend_khz


def test_console_lines_reach_the_host_whole(guests, accel: str) -> None:
    outcome, report = run_guest("console", accel=accel)
    assert report.value("console_line") == "hello from CONSOLEIO_write"
    assert report.value("console_split") == "one line, 3 writes"
    assert len(report.value("console_long")) > 128
    # Xen's guest_console_write keeps a domU's printable bytes only: no escape sequence
    # reaches the host's terminal.
    assert report.value("console_clean") == "a[2Jbc\ttab"


def test_guest_handle_is_the_domains_uuid(guests, accel: str) -> None:
    handle = uuid.uuid4().bytes
    outcome, report = run_guest("version", handle=handle, accel=accel)
    report.assert_all_passed()
    assert report.value("guest_handle") == str(uuid.UUID(bytes=handle))


def test_compat_mode_output(guests, accel: str) -> None:
    outcome, report = run_guest("compat32", accel=accel)
    assert report.value("compat32_early") == "hello from 32-bit, paging off"
    assert report.value("compat32_compat_mode") == "hello from the compat code segment"


def test_pvguest_boots_and_powers_off_by_itself(guests, accel: str) -> None:
    """pvguest is host mode's long-running guest (tests/host/test_pvguest.py); with idle_s=1
    it also ends by itself under `pyxen run --xenstore`, after reading its name from its
    store and watching control/shutdown."""
    done = subprocess.run([sys.executable, "-m", "pyxen.cli", "run", str(image("pvguest")),
                           "--xenstore", "--name", "lone", "--cmdline", "idle_s=1",
                           "--accel", accel, "--timeout", str(GUEST_TIMEOUT)],
                          capture_output=True, text=True, timeout=GUEST_TIMEOUT + 60)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert "pvguest: domid 1 name lone" in lines
    assert "pvguest: watching control/shutdown (poweroff, halt, reboot)" in lines
    assert lines[-1] == "pvguest: idle for 1 s, shutting down (poweroff)"
