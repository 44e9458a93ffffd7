"""Permissions as an unprivileged domain sees them: owner first, r/w/b/n per domain."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from pyxen.xenstore import Client, XenStoreError

DomU = Callable[[int], Client]


def err(fn, *args) -> str:  # noqa: ANN001
    with pytest.raises(XenStoreError) as info:
        fn(*args)
    return info.value.name


def test_domu_cannot_read_or_write_dom0_nodes(dom0: Client, domu: DomU) -> None:
    guest = domu(5)
    dom0.write("/secret", "x")
    assert err(guest.read, "/secret") == "EACCES"
    assert err(guest.write, "/secret", "y") == "EACCES"
    assert err(guest.write, "/newtop", "y") == "EACCES"  # root is not writable for it
    assert dom0.read("/secret") == b"x"


def test_missing_node_under_unreadable_parent_is_eacces(dom0: Client, domu: DomU) -> None:
    guest = domu(5)
    dom0.mkdir("/hidden")
    assert err(guest.read, "/hidden/nothing") == "EACCES"
    assert err(guest.read, "/local/domain/5/nothing") == "ENOENT"


def test_new_nodes_inherit_parent_perms_and_domu_owns_them(dom0: Client, domu: DomU) -> None:
    guest = domu(5)
    dom0.set_perms("/local/domain/5", ["n5", "r6"])
    guest.write("device/vif/0/state", "1")
    assert dom0.get_perms("/local/domain/5/device/vif/0/state") == ["n5", "r6"]
    dom0.write("/local/domain/5/by-dom0", "")  # dom0 keeps the inherited owner
    assert dom0.get_perms("/local/domain/5/by-dom0") == ["n5", "r6"]
    dom0.mkdir("/shared")
    dom0.set_perms("/shared", ["n0", "w5"])
    guest.write("/shared/from5", "hi")
    assert dom0.get_perms("/shared/from5") == ["n5", "w5"]


def test_acl_entries_and_default(dom0: Client, domu: DomU) -> None:
    a, b, c = domu(1), domu(2), domu(3)
    dom0.write("/acl", "v")
    dom0.set_perms("/acl", ["r0", "w1", "n2"])  # default read for others
    assert err(a.read, "/acl") == "EACCES"  # w only
    a.write("/acl", "from1")
    assert err(b.read, "/acl") == "EACCES"
    assert c.read("/acl") == b"from1"  # default r
    assert err(c.write, "/acl", "x") == "EACCES"


def test_only_dom0_changes_owner(dom0: Client, domu: DomU) -> None:
    guest = domu(5)
    guest.write("mine", "")
    guest.set_perms("mine", ["n5", "r7"])  # owner may change the ACL
    assert err(guest.set_perms, "mine", ["n6"]) == "EPERM"
    dom0.set_perms("/local/domain/5/mine", ["n6"])
    assert dom0.get_perms("/local/domain/5/mine") == ["n6"]
    assert err(guest.read, "mine") == "EACCES"


def test_writer_that_is_not_owner_cannot_set_perms(dom0: Client, domu: DomU) -> None:
    guest = domu(5)
    dom0.write("/both", "")
    dom0.set_perms("/both", ["n0", "b5"])
    guest.write("/both", "ok")
    assert err(guest.set_perms, "/both", ["n0", "b5", "r6"]) == "EACCES"


def test_set_target_grants_targets_rights(dom0: Client, domu: DomU) -> None:
    guest, stubdom = domu(5), domu(6)
    guest.write("data", "x")
    assert err(stubdom.read, "/local/domain/5/data") == "EACCES"
    dom0.set_target(6, 5)
    assert stubdom.read("/local/domain/5/data") == b"x"


def test_domu_cannot_use_privileged_operations(domu: DomU) -> None:
    guest = domu(5)
    assert err(guest.introduce, 9, 1, 1) == "EACCES"
    assert err(guest.release, 5) == "EACCES"
    assert err(guest.control, "help") == "EACCES"
    assert err(guest.get_quota, "nodes") == "EACCES"
    assert err(guest.is_domain_introduced, 5) == "EACCES"
    assert guest.get_domain_path(5) == "/local/domain/5"


def test_watch_needs_readable_path(dom0: Client, domu: DomU) -> None:
    guest = domu(5)
    guest.watch("/", "all")
    assert guest.next_event(1) == ("/", "all")  # the initial event always fires
    dom0.write("/private/x", "1")
    guest.write("visible", "1")
    assert guest.next_event(1) == ("/local/domain/5/visible", "all")
    with pytest.raises(TimeoutError):
        guest.next_event(0.05)


def test_special_watches_need_permission(dom0: Client, domu: DomU) -> None:
    guest = domu(5)
    guest.watch("@introduceDomain", "intro")
    assert guest.next_event(1) == ("@introduceDomain", "intro")
    dom0.introduce(20, 1, 1)
    with pytest.raises(TimeoutError):
        guest.next_event(0.05)
    dom0.set_perms("@introduceDomain", ["n0", "r5"])
    dom0.introduce(21, 1, 1)
    assert guest.next_event(1) == ("@introduceDomain", "intro")
