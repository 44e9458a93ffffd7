"""Live migration (`pyxen migrate`) between two daemons on this machine, over loopback TCP:
the downtime and the total time of a move, for an idle guest and for one that keeps
writing its memory, and the pages each pre-copy round sent.

Reference, measured in the same run: the guest's RAM size in bytes sent through a loopback
TCP connection from one Python process to another (the link's own speed, no pyxen). The
ratio is an idle guest's total migration time against that transfer; the downtime is shown
against the issue's goal (20 ms) rather than as a ratio, since no transfer stops a guest.

    python -m benchmarks migrate            # 512 MiB guests, 3 moves each way per case
    python -m benchmarks.migrate --quick    # 128 MiB, 1 move each way
"""

from __future__ import annotations

import argparse
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from benchmarks.common import median, report
from benchmarks.host import Daemon, wait_for
from pyxen.toolstack.guestkit import guest_image

CASES = {  # name: (kit guest, its command line)
    "idle": ("block", "idle=3600 idle_how=block console=hvc0"),
    "dirtying": ("counter", "report_ms=1000 console=hvc0"),  # rewrites 1 MiB, without end
}
DOWNTIME_GOAL_MS = 20.0
CHUNK = 1 << 20


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def loopback_seconds(size: int) -> float:
    """`size` bytes through a loopback TCP connection (sender and receiver threads)."""
    server = socket.create_server(("127.0.0.1", 0))
    got = [0]

    def receive() -> None:
        conn, _ = server.accept()
        with conn:
            while data := conn.recv(CHUNK):
                got[0] += len(data)

    receiver = threading.Thread(target=receive)
    receiver.start()
    chunk = bytes(range(256)) * (CHUNK // 256)
    started = time.monotonic()
    with socket.create_connection(server.getsockname()) as conn:
        for _ in range(size // CHUNK):
            conn.sendall(chunk)
    receiver.join()
    server.close()
    assert got[0] == size
    return time.monotonic() - started


def config(state: Path, name: str, guest: str, cmdline: str, memory: int) -> Path:
    path = state / f"{name}.cfg"
    path.write_text("\n".join((
        f'name = "{name}"', 'type = "pvh"', f'kernel = "{guest_image(guest)}"',
        f"memory = {memory}", 'accel = "soft"', f'extra = "{cmdline}"')) + "\n")
    return path


def moves(hosts: list[tuple[Daemon, int]], name: str, count: int) -> list[dict]:
    """`count` moves of domain `name` back and forth between the two hosts."""
    results = []
    for i in range(count):
        source, _ = hosts[i % 2]
        _, port = hosts[(i + 1) % 2]
        results.append(source.request("migrate", dom=name, host="127.0.0.1", port=port,
                                      downtime_ms=DOWNTIME_GOAL_MS))
    return results


def run(memory: int, count: int) -> None:
    reference = loopback_seconds(memory << 20)
    print(f"reference: {memory} MiB through loopback TCP in {reference * 1000:.0f} ms "
          f"({memory / reference:.0f} MiB/s)")
    figures: dict[str, float | str] = {"reference_s": reference, "memory_mib": memory}
    ratio = 0.0
    with tempfile.TemporaryDirectory(prefix="pyxen-bench-migrate-") as tmp:
        hosts: list[tuple[Daemon, int]] = []
        try:
            for side in "ab":
                state = Path(tmp) / side
                state.mkdir()
                port = free_port()
                hosts.append((Daemon(state, options=["--migrate-listen", f"127.0.0.1:{port}"]),
                              port))
            for case, (guest, cmdline) in CASES.items():
                daemon = hosts[0][0]
                daemon.create(config(daemon.state, case, guest, cmdline, memory))
                wait_for(f"{case} to print", lambda d=daemon, c=case: d.console_line(c))
                results = moves(hosts, case, 2 * count)
                downtime = median([r["downtime_ms"] for r in results])
                total = median([r["total_s"] for r in results])
                rounds = results[-1]["rounds"]
                parts = [median([r["stop_ms"][i] for r in results]) for i in range(3)]
                print(f"{case}: downtime {downtime:.1f} ms (goal {DOWNTIME_GOAL_MS:g}), total "
                      f"{total:.2f} s, {total / reference:.1f} x the reference; last move's "
                      f"rounds (pages): {rounds}; the stop: last copy {parts[0]:.1f} + "
                      f"restore there {parts[1]:.1f} + handover {parts[2]:.1f} ms; medians "
                      f"of {len(results)} moves")
                figures.update({f"{case}_downtime_ms": downtime, f"{case}_total_s": total,
                                f"{case}_stop_ms": ",".join(f"{p:.1f}" for p in parts),
                                f"{case}_rounds": len(rounds),
                                f"{case}_pages_per_round": ",".join(map(str, rounds))})
                if case == "idle":
                    ratio = total / reference
                (hosts[len(results) % 2][0]).destroy(case)
        finally:
            for daemon, _ in hosts:
                daemon.stop()
    report("migrate", ratio, f"{memory} MiB through loopback TCP, Python to Python, same run",
           **figures)


def main(argv: Sequence[str] | None = None) -> None:
    """`python -m benchmarks migrate` runs the full measurement; run this module directly
    for --quick."""
    p = argparse.ArgumentParser(prog="python -m benchmarks.migrate", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="128 MiB guests, one move each way")
    args = p.parse_args(argv or [])
    run(128 if args.quick else 512, 1 if args.quick else 3)


if __name__ == "__main__":
    main(sys.argv[1:])
