"""Saving a domain: everything a guest can observe, written as a stream (stream.py).

The order follows libxc's save: the domain's description first, then its memory, then the
state that refers to that memory (vCPUs, then Xen's per-domain state), then END. The domain
is paused for all of it; the caller decides what happens after (destroy it: `pyxen save`;
let it run on: a checkpoint, `pyxen save -c`).
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from typing import TYPE_CHECKING, BinaryIO

from pyxen import __version__ as PYXEN_VERSION

from . import stream
from .pages import page_records
from .stream import StreamWriter

if TYPE_CHECKING:
    from pyxen.domain.domain import Domain
    from pyxen.hv.remote import Links


class SaveError(Exception):
    """The domain cannot be saved (one line: what holds it)."""


@dataclass
class SaveStats:
    pages: int  # populated frames written
    bytes: int  # stream bytes


def _json(value: object) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


def domain_description(domain: Domain, toolstack_config: object = None) -> dict[str, object]:
    """DOMAIN_CONFIG: what a restore builds before it loads anything, the frames that hold
    Xen's and the toolstack's pages rather than RAM, and the toolstack's own config of the
    domain (the daemon's: its xl settings, for a restart after the restore)."""
    c = domain.config
    if c.privileged:
        raise SaveError("the hardware domain cannot be saved")
    return {"pyxen": PYXEN_VERSION, "backend": domain.machine.name, "name": c.name, "domid": domain.domid,
            "uuid": domain.handle.hex(), "memory_mib": c.memory_mib,
            "maxmem_mib": c.maxmem_mib, "vcpus": c.vcpus, "max_vcpus": domain.max_vcpus,
            "cmdline": c.cmdline, "max_grant_frames": c.max_grant_frames,
            "max_event_channels": c.max_event_channels, "acpi": c.acpi,
            "tsc_khz": domain.tsc_khz, "max_pages": domain.max_pages,
            "extra_pages": domain.extra_pages,
            "special_frames": {str(gfn): kind for gfn, kind in domain.special_frames.items()},
            "toolstack": toolstack_config}


def xen_state(domain: Domain, links: Links = False) -> dict[str, object]:
    """XEN_STATE: the hypervisor's per-domain state outside guest memory. The domain's
    event channels and grants shared with domains in other processes travel where `links`
    covers those domains (a save restored on this host: all of them; a group migration:
    the group), to be joined again (restore.reconnect); a link to any other domain (one
    that stays here while this one leaves) makes the domain unmovable."""
    try:
        return {"system_time": domain.paused_at,
                "shutdown_code": domain.shutdown_code,
                "e820": [list(entry) for entry in domain.e820],
                "shared_info": domain.shared_info.save_state(),
                "event_channels": domain.evtchn.save_state(links),
                "grant_table": domain.grant_table.save_state(links)}
    except ValueError as e:
        raise SaveError(str(e)) from None


def hvm_params(params: list[int]) -> bytes:
    """HVM_PARAMS as libxc writes it: the parameters that are set, as (index, value)."""
    pairs = [(i, v) for i, v in enumerate(params) if v]
    return struct.pack(f"<II{2 * len(pairs)}Q", len(pairs), 0,
                       *(x for pair in pairs for x in pair))


def populated_frames(domain: Domain) -> list[int]:
    with domain.memory_lock:
        return [pfn for first, count in domain.memory.runs()
                for pfn in range(first, first + count)]


def write_description(writer: StreamWriter, domain: Domain, toolstack_config: object,
                      links: Links = False) -> None:
    """DOMAIN_CONFIG, after checking that what cannot travel is not in use (before any page
    goes)."""
    xen_state(domain, links)
    writer.record(stream.DOMAIN_CONFIG, _json(domain_description(domain, toolstack_config)))


def write_pages(writer: StreamWriter, domain: Domain, pfns: list[int]) -> None:
    with domain.memory_lock:
        for body in page_records(domain.memory, pfns):
            writer.record(stream.PAGE_DATA, body, compress=True)


def write_state(writer: StreamWriter, domain: Domain, toolstack: object,
                links: Links = False) -> None:
    """Everything after the pages, the domain paused: each vCPU, the HVM params, Xen's
    state, the toolstack's part; then END."""
    xen = xen_state(domain, links)
    for vcpu in domain.vcpus:
        writer.record(stream.HVM_CONTEXT, _json({
            "vcpu": vcpu.index, "cpu": vcpu.backend.save_cpu().to_dict(),
            "xen": vcpu.save_xen_state()}))
    writer.record(stream.HVM_PARAMS, hvm_params(domain.hvm_params))
    writer.record(stream.XEN_STATE, _json(xen))
    if toolstack is not None:
        writer.record(stream.TOOLSTACK, _json(toolstack), compress=True)
    writer.end()


def save_domain(domain: Domain, out: BinaryIO, toolstack: object = None,
                toolstack_config: object = None, links: Links = False) -> SaveStats:
    """Write `domain` to `out`; it must be paused (Domain.pause) and stays so. The
    toolstack's own parts travel with it: its config of the domain, read before a restore
    builds anything, and `toolstack` (the daemon's: the domain's XenStore subtree), after.
    `links`: see xen_state."""
    if not domain.pause_count:
        raise SaveError("the domain must be paused while it is saved")
    writer = StreamWriter(out)
    write_description(writer, domain, toolstack_config, links)
    pfns = populated_frames(domain)
    write_pages(writer, domain, pfns)
    write_state(writer, domain, toolstack, links)
    return SaveStats(len(pfns), writer.written)
