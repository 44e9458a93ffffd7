"""A fuzzing guest beside a bystander, under a real `pyxen daemon` (guests/fuzz.c).

The witness (role=witness) fills 8 MiB with a seeded pattern and grants one other page to
the fuzzer; the fuzzer aims its cross-domain calls (grant maps and copies, event channels,
remote shutdown, memory ops naming other domains) at the witness among other ids. Checked:
- the fuzzer finishes its calls and its after-checks, in its own domain process;
- the witness's memory is exactly as it left it and its hypercalls keep giving Xen's answers
  all the while (its own TESTs);
- a second fuzzer, destroyed in the middle of its storm, goes at once: its process and its
  domain are gone and the daemon carries on;
- nothing escaped as an exception in the daemon or a domain process (their logs).
"""

from __future__ import annotations

import os
import re
import time

from host.hostkit import Daemon, finished, wait_for
from pyxen.xenstore.client import Client

CALLS = 50_000


def fuzzer_report(daemon: Daemon, domid: int) -> str:
    """The fuzzer's console_io lines (its console ring it scribbles on), from dmesg."""
    prefix = f"(d{domid}) "
    return "\n".join(line[len(prefix):] for line in daemon.dmesg().splitlines()
                     if line.startswith(prefix))


def test_a_fuzzer_cannot_touch_a_bystander(daemon: Daemon) -> None:
    witness = daemon.create("witness", "fuzz", "role=witness seed=5 seconds=900 peer=2 "
                            "console=hvc0")
    assert witness == 1
    seed = 3  # fixed: see test_fuzz_guest.py
    fuzzer = daemon.create("fuzzer", "fuzz", f"seed={seed} calls={CALLS} peer=1", memory=64)
    assert fuzzer in (2, -1), fuzzer  # -1: it has finished already
    report = wait_for("the fuzzer to finish", lambda: re.search(
        r"RESULT \d+ \d+", fuzzer_report(daemon, 2)) and fuzzer_report(daemon, 2), timeout=900)
    assert "TEST fuzz.survived PASS" in report, f"seed={seed}\n{report[-2000:]}"
    assert not re.findall(r"TEST \S+ FAIL.*", report), f"seed={seed}\n{report[-2000:]}"
    assert int(re.search(r"INFO fuzz_calls (\d+)", report)[1]) >= CALLS

    # A second storm, destroyed halfway: the process goes, nothing else does.
    daemon.create("storm", "fuzz", f"seed={seed + 1} calls=0 peer=1", memory=64)
    storm = daemon.domains()["storm"]
    time.sleep(3)
    pid = int(storm.get("pid", 0))
    started = time.monotonic()
    daemon.pyxen("destroy", "storm")
    wait_for("the storm's domain to go", lambda: "storm" not in daemon.domains(), timeout=30)
    assert time.monotonic() - started < 30
    if pid:
        wait_for("the storm's process to exit", lambda: not os.path.exists(f"/proc/{pid}"),
                 timeout=30)

    with Client(str(daemon.xenstore), timeout=60) as xs:
        xs.write(f"/local/domain/{witness}/data/stop", "1")
    seen = wait_for("the witness's report", lambda: finished(daemon, "witness"), timeout=300)
    seen.assert_all_passed()
    assert {"witness.memory_intact", "witness.hypercalls_answer"} <= set(seen.passed)
    logs = [daemon.errors()] + [path.read_text(errors="replace")  # each domain process's
                                for path in (daemon.dir / "log").glob("domain-*.log")]
    assert len(logs) == 4, "the daemon's log and the three domain processes' logs"
    for log in logs:
        assert "Traceback" not in log and "internal error" not in log, log[-3000:]
