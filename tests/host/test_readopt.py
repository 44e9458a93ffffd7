"""Domains outlive their daemon, as Xen's outlive its toolstack: a daemon killed outright, or
one replaced with `pyxen daemon --replace`, leaves its domains running, and the next daemon on
the same state directory adopts them with their XenStore, watches, rings and console, so they
go on answering `pyxen shutdown` and typed console lines. Real daemons and domain processes
throughout; each test kills what it left behind."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from host.hostkit import (
    READY,
    WAIT_S,
    Daemon,
    console_log,
    start,
    type_into_console,
    wait_for,
)
from pyxen.xenstore.client import Client


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rpartition(")")[2].split()[0] != "Z"
    except FileNotFoundError:
        return False


@pytest.fixture
def leftovers() -> Iterator[list[int]]:
    """Domain processes a failing test might leave without a daemon: killed at the end."""
    pids: list[int] = []
    yield pids
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def groups_of(daemon: Daemon) -> list[str]:
    """The cgroups a daemon made (`pyxen/host<PID>`) that exist, in every hierarchy."""
    from pyxen.host.limits import _find_hierarchies

    bases = {h.base for h in _find_hierarchies(None).values()}
    return [path for base in bases
            if os.path.isdir(path := os.path.join(base, f"pyxen/host{daemon.process.pid}"))]


def kill_daemon(daemon: Daemon) -> None:
    daemon.process.kill()
    daemon.process.wait(timeout=WAIT_S)
    daemon.stderr.close()


def next_daemon(tmp_path: Path, *options: str) -> Daemon:
    return Daemon(tmp_path, *options, log_name="daemon-2.err")


def xenstore_read(daemon: Daemon, path: str) -> str:
    with Client(str(daemon.xenstore)) as xs:
        return xs.read(path).decode()


def xenstore_exists(daemon: Daemon, path: str) -> bool:
    with Client(str(daemon.xenstore)) as xs:
        return xs.exists(path)


def test_a_killed_daemons_domains_are_adopted_and_keep_working(
        daemon: Daemon, tmp_path: Path, leftovers: list[int]) -> None:
    web = start(daemon, "web")
    daemon.create("idle", "pvguest", "", on_crash="preserve")
    daemon.pyxen("pause", "idle")
    before = daemon.domains()
    leftovers += [before["web"]["pid"], before["idle"]["pid"]]
    daemon.pyxen("sched-credit", "-d", "web", "-w", "512")
    kill_daemon(daemon)
    assert alive(before["web"]["pid"]) and alive(before["idle"]["pid"])

    second = next_daemon(tmp_path)
    try:
        after = second.domains()
        assert {n: (d["domid"], d["pid"]) for n, d in after.items()} == \
            {n: (d["domid"], d["pid"]) for n, d in before.items()}
        assert after["idle"]["state"][2] == "p"  # still paused
        assert after["web"]["state"][2] == "-"
        assert f"(XEN) domain {web} (web) adopted" in second.dmesg()
        assert groups_of(daemon) == []  # the processes moved to the new daemon's groups
        assert xenstore_read(second, f"/local/domain/{web}/name") == "web"
        sched = second.pyxen("sched-credit", "-d", "web").stdout
        assert "512" in sched.splitlines()[-1].split()  # the weight carried over
        # the console ring and its events: a typed line is answered
        type_into_console(second, "web", b"uptime\r")
        wait_for("the answer", lambda: b"pvguest: up " in console_log(second, "web"))
        # the guest's restored watch on control/shutdown fires: it powers off
        done = second.pyxen("shutdown", "-w", "web")
        assert f"Domain {web} has been shut down" in done.stdout
        wait_for("web to go", lambda: "web" not in second.domains())
        assert b"pvguest: shutting down (poweroff)" in console_log(second, "web")
        wait_for("web's process to end", lambda: not alive(before["web"]["pid"]))
        # ids go on from where the first daemon was
        new = second.create("late", "pvguest", "console=hvc0")
        assert new > before["idle"]["domid"]
        second.pyxen("destroy", "idle")
        wait_for("idle's process to end", lambda: not alive(before["idle"]["pid"]))
    finally:
        second.stop()


def test_replace_hands_the_domains_over_without_stopping_them(
        daemon: Daemon, tmp_path: Path, leftovers: list[int]) -> None:
    domid = start(daemon, "steady")
    pid = daemon.domains()["steady"]["pid"]
    leftovers.append(pid)
    second = next_daemon(tmp_path, "--replace")
    try:
        assert daemon.process.wait(timeout=WAIT_S) == 0  # the old one handed over and left
        wait_for("the new daemon to serve", second.answers)  # (the old one answered before)
        assert alive(pid)
        assert second.domains()["steady"]["domid"] == domid
        # the old daemon's groups go, though it may still be a zombie when adopted from
        wait_for("the old daemon's cgroups to go", lambda: groups_of(daemon) == [])
        type_into_console(second, "steady", b"hello\r")
        wait_for("the answer", lambda: b"pvguest: you said hello" in console_log(second, "steady"))
        second.pyxen("shutdown", "-w", "steady")
        assert b"pvguest: shutting down (poweroff)" in console_log(second, "steady")
    finally:
        second.stop()
    assert console_log(second, "steady").count(READY) == 1  # the same boot all along


def test_a_domain_that_died_without_a_daemon_is_cleaned_up(
        daemon: Daemon, tmp_path: Path, leftovers: list[int]) -> None:
    domid = daemon.create("doomed", "pvguest", "")
    pid = daemon.domains()["doomed"]["pid"]
    leftovers.append(pid)
    kill_daemon(daemon)
    os.kill(pid, signal.SIGKILL)
    wait_for("the process to end", lambda: not alive(pid))
    second = next_daemon(tmp_path)
    try:
        assert "doomed" not in second.domains()
        assert groups_of(daemon) == []
        assert f"(XEN) domain {domid} (doomed) did not survive its daemon" in second.dmesg()
        assert not xenstore_exists(second, f"/local/domain/{domid}")
        assert not (tmp_path / "domains" / f"{domid}.sock").exists()
        assert not xenstore_exists(second, f"/local/domain/{domid}")
    finally:
        second.stop()


def test_a_clean_stop_leaves_nothing_to_adopt(daemon: Daemon, tmp_path: Path) -> None:
    daemon.create("brief", "pvguest", "")
    assert daemon.stop() == 128 + signal.SIGTERM
    assert not (tmp_path / "host.json").exists()
    second = next_daemon(tmp_path)
    try:
        assert second.domains() == {}
    finally:
        second.stop()


def test_a_damaged_record_is_refused_in_one_line(tmp_path: Path) -> None:
    (tmp_path / "host.json").write_text("{not json")
    (tmp_path / "xenstore.json").write_text("{}")
    result = subprocess.run([sys.executable, "-m", "pyxen.cli", "daemon", "--socket",
                             str(tmp_path / "pyxen.sock")], capture_output=True, text=True,
                            timeout=WAIT_S)
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1
    assert f"{tmp_path / 'host.json'}: not a saved host" in result.stderr


def threads(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/task"))
    except FileNotFoundError:
        return 0


def test_a_domain_that_powered_off_without_a_daemon_gets_its_action_on_adoption(
        daemon: Daemon, tmp_path: Path, leftovers: list[int]) -> None:
    domid = daemon.create("quitter", "pvguest", "console=hvc0 idle_s=10")
    wait_for("it to watch control/shutdown", lambda: READY in console_log(daemon, "quitter"))
    pid = daemon.domains()["quitter"]["pid"]
    leftovers.append(pid)
    kill_daemon(daemon)
    running = threads(pid)
    # its vCPU, timer and waiter threads end when the guest powers off (after 10 s idle,
    # and the kit's 10 s wait for a console back end to take its last line)
    wait_for("the guest to power off", lambda: threads(pid) <= running - 2)
    assert alive(pid)  # the process waits for a daemon to hear how it ended
    second = next_daemon(tmp_path)
    try:
        wait_for("the on_poweroff action", lambda: "quitter" not in second.domains())
        assert f"(XEN) domain {domid} (quitter) poweroff" in second.dmesg()
        assert b"pvguest: idle for 10 s, shutting down (poweroff)" in \
            console_log(second, "quitter")
        wait_for("its process to end", lambda: not alive(pid))
    finally:
        second.stop()


def test_a_domain_still_being_created_when_its_daemon_died_is_destroyed(
        daemon: Daemon, tmp_path: Path, leftovers: list[int]) -> None:
    """A domain the daemon had not recorded as created (it died creating it) is destroyed
    by the next daemon, as libxl destroys a domain whose creation failed. Simulated by
    taking a running domain out of the record."""
    import json

    domid = daemon.create("half", "pvguest", "")
    pid = daemon.domains()["half"]["pid"]
    leftovers.append(pid)
    kill_daemon(daemon)
    record = json.loads((tmp_path / "host.json").read_text())
    record["domains"] = [d for d in record["domains"] if d["spec"]["domid"] != domid]
    (tmp_path / "host.json").write_text(json.dumps(record))
    second = next_daemon(tmp_path)
    try:
        wait_for("its process to end", lambda: not alive(pid))
        assert "half" not in second.domains()
        assert groups_of(daemon) == []
        assert f"(XEN) domain {domid} was still being created by the daemon that died: " \
               f"destroyed (process {pid})" in second.dmesg()
        assert not (tmp_path / "domains" / f"{domid}.sock").exists()
        assert not xenstore_exists(second, f"/local/domain/{domid}")
    finally:
        second.stop()


def test_replace_without_a_daemon_says_so_in_one_line(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "pyxen.cli", "daemon", "--replace",
                             "--socket", str(tmp_path / "pyxen.sock")], capture_output=True,
                            text=True, timeout=WAIT_S)
    assert result.returncode == 1
    assert result.stderr == (f"pyxen daemon: --replace: no daemon serves on {tmp_path}/pyxen.sock "
                             f"to take over from (start one without --replace)\n")
