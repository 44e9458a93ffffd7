"""What the kernel says about a process or one of its threads (/proc/PID[/task/TID]/stat):
state, CPU time, last processor. Figures users read come from here, not from what was asked."""

from __future__ import annotations

import os

CLK_TCK = os.sysconf("SC_CLK_TCK")
UTIME, STIME, PROCESSOR = 11, 12, 36  # indexes after the command (index 0 is the state)


def stat_fields(pid: int, tid: int | None = None) -> list[str] | None:
    """The stat fields after the command (index 0 is field 3, the state letter); None for
    a process or thread that is gone (or a zombie)."""
    path = f"/proc/{pid}/stat" if tid is None else f"/proc/{pid}/task/{tid}/stat"
    try:
        with open(path) as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return None if fields[0] in ("Z", "X") else fields


def cpu_ns(fields: list[str] | None) -> int:
    """User + system CPU time in those fields (a process's covers all its threads)."""
    if fields is None:
        return 0
    return (int(fields[UTIME]) + int(fields[STIME])) * 1_000_000_000 // CLK_TCK


def any_thread_running(pid: int) -> bool:
    """Whether any thread of `pid` is on a CPU (state R) right now."""
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return False
    return any((f := stat_fields(pid, int(tid))) is not None and f[0] == "R" for tid in tids)
