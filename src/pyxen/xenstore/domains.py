"""Domain records: what INTRODUCE told us about a guest's XenStore connection."""

from __future__ import annotations

from dataclasses import dataclass

from pyxen.xenstore.quota import Quotas

DOMID_FIRST_RESERVED = 0x7FF0
DOMID_SELF = 0x7FF0


@dataclass
class Domain:
    domid: int
    mfn: int = 0  # guest frame of the store ring page, for the hypervisor to map
    evtchn: int = 0  # guest's event channel port for the ring
    introduced: bool = True
    shutdown: bool = False
    target: int | None = None  # SET_TARGET: acts with the rights of this domain
    features: int = 0  # XENSTORE_SERVER_FEATURE_* available to the guest
    quotas: Quotas | None = None  # per-domain override of the daemon's quotas
