"""Host mode (issue 11): a real `pyxen daemon`, real domain processes, kit guests, and the
commands a user types. Each test has a daemon of its own in a temporary directory."""

from __future__ import annotations

import os
import re
import shutil
import signal
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from host.hostkit import WAIT_S, Daemon, assert_stays_still, console_log, wait_for

LONG_IDLE = "idle=3600 idle_how=block"  # a guest that stays up, asleep, until destroyed


def process_state(pid: int) -> str:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]


def alive(pid: int) -> bool:
    try:
        return process_state(pid) not in ("Z", "X")
    except OSError:
        return False


def xenstore_read(daemon: Daemon, path: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["xenstore-read", path], env=daemon.env, capture_output=True,
                          text=True, timeout=60)


needs_xenstore_utils = pytest.mark.skipif(not shutil.which("xenstore-read"),
                                          reason="Debian's xenstore-utils are not installed")


@needs_xenstore_utils
def test_three_domains_run_side_by_side_each_in_its_own_process(daemon: Daemon) -> None:
    ids = [daemon.create(name, "block", LONG_IDLE) for name in ("web", "db", "cache")]
    assert ids == [1, 2, 3]  # Xen hands out ids from 1
    listed = daemon.pyxen("list").stdout.splitlines()
    assert listed[0] == "Name                                        ID   Mem VCPUs\tState\tTime(s)"
    rows = {line.split()[0]: line.split() for line in listed[1:]}
    assert set(rows) == {"Domain-0", "web", "db", "cache"}
    assert [rows[n][1:4] for n in ("web", "db", "cache")] == [["1", "32", "1"], ["2", "32", "1"],
                                                              ["3", "32", "1"]]
    pids = {name: d["pid"] for name, d in daemon.domains().items()}
    assert len(set(pids.values())) == 3 and os.getpid() not in pids.values()
    for domid, name in zip(ids, ("web", "db", "cache"), strict=True):
        assert xenstore_read(daemon, f"/local/domain/{domid}/name").stdout == f"{name}\n"
        assert xenstore_read(daemon, f"/local/domain/{domid}/console/type").stdout == \
            "xenconsoled\n"


def test_a_killed_domain_process_is_a_crash_and_touches_no_other(daemon: Daemon) -> None:
    for name in ("victim", "bystander"):
        daemon.create(name, "block", LONG_IDLE)
    doms = daemon.domains()
    os.kill(doms["victim"]["pid"], signal.SIGKILL)
    wait_for("the victim to be gone", lambda: "victim" not in daemon.domains())
    assert re.search(r"\(XEN\) domain 1 \(victim\) crash: the domain's process killed by "
                     r"SIGKILL; crash action destroy", daemon.dmesg())
    assert alive(doms["bystander"]["pid"])
    assert daemon.domains()["bystander"]["state"] in ("-b----", "r-----")


@needs_xenstore_utils
def test_destroy_removes_the_domain_and_its_store_nodes(daemon: Daemon) -> None:
    domid = daemon.create("doomed", "block", LONG_IDLE)
    pid = daemon.domains()["doomed"]["pid"]
    daemon.pyxen("destroy", "doomed")
    assert "doomed" not in daemon.domains()
    wait_for("the domain's process to end", lambda: not alive(pid))
    gone = xenstore_read(daemon, f"/local/domain/{domid}/name")
    assert gone.returncode != 0
    assert xenstore_read(daemon, f"/local/domain/0/backend/console/{domid}/0/state").returncode != 0
    again = daemon.pyxen("destroy", "doomed", check=False)
    assert again.returncode == 1 and "'doomed' is an invalid domain identifier" in again.stderr


def test_pause_stops_the_domain_and_unpause_resumes_it(daemon: Daemon) -> None:
    """Xen's domain_pause: the guest (a counter reporting every 100 ms) stops, while its
    process runs on to answer for it (not SIGSTOP); after unpause it counts on."""
    daemon.create("sleeper", "counter", "report_ms=100 console=hvc0")
    pid = daemon.domains()["sleeper"]["pid"]
    reports = lambda: console_log(daemon, "sleeper").count(b"counter_progress")  # noqa: E731
    wait_for("a report", reports)
    daemon.pyxen("pause", "sleeper")
    assert daemon.domains()["sleeper"]["state"] == "--p---"
    assert_stays_still(reports, "the paused guest's reports")
    seen = reports()
    assert process_state(pid) != "T"
    daemon.pyxen("unpause", "sleeper")
    wait_for("the guest to report again", lambda: reports() > seen)
    assert "p" not in daemon.domains()["sleeper"]["state"]


