"""Event delivery latency and timer lateness (issue 4), per vCPU backend.

- send → upcall: vCPU 0 sends on an IPI port bound to vCPU 1, which timestamps the upcall
  (guests/evtchn_latency.c, both vCPUs read the same pvclock), in the steady state after
  LATENCY_WARMUP round trips;
- timer lateness: how long after a one-shot deadline the VIRQ_TIMER upcall runs
  (guests/timer.c);
- periodic timer: VIRQ_TIMER ticks per second at 100 Hz (guests/timer.c), against a host
  thread keeping the same schedule in the same run (Xen's rule: a late tick re-arms a
  period after now), i.e. what this machine's own timers deliver at that moment;
- idle CPU: CPU time a guest blocked for a few seconds costs, against the same guest not
  idling.

Reference, measured in the same run: the bare port-I/O exit round trip of a C KVM loop
(benchmarks/hypercall_ref.c running the same bench guest), i.e. the cost of one trip to the
VMM and back; the ratio says how many bare exits one event delivery is worth.
"""

from __future__ import annotations

import resource
import subprocess
import sys
import time

from benchmarks.common import median, report
from benchmarks.hypercall import build_reference, iterations_address, slope_us, time_reference
from pyxen.domain.loader import parse_pvh_image
from pyxen.toolstack.accel import available_accels
from pyxen.toolstack.demo_cmd import guest_image

SHORT, LONG, ROUNDS = 2_000, 20_000, 5
# Steady state: the first round trips on the software CPU are slower (its scan of the code
# that follows a hypervisor CPUID for RDMSR/WRMSR runs through them: 370 us for the first
# 300 on this project's machine, against about 110 us after a thousand), so that many are
# run and discarded before the samples are taken, on every backend alike.
LATENCY_SAMPLES, LATENCY_WARMUP = 500, 1000
IDLE_SECONDS = 4
PERIOD_S, PERIODIC_SECONDS = 0.010, 2


def bare_exit_us() -> float:
    image = guest_image("bench_hypercall")
    binary, page = build_reference()
    entry, where = parse_pvh_image(image).entry, iterations_address(image)
    return median([
        slope_us([time_reference(binary, image, entry, where, n, page) for n in (SHORT, LONG)],
                 SHORT, LONG)
        for _ in range(ROUNDS)
    ])


def run_guest(name: str, accel: str, *args: str) -> dict[str, list[str]]:
    """Run a kit guest in a child process; its INFO lines by key."""
    out = subprocess.run([sys.executable, "-m", "pyxen.cli", "run", str(guest_image(name)),
                          "--accel", accel, "--timeout", "120", *args],
                         capture_output=True, text=True, timeout=180)
    info: dict[str, list[str]] = {}
    for line in out.stdout.splitlines():
        if line.startswith("INFO "):
            _, key, value = (line.split(" ", 2) + [""])[:3]
            info.setdefault(key, []).append(value)
    if out.returncode:
        raise RuntimeError(f"{name} on {accel} exited {out.returncode}: {out.stderr[-500:]}")
    return info


def host_ticks_per_second(period: float = PERIOD_S, seconds: float = PERIODIC_SECONDS) -> float:
    """A host thread on a periodic schedule with Xen's catch-up rule: the reference for
    the guest's tick rate, since a busy machine delays every sleeper alike."""
    start = now = time.monotonic()
    due, ticks = start + period, 0
    while now - start < seconds:
        time.sleep(max(0.0, due - now))
        now = time.monotonic()
        ticks += 1
        due = due + period if due + period > now else now + period
    return ticks / (now - start)


def idle_cpu_percent(accel: str) -> float:
    def cpu(idle: int) -> float:
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        run_guest("block", accel, "--cmdline", f"idle={idle} idle_how=hlt")
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        return (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)

    return max(0.0, cpu(IDLE_SECONDS) - cpu(0)) / IDLE_SECONDS * 100


def main() -> None:
    reference = bare_exit_us()
    print(f"reference: bare port-I/O exit round trip (C KVM loop): {reference:.2f} us")
    figures: dict[str, float] = {"reference_us": reference}
    ratio = 0.0
    for accel in available_accels():
        lat = run_guest("evtchn_latency", accel, "--vcpus", "2", "--cmdline",
                        f"samples={LATENCY_SAMPLES} warmup={LATENCY_WARMUP}")
        send_median = int(lat["send_to_upcall_median_ns"][0]) / 1e3
        send_p99 = int(lat["send_to_upcall_p99_ns"][0]) / 1e3
        half_round_trip = int(lat["roundtrip_median_ns"][0]) / 2e3
        skewed = int(lat["negative_samples"][0])
        timer = run_guest("timer", accel, "--cmdline", f"seconds={PERIODIC_SECONDS}")
        host_rate = host_ticks_per_second()
        ticks, interval_ns = (int(x) for x in timer["ticks"][0].split())
        guest_rate = ticks / (interval_ns / 1e9)
        late = [int(v) / 1e3 for v in timer["oneshot_late_ns"]]
        late_sorted = sorted(late)
        late_p99 = late_sorted[min(len(late) - 1, round(0.99 * (len(late) - 1)))]
        idle = idle_cpu_percent(accel)
        print(f"{accel}:")
        print(f"  send -> upcall on the other vCPU: median {send_median:.1f} us, "
              f"p99 {send_p99:.1f} us, ratio to a bare exit {send_median / reference:.1f}")
        # The one-way figure compares two vCPUs' clocks; where they disagree (samples that
        # came out negative were clamped to 0) half the round trip is the honest figure.
        print(f"  half a ping-pong round trip:      median {half_round_trip:.1f} us"
              f"{f'  ({skewed} one-way samples negative: vCPU clocks skewed)' if skewed else ''}")
        print(f"  one-shot timer lateness:          median {median(late):.1f} us, "
              f"p99 {late_p99:.1f} us ({len(late)} shots)")
        print(f"  periodic timer at {1 / PERIOD_S:.0f} Hz:          {guest_rate:.1f} ticks/s, "
              f"host thread {host_rate:.1f} ticks/s, ratio {guest_rate / host_rate:.2f}")
        print(f"  idle guest (blocked {IDLE_SECONDS} s):        {idle:.2f} % of a core")
        figures.update({f"{accel}_send_to_upcall_us": send_median,
                        f"{accel}_send_to_upcall_p99_us": send_p99,
                        f"{accel}_half_round_trip_us": half_round_trip,
                        f"{accel}_skewed_samples": skewed,
                        f"{accel}_timer_late_us": median(late),
                        f"{accel}_timer_late_p99_us": late_p99,
                        f"{accel}_periodic_ticks_per_s": guest_rate,
                        f"{accel}_periodic_host_ticks_per_s": host_rate,
                        f"{accel}_idle_cpu_percent": idle})
        if accel == "kvm" or not ratio:
            ratio = send_median / reference
    report("events", ratio, "bare port-I/O exit round trip, C KVM loop, same run", **figures)
