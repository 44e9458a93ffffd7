"""Restoring a domain from a stream (stream.py): the counterpart of save.py.

The domain is built as the builder builds one, without an image: the vCPUs get the
domain's CPUID policy, then memory, registers and Xen's state come from the stream. Every
record is checked before it is used; a stream that does not fit is one StreamError line
and no domain (whatever was built is closed). The restored domain is not started: the
caller places the store and console rings' services again (`services`) and starts it.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, BinaryIO

from pyxen import __version__ as PYXEN_VERSION
from pyxen.domain.builder import check_config, create_vcpus, new_domain
from pyxen.domain.cpu_state import CpuState
from pyxen.domain.domain import Domain, DomainConfig
from pyxen.domain.loader import ImageError
from pyxen.domain.memory import PAGE_SHIFT
from pyxen.domain.saved import Saved
from pyxen.hv import grant_table

from . import stream
from .pages import apply_page_data
from .stream import Record, StreamError, read_header, records

if TYPE_CHECKING:
    from pyxen.domain.backend import MachineBackend
    from pyxen.hv.hypercall import HypercallTable

MAX_JSON = 4 << 20  # bytes of a JSON record (a vCPU or Xen's state is a few KiB)


def _json(record: Record) -> Saved:
    try:
        return Saved(json.loads(record.body), record.name)
    except (ValueError, RecursionError) as e:
        raise StreamError(f"the {record.name} record is not valid JSON: {e}") from None


def read_description(src: BinaryIO) -> tuple[Saved, Iterator[Record]]:
    """The stream's header and DOMAIN_CONFIG record (a toolstack reads it first: the name,
    the memory), and the iterator over the records after it."""
    read_header(src)
    rest = records(src)
    first = next(rest, None)
    if first is None or first.type != stream.DOMAIN_CONFIG:
        raise StreamError("the stream does not start with the domain's description")
    description = _json(first)
    if description.data.get("pyxen") != PYXEN_VERSION:
        raise StreamError(f"saved by pyxen {description.data.get('pyxen')!r}; this is pyxen "
                          f"{PYXEN_VERSION}, which restores only its own streams")
    return description, rest


def domain_config(description: Saved, name: str | None = None,
                  domid: int | None = None) -> DomainConfig:
    d = description
    maxmem = d.opt_int("maxmem_mib", 1, 1 << 20)
    config = DomainConfig(
        name=name or d.str("name"), domid=d.int("domid", 1, 0x7FEF) if domid is None else domid,
        memory_mib=d.int("memory_mib", 1, 1 << 20), maxmem_mib=maxmem,
        vcpus=d.int("vcpus", 1, 4096), max_vcpus=d.int("max_vcpus", 1, 4096),
        cmdline=d.str("cmdline"), max_grant_frames=d.int("max_grant_frames", 1, 1 << 16),
        max_event_channels=d.int("max_event_channels", 1, 1 << 17), acpi=d.bool("acpi"),
        handle=d.hex("uuid", 16))
    try:
        check_config(config)
    except ImageError as e:
        raise StreamError(f"the saved domain's settings: {e}") from None
    return config


@dataclass
class Restored:
    domain: Domain
    toolstack: Saved | None  # the toolstack's record, if the stream has one


def restore_domain(src: BinaryIO, machine_factory: Callable[[list[int]], MachineBackend],
                   hypercalls: HypercallTable, console: Callable[[bytes], None], *,
                   name: str | None = None, domid: int | None = None,
                   services: dict[int, Callable[[], None]] | None = None,
                   description: tuple[Saved, Iterator[Record]] | None = None,
                   ack: Callable[[], None] | None = None,
                   built: Callable[[], None] = lambda: None) -> Restored:
    """A domain as it was saved, not started. `name`/`domid` replace the saved ones;
    `services` gives the consumer of each pyxen service by its port in dom0 (the store's,
    the console's); `description` is read_description's answer if the caller read it; `ack`
    answers a live migration's SYNC records (None: a file, which has none); `built` runs
    once the domain and its vCPUs exist, before any page is read (a domain process
    contains itself there)."""
    try:
        described, rest = description or read_description(src)
        config = domain_config(described, name, domid)
    except ValueError as e:
        raise StreamError(str(e)) from None
    domain = new_domain(config, machine_factory, hypercalls, console)
    try:
        toolstack = _restore_into(domain, described, rest, services or {}, ack, built)
    except BaseException:
        domain.close()
        raise
    return Restored(domain, toolstack)


def _restore_into(domain: Domain, description: Saved, rest: Iterator[Record],
                  services: dict[int, Callable[[], None]],
                  ack: Callable[[], None] | None, built: Callable[[], None]) -> Saved | None:
    try:
        special = {int(gfn): kind for gfn, kind in description.sub("special_frames").data.items()}
        domain.tsc_khz = description.int("tsc_khz", 1, 1 << 32)
        domain.max_pages = description.int("max_pages", hi=domain.memory.max_gfn + 1)
        domain.extra_pages = description.int("extra_pages", hi=domain.max_pages)
    except ValueError as e:
        raise StreamError(str(e)) from None
    domain.restored = True
    with domain.memory_lock:  # the stream says which frames the domain has
        domain.memory.release_all()
    create_vcpus(domain)
    built()
    if domain.machine.tsc_khz != domain.tsc_khz:
        raise StreamError(f"the domain's TSC runs at {domain.tsc_khz} kHz, this host's "
                          f"vCPUs at {domain.machine.tsc_khz} kHz (TSC scaling is not supported yet)")
    contexts: dict[int, Saved] = {}
    xen: Saved | None = None
    params: list[int] | None = None
    toolstack: Saved | None = None
    max_frames = domain.max_pages + len(special)
    for record in rest:
        if toolstack is not None:
            raise StreamError(f"a {record.name} record follows TOOLSTACK")
        if record.type == stream.TOOLSTACK:
            toolstack = _json(record)
            continue
        if xen is not None:
            raise StreamError(f"a {record.name} record follows XEN_STATE")
        if record.type == stream.SYNC and ack is not None:
            ack()  # every page before it is in memory: the sender may measure and go on
        elif record.type == stream.PAGE_DATA:
            with domain.memory_lock:
                apply_page_data(domain.memory, record.body, max_frames)
        elif record.type == stream.HVM_CONTEXT:
            context = _json(record)
            index = _field(context.int, "vcpu", hi=len(domain.vcpus) - 1)
            if index in contexts:
                raise StreamError(f"vCPU{index}'s context comes twice")
            contexts[index] = context
        elif record.type == stream.HVM_PARAMS:
            params = load_hvm_params(record.body, len(domain.hvm_params))
        elif record.type == stream.XEN_STATE:
            xen = _json(record)
        else:
            raise StreamError(f"a {record.name} record is not expected here")
    if xen is None or params is None or len(contexts) != len(domain.vcpus):
        raise StreamError("the stream ends before the domain's state is complete")
    with domain.memory_lock:
        domain.memory.commit()
    if any(not domain.memory.is_populated(gfn) for gfn in special):
        raise StreamError("a special frame of the saved domain is not in its memory")
    domain.special_frames.update(special)
    if domain.tot_pages > domain.max_pages:
        raise StreamError(f"the saved domain holds {domain.tot_pages} pages, over its "
                          f"maximum of {domain.max_pages}")
    try:
        domain.hvm_params[:] = params
        _load_xen_state(domain, xen, services)
        for index, context in sorted(contexts.items()):
            vcpu = domain.vcpus[index]
            vcpu.backend.load_cpu(CpuState.from_dict(context.data.get("cpu")))
            vcpu.load_xen_state(context.data.get("xen"))
    except ValueError as e:
        raise StreamError(str(e)) from None
    return toolstack


def _field(read: Callable[..., int], key: str, **bounds: int) -> int:
    try:
        return read(key, **bounds)
    except ValueError as e:
        raise StreamError(str(e)) from None


def load_hvm_params(body: bytes, nr_params: int) -> list[int]:
    """HVM_PARAMS (libxc's layout) as the domain's whole parameter list."""
    if len(body) < 8:
        raise StreamError("the HVM_PARAMS record is too short")
    count = struct.unpack_from("<I", body)[0]
    if count > nr_params or len(body) != 8 + 16 * count:
        raise StreamError(f"the HVM_PARAMS record's {len(body)} bytes do not hold "
                          f"{count} parameters")
    params = [0] * nr_params
    values = struct.unpack_from(f"<{2 * count}Q", body, 8)
    for index, value in zip(values[::2], values[1::2], strict=True):
        if index >= nr_params:
            raise StreamError(f"the HVM_PARAMS record sets parameter {index}, of "
                              f"{nr_params}")
        params[index] = value
    return params


def _load_xen_state(domain: Domain, xen: Saved, services: dict[int, Callable[[], None]]) -> None:
    e820 = xen.list("e820")
    if not all(isinstance(e, list) and len(e) == 3 and all(isinstance(v, int) for v in e)
               for e in e820):
        raise ValueError("the saved memory map is malformed")
    domain.clock.continue_from(xen.int("system_time", hi=(1 << 63) - 1))
    domain.shared_info.load_state(xen.sub("shared_info", "shared_info"))
    domain.clock.update_wallclock(domain.shared_info.page)
    domain.grant_table.load_state(xen.data.get("grant_table"))
    domain.evtchn.load_state(xen.data.get("event_channels"), services)
    domain.shutdown_code = xen.opt_int("shutdown_code", hi=0xFF)
    domain.e820 = [(a, s, t) for a, s, t in e820]
    if domain.shared_info.gfn is not None and \
            domain.special_frames.get(domain.shared_info.gfn) is None:
        raise ValueError("the saved shared_info frame is not one of the domain's special "
                         f"frames ({domain.shared_info.gfn << PAGE_SHIFT:#x})")


def reconnect(domain: Domain) -> None:
    """After a restore on the host the domain was saved on, before it runs: join it again
    to the domains in other processes it shared event channels and grants with (see
    save.xen_state's `links`). Its ports bind their old other ends again (if those are
    still unbound for its domid, as they are when it kept its domid), it maps their grants
    again, and the domains that mapped its grants move those mappings to its new pages.
    Whatever cannot be joined is left as Xen leaves a link whose other end went."""
    grant_table.reattach(domain)
    for domid in sorted(domain.grant_table.mapped_by):
        peer = domain.remote_peer(domid)
        if peer is not None:
            peer.remap_grants()
    domain.grant_table.mapped_by = set()
    domain.evtchn.relink()


def needs_reconnect(domain: Domain) -> bool:
    return bool(domain.evtchn.to_relink or domain.grant_table.to_reattach or
                domain.grant_table.mapped_by)
