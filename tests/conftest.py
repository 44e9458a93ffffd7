"""Shared fixtures: the guest kit is built once per session; guests boot on every vCPU
backend this machine has (KVM and/or the software CPU), so that a feature cannot work on one
and silently break on the other."""

from __future__ import annotations

import pytest

from guestkit import build_guests
from pyxen.toolstack.accel import available_accels

ACCELS = ["kvm", "soft"]
AVAILABLE = available_accels()


@pytest.fixture(scope="session")
def guests() -> None:
    """The guest kit, built (make -C guests)."""
    if not AVAILABLE:
        pytest.skip("no vCPU backend here: neither /dev/kvm nor the Unicorn engine is usable")
    build_guests()


@pytest.fixture(params=ACCELS)
def accel(request: pytest.FixtureRequest) -> str:
    """Each vCPU backend in turn (skipped where this machine cannot run it)."""
    if request.param not in AVAILABLE:
        pytest.skip(f"the {request.param} backend is not usable on this machine")
    return request.param
