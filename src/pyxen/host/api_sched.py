"""The daemon's requests for a domain's limits (`pyxen.host.sched`), registered into
`pyxen.host.api`'s table when the daemon imports this module:

    sched_credit {dom?, weight?, cap?}     → {domains: [{domid, name, weight, cap}]}
    vcpu_list    {doms?: [ref...]}         → {nr_cpus, vcpus: [{name, domid, vcpu, tid,
                                              online, cpu, running, blocked, time, hard,
                                              soft}]}
    vcpu_pin     {dom, vcpu (null: all), cpus (null: leave hard affinity alone)}
    mem_set      {dom, kib}                  memory/target (libxl_set_memory_target)
    mem_max      {dom, kib}                  memory/static-max (libxl_domain_setmaxmem)
    vcpu_set     {dom, count, ignore_host}   cpu/<i>/availability (libxl_set_vcpuonline)
    top          {}                        → {domains: [...figures], total_kib, free_kib,
                                              nr_cpus, cpu_mhz, xen_version}
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

from pyxen import __version__
from pyxen.host import sched
from pyxen.host.api import XEN_VERSION, Api, Handler, handler
from pyxen.host.hosted import HostedDomain
from pyxen.host.limits import DEFAULT_WEIGHT, LimitsUnavailable, host_cpus
from pyxen.host.wire import Message

DOMAIN0 = ("0", "Domain-0")


def _error(text: str, status: int = 1) -> Exception:
    from pyxen.host.daemon import HostError  # the daemon imports this module

    return HostError(text, status)


def _int(msg: Message, key: str, low: int = 0) -> int | None:
    """An optional integer argument of a request, checked."""
    value = msg.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise _error(f"{key} must be an integer of at least {low}, not {value!r}")
    return value


def _applied(fn: Any, *args: Any) -> None:
    """Run a sched change; its refusals become the request's one-line error."""
    try:
        fn(*args)
    except (sched.Refused, LimitsUnavailable) as e:
        raise _error(str(e)) from None


def _credit_row(dom: HostedDomain) -> dict[str, Any]:
    state = sched.of(dom)
    return {"domid": dom.domid, "name": dom.name, "weight": state.weight, "cap": state.cap}


_DOM0_CREDIT = {"domid": 0, "name": "Domain-0", "weight": DEFAULT_WEIGHT, "cap": 0}


@handler("sched_credit")
async def sched_credit(api: Api, msg: Message) -> Message:
    """List the credit parameters (all domains, or one), or set one domain's."""
    weight, cap = _int(msg, "weight", low=-2**31), _int(msg, "cap", low=-2**31)
    ref = msg.get("dom")
    setting = weight is not None or cap is not None
    if ref is None:
        if setting:
            raise _error("Must specify a domain.")
        doms = [_credit_row(d) for _, d in sorted(api.host.domains.items())]
        return {"domains": [_DOM0_CREDIT, *doms]}
    if str(ref) in DOMAIN0:
        if setting:
            raise _error("Domain-0 is the host itself: its scheduling is the host's, not pyxen's")
        return {"domains": [_DOM0_CREDIT]}
    dom = api._dom(msg)
    if setting:
        _applied(sched.set_credit, dom, weight, cap)
    return {"domains": [_credit_row(dom)]}


@handler("vcpu_list")
async def vcpu_list(api: Api, msg: Message) -> Message:
    refs = msg.get("doms")
    if refs:
        doms = [api.host.lookup(ref) for ref in refs if str(ref) not in DOMAIN0]
    else:
        doms = [d for _, d in sorted(api.host.domains.items())]
    rows = [{"name": dom.name, "domid": dom.domid, **row}
            for dom in doms for row in sched.vcpu_info(dom)]
    return {"nr_cpus": max(host_cpus()) + 1, "vcpus": rows}


@handler("vcpu_pin")
async def vcpu_pin(api: Api, msg: Message) -> Message:
    dom = api._dom(msg)
    vcpu = _int(msg, "vcpu")
    cpus = msg.get("cpus")
    if cpus is not None:
        if not isinstance(cpus, list):
            raise _error(f"cpus must be a list of CPU numbers, not {cpus!r}")
        _applied(sched.pin, dom, vcpu, set(cpus))
    return {}


def _memory_request(name: str, setter: Callable[..., None]) -> Handler:
    """mem_set and mem_max: a size in KiB for one domain, applied by `setter`."""
    @handler(name)
    async def request(api: Api, msg: Message) -> Message:
        dom, kib = api._dom(msg), _int(msg, "kib")
        if kib is None:
            raise _error(f"{name} needs kib")
        _applied(setter, api.host.xenstored, dom, kib)
        return {}

    return request


mem_set = _memory_request("mem_set", sched.set_memory_target)
mem_max = _memory_request("mem_max", sched.set_memory_max)


@handler("vcpu_set")
async def vcpu_set(api: Api, msg: Message) -> Message:
    dom, count = api._dom(msg), _int(msg, "count")
    if count is None:
        raise _error("vcpu_set needs count")
    _applied(sched.set_vcpus_online, api.host.xenstored, dom, count,
             not msg.get("ignore_host"))
    return {}


@handler("top")
async def top(api: Api, msg: Message) -> Message:
    from pyxen.host.daemon import host_memory_mib

    total = host_memory_mib() * 1024
    dom0 = {"domid": 0, "name": "Domain-0", "state": "r-----",
            "cpu_ns": time.process_time_ns(), "mem_kib": total, "maxmem_kib": None,
            "vcpus": os.cpu_count() or 1, "vcpu_seconds": [], "sampled_ns": time.monotonic_ns()}
    doms = [sched.figures(d) for _, d in sorted(api.host.domains.items())]
    used = sum(int(d.spec.get("memory") or 0) * 1024 for d in api.host.domains.values())
    return {"domains": [dom0, *doms], "total_kib": total, "free_kib": max(0, total - used),
            "nr_cpus": len(host_cpus()), "cpu_mhz": _cpu_mhz(),
            "xen_version": f"{XEN_VERSION[0]}.{XEN_VERSION[1]}-pyxen{__version__}"}


def _cpu_mhz() -> int:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("cpu MHz"):
                    return int(float(line.split(":", 1)[1]))
    except (OSError, ValueError):
        pass
    return 0
