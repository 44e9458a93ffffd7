"""A libxenvchan-style ring between two guests in two domain processes under a real
`pyxen daemon` (guests/vchan.c): the server grants the ring pages and leaves an event
channel unbound for the client, the client maps the grants (or moves the data with
GNTTABOP_copy) and binds the channel, both stream data both ways at once -- the data work in
guest ring 3 -- and check every byte, then the client tries what Xen refuses (grants to
another domain, never granted, revoked, read-only written) and the server checks its grant
entries after each step. Each guest reports what it saw; the server's end (destruction) is
the client's last check."""

from __future__ import annotations

import pytest

from host.hostkit import Daemon, run_pair


# 256 MiB each way through libxenvchan's largest rings (2^20 bytes: 256 granted pages a
# ring, two grant-table frames), every byte checked: the client maps the grants (512 mapped
# frames), or moves every byte with GNTTABOP_copy; and libxenvchan's in-page rings (the
# default orders: left 1 KiB inside the shared page, right 16 KiB), mapped.
@pytest.mark.parametrize(("mode", "mib", "orders"), [
    ("map", 256, (20, 20)), ("copy", 256, (20, 20)), ("map", 4, (10, 14))],
    ids=["map-256MiB", "copy-256MiB", "map-4MiB-in-page-ring"])
def test_a_granted_ring_carries_every_byte_and_grants_stay_private(
        daemon: Daemon, mode: str, mib: int, orders: tuple[int, int]) -> None:
    left, right = orders
    report_s, report_c = run_pair(
        daemon, "vchan", ("server", f"role=server mib={mib} left_order={left} "
                                    f"right_order={right}"),
        ("client", f"role=client mib={mib} mode={mode}"), timeout=900)
    assert {"vchan.stream_c2s", "vchan.sent_s2c", "vchan.flags_clear_after_unmap",
            "vchan.end_access"} <= set(report_s.passed)
    assert {"vchan.stream_s2c", "vchan.sent_c2s", "vchan.map_ro_write_dropped",
            "vchan.map_after_revoke", "vchan.unmapped_reads_ones",
            "vchan.server_gone"} <= set(report_c.passed)
    for report in (report_s, report_c):
        assert int(report.value("stream_bytes")) == mib << 20
        assert report.value("check") == "full"
        assert (int(report.value("left_order")), int(report.value("right_order"))) == orders
    assert report_c.value("mode") == mode
