"""Xen's pvclock arithmetic: the (mul, shift) pyxen publishes converts TSC ticks to ns."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from pyxen.abi.xen import vcpu_time_info
from pyxen.hv.time import TscCalibration, scale_delta, time_scale, write_time_info


@given(khz=st.integers(100_000, 10_000_000), ticks=st.integers(0, 1 << 40))
def test_scale_converts_ticks_to_nanoseconds(khz: int, ticks: int) -> None:
    mul, shift = time_scale(khz * 1000)
    assert 0 < mul < 1 << 32 and -32 < shift < 32
    exact = ticks * 1_000_000 // khz
    assert abs(scale_delta(ticks, mul, shift) - exact) <= exact * 1e-8 + 2


def test_time_info_is_published_with_an_even_version() -> None:
    info = vcpu_time_info()
    cal = TscCalibration(tsc=1_000_000, system_time=500, tsc_khz=2_000_000)
    write_time_info(info, cal, system_time=1_500)
    assert info.version % 2 == 0 and info.version > 0
    assert info.system_time == 1_500
    assert info.tsc_timestamp == 1_000_000 + 1_000 * 2  # 1000 ns at 2 GHz
    ns = scale_delta(4_000_000, info.tsc_to_system_mul, info.tsc_shift)
    assert abs(ns - 2_000_000) <= 1  # 4 M ticks at 2 GHz = 2 ms
