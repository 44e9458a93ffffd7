"""GNTTABOP_copy's grant handling as the granting domain's process runs it."""

from __future__ import annotations

from hv.test_grant_table import DATA_GFN, grant_v1, make_domain
from pyxen.abi import grant_table as G
from pyxen.hv import grant_table


def test_a_refused_copy_leaves_the_entry_inactive() -> None:
    """A copy the granter refused leaves no active entry behind: the grant can still be
    swapped (GNTTABOP_swap_grant_ref answers GNTST_eagain for an active one)."""
    dom2 = make_domain(2)
    try:
        grant_v1(dom2, 20, 3, DATA_GFN)  # to dom3, not dom1
        assert grant_table.acquire_grant_for_copy(dom2, 20, 1, True, False)[0] == \
            G.GNTST_general_error
        assert not dom2.grant_table.active
        assert grant_table.swap_grant_ref(dom2, 20, 21) == G.GNTST_okay
    finally:
        dom2.memory.close()
