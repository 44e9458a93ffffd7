"""Start a real daemon process for tests."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time


def wait_for_socket(path: str, proc: subprocess.Popen[bytes], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"xenstored exited early: {proc.stderr.read() if proc.stderr else ''}")
        s = socket.socket(socket.AF_UNIX)
        try:
            s.connect(path)
            return
        except OSError:
            time.sleep(0.05)
        finally:
            s.close()
    raise RuntimeError("xenstored did not start listening")


def default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def start_daemon(sock: str, *extra: str) -> subprocess.Popen[bytes]:
    # -X faulthandler: a daemon that hangs can be made to show where (stopped_daemon).
    # preexec_fn: a test run from a shell's background job inherits SIGINT ignored (POSIX),
    # which the daemon rightly honours (nohup); the tests send it as from a terminal.
    proc = subprocess.Popen(
        [sys.executable, "-X", "faulthandler", "-m", "pyxen.xenstore.daemon", "--socket", sock,
         *extra],
        preexec_fn=default_sigint,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    wait_for_socket(sock, proc)
    return proc


def stopped_daemon(proc: subprocess.Popen[bytes], sig: int, timeout: float = 120) -> bytes:
    """Send `sig` and wait for the daemon to end; its stderr. If it does not end in time
    (a hang, not slowness: the bound is generous), fail with the Python stacks of all its
    threads (SIGABRT makes faulthandler print them)."""
    proc.send_signal(sig)
    try:
        return proc.communicate(timeout=timeout)[1]
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGABRT)
        _, err = proc.communicate(timeout=30)
        raise AssertionError(f"xenstored did not stop on signal {sig} within {timeout} s; "
                             f"its threads:\n{err.decode(errors='replace')}") from None
