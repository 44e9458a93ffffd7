"""A domain that runs in another process, as this domain's hypervisor half reaches it.

In host mode each domain is a process of its own, so the other end of an inter-domain
event channel, or the domain that granted a page, may live in another process. The
hypervisor code talks to it through this interface; `pyxen.host.peer_link.PeerLink` is the
implementation (a call to that process, or a doorbell it reads). Every check that Xen makes
on the remote domain's state runs in the remote domain's own process, against its own
tables: this side only learns the outcome.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

# Which domains in other processes a saved domain's shared ports and grants may stay bound
# to: any (True: the save is restored on this host, next to them), the members of a group
# that migrates together (their domids), or none (False).
Links = bool | frozenset[int]


def travels_with(links: Links, domid: int) -> bool:
    """Whether a link to domain `domid` may be saved under `links` (see Links)."""
    return links is True or (not isinstance(links, bool) and domid in links)


class ForeignPage(Protocol):
    """One page of another domain's RAM mapped into this process (a granted page)."""

    address: int  # where this process sees it

    def close(self) -> None: ...


class RemotePeer(Protocol):
    domid: int

    # --- event channels (event_channel.py) ----------------------------------------------------
    def bind(self, remote_port: int, local_port: int) -> None:
        """Bind the peer's unbound `remote_port` to our `local_port` (XenError: refused)."""

    def unbind(self, remote_port: int, local_port: int) -> None:
        """Our `local_port` closed: the peer's `remote_port` becomes unbound."""

    def ring(self, remote_port: int) -> None:
        """Raise the peer's `remote_port` (EVTCHNOP_send)."""

    # --- grants (grant_table.py): the peer is the granting domain ------------------------------
    def map_grant(self, ref: int, flags: int) -> tuple[int, int]:
        """The peer's pin_for_map of its grant `ref` for us: (GNTST status, granted gfn)."""

    def unmap_grant(self, ref: int, flags: int, dev_bus_addr: int) -> int:
        """Drop the pin `flags` of a mapping of `ref` (after checking `dev_bus_addr` if
        given): its GNTST status."""

    def acquire_for_copy(self, grants: Sequence[tuple[int, bool]]
                         ) -> list[tuple[int, int, int, int]]:
        """acquire_grant_for_copy on the peer of each (ref, readonly), in order, in one
        call (GNTTABOP_copy acquires a batch's grants together): per grant (GNTST status,
        gfn, offset, length); a peer that is gone answers GNTST_bad_domain for each."""

    def release_for_copy(self, grants: Sequence[tuple[int, bool]]) -> None:
        """Release, in one call, grants acquire_for_copy acquired (status okay)."""

    def remap_grants(self) -> int:
        """We were restored into a new process: the peer moves its mappings of our grants
        from our old process's pages to ours (grant_table.remap_for_peer); how many."""

    def page(self, gfn: int) -> ForeignPage:
        """The peer's frame `gfn` (one it granted us) mapped here."""

    def read(self, gfn: int, offset: int, length: int) -> bytes: ...

    def write(self, gfn: int, offset: int, data: bytes) -> None: ...
