"""Live migration's pre-copy (pyxen.migration.live) between two domains of one process, over a
socket pair: the counter guest keeps counting while its memory goes across in rounds, then
stops briefly; the receiving domain, built from the stream alone, carries on with the
guest's own checks of time, ticks and memory passing."""

from __future__ import annotations

import socket
import threading

from guestkit import Report
from migration.test_pause import moving, read_u64, symbol
from migration.test_save_restore import Console, counter, progress
from pyxen.domain.domain import Outcome
from pyxen.hv import hypercall_table
from pyxen.migration.live import STALL_ROUNDS, finish, precopy
from pyxen.migration.restore import restore_domain
from pyxen.toolstack.accel import machine_factory


def test_a_running_domain_moves_and_carries_on(guests) -> None:
    first, second = Console(), Console()
    source = counter("soft", first, seconds=8)
    count_at = symbol("counter", "count")
    sending, receiving = socket.socketpair()
    restored: list[object] = []

    def receive() -> None:
        with receiving.makefile("rb") as src:
            restored.append(restore_domain(src, machine_factory("soft")[0], hypercall_table(),
                                           second, ack=lambda: receiving.send(b"A")).domain)

    receiver = threading.Thread(target=receive)
    try:
        source.start()
        moving(source, count_at)
        receiver.start()
        with sending.makefile("wb") as out:
            # a downtime no round can promise: rounds go on until the dirty set stalls
            writer, done = precopy(source, out, lambda: sending.recv(1), downtime_ms=1e-6)
            counted = read_u64(source, count_at)  # paused now
            finish(writer, source, done)
        sending.close()
        receiver.join(120)
    finally:
        source.close()
    assert restored, "the receiver built no domain"
    target = restored[0]
    try:
        assert read_u64(target, count_at) == counted
        target.start()
        assert target.wait(120).outcome is Outcome.POWEROFF
        assert read_u64(target, count_at) > counted
    finally:
        target.close()
    # The first round sent every frame, the later ones what the guest wrote meanwhile.
    assert len(done.rounds) > STALL_ROUNDS
    assert done.rounds[0].pages > 16000  # all of its 64 MiB
    assert all(r.pages < done.rounds[0].pages for r in done.rounds[1:])
    report = Report.parse(first.data + second.data)
    report.assert_all_passed()
    assert "counter.memory_intact" in report.passed
    assert progress(second.text())
