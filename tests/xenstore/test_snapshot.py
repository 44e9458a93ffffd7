"""Snapshot and journal: a new daemon gets the XenStore back exactly (pyxen.xenstore.snapshot)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from pyxen.xenstore import Client, XenStored, XenStoreError, snapshot
from pyxen.xenstore.domains import Domain
from pyxen.xenstore.snapshot import Persistence, SnapshotError, dump, restore, restore_session

DomU = Callable[[int], Client]
ODD = b"\0bin\xff\xfe\x80\0"  # NULs and bytes that are not UTF-8


def err(fn: Callable[..., object], *args: object, **kwargs: object) -> str:
    with pytest.raises(XenStoreError) as info:
        fn(*args, **kwargs)
    return info.value.name


def drain(c: Client) -> list[tuple[str, str]]:
    return [(e.path, e.token) for e in c.events(timeout=0.05)]


def state(xsd: XenStored) -> dict[str, Any]:
    """Everything a restart must keep, in comparable form (owner counts without zeros)."""
    store = xsd.store
    return {
        "nodes": {p: (n.value, n.perms, n.children, n.generation) for p, n in store.nodes.items()},
        "owned": {d: n for d, n in store.owned.items() if n},
        "generation": store.generation,
        "special": dict(store.special_perms),
        "quotas": store.quotas,
        "domains": dict(store.domains),
    }


def restored(data: dict[str, Any], **kwargs: Any) -> XenStored:
    fresh = XenStored(**kwargs)
    restore(fresh, json.loads(json.dumps(data)))
    return fresh


def guest_in(xsd: XenStored, domid: int, data: dict[str, Any]) -> Client:
    """The new daemon's guest ring for `domid`: a new connection given its saved session."""
    guest = Client.in_process(xsd, domid)
    restore_session(guest.transport.conn, data["sessions"][str(domid)])  # type: ignore[attr-defined]
    return guest


@pytest.fixture
def busy(xsd: XenStored, dom0: Client, domu: DomU) -> XenStored:
    """A store with a bit of everything a restart must keep."""
    dom0.write("/odd", ODD)
    dom0.write("/empty", b"")
    for name in ("zeta", "alpha", "mid"):  # creation order, not sorted order
        dom0.write(f"/tree/{name}/leaf", name)
    dom0.set_perms("/tree/alpha", ["n0", "r3", "b4", "w7"])
    dom0.set_perms("@introduceDomain", ["n0", "r3"])
    dom0.set_quota("watches", 77)
    g3, g4 = domu(3), domu(4)
    dom0.set_target(4, 3)
    dom0.set_quota("nodes", 4, domid=3)
    xsd.store.domains[4].features = 1  # as a feature-capable daemon would have agreed
    xsd.store.domains[3].shutdown = True
    g3.write("data/a", ODD)  # with its home: dom3 owns 3 of 4 nodes
    g4.write("x", "4")
    g3.close()
    g4.close()
    return xsd


def test_round_trip_keeps_every_node_perm_order_quota_and_domain(busy: XenStored) -> None:
    data = dump(busy)
    assert json.loads(json.dumps(data)) == data  # JSON-able as it is
    introduced: list[Domain] = []
    fresh = restored(data, on_introduce=introduced.append)
    assert state(fresh) == state(busy)
    assert introduced == []  # the domains were introduced long ago: no hook runs again
    assert fresh.store.domains[4].target == 3 and fresh.store.domains[4].features == 1
    assert fresh.store.domains[3].quotas is not None
    assert fresh.store.domains[3].quotas.nodes == 4


def test_restored_store_answers_as_the_old_one(busy: XenStored) -> None:
    fresh = restored(dump(busy))
    for xsd in (busy, fresh):
        with Client.in_process(xsd, 0) as dom0, Client.in_process(xsd, 3) as g3, \
                Client.in_process(xsd, 4) as g4, Client.in_process(xsd, 5) as g5:
            assert dom0.read("/odd") == ODD
            assert dom0.ls("/tree") == ["zeta", "alpha", "mid"]
            assert dom0.get_perms("/tree/alpha") == ["n0", "r3", "b4", "w7"]
            assert dom0.get_perms("@introduceDomain") == ["n0", "r3"]
            assert g3.read("/tree/alpha") == b""
            assert err(g5.read, "/tree/alpha") == "EACCES"
            assert g4.read("/local/domain/3/data/a") == ODD  # dom4 acts for its target, dom3
            assert dom0.get_quota("watches") == 77
            assert dom0.is_domain_introduced(3) and not dom0.is_domain_introduced(6)
            assert dom0.control("quota", "3").split()[:2] == ["nodes", ":"]
            g3.write("data/b", "4th node")  # the 4th of 4
            assert err(g3.write, "data/c", "5th") == "ENOSPC"  # the quota still counts
            assert dom0.control("check") == "OK"