@pytest.mark.parametrize(("how", "key", "letters"), [
    ("poweroff", "on_poweroff", "---s--"),
    ("reboot", "on_reboot", "---sr-"),
    ("crash", "on_crash", "---sc-"),
    ("watchdog", "on_watchdog", "---sw-"),
])
def test_preserve_keeps_a_stopped_domain_with_its_reason(daemon: Daemon, how: str, key: str,
                                                       letters: str) -> None:
    daemon.create("kept", "sched", f"shutdown={how}", **{key: "preserve"})
    state = wait_for("the domain to stop", lambda: (daemon.domains()["kept"]["state"]
                                                    if "s" in daemon.domains()["kept"]["state"]
                                                    else None))
    assert state == letters
    daemon.pyxen("destroy", "kept")
    assert "kept" not in daemon.domains()


def test_destroy_action_removes_the_domain(daemon: Daemon) -> None:
    daemon.create("once", "sched", "shutdown=poweroff")  # on_poweroff's default: destroy
    wait_for("the domain to go", lambda: "once" not in daemon.domains())
    assert "(XEN) domain 1 (once) poweroff" in daemon.dmesg()


def test_restart_starts_a_new_domain_with_a_new_id(daemon: Daemon) -> None:
    daemon.create("phoenix", "sched", "shutdown=reboot")  # on_reboot's default: restart
    reborn = wait_for("a restarted domain", lambda: (daemon.domains().get("phoenix", {})
                                                     .get("domid", 1) > 1))
    assert reborn
    assert "(XEN) domain 1 (phoenix) reboot" in daemon.dmesg()


def test_rename_restart_keeps_the_old_domain_under_a_new_name(daemon: Daemon) -> None:
    daemon.create("twin", "sched", "shutdown=crash", on_crash="rename-restart")
    doms = wait_for("the renamed and the new domain", lambda: (
        daemon.domains() if len(daemon.domains()) >= 2 else None))
    old = next(d for name, d in doms.items() if name.startswith("twin-"))
    assert old["domid"] == 1 and old["state"] == "---sc-"
    assert doms["twin"]["domid"] > 1


def test_coredump_destroy_writes_the_guest_memory(daemon: Daemon) -> None:
    daemon.create("dumped", "sched", "shutdown=crash", on_crash="coredump-destroy")
    wait_for("the domain to go", lambda: "dumped" not in daemon.domains())
    cores = wait_for("the core file", lambda: list((daemon.dir / "dump").glob("dumped-*.core")))
    data = cores[0].read_bytes()
    assert data[:4] == b"\x7fELF" and struct.unpack_from("<H", data, 16)[0] == 4  # ET_CORE
    phnum = struct.unpack_from("<H", data, 56)[0]
    loads = [struct.unpack_from("<IIQQQQQQ", data, 64 + 56 * i) for i in range(phnum)]
    assert loads[0][3] == 0  # guest-physical 0 onwards: the guest's low RAM
    assert sum(load[5] for load in loads) >= 32 << 20  # all 32 MiB of RAM (plus special pages)


def test_a_crash_loop_backs_off(daemon: Daemon) -> None:
    daemon.create("looper", "sched", "shutdown=crash", on_crash="restart")
    wait_for("the back-off", lambda: "looper restarting too often" in daemon.dmesg())


def test_create_refuses_bad_input_with_one_line(daemon: Daemon) -> None:
    bad = daemon.dir / "bad.cfg"
    bad.write_text('name = "x"\nmemory = "lots"\n')
    result = daemon.pyxen("create", str(bad), check=False)
    assert result.returncode == 1
    assert re.search(rf"{re.escape(str(bad))}:2: memory: ", result.stderr)
    assert "Traceback" not in result.stderr
    daemon.create("unique", "block", LONG_IDLE)
    twice = daemon.pyxen("create", "-q", str(daemon.config("unique", "block")), check=False)
    assert twice.returncode == 1
    assert twice.stderr.strip() == "pyxen: domain with name unique already exists"
    missing = daemon.config("nokernel", "block")
    missing.write_text(missing.read_text().replace(str(Path(missing).parent), "/nonexistent"))
    text = missing.read_text()
    missing.write_text(re.sub(r'kernel = "[^"]*"', 'kernel = "/nonexistent/k.elf"', text))
    nokernel = daemon.pyxen("create", "-q", str(missing), check=False)
    assert nokernel.returncode == 1 and "/nonexistent/k.elf" in nokernel.stderr
    assert len(nokernel.stderr.strip().splitlines()) == 1
    withdisk = daemon.config("disky", "block", disk=["/nonexistent/x.img,raw,xvda,rw"])
    disky = daemon.pyxen("create", "-q", str(withdisk), check=False)
    assert disky.returncode == 1
    assert disky.stderr.strip() == ("pyxen: disk xvda: cannot open /nonexistent/x.img: "
                                    "No such file or directory")
    assert set(daemon.domains()) == {"unique"}


