"""Start a real daemon process for tests."""

from __future__ import annotations

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


def start_daemon(sock: str, *extra: str) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "pyxen.xenstore.daemon", "--socket", sock, *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    wait_for_socket(sock, proc)
    return proc
