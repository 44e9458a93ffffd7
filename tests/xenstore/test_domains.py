"""Domain release: owned nodes, watches, transactions and connections go away."""

from __future__ import annotations

import pytest

from pyxen.xenstore import Client, XenStored, XenStoreError


def test_release_deletes_owned_nodes_and_keeps_others(dom0: Client, domu, xsd: XenStored) -> None:  # noqa: ANN001
    guest = domu(5)
    guest.write("data/a", "1")
    dom0.mkdir("/shared")
    dom0.set_perms("/shared", ["n0", "w5"])
    guest.write("/shared/by5", "x")
    dom0.write("/shared/by0", "y")
    dom0.set_perms("/shared/by0", ["n0", "r5", "r6"])
    dom0.release(5)
    assert not dom0.exists("/local/domain/5")
    assert dom0.ls("/shared") == ["by0"]
    assert dom0.get_perms("/shared/by0") == ["n0", "r6"]  # stale entry for dom5 dropped
    assert dom0.control("check") == "OK"


def test_release_drops_guest_connection_watches_transactions(dom0: Client, domu, xsd: XenStored) -> None:  # noqa: ANN001
    guest = domu(5)
    guest.watch("data", "t")
    guest.transaction_start()
    dom0.release(5)
    with pytest.raises(ConnectionError):
        guest.read("data")
    assert all(s.domid != 5 for s in xsd.store.sessions)
    # the domain can come back with a fresh start
    guest2 = domu(5)
    assert guest2.ls("/local/domain/5") == []


def test_release_fires_watches_on_removed_nodes(dom0: Client, domu) -> None:  # noqa: ANN001
    domu(5).write("device/vif", "")
    dom0.watch("/local/domain/5", "backend")
    assert dom0.next_event(1) == ("/local/domain/5", "backend")
    dom0.release(5)
    events = {tuple(e) for e in dom0.events(timeout=0.05)}
    assert ("/local/domain/5", "backend") in events


def test_release_of_unknown_domain_is_enoent(dom0: Client) -> None:
    with pytest.raises(XenStoreError) as info:
        dom0.release(42)
    assert info.value.name == "ENOENT"
