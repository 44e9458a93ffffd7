"""examples/: the three xl configs run at once under one daemon, and each answers console,
pause, unpause, shutdown and destroy as a user drives them (issue 11's "done when")."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from host.hostkit import WAIT_S, Daemon, wait_for

CHECKOUT = Path(__file__).resolve().parents[2]
EXAMPLES = ("web", "idle", "echo")


def pyxen_here(daemon: Daemon, *args: str, input: bytes | None = None,
               check: bool = True) -> subprocess.CompletedProcess[bytes]:
    """`pyxen ARGS` from the top of the checkout, where the examples' paths start."""
    result = subprocess.run([sys.executable, "-m", "pyxen.cli", *args], cwd=CHECKOUT,
                            env=daemon.env, input=input, capture_output=True, timeout=WAIT_S)
    assert not check or result.returncode == 0, result.stderr.decode(errors="replace")
    return result


def console_log(daemon: Daemon, name: str) -> bytes:
    path = daemon.dir / "console" / f"guest-{name}.log"
    return path.read_bytes() if path.exists() else b""


def test_the_examples_run_side_by_side_and_obey_each_command(daemon: Daemon) -> None:
    for name in EXAMPLES:
        pyxen_here(daemon, "create", "-q", f"examples/{name}.cfg")
    rows = pyxen_here(daemon, "list").stdout.decode().splitlines()[1:]
    assert [row.split()[0] for row in rows] == ["Domain-0", *EXAMPLES]
    wait_for("web's banner", lambda: b"pvguest" in console_log(daemon, "web"))
    wait_for("echo's prompt", lambda: b"press Enter" in console_log(daemon, "echo"))

    for name in EXAMPLES:  # pause and unpause each
        pyxen_here(daemon, "pause", name)
        assert daemon.domains()[name]["state"] == "--p---"
        pyxen_here(daemon, "unpause", name)
        assert "p" not in daemon.domains()[name]["state"]

    # console on each: what is typed reaches the guest, Ctrl-] leaves it running
    pyxen_here(daemon, "console", "web", input=b"hello web\r\x1d")
    wait_for("web's answer", lambda: b"you said hello web" in console_log(daemon, "web"))
    pyxen_here(daemon, "console", "echo", input=b"hello echo\r\x1d")
    wait_for("echo's answer", lambda: b"echo: hello echo" in console_log(daemon, "echo"))
    pyxen_here(daemon, "console", "idle", input=b"\x1d")
    assert set(daemon.domains()) == set(EXAMPLES)

    # shutdown: web honours control/shutdown (-w waits for it); on_poweroff destroys it
    pyxen_here(daemon, "shutdown", "-w", "web")
    assert "web" not in daemon.domains()
    # the idle guest ignores the request, as a guest without a shutdown watch does; destroy
    pyxen_here(daemon, "shutdown", "idle")
    assert "idle" in daemon.domains()
    idle_pid = daemon.domains()["idle"]["pid"]
    pyxen_here(daemon, "destroy", "idle")
    wait_for("idle's process to end", lambda: not Path(f"/proc/{idle_pid}").exists()
             or Path(f"/proc/{idle_pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z")
    # the echo guest powers off when told so on its console
    pyxen_here(daemon, "console", "echo", input=b"quit\r")
    wait_for("echo to power off", lambda: "echo" not in daemon.domains())
    assert "(XEN) domain 3 (echo) poweroff" in daemon.dmesg()


def test_killing_one_examples_process_leaves_the_others_running(daemon: Daemon) -> None:
    for name in EXAMPLES:
        pyxen_here(daemon, "create", "-q", f"examples/{name}.cfg")
    doms = daemon.domains()
    os.kill(doms["idle"]["pid"], signal.SIGKILL)
    wait_for("the daemon to see it", lambda: "idle" not in daemon.domains())
    assert "(XEN) domain 2 (idle) crash: the domain's process killed by SIGKILL" in daemon.dmesg()
    assert set(daemon.domains()) == {"web", "echo"}
    for name in ("web", "echo"):
        pid = doms[name]["pid"]
        assert Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
