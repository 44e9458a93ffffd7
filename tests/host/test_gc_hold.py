"""A migration holds the daemon's garbage collector off (pyxen.host.gc_hold): holds nest,
the collector comes back after the last one, also when a migration fails, and a collector
that was off before stays off."""

from __future__ import annotations

import gc

import pytest

from pyxen.host.gc_hold import gc_held


@pytest.fixture(autouse=True)
def collector_restored():  # type: ignore[no-untyped-def]
    was = gc.isenabled()
    yield
    (gc.enable if was else gc.disable)()


def test_holds_nest_and_the_collector_returns_after_the_last() -> None:
    gc.enable()
    first, second = gc_held(), gc_held()
    first.__enter__()
    second.__enter__()
    assert not gc.isenabled()
    first.__exit__(None, None, None)  # two migrations at once: one ends, one runs on
    assert not gc.isenabled()
    second.__exit__(None, None, None)
    assert gc.isenabled()


def test_a_failed_migration_gives_the_collector_back() -> None:
    gc.enable()
    with pytest.raises(OSError), gc_held():
        raise OSError("the link went down")
    assert gc.isenabled()


def test_a_collector_that_was_off_stays_off() -> None:
    gc.disable()
    with gc_held():
        pass
    assert not gc.isenabled()
