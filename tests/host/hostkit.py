"""A real `pyxen daemon` for a test, and the commands a user types against it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from guestkit import Report, image
from pyxen.host.client import HostClient, HostUnavailable
from pyxen.xenstore.client import Client

WAIT_S = 120.0  # a generous bound for "soon" on a busy machine
READY = b"pvguest: watching control/shutdown"


def wait_for(what: str, condition: Callable[[], Any], timeout: float = WAIT_S) -> Any:
    """Poll `condition` until it returns something true; fail naming `what`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")


def assert_stays_still(read: Callable[[], Any], what: str, quiet_s: float = 1.0) -> None:
    """`read()` stops changing (within a while: output already on its way may still land),
    and then stays the same for `quiet_s` more: e.g. a paused guest's console."""
    def quiet() -> bool:
        before = read()
        time.sleep(quiet_s)
        return read() == before

    wait_for(f"{what} to stop changing", quiet)
    seen = read()
    time.sleep(quiet_s)
    assert read() == seen, f"{what} changed again"


class Daemon:
    """`pyxen daemon` in its own state directory, stopped (SIGTERM) at the end."""

    def __init__(self, state_dir: Path, *options: str, log_name: str = "daemon.err",
                 netns: str | None = None) -> None:
        self.dir = state_dir
        self.socket = state_dir / "pyxen.sock"
        self.xenstore = state_dir / "xenstored"
        self.env = dict(os.environ, PYXEN_HOST=str(self.socket),
                        XENSTORED_PATH=str(self.xenstore))
        self.log_path = state_dir / log_name
        self.stderr = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        inside = ["ip", "netns", "exec", netns] if netns else []  # its domains' vifs there
        self.process = subprocess.Popen(
            [*inside, sys.executable, "-m", "pyxen.cli", "daemon", "--socket", str(self.socket),
             *options], stdout=subprocess.DEVNULL, stderr=self.stderr, env=self.env)
        wait_for("the daemon to answer", self.answers)

    def answers(self) -> bool:
        if self.process.poll() is not None:
            raise AssertionError(f"the daemon exited: {self.errors()}")
        try:
            with HostClient(self.socket) as host:
                host.request("list")
            return True
        except (HostUnavailable, OSError):
            return False

    def errors(self) -> str:
        return self.log_path.read_text(errors="replace")

    def pyxen(self, *args: str, check: bool = True, input: str | None = None,
              timeout: float = WAIT_S) -> subprocess.CompletedProcess[str]:
        result = subprocess.run([sys.executable, "-m", "pyxen.cli", *args], env=self.env,
                                capture_output=True, text=True, input=input, timeout=timeout)
        if check and result.returncode != 0:
            raise AssertionError(f"pyxen {' '.join(args)} failed ({result.returncode}): "
                                 f"{result.stderr}")
        return result

    def request(self, op: str, **args: Any) -> dict[str, Any]:
        with HostClient(self.socket) as host:
            return host.request(op, **args)

    def domains(self) -> dict[str, dict[str, Any]]:
        """The host's guests by name (Domain-0 left out)."""
        return {d["name"]: d for d in self.request("list")["domains"] if d["domid"]}

    def config(self, name: str, guest: str, extra: str = "", **settings: object) -> Path:
        """Write an xl config for kit guest `guest` (software CPU, 32 MiB)."""
        lines = [f'name = "{name}"', 'type = "pvh"', f'kernel = "{image(guest)}"',
                 "memory = 32", 'accel = "soft"', f"extra = {json.dumps(extra)}"]
        lines += [f"{key} = {json.dumps(value)}" for key, value in settings.items()]
        path = self.dir / f"{name}.cfg"
        path.write_text("\n".join(lines) + "\n")
        return path

    def create(self, name: str, guest: str, extra: str = "", **settings: object) -> int:
        """`pyxen create` it; its domid (-1 if it has already gone, as a short guest may)."""
        self.pyxen("create", "-q", str(self.config(name, guest, extra, **settings)))
        return int(self.domains().get(name, {}).get("domid", -1))

    def dmesg(self) -> str:
        return str(self.request("dmesg")["text"])

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=WAIT_S)
        finally:
            if self.process.poll() is None:
                self.process.kill()
            self.stderr.close()


# --- the kit's pvguest (guests/pvguest.c) ------------------------------------------------
def console_log(daemon: Daemon, name: str) -> bytes:
    path = daemon.dir / "console" / f"guest-{name}.log"
    return path.read_bytes() if path.exists() else b""


def start(daemon: Daemon, name: str, **settings: object) -> int:
    """Create a pvguest on the PV console and wait until it watches control/shutdown."""
    domid = daemon.create(name, "pvguest", "console=hvc0", **settings)
    wait_for(f"{name} to watch control/shutdown", lambda: READY in console_log(daemon, name))
    return domid


def type_into_console(daemon: Daemon, name: str, keys: bytes) -> None:
    """`pyxen console NAME`, type `keys`, leave with Ctrl-]."""
    session = subprocess.run([sys.executable, "-m", "pyxen.cli", "console", name],
                             env=daemon.env, input=keys + b"\x1d", capture_output=True,
                             timeout=WAIT_S)
    assert session.returncode == 0, session.stderr


def finished(daemon: Daemon, name: str) -> Report | None:
    """Guest `name`'s report once its RESULT line is in its console log, else None."""
    report = Report.parse(console_log(daemon, name))
    return report if report.result is not None else None


def run_pair(daemon: Daemon, guest: str, first: tuple[str, str], second: tuple[str, str],
             timeout: float = 600) -> tuple[Report, Report]:
    """Create two domains of kit guest `guest` ((name, cmdline) each, on hvc0), tell each
    who its peer is (its data/peer, written as dom0 as a toolstack would), and wait for
    both reports, every check of both passed."""
    domids = [daemon.create(name, guest, f"{extra} console=hvc0") for name, extra in
              (first, second)]
    assert min(domids) > 0, f"a domain of the pair did not start: {domids}"
    with Client(str(daemon.xenstore), timeout=60) as xs:
        xs.write(f"/local/domain/{domids[0]}/data/peer", str(domids[1]))
        xs.write(f"/local/domain/{domids[1]}/data/peer", str(domids[0]))
    reports = [wait_for(f"{name} to finish", lambda n=name: finished(daemon, n),
                        timeout=timeout) for name, _ in (first, second)]
    for report in reports:
        report.assert_all_passed()
    return reports[0], reports[1]
