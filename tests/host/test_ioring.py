"""A request/response ring as Xen's io/ring.h defines it, between two guests in two domain
processes under a real `pyxen daemon` (guests/ioring.c): the front grants the ring page and
leaves an event channel unbound, publishes both in the store as blkfront does, the back maps
and binds; 100 000 requests go through with io/ring.h's notification rules, each answered
and checked; the front cannot take its page back while the back maps it, and can once the
back has unmapped; the back's close leaves the front's port unbound."""

from __future__ import annotations

from host.hostkit import Daemon, run_pair

REQUESTS = 100_000


def test_a_front_and_a_back_end_share_an_io_ring(daemon: Daemon) -> None:
    report_f, report_b = run_pair(daemon, "ioring", ("front", f"role=front requests={REQUESTS}"),
                                  ("back", f"role=back requests={REQUESTS}"))
    assert {"ioring.publish", "ioring.connected", "ioring.end_access_refused_while_mapped",
            "ioring.responses", "ioring.back_closed", "ioring.end_access",
            "ioring.peer_close_unbinds"} <= set(report_f.passed)
    assert {"ioring.frontend_nodes", "ioring.bind", "ioring.map", "ioring.requests",
            "ioring.front_closing", "ioring.unmap", "ioring.close",
            "ioring.closed"} <= set(report_b.passed)
    for report in (report_f, report_b):
        assert int(report.value("requests")) == REQUESTS
        assert int(report.value("ring_size")) == 128
    # Notifications only when the other side asked (io/ring.h's event indices): far fewer
    # than one per request, and at least the first push each way (SHARED_RING_INIT sets
    # req_event and rsp_event to 1).
    sent = int(report_f.value("notifies_sent")) + int(report_b.value("notifies_sent"))
    assert 2 <= sent < REQUESTS