def test_create_without_a_daemon_says_how_to_start_one(tmp_path: Path) -> None:
    cfg = tmp_path / "x.cfg"
    cfg.write_text('name = "x"\nkernel = "/bin/true"\n')
    result = subprocess.run(
        ["python3", "-m", "pyxen.cli", "create", "-q", str(cfg)], capture_output=True, text=True,
        env=dict(os.environ, PYXEN_HOST=str(tmp_path / "none.sock")), timeout=60)
    assert result.returncode == 1
    assert "no pyxen daemon at" in result.stderr and "pyxen daemon --detach" in result.stderr


def test_list_long_is_libxl_json(daemon: Daemon) -> None:
    import json

    daemon.create("jay", "block", LONG_IDLE, maxmem=48, vcpus=1)
    (entry,) = json.loads(daemon.pyxen("list", "-l").stdout)
    assert entry["domid"] == 1
    assert entry["config"]["c_info"] == {"type": "pvh", "name": "jay",
                                         "uuid": daemon.domains()["jay"]["uuid"]}
    assert entry["config"]["b_info"]["max_memkb"] == 48 * 1024
    assert entry["config"]["b_info"]["target_memkb"] == 32 * 1024
    assert entry["config"]["on_reboot"] == "restart"
    # as libxl_retrieve_domain_configuration: what the domain has now, not the file's values
    daemon.pyxen("sched-credit", "-d", "jay", "-w", "512", "-c", "50")
    daemon.pyxen("mem-set", "jay", "24m")
    (entry,) = json.loads(daemon.pyxen("list", "-l").stdout)
    assert entry["config"]["b_info"]["sched_params"] == {"weight": 512, "cap": 50}
    assert entry["config"]["b_info"]["target_memkb"] == 24 * 1024
    assert entry["config"]["b_info"]["max_memkb"] == 48 * 1024
    assert entry["config"]["b_info"]["avail_vcpus"] == [0]


@needs_xenstore_utils
def test_shutdown_asks_the_guest_through_control_shutdown(daemon: Daemon) -> None:
    domid = daemon.create("polite", "block", LONG_IDLE)
    daemon.pyxen("shutdown", "polite")
    assert xenstore_read(daemon, f"/local/domain/{domid}/control/shutdown").stdout == "poweroff\n"
    daemon.pyxen("reboot", str(domid))
    assert xenstore_read(daemon, f"/local/domain/{domid}/control/shutdown").stdout == "reboot\n"


def test_dmesg_names_each_guest_line_by_domain(daemon: Daemon) -> None:
    daemon.create("talker", "sched", "shutdown=poweroff")
    wait_for("the guest's result line", lambda: "(d1) RESULT" in daemon.dmesg())
    assert re.search(r"^\(d1\) TEST sched\.yield PASS$", daemon.dmesg(), re.M)


def test_rename_domid_domname_uptime(daemon: Daemon) -> None:
    daemon.create("old", "block", LONG_IDLE)
    daemon.pyxen("rename", "old", "new")
    assert daemon.pyxen("domid", "new").stdout == "1\n"
    assert daemon.pyxen("domname", "1").stdout == "new\n"
    assert daemon.pyxen("domid", "old", check=False).returncode == 1
    uptime = daemon.pyxen("uptime").stdout.splitlines()
    assert re.fullmatch(r"new\s+1 \d+:\d\d:\d\d", uptime[2])


def test_rename_refuses_a_name_no_domain_may_have(daemon: Daemon) -> None:
    """The rules `--name` and a config follow hold for a rename too, and Domain-0's name is
    taken: one line each, and the domain keeps its name."""
    daemon.create("keeper", "block", LONG_IDLE)
    for name, words in (("\udcff", "not valid UTF-8"), ("a\nb", "control characters"),
                        ("", "1 to 128 bytes"), ("x" * 129, "1 to 128 bytes"),
                        ("12", "not a domain name"), ("Domain-0", "already exists")):
        done = daemon.pyxen("rename", "keeper", name, check=False)
        assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
        assert len(done.stderr.splitlines()) == 1 and words in done.stderr, done.stderr
    assert daemon.pyxen("domid", "keeper").stdout == "1\n"


