"""XenStore over the Unix socket: operations per second and watch-event latency.

Reference, measured in the same run: Debian's C xenstored cannot serve requests without a
Xen hypervisor (with --no-domain-init it never opens its database and crashes on the first
request; without it, it needs /dev/xen/privcmd). So the reference is a minimal C server
(benchmarks/xenstore_ref.c, built here by gcc) speaking the same xsd_sockmsg framing with
no database behind it: the ratio is pyxen's throughput over a bare socket round trip
(1.0 = as fast as that; below 1 = slower). Both servers run as separate processes and are
driven by the same load generator.
"""

from __future__ import annotations

import math
import os
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from benchmarks.common import median, report

HERE = Path(__file__).parent
REF_SRC = HERE / "xenstore_ref.c"
REF_BIN = HERE / "build" / "xenstore_ref"
HDR = struct.Struct("=IIII")
XS_DIRECTORY, XS_READ, XS_WATCH, XS_TX_START, XS_TX_END, XS_WRITE, XS_WATCH_EVENT = (
    1, 2, 4, 6, 7, 11, 15,
)
ROUND_SECONDS = 0.25
ROUNDS = 5


def msg(type_: int, payload: bytes, req_id: int = 0, tx_id: int = 0) -> bytes:
    return HDR.pack(type_, req_id, tx_id, len(payload)) + payload


class Conn:
    """A raw protocol connection with just enough parsing to count replies."""

    def __init__(self, path: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(path)
        self.buf = b""

    def replies(self, count: int) -> list[tuple[int, bytes]]:
        out: list[tuple[int, bytes]] = []
        buf = self.buf
        while len(out) < count:
            while len(buf) >= 16:
                type_, _, _, length = HDR.unpack_from(buf)
                if len(buf) < 16 + length:
                    break
                out.append((type_, buf[16 : 16 + length]))
                buf = buf[16 + length :]
                if len(out) == count:
                    break
            if len(out) < count:
                buf += self.sock.recv(262144)
        self.buf = buf
        return out

    def close(self) -> None:
        self.sock.close()


def build_reference() -> bool:
    if REF_BIN.exists() and REF_BIN.stat().st_mtime >= REF_SRC.stat().st_mtime:
        return True
    if not shutil.which("gcc"):
        return False
    REF_BIN.parent.mkdir(exist_ok=True)
    subprocess.run(["gcc", "-O2", "-o", str(REF_BIN), str(REF_SRC)], check=True)
    return True


def wait_listening(path: str, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited: {proc.stderr.read() if proc.stderr else b''!r}")
        try:
            Conn(path).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("server did not start")


def rate(step: Callable[[], int]) -> float:
    """Median over rounds of operations per second; `step` runs a batch, returns its ops."""
    rates = []
    for _ in range(ROUNDS):
        ops, start = 0, time.perf_counter()
        while (elapsed := time.perf_counter() - start) < ROUND_SECONDS:
            ops += step()
        rates.append(ops / elapsed)
    return median(rates)


def simple_op(conn: Conn, request: bytes, inflight: int) -> Callable[[], int]:
    batch = request * inflight

    def step() -> int:
        conn.sock.sendall(batch)
        conn.replies(inflight)
        return inflight

    return step


def transaction_op(conn: Conn, inflight: int) -> Callable[[], int]:
    starts = msg(XS_TX_START, b"\0") * inflight

    def step() -> int:
        conn.sock.sendall(starts)
        ids = [int(p.rstrip(b"\0")) for _, p in conn.replies(inflight)]
        conn.sock.sendall(b"".join(msg(XS_TX_END, b"T\0", tx_id=i) for i in ids))
        conn.replies(inflight)
        return inflight

    return step


def watch_latency(path: str, samples: int = 300) -> float:
    """Median microseconds from sending a WRITE to the watcher receiving the event."""
    watcher, writer = Conn(path), Conn(path)
    watcher.sock.sendall(msg(XS_WATCH, b"/bench/w\0tok\0"))
    watcher.replies(2)  # ack + initial event
    times = []
    for i in range(samples):
        request = msg(XS_WRITE, f"/bench/w/{i % 8}\0x".encode())
        t0 = time.perf_counter()
        writer.sock.sendall(request)
        ((type_, _),) = watcher.replies(1)
        times.append(time.perf_counter() - t0)
        assert type_ == XS_WATCH_EVENT
        writer.replies(1)
    watcher.close()
    writer.close()
    return median(times) * 1e6


def measure(path: str) -> dict[str, float]:
    setup = Conn(path)
    setup.sock.sendall(
        msg(XS_WRITE, b"/bench/r\0value")
        + b"".join(msg(XS_WRITE, f"/bench/d/{c}\0".encode()) for c in "abc")
    )
    setup.replies(4)
    figures: dict[str, float] = {}
    for inflight in (1, 32):
        conn = Conn(path)
        figures[f"read_{inflight}"] = rate(simple_op(conn, msg(XS_READ, b"/bench/r\0"), inflight))
        figures[f"write_{inflight}"] = rate(
            simple_op(conn, msg(XS_WRITE, b"/bench/x\0value"), inflight)
        )
        figures[f"directory_{inflight}"] = rate(
            simple_op(conn, msg(XS_DIRECTORY, b"/bench/d\0"), inflight)
        )
        figures[f"transaction_{inflight}"] = rate(transaction_op(conn, inflight))
        conn.close()
    figures["watch_latency_us"] = watch_latency(path)
    setup.close()
    return figures


def run_server(argv: list[str], path: str,
               figures: Callable[[str], dict[str, float]] = measure) -> dict[str, float]:
    """Start a server process listening on `path`, take `figures` from it, stop it."""
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_listening(path, proc)
        return figures(path)
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        ours_path = os.path.join(tmp, "pyxen.sock")
        ours = run_server(
            [sys.executable, "-m", "pyxen.xenstore.daemon", "--socket", ours_path], ours_path
        )
        ref: dict[str, float] | None = None
        if build_reference():
            ref_path = os.path.join(tmp, "ref.sock")
            ref = run_server([str(REF_BIN), ref_path], ref_path)
        else:
            print("reference skipped: gcc not found, cannot build benchmarks/xenstore_ref.c")

    throughput = [k for k in ours if not k.endswith("_us")]
    print(f"{'figure':<18}{'pyxen':>14}{'C reference':>14}{'ratio':>8}")
    ratios = []
    for key in throughput:
        r = ours[key] / ref[key] if ref else float("nan")
        ratios.append(r)
        ref_txt = f"{ref[key]:>12.0f}/s" if ref else f"{'-':>14}"
        print(f"{key:<18}{ours[key]:>12.0f}/s{ref_txt}{r:>8.2f}")
    lat = ours["watch_latency_us"]
    ref_lat = ref["watch_latency_us"] if ref else float("nan")
    print(f"{'watch latency':<18}{lat:>11.1f} us{ref_lat:>11.1f} us{ref_lat / lat:>8.2f}")
    ratio = math.exp(sum(math.log(r) for r in ratios) / len(ratios)) if ref else float("nan")
    print(f"geometric mean of throughput ratios (pyxen / bare C socket server): {ratio:.3f}")
    report(
        "xenstore",
        ratio,
        "bare C xsd_sockmsg server (benchmarks/xenstore_ref.c); C xenstored needs Xen",
        **{f"{k}_per_s" if not k.endswith("_us") else k: v for k, v in ours.items()},
        **({f"ref_{k}": v for k, v in ref.items()} if ref else {}),
    )


if __name__ == "__main__":
    main()
