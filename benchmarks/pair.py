"""Two kit guests that find each other through XenStore, under a benchmark's own daemon.

The pair guests (interdomain, vchan) read their peer's domid from `data/peer`, which dom0
writes once both domains exist; each prints INFO lines and then RESULT.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path

from benchmarks.host import Daemon, wait_for
from pyxen.toolstack.guestkit import guest_image
from pyxen.xenstore.client import Client


def info(log: Path) -> dict[str, str] | None:
    """The guest's INFO lines by key once it printed RESULT (None before); the first value
    of a key wins. A FAIL line is an error: its figures would mean nothing."""
    if not log.exists():
        return None
    text = log.read_text(errors="replace")
    if "\nRESULT " not in text and not text.startswith("RESULT "):
        return None
    fails = [line for line in text.splitlines() if line.startswith("TEST ") and "FAIL" in line]
    if fails:
        raise RuntimeError(f"{log.stem}: {fails[0]}")
    found: dict[str, str] = {}
    for line in text.splitlines():
        if line.startswith("INFO "):
            key, _, value = line[5:].partition(" ")
            found.setdefault(key, value)
    return found


def run_pair(image: str, accel: str, memory_mib: int, cmdlines: dict[str, str],
             wait: Sequence[str], timeout: float) -> list[dict[str, str]]:
    """Create the two domains (named by `cmdlines`' keys, in its order), tell each the
    other's domid, and return the INFO of the roles in `wait`, each once it finished."""
    kernel = guest_image(image)
    with tempfile.TemporaryDirectory(prefix=f"pyxen-bench-{image}-") as tmp:
        state = Path(tmp)
        daemon = Daemon(state)
        try:
            domids = {}
            for role, cmdline in cmdlines.items():
                cfg = state / f"{role}.cfg"
                cfg.write_text("\n".join((
                    f'name = "{role}"', 'type = "pvh"', f'kernel = "{kernel}"',
                    f"memory = {memory_mib}", f'accel = "{accel}"',
                    f'extra = "{cmdline}"')) + "\n")
                domids[role] = daemon.create(cfg)
            first, second = domids
            with Client(str(daemon.xenstore), timeout=60) as xs:
                xs.write(f"/local/domain/{domids[first]}/data/peer", str(domids[second]))
                xs.write(f"/local/domain/{domids[second]}/data/peer", str(domids[first]))
            logs = state / "console"
            return [wait_for(f"the {role} to finish",
                             lambda role=role: info(logs / f"guest-{role}.log"), timeout, 0.1)
                    for role in wait]
        finally:
            daemon.stop()