@pytest.mark.parametrize("delay", ["nan", "inf", "-1", "1e308"])
def test_top_refuses_a_delay_that_is_not_a_time(daemon: Daemon, delay: str) -> None:
    done = daemon.pyxen("top", "-b", "-d", delay, check=False)
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
    assert done.stderr.splitlines() == [
        f"pyxen: -d: the delay must be 0 to 31536000 seconds (a year), not {float(delay):g}"]


def test_the_daemon_stops_cleanly_on_sigterm(daemon: Daemon) -> None:
    daemon.create("left", "block", LONG_IDLE)
    pid = daemon.domains()["left"]["pid"]
    assert daemon.stop() == 128 + signal.SIGTERM
    wait_for("the domain's process to end", lambda: not alive(pid))
    assert not daemon.socket.exists() and not daemon.xenstore.exists()


def test_create_c_attaches_before_the_first_byte_and_both_ways(daemon: Daemon) -> None:
    """`create -c`: every line the guest printed through its PV console, from the first, and
    what is typed reaches the guest (console_ring's interactive mode echoes each line)."""
    cfg = daemon.config("echo", "console_ring", "console=hvc0 interactive=1")
    session = subprocess.Popen([sys.executable, "-m", "pyxen.cli", "create", "-q", "-c",
                                str(cfg)], env=daemon.env, stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert session.stdin is not None and session.stdout is not None
    seen = bytearray()
    while b"press Enter" not in seen:
        chunk = session.stdout.read1(4096)
        assert chunk, f"the console ended early: {bytes(seen)!r}"
        seen += chunk
    session.stdin.write(b"hello there\r")
    session.stdin.flush()
    while b"echo: hello there" not in seen:
        chunk = session.stdout.read1(4096)
        assert chunk, f"the console ended early: {bytes(seen)!r}"
        seen += chunk
    session.stdin.write(b"quit\r")
    session.stdin.flush()
    out, err = session.communicate(timeout=WAIT_S)
    seen += out
    lines = bytes(seen).decode().splitlines()
    assert lines[0] == "TEST console_ring.advertised PASS"  # nothing before it was missed
    assert "TEST console_ring.interactive_quit PASS" in lines
    assert session.returncode == 0, err
    log = (daemon.dir / "console" / "guest-echo.log").read_bytes()
    assert b"echo: hello there" in log  # the log stays after the domain has gone
    assert "echo" not in daemon.domains()


def test_console_attaches_to_a_running_domain_and_ctrl_bracket_leaves(daemon: Daemon) -> None:
    daemon.create("chat", "console_ring", "console=hvc0 interactive=1")
    wait_for("the prompt in the log", lambda: b"press Enter" in
             (daemon.dir / "console" / "guest-chat.log").read_bytes())
    session = subprocess.run([sys.executable, "-m", "pyxen.cli", "console", "chat"],
                             env=daemon.env, input=b"ping\r\x1d", capture_output=True,
                             timeout=WAIT_S)
    assert session.returncode == 0, session.stderr
    wait_for("the echo in the log", lambda: b"echo: ping" in
             (daemon.dir / "console" / "guest-chat.log").read_bytes())
    assert "chat" in daemon.domains()  # leaving the console leaves the domain running


def test_coredump_restart_dumps_then_starts_a_new_domain(daemon: Daemon) -> None:
    daemon.create("again", "sched", "shutdown=crash", on_crash="coredump-restart")
    wait_for("a restarted domain", lambda: daemon.domains().get("again", {}).get("domid", 1) > 1)
    cores = wait_for("the core file", lambda: list((daemon.dir / "dump").glob("again-*.core")))
    assert cores[0].read_bytes()[:4] == b"\x7fELF"


def test_a_domain_the_host_has_no_memory_for_is_refused(guests, tmp_path: Path) -> None:
    daemon = Daemon(tmp_path, "--max-memory", "64")
    try:
        daemon.create("first", "pvguest", "console=hvc0")  # 32 MiB
        result = daemon.pyxen("create", "-q", str(daemon.config("second", "pvguest",
                                                                 memory=48)), check=False)
        assert result.returncode == 1
        assert result.stderr == ("pyxen: not enough memory for domain second: it needs 48 MiB, "
                                 "the host has 32 MiB free\n")
        info = {key.strip(): value for key, value in
                (line.split(": ", 1) for line in daemon.pyxen("info").stdout.splitlines())}
        assert (info["total_memory"], info["free_memory"]) == ("64", "32")
        assert list(daemon.domains()) == ["first"]
    finally:
        daemon.stop()
