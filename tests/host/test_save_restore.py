"""`pyxen save` and `pyxen restore` under a real daemon, as a user types them.

The counter guest (guests/counter.c) is saved mid-count and restored: it must go on from
the saved count with its own checks of time, timer ticks and memory passing to the end, its
console ring carrying on in the same log. The pvguest, restored, must still hear
`pyxen shutdown` through the XenStore watch it set before the save: its store ring, its
event channel and its watch all came back. What cannot be saved or restored is one line,
and the domain it concerns runs on."""

from __future__ import annotations

import re
import time
from pathlib import Path

from host.hostkit import READY, Daemon, console_log, finished, start, wait_for
from pyxen.host.containment import CONTAINED

PROGRESS = re.compile(rb"counter_progress count=(\d+) ticks=(\d+) now=(\d+)")


def progress(daemon: Daemon, name: str) -> list[tuple[int, int, int]]:
    return [tuple(map(int, m)) for m in PROGRESS.findall(console_log(daemon, name))]


def test_a_saved_domain_is_restored_and_carries_on(daemon: Daemon, tmp_path: Path) -> None:
    daemon.create("counter", "counter", "seconds=8 report_ms=300 console=hvc0")
    wait_for("a few reports", lambda: len(progress(daemon, "counter")) >= 3)
    image = tmp_path / "counter.save"
    saved = daemon.pyxen("save", "counter", str(image))
    assert "Saved domain counter" in saved.stdout
    assert "counter" not in daemon.domains()  # xl save destroys the domain
    before = progress(daemon, "counter")
    time.sleep(1)  # nothing runs meanwhile: the next report carries on from the save
    restored = daemon.pyxen("restore", str(image))
    assert re.search(r"Restored domain counter as domain \d+", restored.stdout)
    # the file was read by a contained process (it is hostile input)
    assert daemon.domains()["counter"]["containment"] == CONTAINED
    report = wait_for("the restored guest to finish", lambda: finished(daemon, "counter"),
                      timeout=300)
    report.assert_all_passed()
    assert {"counter.time_monotonic", "counter.ticks_continue", "counter.tick_cadence",
            "counter.memory_intact"} <= set(report.passed)
    after = progress(daemon, "counter")[len(before):]
    assert after and after[0][0] > before[-1][0] and after[0][2] > before[-1][2]
    assert after[0][2] - before[-1][2] < 1_500_000_000  # the guest's time did not jump by
    #                                                     the time it spent saved (> 1 s)


def test_a_restored_guest_still_hears_its_watches(daemon: Daemon, tmp_path: Path) -> None:
    start(daemon, "web")
    image = tmp_path / "web.save"
    daemon.pyxen("save", "web", str(image))
    daemon.pyxen("restore", str(image))
    assert "web" in daemon.domains()
    daemon.pyxen("shutdown", "-w", "web", timeout=120)
    assert "web" not in daemon.domains()
    assert console_log(daemon, "web").count(READY) == 1  # it never started again


def test_a_checkpoint_leaves_the_domain_running(daemon: Daemon, tmp_path: Path) -> None:
    daemon.create("counter", "counter", "report_ms=300 console=hvc0")
    wait_for("a report", lambda: progress(daemon, "counter"))
    daemon.pyxen("save", "-c", "counter", str(tmp_path / "one.save"))
    seen = len(progress(daemon, "counter"))
    wait_for("the guest to go on", lambda: len(progress(daemon, "counter")) > seen + 1)
    daemon.pyxen("save", "-c", "-p", "counter", str(tmp_path / "two.save"))
    assert daemon.domains()["counter"]["state"][:3] == "--p"


def test_what_cannot_be_saved_or_restored_is_one_line(daemon: Daemon, tmp_path: Path) -> None:
    daemon.create("counter", "counter", "report_ms=300 console=hvc0")
    wait_for("a report", lambda: progress(daemon, "counter"))
    failed = daemon.pyxen("save", "counter", "/proc/no/such/dir/x.save", check=False)
    assert failed.returncode == 1 and failed.stderr.count("\n") == 1, failed.stderr
    assert "cannot write /proc/no/such/dir/x.save" in failed.stderr
    seen = len(progress(daemon, "counter"))
    wait_for("the guest to run on", lambda: len(progress(daemon, "counter")) > seen)

    image = tmp_path / "counter.save"
    daemon.pyxen("save", "counter", str(image))
    data = image.read_bytes()
    for name, content, message in [
        ("empty", b"", "the stream ends inside the image header"),
        ("elf", b"\x7fELF" + bytes(100), "not a pyxen save image"),
        ("cut", data[: len(data) // 2], "the stream ends inside record"),
        ("flipped", data[:4000] + bytes([data[4000] ^ 1]) + data[4001:], "corrupt"),
    ]:
        bad = tmp_path / name
        bad.write_bytes(content)
        result = daemon.pyxen("restore", str(bad), check=False)
        assert result.returncode == 1 and message in result.stderr, (name, result.stderr)
        assert result.stderr.count("\n") == 1, result.stderr
        assert daemon.domains() == {}, f"a refused restore ({name}) left a domain"
    daemon.pyxen("restore", str(image))
    result = daemon.pyxen("restore", str(image), check=False)  # its name is in use now
    assert "domain with name counter already exists" in result.stderr
    assert list(daemon.domains()) == ["counter"]
    for log in [daemon.errors()] + [p.read_text() for p in (daemon.dir / "log").glob("*.log")]:
        assert "Traceback" not in log, log[-3000:]
