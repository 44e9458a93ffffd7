"""`console=hvc0`: kit guests print through the PV console ring (what `xl console` shows)
instead of console_io (the hypervisor's log, `xl dmesg`), as Linux picks its console.

Every test records which source each byte of the domain's console came from (console_io,
the ring, the debug port), so the ring is told apart from console_io."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator

import pytest

from guestkit import GUEST_TIMEOUT, Report, image, run_guest
from pyxen.abi.hvm import HVM_PARAM_CONSOLE_PFN
from pyxen.backends.console import ConsoleBackend
from pyxen.domain.domain import Domain, DomainConfig, Outcome
from pyxen.toolstack.embedded import run_image

HVC0 = "console=hvc0"


@pytest.fixture
def sources(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, bytearray]]:
    """What each console source delivered, for the domains of this test."""
    seen: dict[str, bytearray] = {}
    write = Domain.console_write

    def recording(self: Domain, data: bytes, source: str = "console_io") -> None:
        seen.setdefault(source, bytearray()).extend(data)
        write(self, data, source)

    monkeypatch.setattr(Domain, "console_write", recording)
    yield seen


def report_lines(data: bytes | bytearray) -> list[str]:
    return [line for line in bytes(data).decode(errors="replace").splitlines()
            if line.split(" ", 1)[0] in ("TEST", "INFO", "RESULT")]


@pytest.mark.parametrize("name", ["demo", "vcpu", "timer"])
def test_kit_guest_reports_through_the_ring(guests, accel, sources, name: str) -> None:
    # demo: the tour; vcpu moves its vcpu_info (shared_info's pvclock copy stops: the
    # ring's waits must not depend on it); timer counts its events, which the ring's
    # notifications must not disturb.
    outcome, report = run_guest(name, cmdline=HVC0, accel=accel, timeout=GUEST_TIMEOUT)
    report.assert_all_passed()
    assert outcome.result.outcome is Outcome.POWEROFF
    assert report_lines(sources.get("console_io", b"")) == []
    ring = report_lines(sources["ring"])
    assert ring == report_lines(outcome.console)  # every report line, in order
    assert ring[-1] == f"RESULT {len(report.passed)} 0"


def test_without_hvc0_the_report_stays_on_console_io(guests, sources) -> None:
    outcome, report = run_guest("demo", timeout=GUEST_TIMEOUT)
    report.assert_all_passed()
    assert report_lines(sources.get("ring", b"")) == []
    assert report_lines(sources["console_io"]) == report_lines(outcome.console)


def test_a_domain_without_a_ring_keeps_console_io(guests, sources) -> None:
    def no_ring(domain: Domain) -> None:
        domain.hvm_params[HVM_PARAM_CONSOLE_PFN] = 0  # as a domain xl gave no console

    outcome = run_image(image("demo"), DomainConfig(name="noring", cmdline=HVC0),
                        timeout=GUEST_TIMEOUT, prepare=no_ring)
    Report.parse(outcome.console).assert_all_passed()
    assert b"hvc0: no console ring" in sources["console_io"]
    assert report_lines(sources["console_io"]) == report_lines(outcome.console)
    assert not sources.get("ring")


def test_an_event_channel_reset_moves_the_console_to_console_io(guests, sources) -> None:
    # The evtchn guest ends with EVTCHNOP_reset(self), which closes the ring's port too:
    # the ring is drained first, the rest comes through console_io, nothing is lost.
    outcome, report = run_guest("evtchn", cmdline=HVC0, timeout=GUEST_TIMEOUT)
    report.assert_all_passed()
    ring, io = report_lines(sources["ring"]), report_lines(sources["console_io"])
    assert ring and io
    assert ring + io == report_lines(outcome.console)
    assert b"hvc0: event channels were reset" in sources["console_io"]
    assert io[-1].startswith("RESULT")


def test_a_back_end_that_stops_consuming_costs_one_bounded_wait(
        guests, sources, monkeypatch: pytest.MonkeyPatch) -> None:
    # No notification is served: the ring fills (hvm_param prints more than its 2 KiB),
    # the guest waits its bound, says so on console_io and goes on there; what it left in
    # the ring (whole lines: a line is never split between the two) is printed when the
    # domain goes.
    monkeypatch.setattr(ConsoleBackend, "kick", lambda self: None)
    outcome, report = run_guest("hvm_param", cmdline=HVC0, timeout=GUEST_TIMEOUT)
    report.assert_all_passed()
    assert b"hvc0: the back end took nothing" in sources["console_io"]
    assert 1024 < len(sources["ring"]) <= 2048 and sources["ring"].endswith(b"\n")
    ring, io = report_lines(sources["ring"]), report_lines(sources["console_io"])
    assert ring and io and io[-1].startswith("RESULT")
    assert sorted(ring + io) == sorted(report_lines(outcome.console))


def test_interactive_echo_over_the_ring(guests) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "pyxen.cli", "run", str(image("console_ring")), "--timeout",
         "120", "--cmdline", f"{HVC0} interactive=1 wait_s=100"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = proc.communicate(b"hello ring\nsecond\b\b\b\b\b\bline two\r\nquit\n",
                                timeout=180)
    assert proc.returncode == 0, err
    assert b"echo: hello ring\n" in out and b"echo: line two\n" in out
    report = Report.parse(out)
    report.assert_all_passed()
    assert "console_ring.interactive_quit" in report.passed
    assert report.value("interactive_lines") == "2"
