"""Save and restore of a running domain, in one process (pyxen.migration.save/restore): the
counter guest is stopped mid-count, written to a stream, destroyed, and built again from the
stream alone; it must carry on from where it was, its own checks of time, timer ticks and a
1 MiB pattern passing to the end."""

from __future__ import annotations

import io
import re
import threading

import pytest

from guestkit import Report, image
from migration.test_pause import moving, read_u64, symbol
from pyxen.domain.builder import build_domain
from pyxen.domain.domain import Domain, DomainConfig, Outcome
from pyxen.hv import hypercall_table
from pyxen.migration.restore import restore_domain
from pyxen.migration.save import SaveError, save_domain
from pyxen.migration.stream import StreamError
from pyxen.toolstack.accel import machine_factory


class Console:
    def __init__(self) -> None:
        self._data = bytearray()
        self.lock = threading.Lock()

    def __call__(self, data: bytes) -> None:
        with self.lock:
            self._data += data

    @property
    def data(self) -> bytes:
        with self.lock:
            return bytes(self._data)

    def text(self) -> str:
        return self.data.decode(errors="replace")


def counter(accel: str, console: Console, seconds: int) -> Domain:
    config = DomainConfig(name="saved", cmdline=f"seconds={seconds} report_ms=250")
    return build_domain(image("counter"), config, machine_factory(accel)[0],
                        hypercall_table(), console)


def progress(text: str) -> list[tuple[int, int, int]]:
    return [(int(c), int(t), int(n)) for c, t, n in
            re.findall(r"counter_progress count=(\d+) ticks=(\d+) now=(\d+)", text)]


def test_a_restored_domain_carries_on(guests, accel: str) -> None:
    first = Console()
    domain = counter(accel, first, seconds=6)
    count_at = symbol("counter", "count")
    try:
        domain.start()
        moving(domain, count_at)
        while len(progress(first.text())) < 2:  # a few reports: timers and pattern in use
            moving(domain, count_at)
        assert domain.pause()
        counted = read_u64(domain, count_at)
        saved = io.BytesIO()
        stats = save_domain(domain, saved)
        assert stats.pages == domain.memory.nr_populated
        assert read_u64(domain, count_at) == counted  # still paused
    finally:
        domain.close()
    assert stats.bytes < 4 << 20  # 32 MiB of mostly zero pages, compressed

    second = Console()
    saved.seek(0)
    restored = restore_domain(saved, machine_factory(accel)[0], hypercall_table(), second).domain
    try:
        assert read_u64(restored, count_at) == counted
        restored.start()
        assert restored.wait(120).outcome is Outcome.POWEROFF
        assert read_u64(restored, count_at) > counted  # it counted on after the restore
    finally:
        restored.close()
    before, after = progress(first.text()), progress(second.text())
    assert after, second.text()
    # The count goes on from the saved value (the first line after the restore may be one
    # the guest had composed, but not yet written, when it was paused), and so do the ticks
    # and the time.
    assert before[-1][0] <= counted <= after[0][0]
    assert before[-1][1] <= after[0][1] and before[-1][2] <= after[0][2]
    report = Report.parse(first.data + second.data)  # the guest's whole output
    report.assert_all_passed()
    assert {"counter.time_monotonic", "counter.ticks_continue", "counter.tick_cadence",
            "counter.memory_intact"} <= set(report.passed)


def test_only_a_paused_domain_is_saved(guests) -> None:
    domain = counter("soft", Console(), seconds=30)
    try:
        with pytest.raises(SaveError, match="must be paused"):
            save_domain(domain, io.BytesIO())
    finally:
        domain.close()


def test_a_truncated_stream_builds_no_domain(guests) -> None:
    domain = counter("soft", Console(), seconds=30)
    try:
        domain.start()
        moving(domain, symbol("counter", "count"))
        assert domain.pause()
        saved = io.BytesIO()
        save_domain(domain, saved)
    finally:
        domain.close()
    data = saved.getvalue()
    for cut in (len(data) // 2, len(data) - 40):
        with pytest.raises(StreamError, match="ends"):
            restore_domain(io.BytesIO(data[:cut]), machine_factory("soft")[0],
                           hypercall_table(), Console())


def test_two_vcpus_in_a_locked_loop_are_saved_and_restored_mid_count(guests) -> None:
    """smp_atomic: both vCPUs hammer shared words with locked instructions; saved and
    restored while they do, every update must still be counted exactly once."""
    first, second = Console(), Console()
    config = DomainConfig(name="smp", vcpus=2, cmdline="rounds=400000")
    domain = build_domain(image("smp_atomic"), config, machine_factory("soft")[0],
                          hypercall_table(), first)
    counter_at = symbol("smp_atomic", "counter")
    try:
        domain.start()
        moving(domain, counter_at)
        assert domain.vcpus[1].online, "the second vCPU is not up yet"
        assert domain.pause()
        saved = io.BytesIO()
        save_domain(domain, saved)
    finally:
        domain.close()
    saved.seek(0)
    restored = restore_domain(saved, machine_factory("soft")[0], hypercall_table(),
                              second).domain
    try:
        restored.start()
        assert restored.wait(300).outcome is Outcome.POWEROFF
    finally:
        restored.close()
    report = Report.parse(first.data + second.data)
    report.assert_all_passed()
    assert len(report.passed) >= 5
