"""Watches: matching, order, tokens, relative paths, removal events."""

from __future__ import annotations

import pytest

from pyxen.xenstore import Client, XenStored, XenStoreError


def drain(c: Client) -> list[tuple[str, str]]:
    return [tuple(e) for e in c.events(timeout=0.05)]


def test_initial_event_then_descendants_in_order(dom0: Client, xsd: XenStored) -> None:
    w = Client.in_process(xsd, 0)
    w.watch("/w", "tok")
    writer = dom0
    for i in range(5):
        writer.write(f"/w/n{i}", str(i))
    writer.write("/wother", "x")  # a sibling with a common prefix is not below /w
    writer.write("/w", "self")
    assert drain(w) == [("/w", "tok")] + [(f"/w/n{i}", "tok") for i in range(5)] + [("/w", "tok")]


def test_ancestor_write_does_not_fire_deeper_watch(dom0: Client, xsd: XenStored) -> None:
    w = Client.in_process(xsd, 0)
    w.watch("/a/b/c", "t")
    drain(w)
    dom0.write("/a/b", "x")
    assert drain(w) == []


def test_rm_fires_for_removed_watched_descendant(dom0: Client, xsd: XenStored) -> None:
    dom0.write("/r/a/b", "1")
    w = Client.in_process(xsd, 0)
    w.watch("/r/a/b", "deep")
    w.watch("/r", "top")
    drain(w)
    dom0.rm("/r/a")
    assert sorted(drain(w)) == [("/r/a", "top"), ("/r/a/b", "deep")]


def test_two_tokens_on_same_path_both_fire(dom0: Client, xsd: XenStored) -> None:
    w = Client.in_process(xsd, 0)
    w.watch("/tk", "one")
    w.watch("/tk", "two")
    drain(w)
    dom0.write("/tk", "")
    assert drain(w) == [("/tk", "one"), ("/tk", "two")]


def test_duplicate_watch_is_eexist_and_unwatch_stops_events(dom0: Client, xsd: XenStored) -> None:
    w = Client.in_process(xsd, 0)
    w.watch("/dup", "t")
    with pytest.raises(XenStoreError) as info:
        w.watch("/dup", "t")
    assert info.value.name == "EEXIST"
    drain(w)
    w.unwatch("/dup", "t")
    dom0.write("/dup", "1")
    assert drain(w) == []
    with pytest.raises(XenStoreError) as info:
        w.unwatch("/dup", "t")
    assert info.value.name == "ENOENT"


def test_relative_watch_reports_relative_paths(xsd: XenStored, domu) -> None:  # noqa: ANN001
    guest = domu(4)
    guest.watch("device", "dev")
    guest.write("device/vbd/1", "x")
    assert drain(guest) == [("device", "dev"), ("device/vbd/1", "dev")]


def test_perms_change_fires_watch(dom0: Client, xsd: XenStored) -> None:
    dom0.write("/pc", "")
    w = Client.in_process(xsd, 0)
    w.watch("/pc", "t")
    drain(w)
    dom0.set_perms("/pc", ["n0", "r3"])
    assert drain(w) == [("/pc", "t")]


def test_writer_sees_own_event_before_reply_is_consumed(dom0: Client) -> None:
    dom0.watch("/self", "me")
    dom0.write("/self/x", "1")
    assert drain(dom0) == [("/self", "me"), ("/self/x", "me")]


def test_callback_watch_runs_in_background(dom0: Client) -> None:
    import threading

    got: list[tuple[str, str]] = []
    done = threading.Event()

    def on_event(ev) -> None:  # noqa: ANN001
        got.append(tuple(ev))
        if len(got) == 2:
            done.set()

    watcher = dom0.watch("/cb", "cb", callback=on_event)
    dom0.write("/cb/x", "1")
    assert done.wait(5)
    assert got == [("/cb", "cb"), ("/cb/x", "cb")]
    assert watcher is not None
    watcher.stop()


def test_introduce_and_release_watches(dom0: Client, xsd: XenStored) -> None:
    w = Client.in_process(xsd, 0)
    w.watch("@introduceDomain", "in")
    w.watch("@releaseDomain", "out")
    drain(w)
    dom0.introduce(11, 1, 1)
    dom0.release(11)
    assert drain(w) == [("@introduceDomain", "in"), ("@releaseDomain", "out")]
