"""The kit's pvguest under a real `pyxen daemon`: a long-running guest that answers xl's
shutdown and reboot through control/shutdown as Linux does (drivers/xen/manage.c), announces
control/feature-poweroff and -reboot, ignores what it cannot do, and talks on its PV console.
Each test has a daemon of its own (the `daemon` fixture, tests/host/conftest.py)."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import time

import pytest

from host.hostkit import READY, Daemon, console_log, start, type_into_console, wait_for
from pyxen.host import procstat

needs_xenstore_utils = pytest.mark.skipif(not shutil.which("xenstore-read"),
                                          reason="Debian's xenstore-utils are not installed")


def xenstore(daemon: Daemon, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(args), env=daemon.env, capture_output=True, text=True,
                          timeout=60)


def test_boot_banner_names_the_domain(daemon: Daemon) -> None:
    domid = start(daemon, "named")
    log = console_log(daemon, "named").decode()
    assert f"pvguest: domid {domid} name named\n" in log
    assert "pvguest: a PV guest for pyxen host mode, on Xen 4.17\n" in log


def test_shutdown_w_powers_off_and_on_poweroff_destroys(daemon: Daemon) -> None:
    start(daemon, "pv")
    done = daemon.pyxen("shutdown", "-w", "pv")
    assert done.returncode == 0
    assert "Domain 1 has been shut down" in done.stdout
    wait_for("the domain to be destroyed", lambda: "pv" not in daemon.domains())
    log = console_log(daemon, "pv")
    assert b"pvguest: shutting down (poweroff)\n" in log
    assert log.rstrip().endswith(b"pvguest: shutting down (poweroff)")  # its last word
    assert "(XEN) domain 1 (pv) poweroff" in daemon.dmesg()


def test_a_request_written_before_the_watch_is_seen(daemon: Daemon) -> None:
    """No waiting for the guest to be ready: xenstored fires a new watch once at once, so a
    request already in control/shutdown is carried out (as Linux's watch handler does)."""
    daemon.create("early", "pvguest", "console=hvc0")
    assert daemon.pyxen("shutdown", "-w", "early").returncode == 0
    wait_for("the domain to be destroyed", lambda: "early" not in daemon.domains())
    assert b"pvguest: shutting down (poweroff)" in console_log(daemon, "early")


def test_reboot_restarts_the_domain_with_a_new_domid(daemon: Daemon) -> None:
    first = start(daemon, "phoenix")
    daemon.pyxen("reboot", "phoenix")
    reborn = wait_for("the restarted domain", lambda: (
        daemon.domains().get("phoenix", {}).get("domid", first) != first))
    assert reborn
    assert daemon.domains()["phoenix"]["domid"] > first
    assert f"(XEN) domain {first} (phoenix) reboot" in daemon.dmesg()
    assert b"pvguest: shutting down (reboot)" in console_log(daemon, "phoenix")
    wait_for("the new domain's banner", lambda: console_log(daemon, "phoenix").count(READY) >= 2)


@needs_xenstore_utils
def test_features_and_the_acknowledged_request_in_xenstore(daemon: Daemon) -> None:
    domid = start(daemon, "featured", on_poweroff="preserve")
    control = f"/local/domain/{domid}/control"
    assert xenstore(daemon, "xenstore-read", f"{control}/feature-poweroff").stdout == "1\n"
    assert xenstore(daemon, "xenstore-read", f"{control}/feature-reboot").stdout == "1\n"
    # an unknown request (this guest cannot suspend) is left where it is and ignored
    assert xenstore(daemon, "xenstore-write", f"{control}/shutdown", "suspend").returncode == 0
    wait_for("the guest to ignore it", lambda: (
        b"pvguest: ignoring shutdown request: suspend\n" in console_log(daemon, "featured")))
    assert xenstore(daemon, "xenstore-read", f"{control}/shutdown").stdout == "suspend\n"
    assert daemon.domains()["featured"]["state"] in ("-b----", "r-----")
    # "halt" is carried out as a poweroff, acknowledged first by clearing the node
    assert xenstore(daemon, "xenstore-write", f"{control}/shutdown", "halt").returncode == 0
    state = wait_for("the domain to shut down", lambda: (
        daemon.domains()["featured"]["state"] if "s" in daemon.domains()["featured"]["state"]
        else None))
    assert state == "---s--"  # preserved, reason poweroff
    assert xenstore(daemon, "xenstore-read", f"{control}/shutdown").stdout == "\n"
    assert b"pvguest: shutting down (poweroff)" in console_log(daemon, "featured")


def test_console_lines_are_answered_and_crash_is_preserved(daemon: Daemon) -> None:
    start(daemon, "talker", on_crash="preserve")
    type_into_console(daemon, "talker", b"hello there\ruptime\r")
    wait_for("the answers", lambda: b"pvguest: up " in console_log(daemon, "talker"))
    log = console_log(daemon, "talker").decode()
    assert "hello there\npvguest: you said hello there\n" in log  # echoed, then answered
    assert re.search(r"^pvguest: up \d+\.\d{3} s$", log, re.M)
    assert daemon.domains()["talker"]["state"] in ("-b----", "r-----")  # still up
    type_into_console(daemon, "talker", b"crash\r")
    state = wait_for("the domain to crash", lambda: (
        daemon.domains()["talker"]["state"] if "s" in daemon.domains()["talker"]["state"]
        else None))
    assert state == "---sc-"
    assert b"pvguest: crashing on request" in console_log(daemon, "talker")
    daemon.pyxen("destroy", "talker")
    assert "talker" not in daemon.domains()


def switches_and_cpu(pid: int) -> tuple[int, int]:
    """Context switches of all the process's threads, and its CPU time (ns)."""
    switches = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        with contextlib.suppress(FileNotFoundError), open(f"/proc/{pid}/task/{tid}/status") as f:
            switches += sum(int(line.split()[1]) for line in f if "ctxt_switches" in line)
    return switches, procstat.cpu_ns(procstat.stat_fields(pid))


def settled(pid: int, window_s: float = 1.0) -> bool:
    """Whether the process stayed still for a window: no thread woke (no context switch),
    and it took under a quarter of the window's time (a guest spinning in its own code
    makes no system call, hence no switch on an idle machine, but takes the whole CPU)."""
    switches, cpu = switches_and_cpu(pid)
    start = time.monotonic_ns()
    time.sleep(window_s)
    switches_after, cpu_after = switches_and_cpu(pid)
    return switches_after == switches and cpu_after - cpu < (time.monotonic_ns() - start) / 4


def test_an_idle_guest_is_blocked_and_quiet(daemon: Daemon) -> None:
    """Idle means blocked in the hypervisor: once its boot has run its course (the last
    line printed, then the first watch event on control/shutdown handled, which prints
    nothing), its process goes still (no thread wakes, no CPU taken over a second), and
    then every reading says blocked (a guest polling in a loop is caught running) and
    nothing more is printed."""
    start(daemon, "sleepy")
    wait_for("the console prompt", lambda: b"type a line" in console_log(daemon, "sleepy"))
    pid = daemon.domains()["sleepy"]["pid"]
    wait_for("the domain's process to go still", lambda: settled(pid))
    before = console_log(daemon, "sleepy")
    states = [daemon.domains()["sleepy"]["state"] for _ in range(20)]
    assert states == ["-b----"] * 20
    assert console_log(daemon, "sleepy") == before