def test_restore_fires_no_watch(xsd: XenStored, busy: XenStored) -> None:
    fresh = XenStored()
    watcher = Client.in_process(fresh, 0)
    watcher.watch("/", "all")
    watcher.watch("@introduceDomain", "intro")
    assert sorted(drain(watcher)) == [("/", "all"), ("@introduceDomain", "intro")]
    restore(fresh, dump(busy))
    assert drain(watcher) == []


def test_dom0_sessions_are_not_saved(xsd: XenStored, dom0: Client, domu: DomU) -> None:
    dom0.watch("/x", "t")
    guest = domu(2)
    guest.watch("home", "rel")
    other = Client.in_process(xsd, 2)  # a second connection of dom2: not the ring's
    other.watch("/y", "second")
    assert dump(xsd)["sessions"] == {
        "2": {"watches": [["/local/domain/2/home", "rel", "/local/domain/2"]], "next_tx_id": 1}
    }


def test_restored_session_keeps_watches_without_initial_event(
    xsd: XenStored, dom0: Client, domu: DomU
) -> None:
    old = domu(5)
    old.watch("/local/domain/5/device", "abs")
    old.watch("backend", "rel")
    old.watch("@releaseDomain", "gone")
    dom0.set_perms("@releaseDomain", ["n0", "r5"])  # else a guest may not see its events
    data = dump(xsd)
    fresh = restored(data)
    guest = guest_in(fresh, 5, data)
    assert drain(guest) == []  # the guest had its initial events from the old daemon
    with Client.in_process(fresh, 0) as tools:
        tools.write("/local/domain/5/device/vif/0", "x")
        tools.write("/local/domain/5/backend/vbd", "y")
        tools.introduce(9, 1, 1)
        tools.release(9)
    assert drain(guest) == [
        ("/local/domain/5/device/vif/0", "abs"),
        ("backend/vbd", "rel"),  # a relative watch still reports relative paths
        ("@releaseDomain", "gone"),
    ]
    guest.unwatch("backend", "rel")  # it is a real watch, so it can be removed
    assert err(guest.unwatch, "backend", "rel") == "ENOENT"


def test_transaction_from_before_the_restart_gets_eagain(
    xsd: XenStored, dom0: Client, domu: DomU
) -> None:
    old = domu(5)
    lost = old.transaction_start()
    old.write("in-tx", "never committed", tx=lost)
    data = dump(xsd)
    fresh = restored(data)
    guest = guest_in(fresh, 5, data)
    assert err(guest.read, "in-tx", tx=lost) == "EAGAIN"
    assert err(guest.transaction_end, lost) == "EAGAIN"  # xenbus starts the transaction again
    again = guest.transaction_start()
    assert again == lost + 1  # never an id the guest may still hold
    guest.write("in-tx", "committed", tx=again)
    guest.transaction_end(again)
    assert guest.read("in-tx") == b"committed"
    with Client.in_process(fresh, 5) as unrestored:
        assert err(unrestored.read, "in-tx", tx=lost) == "ENOENT"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d.update(format="something-else"), "not a pyxen XenStore snapshot"),
        (lambda d: d.update(version=99), "version 99"),
        (lambda d: d.pop("nodes"), "missing 'nodes'"),
        (lambda d: d["nodes"].pop("/tool"), "lists child 'tool', which is missing"),
        (lambda d: d["nodes"]["/"]["children"].remove("tool"), "'/tool' is not listed"),
        (lambda d: d["nodes"]["/odd"].update(value=7), "node '/odd' value: expected a string"),
        (lambda d: d["nodes"]["/odd"].update(value="\u20ac"), "beyond \\u00ff"),
        (lambda d: d["nodes"]["/odd"].update(perms=["x0"]), "bad permission"),
        (lambda d: d["nodes"]["/odd"].update(perms=[]), "no permissions"),
        (lambda d: d["nodes"]["/odd"].update(generation=True), "expected a whole number"),
        (lambda d: d["domains"][0].update(domid=0), "domid: 0 is outside"),
        (lambda d: d["domains"].append(dict(d["domains"][0])), "appears twice"),
        (lambda d: d["domains"][0].pop("mfn"), "missing 'mfn'"),
        (lambda d: d["quotas"].update(bogus=1), "unknown quota 'bogus'"),
        (lambda d: d["special_perms"].update({"@x": ["n0"]}), "'@x' is not a special node"),
        (lambda d: d["sessions"].update({"3": {"watches": [["/a", "t"]], "next_tx_id": 1}}),
         "expected [node, token, relative prefix or null]"),
        (lambda d: d.update(nodes=[]), "expected an object, found a list"),
    ],
)
def test_malformed_snapshot_is_one_line_error(
    busy: XenStored, change: Callable[[dict[str, Any]], object], message: str
) -> None:
    data = json.loads(json.dumps(dump(busy)))
    data["sessions"]["3"] = {"watches": [], "next_tx_id": 1}
    change(data)
    fresh = XenStored()
    before = state(fresh)
    with pytest.raises(SnapshotError) as info:
        restore(fresh, data)
    assert message in str(info.value)
    assert "\n" not in str(info.value)
    assert state(fresh) == before  # nothing half-restored


