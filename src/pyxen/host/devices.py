"""A hosted domain's PV devices, as libxl manages them: opened and checked before the
domain exists (so a bad disk fails `create` with one line and nothing built), added once it
is built, attached and detached while it runs, and removed with it.

Requests (registered into `pyxen.host.api` when the daemon imports this module):

    block_attach {dom, spec}           → {devid}     xl block-attach DOM DISKSPEC
    block_detach {dom, dev, force}     → {}          xl block-detach [-f] DOM DEV
    block_list   {doms: [ref...]}      → {disks: [{domid, devid, vdev, target, mode,
                                          sectors, state, frontend_state, backend, ...}]}
    network_attach {dom, spec}         → {devid}     xl network-attach DOM VIFSPEC
    network_detach {dom, dev, force}   → {}          xl network-detach [-f] DOM DEVID|MAC
    network_list {doms: [ref...]}      → {vifs: [{domid, devid, mac, bridge, vifname, ...}]}
"""

from __future__ import annotations

import asyncio
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from pyxen.backends.vbd import Disk, VbdBackend, open_disk, vdev_number
from pyxen.backends.vif import Vif, VifBackend
from pyxen.backends.xenbus import DeviceError, XenbusBackend
from pyxen.host.api import Api, handler
from pyxen.host.wire import Message
from pyxen.toolstack.xl_disk import DiskSpec, XlConfigError, parse_disk_spec
from pyxen.toolstack.xl_vif import parse_vif_spec

if TYPE_CHECKING:
    from pyxen.host.daemon import Host
    from pyxen.host.hosted import HostedDomain


def _error(text: str, status: int = 1) -> Exception:
    from pyxen.host.daemon import HostError  # the daemon imports this module

    return HostError(text, status)


def open_disks(host: Host, specs: list[str], domid: int) -> list[tuple[DiskSpec, int, Disk]]:
    """Each disk of a domain-to-be opened, with its device number; HostError (one line)
    for the first that cannot be, and nothing left open."""
    opened: list[tuple[DiskSpec, int, Disk]] = []
    try:
        for text in specs:
            opened.append(_open_one(host, text, domid, opened))
    except BaseException:
        for _, _, disk in opened:
            disk.close()
        raise
    return opened


def _open_one(host: Host, text: str, domid: int,
              others: list[tuple[DiskSpec, int, Disk]]) -> tuple[DiskSpec, int, Disk]:
    try:
        spec = parse_disk_spec(text)
        devid = vdev_number(spec.vdev)
    except (XlConfigError, DeviceError) as e:
        raise _error(f"disk {text!r}: {e}") from None
    if any(devid == other for _, other, _ in others):
        raise _error(f"disk {spec.vdev}: that device is given twice")
    try:
        disk = open_disk(spec)
    except DeviceError as e:
        raise _error(str(e)) from None
    user = _writer_of(host, disk, domid, others)
    if user is not None:
        disk.close()
        raise _error(f"disk {spec.vdev}: {disk.path} is in use by {user} (a disk shared "
                     f"between domains must be read-only everywhere)")
    return spec, devid, disk


def _writer_of(host: Host, disk: Disk, domid: int,
               others: list[tuple[DiskSpec, int, Disk]]) -> str | None:
    """Who else has this disk open where one of the two may write (the block hotplug
    script's sharing check); None when nobody."""
    for _, _, other in others:
        if other.identity == disk.identity and not (other.readonly and disk.readonly):
            return f"this domain's {other.path}"
    for dom in host.domains.values():
        for device in dom.devices.values():
            if (isinstance(device, VbdBackend) and device.disk.identity == disk.identity
                    and not (device.disk.readonly and disk.readonly)):
                return f"domain {dom.domid} ({dom.name})"
    return None


def add_disks(host: Host, dom: HostedDomain, disks: list[tuple[DiskSpec, int, Disk]],
              restored: bool = False) -> None:
    """libxl__device_disk_add for each: nodes, probe, watch (the domain built, not started;
    `restored`: its front ends came with it, see XenbusBackend.add)."""
    for spec, devid, disk in disks:
        _install(dom, VbdBackend(spec, disk, host.xenstored, dom.domid, devid, dom.device_call),
                 restored=restored)


def adopt_devices(host: Host, dom: HostedDomain) -> None:
    """A new daemon takes the devices of a domain it adopted: each disk is opened again
    (for the next reconnection; the domain's process still has its own descriptor) and its
    front end watched, from the state the store shows. A vif's TAP stays with the domain's
    process (a TAP has one owner): it is watched, but cannot reconnect."""
    for text in dom.spec.get("vifs") or []:
        spec = parse_vif_spec(text)
        vif = Vif.adopted(spec, dom.domid, spec.devid or 0)
        _install(dom, VifBackend(vif, host.xenstored, dom.domid, vif.devid, dom.device_call),
                 adopted=True)
    for text in dom.spec.get("disks") or []:
        try:
            spec = parse_disk_spec(text)
            devid, disk = vdev_number(spec.vdev), open_disk(spec)
        except (XlConfigError, DeviceError) as e:
            host.say(f"domain {dom.domid}: disk {text!r} not taken back: {e}")
            continue
        _install(dom, VbdBackend(spec, disk, host.xenstored, dom.domid, devid, dom.device_call),
                 adopted=True)


def _install(dom: HostedDomain, device: XenbusBackend, adopted: bool = False,
             restored: bool = False) -> None:
    """The device becomes one of the domain's: added (nodes, probe, watch), or taken over
    as a previous daemon left it."""
    dom.devices[device.kind, device.devid] = device
    if adopted:
        device.adopt()
    else:
        device.add(restored)


