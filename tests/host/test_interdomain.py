"""Inter-domain event channels between two guests in two domain processes under a real
`pyxen daemon` (guests/interdomain.c, roles a and b): A leaves a port unbound for B, B binds
it through the daemon-made link, they ping-pong, B closes (A's end becomes unbound), B
leaves a port for A, A binds it, and when A's domain is destroyed B's end becomes unbound.
Each guest checks what Xen's EVTCHNOP_* answer at every step and reports it."""

from __future__ import annotations

from guestkit import Report
from host.hostkit import Daemon, console_log, wait_for
from pyxen.xenstore.client import Client

ROUNDS = 50


def finished(daemon: Daemon, name: str) -> Report | None:
    report = Report.parse(console_log(daemon, name))
    return report if report.result is not None else None


def introduce(daemon: Daemon, a: int, b: int) -> None:
    """What a toolstack would tell each guest: who its peer is."""
    with Client(str(daemon.xenstore), timeout=60) as xs:
        xs.write(f"/local/domain/{a}/data/peer", str(b))
        xs.write(f"/local/domain/{b}/data/peer", str(a))


def test_two_guests_bind_signal_close_and_outlive_each_other(daemon: Daemon) -> None:
    a = daemon.create("a", "interdomain", f"role=a rounds={ROUNDS} console=hvc0")
    b = daemon.create("b", "interdomain", f"role=b rounds={ROUNDS} console=hvc0")
    assert a > 0 and b > 0
    introduce(daemon, a, b)
    report_a = wait_for("A to finish", lambda: finished(daemon, "a"), timeout=600)
    report_b = wait_for("B to finish", lambda: finished(daemon, "b"), timeout=600)
    report_a.assert_all_passed()
    report_b.assert_all_passed()
    assert "interdomain.echo_rounds" in report_a.passed
    assert "interdomain.peer_destroyed_unbinds" in report_b.passed
    assert int(report_b.value("pingpong_rounds")) == ROUNDS
