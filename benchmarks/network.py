"""PV network: UDP throughput from a guest to the host, through netfront → netback → TAP →
bridge.

The kit's netfront guest (guests/netfront.c, `mode=udp_send`) under a `pyxen daemon` of the
benchmark's own, run inside a network namespace with a bridge: it sends `--count` datagrams
of `--size` payload bytes to a receiver on the bridge's address as fast as its TX ring
takes them. The receiver (a Python socket in the same namespace) counts what arrives, from
the first datagram to the last: payload MB/s (MB = 10^6 bytes). Per vCPU backend.

Reference, measured in the same run on the same machine: the same sender as a host process
(Python, the same datagram size and count) over a veth pair between two namespaces, the
same receiver. The ratio is guest / host, on the main backend (kvm where it exists).
Needs root (namespaces, bridges, TAPs).

    python -m benchmarks network
    python -m benchmarks.network --accel soft --count 20000
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from benchmarks.common import report
from benchmarks.host import Daemon, wait_for
from benchmarks.pair import info
from pyxen.toolstack.accel import available_accels
from pyxen.toolstack.guestkit import guest_image

SIZE = 1400
COUNT = 20000
PORT = 9000
TIMEOUT_S = 900.0
RECEIVER = """
import socket, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
s.bind((sys.argv[1], int(sys.argv[2])))
print("listening", flush=True)
s.settimeout(float(sys.argv[3]))
data, _ = s.recvfrom(65536)
first = last = time.perf_counter()
count, total = 1, len(data)
s.settimeout(2.0)
while True:
    try:
        data, _ = s.recvfrom(65536)
    except TimeoutError:
        break
    last = time.perf_counter()
    count += 1
    total += len(data)
print(count, total, last - first, flush=True)
"""
SENDER = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
payload = bytes(int(sys.argv[3]))
for i in range(int(sys.argv[4])):
    s.sendto(i.to_bytes(8, "big") + payload[8:], (sys.argv[1], int(sys.argv[2])))
"""


def netns(*argv: str) -> list[str]:
    return ["ip", "netns", "exec", *argv]


def sh(*argv: str) -> None:
    subprocess.run(argv, check=True, capture_output=True)


class Receiver:
    """The receiver in namespace `ns`, listening on ip:PORT."""

    def __init__(self, ns: str, ip: str, wait_s: float) -> None:
        self.proc = subprocess.Popen(
            netns(ns, sys.executable, "-c", RECEIVER, ip, str(PORT), str(wait_s)),
            stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        if self.proc.stdout.readline().strip() != "listening":
            raise RuntimeError("the UDP receiver did not start")

    def result(self, timeout: float) -> tuple[int, int, float]:
        """(datagrams, payload bytes, seconds from the first to the last)."""
        out, _ = self.proc.communicate(timeout=timeout)
        count, total, seconds = out.split()
        return int(count), int(total), float(seconds)


def rate(count: int, total: int, seconds: float) -> float:
    # the first datagram starts the clock: the bytes after it, over the time they took
    return (total - total / count) / seconds / 1e6 if seconds > 0 else 0.0


def host_reference(size: int, count: int) -> tuple[float, int]:
    """The host's own sender over a veth pair: (MB/s received, datagrams received)."""
    a, b = f"pyxen-bn{os.getpid()}a", f"pyxen-bn{os.getpid()}b"
    sh("ip", "netns", "add", a)
    sh("ip", "netns", "add", b)
    try:
        sh("ip", "link", "add", "bnv0", "netns", a, "type", "veth", "peer", "bnv1", "netns", b)
        for ns, dev, ip in ((a, "bnv0", "10.78.0.1"), (b, "bnv1", "10.78.0.2")):
            sh(*netns(ns, "ip", "addr", "add", f"{ip}/24", "dev", dev))
            sh(*netns(ns, "ip", "link", "set", dev, "up"))
            sh(*netns(ns, "ip", "link", "set", "lo", "up"))
        receiver = Receiver(b, "10.78.0.2", 30)
        subprocess.run(netns(a, sys.executable, "-c", SENDER, "10.78.0.2", str(PORT), str(size),
                             str(count)), check=True, timeout=TIMEOUT_S)
        got = receiver.result(60)
        return rate(*got), got[0]
    finally:
        sh("ip", "netns", "delete", a)
        sh("ip", "netns", "delete", b)


def guest_run(accel: str, size: int, count: int, state: Path) -> tuple[float, int, dict]:
    ns = f"pyxen-bn{os.getpid()}g"
    sh("ip", "netns", "add", ns)
    try:
        for argv in (("ip", "link", "set", "lo", "up"),
                     ("ip", "link", "add", "xenbr0", "type", "bridge"),
                     ("ip", "addr", "add", "10.77.0.1/24", "dev", "xenbr0"),
                     ("ip", "link", "set", "xenbr0", "up")):
            sh(*netns(ns, *argv))
        receiver = Receiver(ns, "10.77.0.1", TIMEOUT_S)
        daemon = Daemon(state, netns=ns)
        try:
            cfg = state / "net.cfg"
            cfg.write_text("\n".join((
                'name = "net"', 'type = "pvh"', f'kernel = "{guest_image("netfront")}"',
                "memory = 32", f'accel = "{accel}"',
                f'extra = "mode=udp_send ip=10.77.0.2 peer=10.77.0.1 port={PORT} '
                f'size={size} count={count} console=hvc0"',
                "vif = ['bridge=xenbr0']")) + "\n")
            daemon.create(cfg)
            found = wait_for("the netfront guest to finish",
                             lambda: info(state / "console" / "guest-net.log"), TIMEOUT_S, 0.1)
        finally:
            daemon.stop()
        got = receiver.result(60)
        return rate(*got), got[0], found
    finally:
        sh("ip", "netns", "delete", ns)


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.network",
                                description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--size", type=int, default=SIZE, help=f"UDP payload bytes (default {SIZE})")
    p.add_argument("--count", type=int, default=COUNT, help=f"datagrams (default {COUNT})")
    p.add_argument("--accel", choices=("kvm", "soft"), action="append",
                   help="a vCPU backend to measure (default: every one this machine has)")
    args = p.parse_args(list(argv or []))
    if os.geteuid() != 0:
        print("python -m benchmarks network: needs root (namespaces, bridges, TAPs)",
              file=sys.stderr)
        return
    host_mbps, host_got = host_reference(args.size, args.count)
    print(f"host sender over veth: {host_mbps:.1f} MB/s ({host_got} of {args.count} datagrams "
          f"of {args.size} bytes arrived)", flush=True)
    figures: dict[str, float | str] = {"host_mbps": host_mbps}
    ratios: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="pyxen-bench-net-") as tmp:
        for accel in args.accel or available_accels():
            state = Path(tmp) / accel
            state.mkdir()
            mbps, got, found = guest_run(accel, args.size, args.count, state)
            ratios[accel] = mbps / host_mbps
            print(f"{accel}: {mbps:.1f} MB/s received, {ratios[accel]:.3f} x host "
                  f"({got} of {args.count} arrived; the guest timed {found.get('udp_mbps')} "
                  f"MB/s handed to its ring)", flush=True)
            figures.update({f"{accel}_mbps": mbps, f"{accel}_received": got,
                            f"{accel}_ratio": ratios[accel]})
    main_accel = "kvm" if "kvm" in ratios else next(iter(ratios))
    report("network", ratios[main_accel],
           f"the same sender as a host process over a veth pair, same run; ratio = guest → "
           f"host UDP payload MB/s received ({main_accel}) / the host's", **figures)


if __name__ == "__main__":
    main(sys.argv[1:])
