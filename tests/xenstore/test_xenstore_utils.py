"""Debian's xenstore-utils, unmodified, against a real `pyxen xenstored` process."""

from __future__ import annotations

import glob
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from .helpers import start_daemon, stopped_daemon

pytestmark = pytest.mark.skipif(
    not shutil.which("xenstore-read"), reason="Debian xenstore-utils not installed"
)


def run(env: dict[str, str], *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=20, check=check)


def test_write_read_ls_list_exists_rm(utils_env: dict[str, str]) -> None:
    run(utils_env, "xenstore-write", "/vm/1/name", "guest one", "/vm/1/memory", "512")
    assert run(utils_env, "xenstore-read", "/vm/1/name").stdout == "guest one\n"
    assert run(utils_env, "xenstore-list", "/vm/1").stdout == "name\nmemory\n"
    ls = run(utils_env, "xenstore-ls", "/vm").stdout
    assert ls == '1 = ""\n name = "guest one"\n memory = "512"\n'
    assert run(utils_env, "xenstore-exists", "/vm/1").returncode == 0
    run(utils_env, "xenstore-rm", "/vm/1/name")
    assert run(utils_env, "xenstore-exists", "/vm/1/name", check=False).returncode == 1
    missing = run(utils_env, "xenstore-read", "/vm/1/name", check=False)
    assert missing.returncode == 1 and "couldn't read path /vm/1/name" in missing.stderr


def test_chmod_and_ls_with_permissions(utils_env: dict[str, str]) -> None:
    run(utils_env, "xenstore-write", "/perm/node", "v")
    run(utils_env, "xenstore-chmod", "/perm/node", "n0", "r5", "b7")
    out = run(utils_env, "xenstore-ls", "-p", "/perm").stdout
    assert out.startswith('node = "v"') and out.rstrip().endswith("(n0,r5,b7)")
    full = run(utils_env, "xenstore-ls", "-f", "/perm").stdout
    assert full == '/perm/node = "v"\n'


def test_watch_prints_events(utils_env: dict[str, str]) -> None:
    proc = subprocess.Popen(
        ["xenstore-watch", "-n", "3", "/watched"], env=utils_env, stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    assert proc.stdout.readline() == "/watched\n"  # initial event
    run(utils_env, "xenstore-write", "/watched/a", "1")
    assert proc.stdout.readline() == "/watched/a\n"
    run(utils_env, "xenstore-rm", "/watched")
    assert proc.stdout.readline() == "/watched\n"
    assert proc.wait(timeout=120) == 0


def test_long_directory_listing(utils_env: dict[str, str]) -> None:
    names = [f"entry-number-{i:05d}" for i in range(250)]  # list > 4096 bytes
    args = [x for n in names for x in (f"/long/{n}", "")]
    run(utils_env, "xenstore-write", *args)
    assert run(utils_env, "xenstore-list", "/long").stdout.split() == names


CONTROL = sorted(glob.glob("/usr/lib/xen-*/bin/xenstore-control"))


@pytest.mark.skipif(not CONTROL, reason="xenstore-control binary (xen-utils) not installed")
def test_xenstore_control(utils_env: dict[str, str]) -> None:
    control = CONTROL[-1]
    assert "quota" in run(utils_env, control, "help").stdout
    assert "watches          :      128 Watches per domain" in run(utils_env, control, "quota").stdout
    run(utils_env, control, "quota", "set", "watches", "64")
    assert "watches          :       64" in run(utils_env, control, "quota").stdout


def test_sigterm_exits_cleanly(tmp_path: Path) -> None:
    sock = str(tmp_path / "t.sock")
    proc = start_daemon(sock)
    err = stopped_daemon(proc, signal.SIGTERM)
    assert proc.returncode == 143 and b"Traceback" not in err
    assert not os.path.exists(sock)


def test_sigint_exits_cleanly(tmp_path: Path) -> None:
    sock = str(tmp_path / "i.sock")
    proc = start_daemon(sock)
    err = stopped_daemon(proc, signal.SIGINT)
    assert proc.returncode == 130 and b"Traceback" not in err


def test_unbindable_socket_is_one_line_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    bad = str(blocker / "sock")  # a path under a regular file
    proc = subprocess.run(
        [sys.executable, "-m", "pyxen.xenstore.daemon", "--socket", bad],
        capture_output=True,
        text=True,
        timeout=20,
    )
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "cannot listen on" in lines[0]


def test_second_daemon_on_live_socket_refuses(daemon: str) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "pyxen.xenstore.daemon", "--socket", daemon],
        capture_output=True,
        text=True,
        timeout=20,
    )
    assert proc.returncode == 1 and "in use" in proc.stderr
