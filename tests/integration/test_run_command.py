"""`pyxen run` and `pyxen demo` as a user runs them: console on stdout, documented exit codes
for every way a domain ends, clear one-line errors for bad input and never a traceback.
Commands that boot a guest run on each vCPU backend (`--accel`, the `accel` fixture)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from guestkit import image
from pyxen.xenstore.client import Client
from pyxen.xenstore.errors import XenStoreError

PYXEN = [sys.executable, "-m", "pyxen.cli"]


def pyxen(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*PYXEN, *args], capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize(
    ("cmdline", "code", "outcome"),
    [
        ("shutdown=poweroff", 0, None),
        ("shutdown=reboot", 4, "reboot"),
        ("shutdown=suspend", 5, "suspend"),
        ("shutdown=crash", 3, "crash"),
        ("shutdown=watchdog", 6, "watchdog"),
        ("shutdown=exception", 3, "crash"),
        ("shutdown=clihlt", 0, None),  # Xen: all vCPUs offline → poweroff
        ("shutdown=poweroff code=reboot", 4, "reboot"),  # SCHEDOP_shutdown_code wins
    ],
)
def test_exit_code_tells_how_the_guest_ended(guests, accel: str, cmdline: str, code: int,
                                             outcome) -> None:
    done = pyxen("run", str(image("sched")), "--cmdline", cmdline, "--timeout", "30",
                 "--accel", accel)
    assert done.returncode == code, done.stderr
    assert "RESULT" in done.stdout
    assert "Traceback" not in done.stderr
    if outcome:
        assert f"domain guest {outcome}" in done.stderr


def test_exception_in_the_guest_is_reported_and_crashes_it(guests, accel: str) -> None:
    done = pyxen("run", str(image("sched")), "--cmdline", "shutdown=exception", "--accel", accel)
    assert done.returncode == 3
    assert "PANIC exception vector=14" in done.stdout


@pytest.mark.parametrize("how", ["hang", "spin"])
def test_a_hung_guest_is_stopped_by_timeout(guests, accel: str, how: str) -> None:
    start = time.monotonic()
    done = pyxen("run", str(image("sched")), "--cmdline", f"shutdown={how}", "--timeout", "2",
                 "--accel", accel)
    assert done.returncode == 7, done.stderr
    assert "timeout" in done.stderr
    assert time.monotonic() - start < 20


def test_trace_logs_each_hypercall_with_its_result(guests, accel: str) -> None:
    done = pyxen("run", str(image("demo")), "--trace", "--accel", accel)
    assert done.returncode == 0
    assert "xen_version(XENVER_version" in done.stderr
    assert "memory_op(XENMEM_add_to_physmap" in done.stderr
    assert "sched_op(SCHEDOP_shutdown" in done.stderr
    assert "= 0" in done.stderr


def test_demo_command(guests, accel: str) -> None:
    done = pyxen("demo", "--accel", accel)
    assert done.returncode == 0, done.stderr
    assert "pyxen guest kit demo" in done.stdout
    assert "Goodbye from the demo guest." in done.stdout


def test_auto_accel_says_which_backend_it_chose(guests) -> None:
    """`--accel auto` (the default) names its choice and the reason in one stderr line."""
    done = pyxen("run", str(image("demo")))
    assert done.returncode == 0, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.startswith("pyxen: accel ")]
    assert len(lines) == 1, done.stderr
    chosen = lines[0].split()[2]
    assert chosen in ("kvm", "soft")
    assert "(" in lines[0] and lines[0].endswith(")")


def test_unknown_accel_is_bad_usage() -> None:
    done = pyxen("run", "whatever.elf", "--accel", "tcg")
    assert done.returncode == 2
    assert "invalid choice" in done.stderr


def _refused(*args: str) -> str:
    done = pyxen("run", *args)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "Traceback" not in done.stderr
    assert done.stderr.startswith("pyxen: ")
    return done.stderr


def test_missing_image_is_refused(tmp_path: Path) -> None:
    assert "cannot read kernel image" in _refused(str(tmp_path / "nope.elf"))


def test_non_elf_image_is_refused(tmp_path: Path) -> None:
    bad = tmp_path / "kernel"
    bad.write_text("not a kernel\n")
    assert "not an ELF file" in _refused(str(bad))


def test_elf_without_pvh_note_is_refused() -> None:
    assert "no XEN_ELFNOTE_PHYS32_ENTRY note" in _refused(sys.executable)


def test_wrong_machine_is_refused(guests, tmp_path: Path) -> None:
    raw = bytearray(image("demo").read_bytes())
    raw[18:20] = (40).to_bytes(2, "little")  # EM_ARM
    bad = tmp_path / "arm.elf"
    bad.write_bytes(raw)
    assert "is not x86" in _refused(str(bad))


def test_truncated_image_is_refused(guests, tmp_path: Path) -> None:
    bad = tmp_path / "short.elf"
    bad.write_bytes(image("demo").read_bytes()[:3000])
    assert "truncated" in _refused(str(bad)) or "malformed" in _refused(str(bad))


def test_image_larger_than_memory_is_refused(guests) -> None:
    assert "MiB of memory" in _refused(str(image("demo")), "--memory", "1")


def test_bad_memory_settings_are_refused(guests) -> None:
    assert "maxmem" in _refused(str(image("demo")), "--memory", "32", "--maxmem", "16")
    assert "vcpus" in _refused(str(image("demo")), "--vcpus", "0")


def test_store_socket_appears_with_the_domain_nodes_already_in_it(guests, tmp_path: Path) -> None:
    """pyxen run --xenstore-socket binds the socket only once the domain's nodes are in the
    store, so the first client that connects reads them. The test waits for the node itself
    (within 30 s), not for the socket file; then a SIGTERM stops the run, socket removed."""
    sock = tmp_path / "xs.sock"
    proc = subprocess.Popen([*PYXEN, "run", str(image("block")), "--cmdline",
                             "idle=120 idle_how=block", "--name", "idler",
                             "--xenstore-socket", str(sock), "--accel", "soft"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGTERM, signal.SIG_DFL))
    first_read: bytes | str | None = None  # what the first connection saw
    name: bytes | str | None = None
    listing: list[str] = []
    try:
        deadline = time.monotonic() + 30
        while name != b"idler":
            assert proc.poll() is None, proc.communicate()[1]
            assert time.monotonic() < deadline, f"/local/domain/1/name is {name!r} after 30 s"
            try:
                with Client(str(sock), timeout=120) as xs:
                    try:
                        name = xs.read("/local/domain/1/name")
                    except XenStoreError as e:
                        name = e.name
                    if first_read is None:
                        first_read = name
                    listing = xs.ls("/local/domain/1") if name == b"idler" else []
            except OSError:  # no socket yet
                time.sleep(0.1)
        assert first_read == b"idler", "the socket was served before the domain's nodes"
        assert {"name", "domid", "memory", "vm"} <= set(listing)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert err.splitlines() == ["pyxen: terminated by SIGTERM"]
    assert not os.path.exists(sock)
