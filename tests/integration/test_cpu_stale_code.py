"""The cpu_stale_code kit guest: code the guest ran and then unmapped must not make its next
page fault a double fault (what stopped Debian's Linux at its first #PF on the software CPU).

On the software CPU, removing an engine hook makes Unicorn re-translate the addresses that
hook saw; one no longer mapped page-faults inside Unicorn, and QEMU keeps that fault as "in
flight" (and in CR2) unless pyxen restores the state around the call (SoftVcpu._invalidating).
"""

from __future__ import annotations

import pytest

from guestkit import run_guest

CHECKS = ["first_pf", "second_pf"]


@pytest.fixture(scope="module")
def reports() -> dict:
    return {}


@pytest.mark.parametrize("check", CHECKS)
def test_cpu_stale_code(guests, accel: str, check: str, reports: dict) -> None:
    if accel not in reports:
        outcome, report = run_guest("cpu_stale_code", accel=accel)
        reports[accel] = (outcome.result.outcome, report)
    outcome, report = reports[accel]
    full = f"cpu_stale_code.{check}"
    report.assert_check_passed(full, outcome)