def test_restore_session_refuses_bad_data(xsd: XenStored) -> None:
    conn = xsd.connect(5, lambda b: None)
    for bad in ({}, {"watches": "x", "next_tx_id": 1}, {"watches": [], "next_tx_id": -1},
                {"watches": [["rel", "t", None]], "next_tx_id": 1}):
        with pytest.raises(SnapshotError) as info:
            restore_session(conn, bad)  # type: ignore[arg-type]
        assert "session of dom5" in str(info.value) and "\n" not in str(info.value)
    assert conn.session.watches == [] and not conn.session.restored


# ---- Persistence: snapshot + journal -------------------------------------------------


@pytest.fixture
def kept(xsd: XenStored, tmp_path: Path) -> Persistence:
    p = Persistence(xsd, tmp_path)
    p.start()
    yield p  # type: ignore[misc]
    p.close()


def load_into_fresh(directory: Path) -> tuple[XenStored, dict[str, Any]]:
    data = Persistence.load(directory)
    assert data is not None
    return restored(data), data


def test_load_without_snapshot_is_none(tmp_path: Path) -> None:
    assert Persistence.load(tmp_path) is None


def test_journal_alone_brings_back_every_change(
    xsd: XenStored, dom0: Client, domu: DomU, kept: Persistence, tmp_path: Path
) -> None:
    dom0.write("/a/b/c", ODD)
    dom0.write("/a/b/d", "2")
    dom0.write("/doomed/x/y/z", "gone soon")
    for t in dom0.transactions():
        with t:
            t.write("/tx/one", "1")
            t.write("/tx/two", "2")
            t.rm("/a/b/d")
    dom0.rm("/doomed")
    dom0.set_perms("/a", ["n0", "r5"])
    guest = domu(5)
    guest.watch("backend", "rel")
    tx = guest.transaction_start()
    dom0.set_quota("nodes", 3, domid=5)
    dom0.set_perms("@releaseDomain", ["n0", "r5"])
    assert kept.journal_lines > 0
    fresh, data = load_into_fresh(tmp_path)  # no save since start: all from the journal
    assert state(fresh) == state(xsd)
    assert data["sessions"] == dump(xsd)["sessions"]
    assert data["sessions"]["5"]["next_tx_id"] == tx + 1
    assert "/doomed" not in fresh.store.nodes and "/doomed/x/y/z" not in fresh.store.nodes


def test_a_transaction_is_one_journal_line(dom0: Client, kept: Persistence) -> None:
    before = kept.journal_lines
    with dom0.transaction() as t:
        for i in range(20):
            t.write(f"/many/n{i}", str(i))
    assert kept.journal_lines == before + 1
    dom0.read("/many/n3")  # a batch that changes nothing writes nothing
    assert kept.journal_lines == before + 1


