"""Transactions: isolation, per-node conflict detection, retries."""

from __future__ import annotations

import pytest

from pyxen.xenstore import Client, XenStored, XenStoreError


def err(fn, *args) -> str:  # noqa: ANN001
    with pytest.raises(XenStoreError) as info:
        fn(*args)
    return info.value.name


def test_writes_are_invisible_until_commit(dom0: Client, xsd: XenStored) -> None:
    other = Client.in_process(xsd, 0)
    with dom0.transaction() as t:
        t.write("/tx/a", "1")
        assert t.read("/tx/a") == b"1"
        assert err(other.read, "/tx/a") == "ENOENT"
    assert other.read("/tx/a") == b"1"


def test_abort_discards(dom0: Client) -> None:
    tx = dom0.transaction_start()
    dom0.write("/gone", "1", tx)
    dom0.transaction_end(tx, commit=False)
    assert err(dom0.read, "/gone") == "ENOENT"
    assert err(dom0.transaction_end, tx) == "ENOENT"


def test_exception_in_block_aborts(dom0: Client) -> None:
    with pytest.raises(RuntimeError), dom0.transaction() as t:
        t.write("/boom", "1")
        raise RuntimeError
    assert not dom0.exists("/boom")


def test_conflict_on_touched_node_is_eagain(dom0: Client, xsd: XenStored) -> None:
    other = Client.in_process(xsd, 0)
    dom0.write("/c/x", "0")
    tx = dom0.transaction_start()
    assert dom0.read("/c/x", tx) == b"0"
    other.write("/c/x", "changed")
    dom0.write("/c/y", "1", tx)
    assert err(dom0.transaction_end, tx) == "EAGAIN"
    assert not dom0.exists("/c/y")


def test_unrelated_change_does_not_conflict(dom0: Client, xsd: XenStored) -> None:
    other = Client.in_process(xsd, 0)
    dom0.write("/u/x", "0")
    dom0.write("/elsewhere", "0")
    tx = dom0.transaction_start()
    dom0.write("/u/x", "1", tx)
    other.write("/elsewhere", "2")
    dom0.transaction_end(tx)
    assert dom0.read("/u/x") == b"1"


def test_reads_are_repeatable_inside_a_transaction(dom0: Client, xsd: XenStored) -> None:
    other = Client.in_process(xsd, 0)
    dom0.write("/rr", "old")
    tx = dom0.transaction_start()
    assert dom0.read("/rr", tx) == b"old"
    other.write("/rr", "new")
    assert dom0.read("/rr", tx) == b"old"
    assert err(dom0.transaction_end, tx) == "EAGAIN"


def test_retrying_helper_reruns_block_until_commit(dom0: Client, xsd: XenStored) -> None:
    other = Client.in_process(xsd, 0)
    dom0.write("/counter", "0")
    attempts = 0
    for t in dom0.transactions():
        with t:
            attempts += 1
            value = int(t.read("/counter"))
            if attempts == 1:
                other.write("/counter", "10")  # a racing writer
            t.write("/counter", str(value + 1))
    assert attempts == 2
    assert dom0.read("/counter") == b"11"


def test_transact_returns_result(dom0: Client) -> None:
    assert dom0.transact(lambda t: t.write("/tr", "1") or "done") == "done"
    assert dom0.read("/tr") == b"1"


def test_nested_start_is_ebusy(dom0: Client) -> None:
    tx = dom0.transaction_start()
    assert err(dom0.request, 6, b"\0", tx) == "EBUSY"


def test_rm_and_perms_in_transaction(dom0: Client) -> None:
    dom0.write("/t2/a", "1")
    with dom0.transaction() as t:
        t.rm("/t2/a")
        t.set_perms("/t2", ["n0", "r4"])
        assert t.ls("/t2") == []
        assert dom0.ls("/t2") == ["a"]
    assert dom0.ls("/t2") == []
    assert dom0.get_perms("/t2") == ["n0", "r4"]


def test_watches_fire_only_on_commit(dom0: Client, xsd: XenStored) -> None:
    watcher = Client.in_process(xsd, 0)
    watcher.watch("/wt", "t")
    assert watcher.next_event(1) == ("/wt", "t")
    tx = dom0.transaction_start()
    dom0.write("/wt/a", "1", tx)
    with pytest.raises(TimeoutError):
        watcher.next_event(0.05)
    dom0.transaction_end(tx)
    assert watcher.next_event(1) == ("/wt/a", "t")
    tx = dom0.transaction_start()
    dom0.write("/wt/b", "1", tx)
    dom0.transaction_end(tx, commit=False)
    with pytest.raises(TimeoutError):
        watcher.next_event(0.05)
