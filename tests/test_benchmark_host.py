"""The helpers `python -m benchmarks host` reads its figures with: /proc's kB fields, the
guest RAM a process holds in memfds, a process's first output line, and its options. The
figures themselves are the benchmark's business: nothing here is timed."""

from __future__ import annotations

import mmap
import os
import subprocess
import sys
import time

import pytest
from benchmarks import host

PAGE = mmap.PAGESIZE

SMAPS_ROLLUP = """\
560abe883000-7ffc3db82000 ---p 00000000 00:00 0                          [rollup]
Rss:               31760 kB
Pss:               29274 kB
Pss_Anon:          20112 kB
Pss_File:           9000 kB
Pss_Shmem:           162 kB
Shared_Clean:       1608 kB
AnonHugePages:         0 kB
"""

MEMINFO = """\
MemTotal:       24684132 kB
MemFree:        23913152 kB
MemAvailable:   24138900 kB
HugePages_Total:       0
Hugepagesize:       2048 kB
"""


def test_kib_fields_reads_kb_lines_and_skips_the_rest() -> None:
    rollup = host.kib_fields(SMAPS_ROLLUP)
    assert rollup["Pss"] == 29274 and rollup["Pss_Shmem"] == 162 and rollup["Pss_File"] == 9000
    assert not any("rollup" in key or "560abe" in key for key in rollup)
    info = host.kib_fields(MEMINFO)
    assert info == {"MemTotal": 24684132, "MemFree": 23913152, "MemAvailable": 24138900,
                    "Hugepagesize": 2048}


def test_memfd_pages_count_once_as_ram_and_as_shared_memory() -> None:
    fd = os.memfd_create("bench-test", os.MFD_CLOEXEC)
    dup = os.dup(fd)  # the same memfd twice must count once
    try:
        os.ftruncate(fd, 256 * PAGE)
        before = host.process_memory(os.getpid())
        with mmap.mmap(fd, 256 * PAGE, mmap.MAP_SHARED) as m:
            for page in range(64):  # touch a quarter of it
                m[page * PAGE] = 1
            after = host.process_memory(os.getpid())
        touched_kib = 64 * PAGE // 1024
        assert after.ram_kib - before.ram_kib == touched_kib
        assert after.shmem_kib - before.shmem_kib >= touched_kib  # mapped by us alone
        assert after.beyond_ram_kib == after.pss_kib - after.shmem_kib
        assert after.own_kib == after.pss_kib - after.file_kib
    finally:
        os.close(dup)
        os.close(fd)


def test_host_memory_is_total_then_available() -> None:
    total, available = host.host_memory_kib()
    assert 0 < available <= total


def child(code: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE)


def test_read_line_waits_for_a_whole_line_across_writes() -> None:
    proc = child("import sys, time\n"
                 "sys.stdout.write('first '); sys.stdout.flush(); time.sleep(0.2)\n"
                 "print('line\\r'); print('second')")
    assert proc.stdout is not None
    try:
        assert host.read_line(proc.stdout.fileno(), time.monotonic() + 60) == b"first line"
    finally:
        host.stop_process(proc)


def test_read_line_is_none_at_end_of_file_and_past_the_deadline() -> None:
    ended = child("import sys; sys.stdout.write('no newline')")
    silent = child("import time; time.sleep(60)")
    try:
        assert ended.stdout is not None and silent.stdout is not None
        assert host.read_line(ended.stdout.fileno(), time.monotonic() + 60) is None
        assert host.read_line(silent.stdout.fileno(), time.monotonic() + 0.1) is None
    finally:
        host.stop_process(ended)
        host.stop_process(silent)
    assert silent.returncode is not None  # stop_process ended it


def test_options() -> None:
    assert host.parse_args([]) == host.Settings()
    picked = host.parse_args(["--parts", "capacity, start", "--max", "64"])
    assert picked.parts == ("start", "capacity") and picked.cap == 64  # run in PARTS order
    quick = host.parse_args(["--quick"])
    assert quick.cap < host.Settings().cap and quick.rounds < host.Settings().rounds


@pytest.mark.parametrize(("argv", "named"), [(["--parts", "start,nosuch"], "nosuch"),
                                             (["--parts", ","], "(none given)"),
                                             (["--max", "0"], "at least 1")])
def test_bad_options_are_one_line_usage_errors(argv: list[str], named: str,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        host.parse_args(argv)
    assert exit_.value.code == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("python -m benchmarks.host: error: ") and named in last
