"""Guest memory layout changes under running vCPUs (issue 10, item 7), on both backends.

guests/cpu_memory.c: vCPU 0 gives pages back and takes them again (decrease_reservation,
populate_physmap) and moves a grant frame (add_to_physmap), round after round, splitting
and merging the run of RAM that holds the kernel, while vCPUs 1 and 2 run code from pages
next to the changed ones and check their data and their own stores. Before the fix a
secondary died within seconds (its engine or KVM slot briefly had no RAM at all).
"""

from __future__ import annotations

from guestkit import GUEST_TIMEOUT, run_guest
from pyxen.domain.domain import Outcome

# kvm_pvm emulates guest ring 0 (~2 M instructions/s): fewer rounds there, the same checks.
ROUNDS = {"soft": 200, "kvm": 50}


def test_layout_changes_under_running_vcpus(guests, accel: str) -> None:
    outcome, report = run_guest("cpu_memory", cmdline=f"rounds={ROUNDS[accel]}", vcpus=3,
                                accel=accel, timeout=GUEST_TIMEOUT)
    assert outcome.result.outcome is Outcome.POWEROFF, (outcome.result, report.console[-2000:])
    report.assert_all_passed()
    assert report.value("rounds") == str(ROUNDS[accel])
    for cpu in (1, 2):
        assert f"cpu_memory.vcpu{cpu}_memory_intact" in report.passed
    sweeps = dict(v.split() for v in report.info["sweeps_vcpu"])
    assert set(sweeps) == {"1", "2"} and all(int(n) > 0 for n in sweeps.values())
