"""No input makes `pyxen` print a traceback, and stop signals end it cleanly (issue 8).

Each bad input gets one line on stderr naming the problem: exit 2 for bad command-line usage
(argparse's usage line + error), exit 1 for a refused image, configuration or environment.
SIGINT, SIGTERM and SIGHUP stop `pyxen run` and `pyxen xenstored` with one line, the domain
torn down and the socket removed, exit status 128 + signum. Everything here drives the real
command in a subprocess; guests boot on the software CPU (`--accel soft`).
"""

from __future__ import annotations

import importlib.metadata
import os
import resource
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from guestkit import image

PYXEN = [sys.executable, "-m", "pyxen.cli"]
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
QUOTA_OPTIONS = ["-E", "-S", "-W", "-t", "-A", "-M"]


def _argv(args: tuple[str | bytes, ...]) -> list[bytes]:
    return [os.fsencode(a) for a in (*PYXEN, *args)]


def _default_stop_signals() -> None:
    """In the child: SIGINT/SIGHUP as a terminal would deliver them, even if the test runner
    was started in the background or under nohup (ignored signals stay ignored by exec)."""
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.SIG_DFL)


def pyxen(*args: str | bytes, env: dict[str, str] | None = None,
          timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(_argv(args), capture_output=True, text=True,
                          errors="backslashreplace", env=env, timeout=timeout)


def assert_refused(done: subprocess.CompletedProcess[str], *words: str, code: int = 1,
                   prog: str = "pyxen") -> str:
    """Exactly one line on stderr, from `prog`, naming the problem."""
    assert "Traceback" not in done.stderr, done.stderr
    assert done.returncode == code, done.stderr
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith(f"{prog}: "), lines[0]
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


def assert_usage(done: subprocess.CompletedProcess[str], option: str, *words: str,
                 prog: str = "pyxen run") -> str:
    """argparse's usage line(s) then one error line naming the option; exit 2."""
    assert "Traceback" not in done.stderr, done.stderr
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith("usage: "), done.stderr
    last = done.stderr.splitlines()[-1]
    assert last.startswith(f"{prog}: error: argument {option}"), last
    for word in words:
        assert word in last, last
    return last


# --- images and modules that are not files to load (bounded time and memory) ---------------

def _not_a_file(kind: str, tmp_path: Path) -> tuple[str, str]:
    """(path, words expected in the error) for each kind of path."""
    if kind == "dev_zero":
        return "/dev/zero", "character device"
    if kind == "fifo":  # nobody writes: opening it must not wait for a writer
        path = tmp_path / "fifo"
        os.mkfifo(path)
        return str(path), "FIFO"
    if kind == "directory":
        return str(tmp_path), "directory"
    if kind == "sparse":  # 64 GiB that take no disk space
        path = tmp_path / "huge.elf"
        with path.open("wb") as f:
            f.truncate(64 << 30)
        return str(path), "larger than 64 MiB"
    raise AssertionError(kind)


def _limited_memory() -> None:
    """In the child: 1.5 GiB of address space, so reading without end fails fast instead of
    filling the machine (what `pyxen run /dev/zero` did)."""
    resource.setrlimit(resource.RLIMIT_AS, (1536 << 20, 1536 << 20))


KINDS = ["dev_zero", "fifo", "directory", "sparse"]


@pytest.mark.parametrize("kind", KINDS)
def test_image_that_is_not_a_loadable_file_is_refused_at_once(kind: str, tmp_path: Path) -> None:
    path, words = _not_a_file(kind, tmp_path)
    start = time.monotonic()
    done = subprocess.run(_argv(("run", path, "--accel", "soft")), capture_output=True,
                          text=True, timeout=60, preexec_fn=_limited_memory)
    assert time.monotonic() - start < 30
    assert_refused(done, path, words)


@pytest.mark.parametrize("kind", KINDS)
def test_ramdisk_that_is_not_a_loadable_file_is_refused_at_once(guests, kind: str,
                                                                tmp_path: Path) -> None:
    path, words = _not_a_file(kind, tmp_path)
    start = time.monotonic()
    done = subprocess.run(_argv(("run", str(image("demo")), "--ramdisk", path, "--accel", "soft")),
                          capture_output=True, text=True, timeout=60, preexec_fn=_limited_memory)
    assert time.monotonic() - start < 30
    assert_refused(done, path, words)


def test_module_larger_than_the_guest_memory_is_refused(guests, tmp_path: Path) -> None:
    big = tmp_path / "initrd"
    big.write_bytes(bytes(17 << 20))
    assert_refused(pyxen("run", str(image("demo")), "--memory", "16", "--ramdisk", str(big),
                         "--accel", "soft"), "module is larger than 16 MiB")


# --- --timeout -------------------------------------------------------------------------------

@pytest.mark.parametrize("value", ["inf", "-inf", "1e308", "nan", "-1", "0", "-0", "1e9"])
def test_timeout_must_be_a_finite_positive_number(value: str) -> None:
    assert_usage(pyxen("run", "kernel.elf", f"--timeout={value}"), "--timeout",
                 "not a number of seconds above 0")


def test_timeout_that_is_not_a_number_is_bad_usage() -> None:
    assert_usage(pyxen("run", "kernel.elf", "--timeout", "soon"), "--timeout", "'soon'")


def test_demo_refuses_an_infinite_timeout(guests) -> None:
    """`pyxen demo` validates --timeout with `pyxen run`'s rule: bad usage."""
    done = pyxen("demo", "--timeout", "inf", "--accel", "soft")
    assert_usage(done, "--timeout", "inf", prog="pyxen demo")


# --- text that is not UTF-8, and names -----------------------------------------------------

def test_non_utf8_cmdline_reaches_the_guest_as_the_bytes_given(guests) -> None:
    """hvm_start_info's command line is bytes: what the user typed goes through, as with xl."""
    done = subprocess.run(_argv(("run", str(image("demo")), "--cmdline", b"A\xff\xfeB",
                                 "--accel", "soft")), capture_output=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert b"Traceback" not in done.stderr
    assert b"INFO cmdline A\xff\xfeB\n" in done.stdout


@pytest.mark.parametrize(("name", "words"), [
    (b"\xff", ("'\\xff'", "not valid UTF-8")),
    (b"a\xe9b", ("not valid UTF-8",)),
    (b"", ("1 to 128 bytes",)),
    (b"x" * 129, ("1 to 128 bytes",)),
    (b"tab\there", ("control characters",)),
])
def test_bad_domain_name_is_refused(guests, name: bytes, words: tuple[str, ...]) -> None:
    done = pyxen("run", str(image("demo")), "--name", name, "--accel", "soft")
    assert_refused(done, "domain name", *words)


def test_non_utf8_image_path_is_named_in_the_error(tmp_path: Path) -> None:
    missing = os.fsencode(tmp_path) + b"/k\xff.elf"
    assert_refused(pyxen("run", missing, "--accel", "soft"), "cannot read kernel image",
                   "k\\xff.elf")


def test_non_utf8_accel_is_bad_usage() -> None:
    assert_usage(pyxen("run", "kernel.elf", "--accel", b"\xff"), "--accel", "invalid choice")


# --- socket paths ----------------------------------------------------------------------------

def test_xenstored_empty_socket_is_bad_usage() -> None:
    assert_usage(pyxen("xenstored", "--socket", ""), "--socket", "empty",
                 prog="pyxen xenstored")


def test_xenstored_empty_xenstored_path_is_refused() -> None:
    env = {**os.environ, "XENSTORED_PATH": ""}
    assert_refused(pyxen("xenstored", env=env), "XENSTORED_PATH", "empty",
                   prog="pyxen xenstored")


def test_xenstored_too_long_socket_is_bad_usage(tmp_path: Path) -> None:
    assert_usage(pyxen("xenstored", "--socket", str(tmp_path / ("s" * 120))), "--socket",
                 "longer than 107 bytes", prog="pyxen xenstored")


def test_run_empty_xenstore_socket_is_bad_usage() -> None:
    assert_usage(pyxen("run", "kernel.elf", "--xenstore-socket", ""), "--xenstore-socket",
                 "empty")


def test_xenstored_socket_in_a_missing_directory_is_refused_not_created(tmp_path: Path) -> None:
    missing = tmp_path / "no" / "such"
    assert_refused(pyxen("xenstored", "--socket", str(missing / "xs.sock")), "no such directory",
                   str(missing), prog="pyxen xenstored")
    assert not (tmp_path / "no").exists()


def test_run_xenstore_socket_in_a_missing_directory_is_refused_not_created(
        guests, tmp_path: Path) -> None:
    missing = tmp_path / "no" / "such"
    done = pyxen("run", str(image("demo")), "--xenstore-socket", str(missing / "xs.sock"),
                 "--accel", "soft")
    assert_refused(done, "cannot serve XenStore", "no such directory")
    assert not (tmp_path / "no").exists()


def test_xenstored_non_utf8_socket_in_a_missing_directory(tmp_path: Path) -> None:
    path = os.fsencode(tmp_path) + b"/\xff/xs.sock"
    assert_refused(pyxen("xenstored", "--socket", path), "no such directory", "\\xff",
                   prog="pyxen xenstored")


@pytest.mark.parametrize(("args", "option", "words"), [
    (("daemon", "--socket", ""), "--socket", "the socket path is empty"),
    (("daemon", "--xenstore-socket", ""), "--xenstore-socket", "the socket path is empty"),
    (("daemon", "--state-dir", ""), "--state-dir", "the directory path is empty"),
    (("list", "--host", ""), "--host", "the socket path is empty"),
    (("destroy", "--host", "", "1"), "--host", "the socket path is empty"),
])
def test_daemon_and_client_empty_paths_are_bad_usage(args: tuple[str, ...], option: str,
                                                     words: str) -> None:
    assert_usage(pyxen(*args), option, words, prog=f"pyxen {args[0]}")


# --- xenstored quotas ------------------------------------------------------------------------

@pytest.mark.parametrize("option", QUOTA_OPTIONS)
@pytest.mark.parametrize("value", ["-5", "2147483648", "1.5", "\u0665"])
def test_xenstored_quota_options_refuse_what_quota_refuses(option: str, value: str) -> None:
    assert_usage(pyxen("xenstored", option, value), option, "not a whole number"
                 if value != "2147483648" else "larger than", prog="pyxen xenstored")
    name = {"-E": "nodes", "-S": "node-size", "-W": "watches", "-t": "transactions",
            "-A": "permissions", "-M": "path-max"}[option]
    assert_usage(pyxen("xenstored", "--quota", f"{name}={value}"), "-Q/--quota", name,
                 prog="pyxen xenstored")


def test_xenstored_unknown_quota_is_bad_usage() -> None:
    assert_usage(pyxen("xenstored", "-Q", "bogus=1"), "-Q/--quota", "WHAT one of nodes",
                 prog="pyxen xenstored")


def test_bad_log_level_is_bad_usage() -> None:
    assert_usage(pyxen("xenstored", "--log-level", "loud"), "--log-level", "invalid choice",
                 prog="pyxen xenstored")


# --- numbers for the domain ------------------------------------------------------------------

@pytest.mark.parametrize(("args", "words"), [
    (("--memory", "99999999999"), ("memory must be between 1 MiB and the host's",)),
    (("--memory", "0"), ("memory must be between 1 MiB",)),
    (("--memory", "-5"), ("memory must be between 1 MiB",)),
    (("--maxmem", "99999999999"), ("maxmem", "the host's")),
    (("--memory", "32", "--maxmem", "16"), ("maxmem (16 MiB)",)),
    (("--vcpus", "100000"), ("vcpus must be between 1 and 128",)),
    (("--vcpus", "0"), ("vcpus must be between 1 and 128",)),
    (("--vcpus", "-1"), ("vcpus must be between 1 and 128",)),
    (("--maxvcpus", "100000"), ("maxvcpus must be between vcpus and 128",)),
    (("--vcpus", "4", "--maxvcpus", "2"), ("maxvcpus",)),
    (("--cmdline", "x" * 5000), ("command line is longer than 4095 bytes",)),
])
def test_out_of_range_config_is_refused(guests, args: tuple[str, ...],
                                        words: tuple[str, ...]) -> None:
    assert_refused(pyxen("run", str(image("demo")), *args, "--accel", "soft"), *words)


@pytest.mark.parametrize(("option", "value"), [
    ("--memory", "lots"), ("--memory", "inf"), ("--memory", "1.5"), ("--vcpus", "two"),
    ("--maxvcpus", "nan"), ("--maxmem", ""), ("--memory", b"\xff"),
])
def test_numbers_that_are_not_integers_are_bad_usage(option: str, value: str | bytes) -> None:
    assert_usage(pyxen("run", "kernel.elf", option, value), option, "invalid int value")


def test_empty_paths_are_bad_usage() -> None:
    assert_usage(pyxen("run", ""), "image", "the path is empty")
    assert_usage(pyxen("run", "kernel.elf", "--ramdisk", ""), "--ramdisk", "the path is empty")


def test_missing_ramdisk_is_refused(guests, tmp_path: Path) -> None:
    assert_refused(pyxen("run", str(image("demo")), "--ramdisk", str(tmp_path / "nope"),
                         "--accel", "soft"), "cannot read module")


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
def test_unreadable_image_is_refused(guests, tmp_path: Path) -> None:
    locked = tmp_path / "locked.elf"
    locked.write_bytes(image("demo").read_bytes())
    locked.chmod(0)
    assert_refused(pyxen("run", str(locked), "--accel", "soft"), "Permission denied")


# --- stdout closed, --version ----------------------------------------------------------------

def test_closed_stdout_does_not_crash_the_guest(guests) -> None:
    """`pyxen run … | head`: the reader goes away, the guest runs on."""
    proc = subprocess.Popen(_argv(("run", str(image("demo")), "--accel", "soft")),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    proc.stdout.close()
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert "Traceback" not in err
    assert err.splitlines() == ["pyxen: stdout is closed: the guest's console output is discarded"]


def test_version() -> None:
    done = pyxen("--version")
    assert done.returncode == 0
    assert done.stdout == f"pyxen {importlib.metadata.version('pyxen')}\n"


# --- stop signals ----------------------------------------------------------------------------

def _message(prog: str, sig: signal.Signals) -> str:
    return f"{prog}: interrupted" if sig == signal.SIGINT else f"{prog}: terminated by {sig.name}"


def _wait_for(condition: Callable[[], bool], what: str, proc: subprocess.Popen[Any],
              bound: float = 60) -> None:
    deadline = time.monotonic() + bound
    while not condition():
        assert proc.poll() is None, f"exited ({proc.returncode}) before {what}"
        assert time.monotonic() < deadline, f"no {what} within {bound} s"
        time.sleep(0.1)


def _connectable(path: Path) -> bool:
    s = socket.socket(socket.AF_UNIX)
    try:
        s.connect(str(path))
        return True
    except OSError:
        return False
    finally:
        s.close()


@pytest.mark.parametrize("sig", STOP_SIGNALS, ids=lambda s: s.name)
def test_signal_stops_pyxen_run_cleanly(guests, sig: signal.Signals, tmp_path: Path) -> None:
    sock = tmp_path / "xs.sock"
    out, err = tmp_path / "out", tmp_path / "err"
    with out.open("wb") as o, err.open("wb") as e:
        proc = subprocess.Popen(_argv(("run", str(image("block")), "--cmdline",
                                       "idle=120 idle_how=block", "--xenstore-socket", str(sock),
                                       "--accel", "soft")),
                                stdout=o, stderr=e, preexec_fn=_default_stop_signals)
    try:
        _wait_for(lambda: b"INFO idle_how" in out.read_bytes(), "idling guest", proc)
        assert sock.exists()
        proc.send_signal(sig)
        proc.wait(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    stderr = err.read_text(errors="backslashreplace")
    assert proc.returncode == 128 + sig, stderr
    assert stderr.splitlines() == [_message("pyxen", sig)]
    assert not sock.exists()


def _stop_when_serving(args: tuple[str, ...], sock: Path,
                       sig: signal.Signals) -> tuple[int, str]:
    """Start `pyxen ARGS`, send `sig` once `sock` accepts connections: status and stderr."""
    proc = subprocess.Popen(_argv(args), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, preexec_fn=_default_stop_signals)
    try:
        _wait_for(lambda: _connectable(sock), "socket", proc)
        proc.send_signal(sig)
        _, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return proc.returncode, stderr


@pytest.mark.parametrize("sig", STOP_SIGNALS, ids=lambda s: s.name)
def test_signal_stops_xenstored_cleanly(sig: signal.Signals, tmp_path: Path) -> None:
    sock = tmp_path / "xs.sock"
    # Zero quotas are real limits (nothing allowed), accepted as the C daemon accepts them.
    status, stderr = _stop_when_serving(("xenstored", "--socket", str(sock), "-E", "0",
                                         "-Q", "watches=0"), sock, sig)
    assert status == 128 + sig, stderr
    assert stderr.splitlines() == [_message("pyxen xenstored", sig)]
    assert not sock.exists()


@pytest.mark.parametrize("sig", (signal.SIGTERM, signal.SIGHUP), ids=lambda s: s.name)
def test_daemon_takes_away_the_directories_it_created(sig: signal.Signals,
                                                      tmp_path: Path) -> None:
    """A daemon told to serve in missing directories makes them, and removes them again
    when it stops with nothing left in them (no domain ran: no logs, no journal). The
    probe's connection is still being served when the signal comes: no traceback."""
    sock = tmp_path / "no" / "such" / "api.sock"
    status, stderr = _stop_when_serving(("daemon", "--socket", str(sock)), sock, sig)
    assert "Traceback" not in stderr, stderr
    assert status == 128 + sig, stderr
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("delay", [0.3, 1.0, 2.0, 3.5])
def test_sigterm_at_any_moment_leaves_nothing_behind(guests, delay: float,
                                                     tmp_path: Path) -> None:
    """Whether it lands while Python starts, while the domain is built, or while the guest
    runs: no traceback, no socket left, and (once pyxen's handlers are in, i.e. unless the
    interpreter was still starting) status 143 with its one line."""
    sock = tmp_path / "xs.sock"
    proc = subprocess.Popen(_argv(("run", str(image("block")), "--cmdline",
                                   "idle=120 idle_how=block", "--xenstore-socket", str(sock),
                                   "--accel", "soft")),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            preexec_fn=_default_stop_signals)
    try:
        time.sleep(delay)
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert "Traceback" not in stderr
    assert not sock.exists()
    if proc.returncode != -signal.SIGTERM:  # killed by the default action while starting
        assert proc.returncode == 143, stderr
        assert stderr.splitlines() == ["pyxen: terminated by SIGTERM"]
