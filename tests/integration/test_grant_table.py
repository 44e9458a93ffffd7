"""Grant tables from inside a guest (guests/grant_table.c, v1 and v2) and from the backend
side: the guest grants a page to dom0, pyxen's GrantMapper maps it while the guest waits in
its console write, reads the guest's pattern from the real page, writes a reply, and unmaps
when the guest says so; the guest checks GTF_reading/GTF_writing, -EBUSY and the reply. The
guest also maps its own read-only grant read-only and writes to it (Xen drops the write)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from guestkit import GUEST_TIMEOUT, Report, image
from pyxen.abi import grant_table as G
from pyxen.domain.domain import DomainConfig, Outcome
from pyxen.hv.grant_table import GrantMap, GrantMapper
from pyxen.toolstack.accel import machine_factory
from pyxen.toolstack.embedded import run_image


class Backend:
    """Plays dom0's backend: reacts to the guest's INFO lines as they are written."""

    def __init__(self, mapper_domid: int = 0) -> None:
        self.mapper = GrantMapper(mapper_domid)
        self.domain = None
        self.pending = bytearray()
        self.seen: list[bytes] = []
        self.flags_while_mapped: list[int] = []
        self.mapped: GrantMap | None = None
        self.maps = 0

    def prepare(self, domain) -> None:  # type: ignore[no-untyped-def]
        self.domain = domain

    def console(self, data: bytes) -> None:
        self.pending.extend(data)
        while b"\n" in self.pending:
            line, _, rest = bytes(self.pending).partition(b"\n")
            self.pending[:] = rest
            words = line.decode(errors="replace").split()
            if words[:2] == ["INFO", "backend_ref"]:
                assert self.domain is not None
                self.mapped = self.mapper.map(self.domain, int(words[2]))
                self.maps += 1
                self.seen.append(bytes(self.mapped.page))
                gt = self.domain.grant_table
                self.flags_while_mapped.append(gt.status_word(int(words[2])))
                self.mapped.page[:13] = b"PYXEN-BACKEND"
            elif words[:2] == ["INFO", "backend_release"] and self.mapped is not None:
                self.mapper.unmap(self.mapped)
                self.mapped = None


def run(accel: str, cmdline: str, backend: Backend | None = None,
        **config: object) -> tuple[Outcome, Report]:
    cfg = DomainConfig(name="grant_table", cmdline=cmdline, **config)  # type: ignore[arg-type]
    result = run_image(image("grant_table"), cfg, timeout=GUEST_TIMEOUT,
                       machine_factory=machine_factory(accel)[0],
                       console=backend.console if backend else None,
                       prepare=backend.prepare if backend else None)
    return result.result.outcome, Report.parse(result.console)


@pytest.mark.parametrize("cmdline", ["", "version=2"])
def test_grant_table_guest(guests, accel: str, cmdline: str) -> None:
    outcome, report = run(accel, cmdline)
    report.assert_all_passed()
    assert outcome is Outcome.POWEROFF
    assert report.value("max_nr_frames") == "32"
    # GNTMAP_readonly: mapped read-only; the guest's writes there are dropped, not faulted
    assert {"gnttab.map_readonly_reads", "gnttab.map_readonly_write_no_fault",
            "gnttab.map_readonly_rmw_reads", "gnttab.map_readonly_write_dropped",
            "gnttab.unmap_readonly_flags"} <= set(report.passed)
    if cmdline:
        assert "gnttab.v2_copy" in report.passed and "gnttab.sub_page_after" in report.passed


def test_grant_table_guest_max_frames_from_config(guests, accel: str) -> None:
    outcome, report = run(accel, "", max_grant_frames=8)
    report.assert_all_passed()
    assert report.value("max_nr_frames") == "8"


@pytest.mark.parametrize("cmdline", ["backend", "backend version=2"])
def test_backend_maps_a_guest_grant(guests, accel: str, cmdline: str) -> None:
    backend = Backend()
    outcome, report = run(accel, cmdline, backend)
    report.assert_all_passed()
    assert outcome is Outcome.POWEROFF
    rounds = 2 if "version=2" in cmdline else 1
    assert backend.maps == rounds and backend.mapped is None
    for page, flags in zip(backend.seen, backend.flags_while_mapped, strict=True):
        assert page == bytes(i ^ 0x5A for i in range(256)) * 16  # the guest's i^0x5a
        assert flags & (G.GTF_reading | G.GTF_writing) == G.GTF_reading | G.GTF_writing
    assert "gnttab.set_version_busy" in report.passed


def test_grant_table_guest_as_dom0(guests, accel: str) -> None:
    """dom0 grants to itself: its own grants are the backend's (domid 0)."""
    backend = Backend()
    outcome, report = run(accel, "backend version=2", backend, domid=0, privileged=True)
    report.assert_all_passed()
    assert outcome is Outcome.POWEROFF
    assert backend.maps == 2


def test_reserved_entries_seeded_for_console_and_xenstore(guests, accel: str) -> None:
    """`pyxen run --xenstore`: entries 0 and 1 grant the console and store rings to dom0,
    as libxl's xc_dom_gnttab_seed does; the guest compares them with its HVM params."""
    done = subprocess.run([sys.executable, "-m", "pyxen.cli", "run", str(image("grant_table")),
                           "--accel", accel, "--xenstore", "--timeout", "120"],
                          capture_output=True, text=True, timeout=180)
    report = Report.parse(done.stdout.encode())
    report.assert_all_passed()
    assert {"gnttab.reserved_console", "gnttab.reserved_xenstore"} <= set(report.passed)
