"""Dirty tracking for live migration: after a guest runs, the domain reports the frames that
changed — the guest's writes, pyxen's writes, the Xen pages it updates — and not the code
the guest only executed."""

from __future__ import annotations

from elftools.elf.elffile import ELFFile

from guestkit import image
from pyxen.domain.builder import build_domain
from pyxen.domain.domain import DomainConfig, Outcome
from pyxen.hv import hypercall_table
from pyxen.toolstack.accel import machine_factory


def symbol(name: str, sym: str) -> int:
    with image(name).open("rb") as f:
        return ELFFile(f).get_section_by_name(".symtab").get_symbol_by_name(sym)[0]["st_value"]


def test_changed_frames_are_reported(guests, accel: str) -> None:
    domain = build_domain(image("demo"), DomainConfig(name="dirty"), machine_factory(accel)[0],
                          hypercall_table(), lambda _: None)
    try:
        domain.set_dirty_logging(True)
        domain.start()
        assert domain.wait(60).outcome is Outcome.POWEROFF
        frames = domain.dirty_frames()
        assert symbol("demo", "hypercall_page") >> 12 in frames  # pyxen filled it
        assert domain.shared_info.gfn in frames                  # a Xen page, updated in place
        assert symbol("demo", "_start32") >> 12 not in frames      # entry code: only executed
        assert domain.dirty_frames() == set(domain.special_frames)  # a new record began
        domain.set_dirty_logging(False)
        assert domain.dirty_frames() == set()
    finally:
        domain.close()
