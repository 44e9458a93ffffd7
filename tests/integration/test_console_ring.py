"""The PV console ring every domain gets, as a user of `pyxen run` sees it: the kit's
console_ring guest finds its ring, its output (wrapping the ring many times) arrives whole
and in order, interleaved with console_io in program order; input typed on a terminal or
piped reaches it; a guest that breaks its ring is cut off and still ends normally; the
console log gets the bytes; with a XenStore the console nodes are there as libxl writes
them."""

from __future__ import annotations

import os
import select
import subprocess
import sys
import termios
import time
from pathlib import Path

from guestkit import GUEST_TIMEOUT, Report, image, run_guest
from pyxen.abi.hvm import HVM_PARAM_CONSOLE_EVTCHN
from pyxen.domain.domain import Domain, DomainConfig, Outcome
from pyxen.toolstack.console_service import CONSOLE_GFN, backend_path
from pyxen.toolstack.embedded import run_image
from pyxen.toolstack.run_cmd import XenStoreForGuest
from pyxen.xenstore.client import Client
from pyxen.xenstore.errors import XenStoreError

TEXT = "the quick brown fox jumps over the lazy dog"


def pyxen_run(*args: str, **kw: object) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "pyxen.cli", "run",
                             str(image("console_ring")), "--timeout", "120", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kw)  # type: ignore[call-overload]


def read_until(proc: subprocess.Popen[bytes], marker: bytes, seconds: float = 60) -> bytes:
    """Read the child's stdout until `marker` shows (or it ends / time runs out)."""
    assert proc.stdout is not None
    seen = b""
    deadline = time.monotonic() + seconds
    while marker not in seen and time.monotonic() < deadline:
        ready, _, _ = select.select([proc.stdout], [], [], 0.5)
        if ready:
            chunk = os.read(proc.stdout.fileno(), 4096)
            if not chunk:
                break
            seen += chunk
    return seen


def test_ring_guest_on_each_backend(guests, accel) -> None:
    outcome, report = run_guest("console_ring", accel=accel, timeout=GUEST_TIMEOUT)
    report.assert_all_passed()
    assert outcome.result.outcome is Outcome.POWEROFF
    assert int(report.value("console_pfn"), 16) == CONSOLE_GFN
    lines = [line for line in report.console.splitlines() if line.startswith("P")]
    assert lines == [f"P{i:05d} {TEXT}" for i in range(150)]  # every byte, in order
    assert int(report.value("pattern_bytes")) > 3 * 2048  # the indices wrapped


def test_only_ring_output_shows_under_pyxen_run(guests) -> None:
    proc = pyxen_run("--cmdline", "only_ring=1", stdin=subprocess.DEVNULL)
    out, err = proc.communicate(timeout=180)
    assert proc.returncode == 0, err
    report = Report.parse(out)
    report.assert_all_passed()
    assert "console_ring.pattern_drained" in report.passed


def test_ring_console_io_and_debug_port_lines_come_out_in_program_order(guests) -> None:
    _, report = run_guest("console_ring", cmdline="interleave=9", timeout=GUEST_TIMEOUT)
    report.assert_all_passed()
    order = [line for line in report.console.splitlines() if line.startswith("ORDER")]
    sources = ("ring", "console_io", "debugcon")
    assert order == [f"ORDER {k} {sources[k % 3]}" for k in range(27)]


def test_typed_input_reaches_the_guest_and_the_terminal_is_restored(guests) -> None:
    master, slave = os.openpty()
    try:
        before = termios.tcgetattr(slave)
        proc = pyxen_run("--cmdline", "echo=9 wait_s=300", stdin=slave)
        shown = read_until(proc, b"echo_ready")
        assert b"echo_ready" in shown, shown
        during = termios.tcgetattr(slave)
        assert not during[3] & (termios.ICANON | termios.ECHO | termios.ISIG)  # raw input
        os.write(master, b"typed\x03in!")  # Ctrl-C is a key for the guest, not a signal
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        assert b"ECHO typed\x03in!\n" in shown + out
        assert termios.tcgetattr(slave) == before
    finally:
        os.close(master)
        os.close(slave)


def test_escape_key_stops_the_domain_and_restores_the_terminal(guests) -> None:
    master, slave = os.openpty()
    try:
        before = termios.tcgetattr(slave)
        # The guest waits for input far longer than a busy host can delay it: the escape,
        # not the guest's own deadline, must end the domain.
        proc = pyxen_run("--cmdline", "echo=100 wait_s=300", stdin=slave)
        assert b"echo_ready" in read_until(proc, b"echo_ready")
        os.write(master, b"ab\x1d")  # Ctrl-]
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 130, err  # stopped as by Ctrl-C
        assert b"console escape" in err and b"Traceback" not in err
        assert termios.tcgetattr(slave) == before
    finally:
        os.close(master)
        os.close(slave)