def open_vifs(specs: list[str], domid: int) -> list[Vif]:
    """Each vif of a domain-to-be with its TAP on its bridge (devids as xl numbers them:
    the list's index unless given); HostError (one line) for the first that fails."""
    opened: list[Vif] = []
    try:
        for index, text in enumerate(specs):
            try:
                spec = parse_vif_spec(text)
            except XlConfigError as e:
                raise _error(f"vif {text!r}: {e}") from None
            devid = index if spec.devid is None else spec.devid
            if any(vif.devid == devid for vif in opened):
                raise _error(f"vif {devid}: that devid is given twice")
            try:
                vif = Vif(spec, domid, devid)
            except DeviceError as e:
                raise _error(str(e)) from None
            opened.append(vif)
    except BaseException:
        for vif in opened:
            vif.close()
        raise
    return opened


def add_vifs(host: Host, dom: HostedDomain, vifs: list[Vif], restored: bool = False) -> None:
    """libxl__device_nic_add for each; the config keeps the MAC chosen (a reboot keeps it)."""
    for vif in vifs:
        _install(dom, VifBackend(vif, host.xenstored, dom.domid, vif.devid, dom.device_call),
                 restored=restored)
    recorded = {parse_vif_spec(text).devid: text for text in dom.spec.get("vifs") or []}
    for vif in vifs:
        recorded[vif.devid] = replace(vif.spec, devid=vif.devid, mac=vif.mac).to_spec()
    dom.spec["vifs"] = [recorded[devid] for devid in sorted(recorded, key=lambda d: d or 0)]


def _find(dom: HostedDomain, kind: str, ref: str) -> tuple[int, Any]:
    """A device of `dom` by devid, vdev name (disks) or MAC (vifs)."""
    for (k, devid), device in dom.devices.items():
        if k == kind and isinstance(device, VifBackend) and device.vif.mac == ref.lower():
            return devid, device
    try:
        devid = int(ref) if ref.isdigit() else vdev_number(ref) if kind == "vbd" else -1
    except DeviceError:
        devid = -1
    device = dom.devices.get((kind, devid))
    if device is None:
        raise _error(f"domain {dom.domid} has no {kind} device {ref}")
    return devid, device


async def _detach(dom: HostedDomain, kind: str, ref: str, force: bool) -> Any:
    devid, device = _find(dom, kind, ref)
    try:
        await asyncio.get_running_loop().run_in_executor(None, device.remove, force)
    except DeviceError as e:
        raise _error(str(e)) from None
    dom.devices.pop((kind, devid), None)
    return device


@handler("block_attach")
async def block_attach(api: Api, msg: Message) -> Message:
    dom = _running(api, msg)
    spec_text = str(msg.get("spec") or "")
    [(spec, devid, disk)] = open_disks(api.host, [spec_text], dom.domid)
    if ("vbd", devid) in dom.devices:
        disk.close()
        raise _error(f"domain {dom.domid} has a disk {spec.vdev} already")
    add_disks(api.host, dom, [(spec, devid, disk)])
    dom.spec.setdefault("disks", []).append(spec.to_spec())
    return {"devid": devid}


@handler("block_detach")
async def block_detach(api: Api, msg: Message) -> Message:
    dom = api._dom(msg)
    device = await _detach(dom, "vbd", str(msg.get("dev") or ""), bool(msg.get("force")))
    vdev = device.spec.vdev
    dom.spec["disks"] = [s for s in dom.spec.get("disks", [])
                         if parse_disk_spec(s).vdev != vdev]
    return {}


def _listing(api: Api, msg: Message, kind: str) -> list[dict[str, Any]]:
    doms = [api.host.lookup(str(ref)) for ref in msg.get("doms") or []]
    return [dict(device.describe(), domid=dom.domid) for dom in doms
            for (k, _), device in sorted(dom.devices.items()) if k == kind]


@handler("block_list")
async def block_list(api: Api, msg: Message) -> Message:
    return {"disks": _listing(api, msg, "vbd")}


@handler("network_attach")
async def network_attach(api: Api, msg: Message) -> Message:
    dom = _running(api, msg)
    text = str(msg.get("spec") or "")
    try:
        spec = parse_vif_spec(text)
    except XlConfigError as e:
        raise _error(f"vif {text!r}: {e}") from None
    if spec.devid is None:  # libxl: the next free devid
        used = {devid for kind, devid in dom.devices if kind == "vif"}
        spec = replace(spec, devid=next(i for i in range(len(used) + 1) if i not in used))
    if ("vif", spec.devid) in dom.devices:
        raise _error(f"domain {dom.domid} has a vif {spec.devid} already")
    vifs = await asyncio.get_running_loop().run_in_executor(  # pyroute2 has its own loop
        None, open_vifs, [spec.to_spec()], dom.domid)
    add_vifs(api.host, dom, vifs)
    return {"devid": spec.devid}


@handler("network_detach")
async def network_detach(api: Api, msg: Message) -> Message:
    dom = api._dom(msg)
    device = await _detach(dom, "vif", str(msg.get("dev") or ""), bool(msg.get("force")))
    dom.spec["vifs"] = [s for s in dom.spec.get("vifs") or []
                        if parse_vif_spec(s).devid != device.devid]
    return {}


@handler("network_list")
async def network_list(api: Api, msg: Message) -> Message:
    return {"vifs": _listing(api, msg, "vif")}


def _running(api: Api, msg: Message) -> HostedDomain:
    dom = api._dom(msg)
    if dom.stopped_as is not None or dom.destroying:
        raise _error(f"domain {dom.domid} is not running")
    return dom
