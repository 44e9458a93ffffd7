"""Inter-domain event channels between two guests in two domain processes under a real
`pyxen daemon` (guests/interdomain.c, roles a and b): A leaves a port unbound for B, B binds
it through the daemon-made link, they ping-pong, B closes (A's end becomes unbound), B
leaves a port for A, A binds it, and when A's domain is destroyed B's end becomes unbound.
Each guest checks what Xen's EVTCHNOP_* answer at every step and reports it."""

from __future__ import annotations

from host.hostkit import Daemon, run_pair

ROUNDS = 50


def test_two_guests_bind_signal_close_and_outlive_each_other(daemon: Daemon) -> None:
    report_a, report_b = run_pair(daemon, "interdomain", ("a", f"role=a rounds={ROUNDS}"),
                                  ("b", f"role=b rounds={ROUNDS}"))
    assert "interdomain.echo_rounds" in report_a.passed
    assert "interdomain.peer_destroyed_unbinds" in report_b.passed
    assert int(report_b.value("pingpong_rounds")) == ROUNDS
