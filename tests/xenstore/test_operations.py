"""Every XenStore operation, as a dom0 client sees it."""

from __future__ import annotations

import pytest

from pyxen.abi.xs_wire import XS_DIRECTORY_PART
from pyxen.xenstore import Client, XenStoreError


def err(fn, *args) -> str:  # noqa: ANN001
    with pytest.raises(XenStoreError) as info:
        fn(*args)
    return info.value.name


def test_fresh_store_has_tool_xenstored(dom0: Client) -> None:
    assert dom0.ls("/") == ["tool"]
    assert dom0.ls("/tool") == ["xenstored"]


def test_write_read_and_implicit_parents(dom0: Client) -> None:
    dom0.write("/a/b/c", b"v\0with nul")
    assert dom0.read("/a/b/c") == b"v\0with nul"
    assert dom0.read("/a/b") == b""
    assert dom0.ls("/a") == ["b"]
    dom0.write("/a/b/c", "")
    assert dom0.read("/a/b/c") == b""


def test_read_missing_is_enoent(dom0: Client) -> None:
    assert err(dom0.read, "/missing") == "ENOENT"


def test_relative_paths_are_under_domain_home(dom0: Client) -> None:
    dom0.write("rel", "x")
    assert dom0.read("/local/domain/0/rel") == b"x"


@pytest.mark.parametrize("bad", ["/a/", "/a//b", "", "/a b", "/é", "@foo"])
def test_invalid_paths_are_einval(dom0: Client, bad: str) -> None:
    assert err(dom0.write, bad, "x") == "EINVAL"


def test_mkdir_keeps_existing_value(dom0: Client) -> None:
    dom0.write("/m", "keep")
    dom0.mkdir("/m")
    assert dom0.read("/m") == b"keep"
    dom0.mkdir("/m/n/o")
    assert dom0.ls("/m/n") == ["o"]


def test_rm_removes_subtree(dom0: Client) -> None:
    dom0.write("/r/a/b", "1")
    dom0.write("/r/c", "2")
    dom0.rm("/r/a")
    assert dom0.ls("/r") == ["c"]
    assert err(dom0.read, "/r/a/b") == "ENOENT"
    dom0.rm("/r/nonexistent")  # parent exists: fine
    assert err(dom0.rm, "/nope/child") == "ENOENT"
    assert err(dom0.rm, "/") == "EINVAL"


def test_directory_keeps_creation_order(dom0: Client) -> None:
    for name in ["z", "a", "m"]:
        dom0.write(f"/d/{name}", "")
    assert dom0.ls("/d") == ["z", "a", "m"]


def test_long_directory_uses_directory_part(dom0: Client) -> None:
    names = [f"child-with-a-long-name-{i:04d}" for i in range(300)]  # ~9 KB of names
    for n in names:
        dom0.mkdir(f"/big/{n}")
    assert err(dom0.request, 1, b"/big\0") == "E2BIG"  # XS_DIRECTORY cannot carry it
    assert dom0.ls("/big") == names


def test_directory_part_reports_generation_and_end(dom0: Client) -> None:
    dom0.write("/p/x", "")
    reply = dom0.request(XS_DIRECTORY_PART, b"/p\x000\x00")
    gen, rest = reply.split(b"\0", 1)
    assert gen.isdigit() and rest == b"x\0\0"
    past_end = dom0.request(XS_DIRECTORY_PART, b"/p\x0099\x00")
    assert past_end == gen + b"\0\0"
    dom0.write("/p/y", "")
    assert dom0.request(XS_DIRECTORY_PART, b"/p\x000\x00").split(b"\0")[0] != gen


def test_get_and_set_perms(dom0: Client) -> None:
    dom0.write("/perm", "")
    assert dom0.get_perms("/perm") == ["n0"]
    dom0.set_perms("/perm", ["r3", "w4", "b5", "n6"])
    assert dom0.get_perms("/perm") == ["r3", "w4", "b5", "n6"]
    assert err(dom0.set_perms, "/perm", ["x1"]) == "EINVAL"
    assert err(dom0.set_perms, "/missing", ["n0"]) == "ENOENT"


def test_special_nodes_have_perms(dom0: Client) -> None:
    assert dom0.get_perms("@releaseDomain") == ["n0"]
    dom0.set_perms("@releaseDomain", ["n0", "r7"])
    assert dom0.get_perms("@releaseDomain") == ["n0", "r7"]
    assert err(dom0.get_perms, "@other") == "ENOENT"


def test_domain_path_and_introduction(dom0: Client) -> None:
    assert dom0.get_domain_path(7) == "/local/domain/7"
    assert not dom0.is_domain_introduced(7)
    assert dom0.is_domain_introduced(0)
    dom0.introduce(7, 1234, 5)
    assert dom0.is_domain_introduced(7)
    dom0.resume(7)
    dom0.introduce(8, 1, 1)
    dom0.set_target(8, 7)
    dom0.release(7)
    assert not dom0.is_domain_introduced(7)
    assert err(dom0.release, 7) == "ENOENT"
    assert err(dom0.release, 0) == "EINVAL"
    assert err(dom0.introduce, 0, 1, 1) == "EINVAL"
    assert err(dom0.resume, 99) == "ENOENT"


def test_introduce_records_ring_for_the_hypervisor(xsd, dom0: Client) -> None:  # noqa: ANN001
    seen = []
    xsd.on_introduce = seen.append
    dom0.introduce(9, 4242, 17)
    assert [(d.domid, d.mfn, d.evtchn) for d in seen] == [(9, 4242, 17)]


def test_control_commands(dom0: Client) -> None:
    assert "quota" in dom0.control("help")
    assert "nodes            :     1000" in dom0.control("quota")
    dom0.control("quota", "set", "nodes", "50")
    assert dom0.get_quota("nodes") == 50
    assert dom0.control("log", "on") == "OK"
    assert dom0.control("check") == "OK"
    assert err(dom0.control, "frobnicate") == "EINVAL"


def test_quota_and_feature_operations(dom0: Client) -> None:
    assert "watches" in dom0.quota_names()
    assert dom0.get_quota("watches") == 128
    dom0.introduce(3, 1, 1)
    dom0.set_quota("watches", 3, domid=3)
    assert dom0.get_quota("watches", domid=3) == 3
    assert dom0.get_quota("watches") == 128
    assert err(dom0.get_quota, "bogus") == "EINVAL"
    assert err(dom0.get_quota, "nodes", 44) == "ENOENT"
    assert dom0.get_feature() == 0
    assert dom0.get_feature(3) == 0
    dom0.set_feature(3, 0)
    assert err(dom0.set_feature, 3, 1) == "EINVAL"


def test_reset_watches_drops_watches_and_transactions(dom0: Client) -> None:
    dom0.watch("/w", "t")
    assert dom0.next_event(1) == ("/w", "t")
    tx = dom0.transaction_start()
    dom0.reset_watches()
    assert err(dom0.unwatch, "/w", "t") == "ENOENT"
    assert err(dom0.read, "/tool", tx) == "ENOENT"


def test_unknown_transaction_id_is_enoent(dom0: Client) -> None:
    assert err(dom0.read, "/tool", 12345) == "ENOENT"


def test_watch_event_and_error_are_not_requests(dom0: Client) -> None:
    assert err(dom0.request, 15, b"/a\0t\0") == "ENOSYS"
    assert err(dom0.request, 16, b"") == "ENOSYS"
    assert err(dom0.request, 20, b"") == "ENOSYS"  # the removed XS_RESTRICT