def test_torn_last_line_is_ignored(
    xsd: XenStored, dom0: Client, kept: Persistence, tmp_path: Path
) -> None:
    dom0.write("/kept", "1")
    expected = state(xsd)
    with dom0.transaction() as t:  # the daemon dies while writing this one's line
        t.write("/lost/a", "a")
        t.write("/lost/b", "b")
    journal = tmp_path / snapshot.JOURNAL_NAME
    raw = journal.read_bytes()
    last = raw[:-1].rfind(b"\n") + 1
    journal.write_bytes(raw[: last + (len(raw) - last) // 2])
    fresh, _ = load_into_fresh(tmp_path)
    assert state(fresh) == expected  # all of the transaction is gone, not half of it
    assert fresh.store.nodes["/kept"].value == b"1"


def test_crash_between_snapshot_and_truncation(
    xsd: XenStored, dom0: Client, domu: DomU, kept: Persistence, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    dom0.write("/w", "1")
    dom0.write("/w", "2")
    dom0.write("/tmp/x", "x")
    dom0.rm("/tmp")
    guest = domu(4)
    guest.watch("a", "t")
    leaving = domu(7)
    leaving.watch("b", "t")
    leaving.close()  # its transport went away: no request batch records that yet
    journal = tmp_path / snapshot.JOURNAL_NAME
    seen: list[bytes] = []
    truncate = kept._truncate

    def crash_here() -> None:  # the journal as a daemon dying after the rename leaves it
        seen.append(journal.read_bytes())
        truncate()

    monkeypatch.setattr(kept, "_truncate", crash_here)
    kept.save()
    assert seen and seen[0] and journal.read_bytes() == b"" and kept.journal_lines == 0
    journal.write_bytes(seen[0])
    fresh, data = load_into_fresh(tmp_path)
    assert state(fresh) == state(xsd)
    assert data["sessions"] == dump(xsd)["sessions"]


def test_changes_after_save_are_journaled_on_top(
    xsd: XenStored, dom0: Client, domu: DomU, kept: Persistence, tmp_path: Path
) -> None:
    dom0.write("/before", "1")
    kept.save()
    dom0.write("/after", "2")
    dom0.rm("/before")
    guest = domu(6)
    dom0.release(6)
    guest.close()
    fresh, data = load_into_fresh(tmp_path)
    assert state(fresh) == state(xsd)
    assert 6 not in fresh.store.domains and "6" not in data["sessions"]


def test_malformed_files_are_one_line_errors(dom0: Client, kept: Persistence,
                                             tmp_path: Path) -> None:
    dom0.write("/x", "1")
    kept.close()
    journal = tmp_path / snapshot.JOURNAL_NAME
    journal.write_bytes(journal.read_bytes() + b'{"nodes": 5}\n{"generation": 1}\n')
    with pytest.raises(SnapshotError) as info:
        Persistence.load(tmp_path)
    assert "xenstore.journal line 2 nodes: expected an object" in str(info.value)
    (tmp_path / snapshot.SNAPSHOT_NAME).write_bytes(b'{"format": "pyxen-xenstore", \n oops')
    with pytest.raises(SnapshotError) as info:
        Persistence.load(tmp_path)
    assert "xenstore.json: not valid JSON" in str(info.value)
    assert "\n" not in str(info.value)


def test_on_structure_fires_for_what_only_the_snapshot_holds(
    xsd: XenStored, dom0: Client, kept: Persistence
) -> None:
    calls: list[int] = []
    kept.on_structure = lambda: calls.append(1)

    def fired(action: Callable[[], object]) -> bool:
        calls.clear()
        action()
        return bool(calls)

    assert not fired(lambda: dom0.write("/plain", "x"))
    assert not fired(lambda: dom0.watch("/plain", "dom0's own"))
    assert fired(lambda: dom0.introduce(5, 1, 1))
    guest = Client.in_process(xsd, 5)
    assert calls  # a guest session opened
    assert fired(lambda: guest.watch("/plain", "t"))
    assert fired(lambda: guest.unwatch("/plain", "t"))
    assert not fired(guest.transaction_start)  # journaled, but not worth a snapshot
    assert fired(lambda: dom0.set_quota("nodes", 9, domid=5))
    assert fired(lambda: dom0.set_perms("@introduceDomain", ["n0"]))
    assert fired(lambda: dom0.release(5))


def test_on_structure_errors_do_not_fail_requests(dom0: Client, kept: Persistence) -> None:
    def broken() -> None:
        raise RuntimeError("daemon bug")

    kept.on_structure = broken
    dom0.introduce(5, 1, 1)
    assert dom0.is_domain_introduced(5)


def test_failed_journal_write_asks_for_a_snapshot(
    xsd: XenStored, dom0: Client, kept: Persistence, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def disk_full(fd: int, data: bytes) -> None:
        raise OSError(28, "No space left on device")

    asked: list[int] = []
    kept.on_structure = lambda: asked.append(1)
    monkeypatch.setattr(snapshot, "_write_all", disk_full)
    dom0.write("/a", "1")  # the store goes on working
    assert asked and dom0.read("/a") == b"1"
    monkeypatch.undo()
    dom0.write("/b", "2")  # not journaled: the journal lost /a, so it stays shut
    assert kept.journal_lines == 0
    kept.save()
    dom0.write("/c", "3")
    fresh, _ = load_into_fresh(tmp_path)
    assert state(fresh) == state(xsd)


def test_close_stops_journaling(dom0: Client, kept: Persistence, tmp_path: Path) -> None:
    dom0.write("/in", "1")
    kept.close()
    dom0.write("/out", "2")
    fresh, _ = load_into_fresh(tmp_path)
    assert "/in" in fresh.store.nodes and "/out" not in fresh.store.nodes


def test_restore_after_start_is_journaled(busy: XenStored, tmp_path: Path) -> None:
    data = dump(busy)
    fresh = XenStored()
    with Client.in_process(fresh, 0) as dom0:
        dom0.write("/only/in/fresh", "replaced by the restore")
    p = Persistence(fresh, tmp_path)
    p.start()
    restore(fresh, data)
    p.close()
    again, _ = load_into_fresh(tmp_path)
    assert state(again) == state(busy)
