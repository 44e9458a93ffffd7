"""Quotas hit exactly at the C xenstored's default limits, with its error codes."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from pyxen.xenstore import Client, XenStoreError

DomU = Callable[[int], Client]


def err(fn, *args) -> str:  # noqa: ANN001
    with pytest.raises(XenStoreError) as info:
        fn(*args)
    return info.value.name


def test_node_quota_is_1000_per_domain(dom0: Client, domu: DomU) -> None:
    guest = domu(5)  # owns its home node already: 1 of 1000
    created, k = 0, 0
    while created < 999:  # spread out, so that no child list outgrows the node size
        guest.mkdir(f"d{k}")
        created += 1
        for j in range(min(30, 999 - created)):
            guest.mkdir(f"d{k}/c{j}")
            created += 1
        k += 1
    assert err(guest.write, "one-too-many", "") == "ENOSPC"
    assert err(guest.mkdir, "a/b") == "ENOSPC"
    guest.rm("d0/c0")
    guest.write("fits-again", "")
    dom0.write("/local/domain/5/dom0-can-still-write", "")  # privileged: no quota


def test_node_quota_counts_implicit_parents(domu: DomU, dom0: Client) -> None:
    dom0.introduce(5, 1, 1)
    dom0.set_quota("nodes", 3, domid=5)
    guest = domu(5)
    assert err(guest.write, "a/b/c", "") == "ENOSPC"  # would make 4
    assert not dom0.exists("/local/domain/5/a")  # nothing half-created
    guest.write("a/b", "")


def test_node_size_is_2048_bytes(domu: DomU) -> None:
    guest = domu(5)
    # 24-byte header + 8 per permission entry + value (+ children names)
    guest.write("big", "x" * (2048 - 24 - 8))
    assert err(guest.write, "big", "x" * (2048 - 24 - 8 + 1)) == "ENOSPC"
    assert guest.read("big") == b"x" * 2016


def test_children_list_counts_toward_parent_size(domu: DomU) -> None:
    guest = domu(5)
    guest.mkdir("p")
    name = "c" * 99  # 100 bytes in the parent's child list
    for i in range(20):  # 24 + 8 + 20 * 100 = 2032 <= 2048
        guest.mkdir(f"p/{i:02d}{name[2:]}")
    assert err(guest.mkdir, "p/" + "z" * 20) == "ENOSPC"


def test_dom0_has_no_node_size_limit(dom0: Client) -> None:
    dom0.write("/big0", "x" * 4000)
    assert len(dom0.read("/big0")) == 4000


def test_watch_quota_is_128(domu: DomU) -> None:
    guest = domu(5)
    for i in range(128):
        guest.watch(f"w{i}", "t")
    assert err(guest.watch, "w128", "t") == "E2BIG"
    guest.unwatch("w0", "t")
    guest.watch("w128", "t")


def test_transaction_quota_is_10(domu: DomU) -> None:
    guest = domu(5)
    txs = [guest.transaction_start() for _ in range(10)]
    assert err(guest.transaction_start) == "ENOSPC"
    guest.transaction_end(txs[0], commit=False)
    guest.transaction_start()


def test_permission_entries_quota_is_5(domu: DomU) -> None:
    guest = domu(5)
    guest.write("p", "")
    guest.set_perms("p", ["n5", "r1", "r2", "r3", "r4"])
    assert err(guest.set_perms, "p", ["n5", "r1", "r2", "r3", "r4", "r6"]) == "ENOSPC"
    assert guest.get_perms("p") == ["n5", "r1", "r2", "r3", "r4"]


def test_path_max_is_2048_after_domain_home(dom0: Client, domu: DomU) -> None:
    guest = domu(5)
    ok = "/".join(["a" * 63] * 32)  # 32 * 64 - 1 = 2047 chars
    guest.write(ok + "b", "")  # 2048: allowed
    assert err(guest.write, ok + "bc", "") == "EINVAL"
    dom0.write("/local/domain/5/" + ok + "bc", "")  # privileged: not limited


def test_transaction_node_quota_is_1024(domu: DomU, dom0: Client) -> None:
    guest = domu(5)
    for i in range(1023):  # + the domain home = 1024 nodes touched
        dom0.write(f"/local/domain/5/t{i:04d}", "")
    tx = guest.transaction_start()
    guest.read("/local/domain/5", tx)
    for i in range(1023):
        guest.read(f"t{i:04d}", tx)
    assert err(guest.read, "t0000x", tx) == "ENOSPC"


def test_per_domain_override_and_daemon_default(dom0: Client, domu: DomU) -> None:
    guest, other = domu(5), domu(6)
    dom0.set_quota("watches", 2, domid=5)
    guest.watch("a", "t")
    guest.watch("b", "t")
    assert err(guest.watch, "c", "t") == "E2BIG"
    for i in range(3):
        other.watch(f"x{i}", "t")
    dom0.set_quota("transactions", 1)
    other.transaction_start()
    assert err(other.transaction_start) == "ENOSPC"


def test_payload_limit_closes_connection(xsd) -> None:  # noqa: ANN001
    from pyxen.xenstore.codec import encode

    out: list[bytes] = []
    closed: list[bool] = []
    conn = xsd.connect(0, out.append, lambda: closed.append(True))
    conn.feed(encode(2, 1, 0, b"/" + b"a" * 4100 + b"\0"))
    assert closed == [True] and out == []
