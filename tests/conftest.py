"""Shared fixtures: the guest kit is built once per session; KVM must be present."""

from __future__ import annotations

import os

import pytest

from guestkit import build_guests


@pytest.fixture(scope="session")
def guests() -> None:
    """The guest kit, built (make -C guests)."""
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        pytest.skip("/dev/kvm is not available to this user: guests cannot boot")
    build_guests()
