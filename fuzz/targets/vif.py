"""Vif specs (xl-network-configuration(5)): parse_vif_spec, and its round trip.

Expected failure: XlConfigError, one line. A spec that parses must write back (to_spec,
what the daemon is sent) as a spec that parses to the same interface, or refuse with
ValueError.
"""

from __future__ import annotations

from fuzz.targets._check import one_line, reads_back, require
from pyxen.toolstack.xl_vif import XlConfigError, parse_vif_spec

INSTRUMENT = ("pyxen.toolstack.xl_vif",)


def one_input(data: bytes) -> None:
    spec = data.decode("utf-8", "surrogateescape")
    try:
        vif = parse_vif_spec(spec)
    except XlConfigError as e:
        one_line(e)
        return
    for warning in vif.warnings:
        require("\n" not in warning, f"a warning is not one line: {warning!r}")
    reads_back(parse_vif_spec, spec, vif)


def seeds() -> list[bytes]:
    return [s.encode() for s in (
        "mac=00:16:3e:12:34:56,bridge=xenbr1",
        "type=vif,vifname=guest0,script=vif-route,ip=10.0.0.2 10.0.0.3",
        "rate=10MB/s@50ms,mtu=9000,devid=2",
        "rate=1Gb/s@1s, backend=dom0 ,gatewaydev=eth0",
        "model=e1000,type=ioemu,netdev=eth1,accel=x,colo_sock_mirror_id=1",
        "rate=0100Kb/s@020us,foo,bar=baz,,",
    )]