def test_piped_input_reaches_the_guest_and_eof_leaves_it_running(guests) -> None:
    proc = pyxen_run("--cmdline", "echo=6 wait_s=3", stdin=subprocess.PIPE)
    out, err = proc.communicate(b"pipe", timeout=180)  # 4 bytes, then EOF
    # EOF stops the feeding, not the domain: it waits 3 s for its 6 bytes, reports, ends.
    assert proc.returncode == 0, err
    assert b"ECHO pipe\n" in out
    report = Report.parse(out)
    assert "console_ring.echo_received" in report.failed  # 4 of 6 bytes: it said so


def test_piped_input_larger_than_the_ring_is_not_dropped(guests) -> None:
    data = bytes(ord("a") + i % 26 for i in range(1000)) * 3  # 3000 bytes > the 1 KiB ring
    proc = pyxen_run("--cmdline", "echo=1024", stdin=subprocess.PIPE)
    out, err = proc.communicate(data, timeout=180)
    assert proc.returncode == 0, err
    assert b"ECHO " + data[:1024] + b"\n" in out


def test_a_guest_corrupting_its_ring_is_cut_off_and_ends_normally(guests) -> None:
    proc = pyxen_run("--cmdline", "corrupt=1", stdin=subprocess.DEVNULL)
    out, err = proc.communicate(timeout=180)
    assert proc.returncode == 0, err
    report = Report.parse(out)
    report.assert_all_passed()
    assert b"BEFORE corruption" in out and b"AFTER corruption" not in out
    assert err.count(b"no longer serving its console") == 1
    assert b"Traceback" not in err


def test_console_log_gets_the_bytes(guests, tmp_path: Path) -> None:
    log = tmp_path / "guest.log"
    log.write_bytes(b"earlier run\n")
    proc = pyxen_run("--cmdline", "only_ring=1", "--console-log", str(log),
                     stdin=subprocess.DEVNULL)
    out, err = proc.communicate(timeout=180)
    assert proc.returncode == 0, err
    assert log.read_bytes() == b"earlier run\n" + out  # appended, exactly what was shown
    assert b"RESULT" in out


def test_console_log_that_cannot_be_opened_is_one_line(guests) -> None:
    proc = pyxen_run("--console-log", "/proc/no/such.log", stdin=subprocess.DEVNULL)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 1
    assert b"cannot open the console log /proc/no/such.log" in err
    assert b"Traceback" not in err


def test_xenstore_console_nodes_as_libxl_writes_them(guests) -> None:
    seen: dict[str, object] = {}
    store = XenStoreForGuest(True, None, DomainConfig(domid=4))

    def prepare(domain: Domain) -> None:
        store.attach(domain)
        xs = Client.in_process(store.xenstored, 0)  # type: ignore[arg-type]
        front = "/local/domain/4/console"
        seen.update({key: xs.read(f"{front}/{key}").decode()
                     for key in ("ring-ref", "port", "type", "limit", "output", "tty",
                                 "backend", "backend-id")})
        seen["front_perms"] = xs.get_perms(front)
        seen["ring_perms"] = xs.get_perms(f"{front}/ring-ref")
        seen["backend_id_perms"] = xs.get_perms(f"{front}/backend-id")
        seen["backend_state"] = xs.read(f"{backend_path(4)}/state").decode()
        seen["backend_frontend"] = xs.read(f"{backend_path(4)}/frontend").decode()
        seen["port_param"] = domain.hvm_params[HVM_PARAM_CONSOLE_EVTCHN]
        guest = Client.in_process(store.xenstored, 4)  # type: ignore[arg-type]
        try:
            guest.write(f"{front}/ring-ref", b"1")
        except XenStoreError as e:
            seen["guest_write"] = e.name
        seen["guest_read"] = guest.read(f"{front}/type").decode()

    with store:
        outcome = run_image(image("console_ring"), DomainConfig(name="withstore", domid=4),
                            timeout=GUEST_TIMEOUT, prepare=prepare)
    Report.parse(outcome.console).assert_all_passed()
    assert seen["ring-ref"] == str(CONSOLE_GFN)
    assert seen["port"] == str(seen["port_param"])
    assert (seen["type"], seen["limit"], seen["output"], seen["tty"]) == \
        ("xenconsoled", "1048576", "pty", "")
    assert seen["backend"] == backend_path(4) and seen["backend-id"] == "0"
    assert seen["front_perms"] == ["n0", "r4"] and seen["ring_perms"] == ["n0", "r4"]
    assert seen["backend_id_perms"] == ["n4", "r0"]
    assert seen["backend_state"] == "1"
    assert seen["backend_frontend"] == "/local/domain/4/console"
    assert seen["guest_write"] == "EACCES" and seen["guest_read"] == "xenconsoled"
    xs = Client.in_process(store.xenstored, 0)  # type: ignore[arg-type]
    assert not xs.exists(backend_path(4))  # removed with the domain
