"""Saving and restoring a domain that shares event channels and grants with another.

Two vchan guests (guests/vchan.c) stream data both ways through granted rings and an event
channel, every byte checked by its receiver. One of them is saved in the middle of the
stream (`pyxen save`: written, then destroyed) while the other runs on and waits for it;
restored, it keeps its domain id, and the two carry on: the saved side's ports are bound
to the same ports of its peer again, its mappings of its peer's grants are made again at
the same frames, and its peer's mappings of its grants move to its new pages with what
the peer wrote meanwhile. Each guest's own checks then show nothing lost or duplicated:
every byte of the stream arrives, in order, exactly once."""

from __future__ import annotations

from pathlib import Path

import pytest

from host.hostkit import Daemon, console_log, finished, wait_for
from pyxen.xenstore.client import Client

MIB = 64  # each way: long enough to be mid-stream when the save comes


def streaming_pair(daemon: Daemon, mib: int = MIB) -> dict[str, int]:
    """A vchan server and client streaming `mib` MiB each way, told of each other, once they
    are connected (streaming starts then); their domids."""
    domids = {name: daemon.create(name, "vchan", f"role={name} mib={mib} console=hvc0")
              for name in ("server", "client")}
    with Client(str(daemon.xenstore), timeout=60) as xs:
        xs.write(f"/local/domain/{domids['server']}/data/peer", str(domids["client"]))
        xs.write(f"/local/domain/{domids['client']}/data/peer", str(domids["server"]))
    wait_for("the client to connect",
             lambda: b"TEST vchan.client_connected PASS" in console_log(daemon, "server"))
    return domids


@pytest.mark.parametrize("saved", ["server", "client"])
def test_a_vchan_pair_streams_on_across_a_save_and_restore_of_one_side(
        daemon: Daemon, tmp_path: Path, saved: str) -> None:
    domids = streaming_pair(daemon)
    image = tmp_path / f"{saved}.save"
    daemon.pyxen("save", saved, str(image))
    assert saved not in daemon.domains()
    # saved mid-stream: neither direction had arrived in full
    for name in ("server", "client"):
        assert b"vchan.stream_" not in console_log(daemon, name), name
    restored = daemon.pyxen("restore", str(image))
    assert f"as domain {domids[saved]}" in restored.stdout  # it kept its id
    reports = {name: wait_for(f"the {name} to finish", lambda n=name: finished(daemon, n),
                              timeout=600) for name in ("server", "client")}
    for report in reports.values():
        report.assert_all_passed()
        assert int(report.value("stream_bytes")) == MIB << 20
    assert "vchan.stream_c2s" in reports["server"].passed
    assert "vchan.stream_s2c" in reports["client"].passed
    logs = "".join((daemon.dir / "log" / f"domain-{name}.log").read_text()
                   for name in ("server", "client"))
    for left_behind in ("not there to bind", "cannot be mapped again", "stays on its old page"):
        assert left_behind not in logs


def test_a_restore_whose_peer_is_gone_leaves_its_links_as_xen_leaves_them(
        daemon: Daemon, tmp_path: Path) -> None:
    """The server is destroyed while the client is saved: restored, the client's port is
    unbound and its mappings of the server's grants are gone (frames empty, handles free),
    as after any peer's death; nothing else of it is harmed, and it runs: on, or to its
    own end, when its next look at the ring finds the empty frame (all ones: "impossible
    indices"), which a loaded machine lets it reach before the first look here."""
    domids = streaming_pair(daemon)
    image = tmp_path / "client.save"
    daemon.pyxen("save", "client", str(image))
    assert b"RESULT" not in console_log(daemon, "client")  # saved mid-stream
    daemon.pyxen("destroy", "server")
    daemon.pyxen("restore", str(image))
    log = daemon.dir / "log" / "domain-client.log"

    def ran() -> bool:
        client = daemon.domains().get("client")
        if client is not None and client["state"][:3] in ("r--", "-b-"):
            return True
        report = finished(daemon, "client")  # it ended: by its own RESULT line, not a crash,
        return report is not None and bool(report.failed) and all(  # for the empty frame
            "impossible indices" in why for why in report.failed.values())

    wait_for("the restored client to run", ran)
    text = log.read_text()
    assert f"domain {domids['server']}'s port" in text and "not there to bind" in text
    assert "cannot be mapped again" in text
    assert "Traceback" not in text


def test_a_restore_beside_a_paused_peer_joins_it(daemon: Daemon, tmp_path: Path) -> None:
    """The server is paused (`pyxen pause`) while the client is saved and restored: a
    paused domain still answers for its ports and grants, as on Xen, so the restore joins
    the client to it at once (it used to wait for the server's stopped process); unpaused,
    the server streams on and every byte arrives once."""
    domids = streaming_pair(daemon)
    daemon.pyxen("pause", "server")
    image = tmp_path / "client.save"
    daemon.pyxen("save", "client", str(image))
    restored = daemon.pyxen("restore", str(image), timeout=60)
    assert f"as domain {domids['client']}" in restored.stdout
    assert daemon.domains()["server"]["state"][2] == "p"
    daemon.pyxen("unpause", "server")
    reports = {name: wait_for(f"the {name} to finish", lambda n=name: finished(daemon, n),
                              timeout=600) for name in ("server", "client")}
    for report in reports.values():
        report.assert_all_passed()
        assert int(report.value("stream_bytes")) == MIB << 20
    log = (daemon.dir / "log" / "domain-client.log").read_text()
    assert "not there to bind" not in log and "cannot be mapped again" not in log
