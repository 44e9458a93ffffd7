"""XenStore over the guest ring: the kit's xenstore guest reads, writes and watches its own
/local/domain/<id> subtree and is refused what its permissions forbid, while the host sees
the same store through Debian's real xenstore clients on a Unix socket."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from guestkit import GUEST_TIMEOUT, Report, image
from pyxen.domain.domain import DomainConfig, Outcome
from pyxen.toolstack.embedded import run_image
from pyxen.toolstack.xenstore_service import attach_xenstore
from pyxen.xenstore import XenStored
from pyxen.xenstore.client import Client
from pyxen.xenstore.unix import ThreadedServer


def test_guest_uses_its_store_over_the_ring(guests, tmp_path) -> None:
    xsd = XenStored()
    outcome = run_image(image("xenstore"), DomainConfig(name="ringer", domid=7), timeout=GUEST_TIMEOUT,
                        prepare=lambda d: attach_xenstore(d, xsd))
    report = Report.parse(outcome.console)
    report.assert_all_passed()
    assert outcome.result.outcome is Outcome.POWEROFF
    assert report.value("xs_name") == "ringer"
    host = Client.in_process(xsd, 0)
    assert host.read("/local/domain/7/data/from-guest") == b"ring ok"
    assert host.read("/local/domain/7/data/in-tx") == b"1"
    assert host.get_perms("/local/domain/7/data") == ["n7"]


@pytest.mark.skipif(not shutil.which("xenstore-read"), reason="xenstore-utils not installed")
def test_host_tools_see_what_the_guest_wrote(guests, tmp_path) -> None:
    xsd = XenStored()
    sock = str(tmp_path / "xs.sock")
    with ThreadedServer(sock, xsd):
        outcome = run_image(image("xenstore"), DomainConfig(name="shared", domid=3), timeout=GUEST_TIMEOUT,
                            prepare=lambda d: attach_xenstore(d, xsd))
        Report.parse(outcome.console).assert_all_passed()
        env = {**os.environ, "XENSTORED_PATH": sock}
        read = subprocess.run(["xenstore-read", "/local/domain/3/data/from-guest"],
                              capture_output=True, text=True, env=env, timeout=120)
        assert read.stdout.strip() == "ring ok"
        name = subprocess.run(["xenstore-read", "/local/domain/3/name"],
                              capture_output=True, text=True, env=env, timeout=120)
        assert name.stdout.strip() == "shared"


def test_a_guest_without_a_store_is_told_so(guests) -> None:
    """No store served: HVM_PARAM_STORE_PFN/EVTCHN are 0 and the guest reports it."""
    outcome = run_image(image("xenstore"), DomainConfig(name="nostore"), timeout=GUEST_TIMEOUT)
    report = Report.parse(outcome.console)
    assert int(report.value("store_pfn"), 16) == 0
    assert "xenstore.advertised" in report.failed


def test_ring_index_corruption_closes_only_that_guests_connection() -> None:
    """A guest scribbling on its ring indices gets XENSTORE_ERROR_RINGIDX, nothing else breaks."""
    import struct

    from pyxen.abi.xs_wire import XENSTORE_ERROR_RINGIDX, XSDI_ERROR, XSDI_REQ_PROD
    from pyxen.xenstore.ring import GuestRing

    xsd = XenStored()
    page = memoryview(bytearray(4096))
    notified = []
    ring = GuestRing(xsd, 5, page, notify=lambda: notified.append(1))
    struct.pack_into("<I", page, XSDI_REQ_PROD, 0x10000)  # 64 KiB "outstanding": impossible
    ring.kick()
    assert struct.unpack_from("<I", page, XSDI_ERROR)[0] == XENSTORE_ERROR_RINGIDX
    assert ring.conn.closed and notified
    other = Client.in_process(xsd, 0)
    other.write("/still/working", b"yes")
    assert other.read("/still/working") == b"yes"


@pytest.mark.skipif(not shutil.which("xenstore-read"), reason="xenstore-utils not installed")
def test_pyxen_run_serves_the_guests_store_on_a_socket(guests, tmp_path) -> None:
    """pyxen run --xenstore-socket: while the guest runs, xenstore-* tools see its domain;
    when it ends, its nodes are gone (released, as libxl does)."""
    import sys
    import time

    sock = tmp_path / "xs.sock"
    env = {**os.environ, "XENSTORED_PATH": str(sock)}
    proc = subprocess.Popen([sys.executable, "-m", "pyxen.cli", "run", str(image("block")),
                             "--cmdline", "idle=8", "--name", "idler",
                             "--xenstore-socket", str(sock), "--timeout", "60"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30  # wait for the domain's node itself, generously
        name = ""
        while name != "idler" and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.05)
            name = subprocess.run(["xenstore-read", "/local/domain/1/name"], env=env,
                                  capture_output=True, text=True, timeout=120).stdout.strip()
        assert name == "idler"
        listing = subprocess.run(["xenstore-ls", "/local/domain/1"], env=env,
                                 capture_output=True, text=True, timeout=120).stdout
        assert "domid = \"1\"" in listing and "memory" in listing
    finally:
        out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert not sock.exists()


def test_unusable_socket_path_is_a_clear_error(guests) -> None:
    import sys

    done = subprocess.run([sys.executable, "-m", "pyxen.cli", "run", str(image("demo")),
                           "--xenstore-socket", "/proc/nope.sock"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert "cannot serve XenStore on /proc/nope.sock" in done.stderr
    assert "Traceback" not in done.stderr


def test_ended_domain_is_released_from_the_store(guests) -> None:
    from pyxen.toolstack.xenstore_service import release_domain

    xsd = XenStored()
    watcher = Client.in_process(xsd, 0)
    watcher.watch("@releaseDomain", "rel")
    assert watcher.next_event(timeout=5).path == "@releaseDomain"  # the initial event
    handles = []

    def attach(domain) -> None:  # type: ignore[no-untyped-def]
        attach_xenstore(domain, xsd)
        handles.append(domain.handle)

    run_image(image("xenstore"), DomainConfig(name="gone", domid=9), timeout=GUEST_TIMEOUT, prepare=attach)
    assert watcher.exists("/local/domain/9/data/from-guest")
    release_domain(xsd, 9, handles[0])
    assert watcher.next_event(timeout=5).path == "@releaseDomain"
    assert not watcher.exists("/local/domain/9")
    assert not watcher.is_domain_introduced(9)
