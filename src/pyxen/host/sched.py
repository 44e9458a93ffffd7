"""A domain's limits in host mode, applied and changed live: what Xen's scheduler and libxl
keep per domain, done with what Linux offers a process.

- Credit weight and cap: the domain process's cgroup `pyxen/host<PID>/dom<ID>-<name>`
  (`pyxen.host.limits.DomainLimits`), made for every domain and removed when it is gone. A
  host without cgroups runs domains that ask for neither; one that asks fails to be
  created, with the reason.
- vCPU hard affinity (xl.cfg `cpus`, `xl vcpu-pin`): the affinity of the vCPU's thread, set as
  the thread starts and whenever it is changed.
- Memory target and maximum (`xl mem-set`, `xl mem-max`) and online vCPUs (`xl vcpu-set`):
  the XenStore nodes libxl writes and the domain's page limit (XEN_DOMCTL_max_mem).

Figures a user reads (vcpu-list, top) come from the kernel, not from what was asked: the
thread's state, processor, CPU time and affinity in /proc and sched_getaffinity."""

from __future__ import annotations

import contextlib
import logging
import os
import re
import time
import uuid
import weakref
from dataclasses import dataclass, field
from typing import Any

from pyxen.host import procstat
from pyxen.host.hosted import DomainState, HostedDomain
from pyxen.host.limits import (
    DEFAULT_WEIGHT,
    MAX_WEIGHT,
    DomainLimits,
    LimitsUnavailable,
    host_cpus,
    pin_thread,
    remove_abandoned,
)
from pyxen.xenstore.client import Client
from pyxen.xenstore.errors import XenStoreError
from pyxen.xenstore.xenstored import XenStored

log = logging.getLogger("pyxen.daemon")
LIBXL_MAXMEM_CONSTANT = 1024  # KiB libxl adds to the page limit it gives Xen (x86's extra)


class Refused(RuntimeError):
    """A setting the host will not apply; str() is the one-line reason."""


@dataclass
class DomainSched:
    """What xl can read back and change of one domain."""

    weight: int = DEFAULT_WEIGHT
    cap: int = 0
    maxvcpus: int = 1
    hard: dict[int, frozenset[int]] = field(default_factory=dict)  # absent: every CPU
    limits: DomainLimits | None = None
    max_pages: int = 0  # the domain's page limit as last set (XEN_DOMCTL_max_mem)
    joined: bool = False  # its process is in its cgroup


_state: weakref.WeakKeyDictionary[HostedDomain, DomainSched] = weakref.WeakKeyDictionary()


def of(dom: HostedDomain) -> DomainSched:
    """The domain's settings (a domain created before this module took part gets defaults)."""
    state = _state.get(dom)
    if state is None:
        state = _state[dom] = DomainSched(maxvcpus=_maxvcpus(dom.spec))
    return state


def _maxvcpus(spec: dict[str, Any]) -> int:
    return int(spec.get("maxvcpus") or spec.get("vcpus") or 1)


def group_name(dom: HostedDomain) -> str:
    """`pyxen/host<daemon pid>/dom<ID>-<name>`, the name made safe as one path component:
    the domains of one host are siblings (weights compare them with each other), and two
    daemons on one machine never share a group."""
    return (f"pyxen/host{os.getpid()}/dom{dom.domid}-"
            f"{re.sub(r'[^A-Za-z0-9_.-]', '_', dom.name)}")


# --- creation -------------------------------------------------------------------------------
def prepare(dom: HostedDomain) -> None:
    """Before the domain's process starts: its affinity checked, its cgroup made and set.
    Every domain gets one where the host has the cpu controller, so that weights compare
    domains with each other (a domain left in the daemon's group would compete with the
    whole host group instead). Where it has none, only a config that asks for a cap or a
    weight is refused (LimitsUnavailable, a RuntimeError)."""
    spec = dom.spec
    try:
        state = DomainSched(maxvcpus=_maxvcpus(spec))
    except (TypeError, ValueError):
        raise Refused(f"vcpus and maxvcpus must be numbers, not {spec.get('vcpus')!r} and "
                      f"{spec.get('maxvcpus')!r}") from None
    _track(dom, state)
    state.hard = _initial_affinity(spec, state.maxvcpus)
    state.weight, state.cap = spec.get("cpu_weight", DEFAULT_WEIGHT), spec.get("cap", 0)
    try:
        _give_limits(dom, state)
    except ValueError as e:
        raise Refused(str(e)) from None


def _track(dom: HostedDomain, state: DomainSched) -> None:
    """`state` is the domain's from now on; its cgroup goes with it."""
    _state[dom] = state
    domid = dom.domid
    dom.gone.add_done_callback(lambda _: _release(state, domid))
    dom.on_vcpu_thread = _vcpu_thread_started


def _give_limits(dom: HostedDomain, state: DomainSched) -> DomainLimits:
    """The domain's cgroup of this daemon, made and set to `state`'s weight and cap
    (ValueError for values the host refuses)."""
    limits = state.limits = DomainLimits.create(group_name(dom))
    limits.set_weight(state.weight)
    limits.set_cap(state.cap, vcpus=state.maxvcpus)
    return limits


def record(dom: HostedDomain) -> dict[str, Any]:
    """The settings a restarted daemon puts back on the domain it adopts."""
    state = of(dom)
    return {"weight": state.weight, "cap": state.cap, "max_pages": state.max_pages,
            "hard": {str(i): sorted(cpus) for i, cpus in state.hard.items()}}


def adopt(dom: HostedDomain, saved: dict[str, Any]) -> None:
    """A domain taken over from a daemon that is gone: its settings as that daemon left them,
    its process moved into a group of this daemon (so that weights still compare it with
    its siblings; the daemon then removes the dead one's groups). Threads keep the
    affinity the kernel holds."""
    state = DomainSched(maxvcpus=_maxvcpus(dom.spec), weight=int(saved.get("weight", DEFAULT_WEIGHT)),
                        cap=int(saved.get("cap", 0)), max_pages=int(saved.get("max_pages", 0)))
    state.hard = {int(i): frozenset(cpus) for i, cpus in (saved.get("hard") or {}).items()}
    _track(dom, state)
    pid = dom.live_pid()
    if pid is None:
        return
    try:
        _give_limits(dom, state).add_process(pid)
    except (LimitsUnavailable, ValueError, OSError) as e:
        log.warning("dom%d: its limits could not be carried over: %s", dom.domid, e)
        limits, state.limits = state.limits, None
        with contextlib.suppress(LimitsUnavailable, RuntimeError, OSError):
            if limits is not None:
                limits.remove()


def forget_group(name: object) -> None:
    """Remove the cgroups a daemon that is gone made (a domain's, or all of them), those
    that hold no process any more."""
    if isinstance(name, str):
        with contextlib.suppress(LimitsUnavailable, ValueError, OSError):
            remove_abandoned(name)


def _initial_affinity(spec: dict[str, Any], maxvcpus: int) -> dict[int, frozenset[int]]:
    """xl.cfg `cpus`: one list per vCPU (cpus_by_vcpu), or one set for all of them."""
    by_vcpu = spec.get("cpus_by_vcpu")
    if by_vcpu is None and spec.get("cpus") is not None:
        by_vcpu = [spec["cpus"]] * maxvcpus
    hard = {}
    for index, cpus in enumerate((by_vcpu or [])[:maxvcpus]):
        hard[index] = frozenset(_checked_cpus(cpus))
    return hard


def _checked_cpus(cpus: object) -> set[int]:
    if not isinstance(cpus, list | set | frozenset) or not cpus or not all(
            isinstance(c, int) and not isinstance(c, bool) for c in cpus):
        raise Refused(f"a CPU set must be a non-empty list of CPU numbers, not {cpus!r}")
    online = host_cpus()
    missing = sorted(set(cpus) - online)
    if missing:
        raise Refused(f"CPU {format_cpus(set(missing))} is not on this host "
                      f"(it has CPUs {format_cpus(online)})")
    return set(cpus)


def spawned(dom: HostedDomain) -> None:
    """A restoring domain's process has just started: it joins its cgroup now, while it has
    one thread, rather than in `started`, where the move of a built process (7-27 ms) fell
    in a migration's stop. Not a capped domain: its cap would slow the restore, which Xen
    runs in dom0 (the process joins in `started`)."""
    state = of(dom)
    if not state.cap:
        _join(dom, state)


def _join(dom: HostedDomain, state: DomainSched) -> None:
    pid = dom.live_pid()
    if state.limits is not None and pid is not None and not state.joined:
        try:
            state.limits.add_process(pid)
        except ProcessLookupError:
            raise Refused(f"the process of domain {dom.domid} ended as it started") from None
        state.joined = True


def started(dom: HostedDomain, xenstored: XenStored) -> None:
    """The process is built, its vCPUs not yet running: it joins its cgroup (unless it did
    when it was spawned), and the nodes libxl writes for a new domain's vCPUs appear
    (cpu/<i>/availability)."""
    state = of(dom)
    _join(dom, state)
    vcpus = int(dom.spec.get("vcpus") or 1)
    with Client.in_process(xenstored, domid=0) as xs:
        for index in range(state.maxvcpus):
            xs.write(f"/local/domain/{dom.domid}/cpu/{index}/availability",
                     "online" if index < vcpus else "offline")
        with contextlib.suppress(XenStoreError, ValueError):
            state.max_pages = int(xs.read(f"/local/domain/{dom.domid}/memory/static-max")) // 4


def _vcpu_thread_started(dom: HostedDomain, index: int, tid: int) -> None:
    cpus = of(dom).hard.get(index)
    if cpus is None:
        return
    try:
        pin_thread(tid, set(cpus))
    except (ValueError, OSError) as e:
        log.warning("dom%d: vCPU %d not pinned to %s: %s", dom.domid, index,
                    format_cpus(set(cpus)), e)


def _release(state: DomainSched, domid: int) -> None:
    """The domain is gone (its process reaped): its cgroup goes too."""
    limits, state.limits = state.limits, None
    if limits is None:
        return
    try:
        limits.remove()
    except (LimitsUnavailable, RuntimeError, OSError) as e:
        log.warning("dom%d: %s", domid, e)


# --- credit ---------------------------------------------------------------------------------
def set_credit(dom: HostedDomain, weight: int | None, cap: int | None) -> None:
    """libxl_domain_sched_params_set for the credit scheduler: the values checked as libxl
    checks them, then applied to the domain's cgroup (made now if it has none)."""
    state = of(dom)
    if weight is not None and not 1 <= weight <= MAX_WEIGHT:
        raise Refused("Cpu weight out of range, valid values are within range from 1 to "
                      f"{MAX_WEIGHT}")
    if cap is not None and not 0 <= cap <= 100 * state.maxvcpus:
        raise Refused(f"Cpu cap out of range, valid range is from 0 to {100 * state.maxvcpus} "
                      "for specified number of vcpus")
    limits = state.limits or _limits_now(dom)
    try:
        if weight is not None:
            limits.set_weight(weight)
            state.weight = weight
        if cap is not None:
            limits.set_cap(cap, vcpus=state.maxvcpus)
            state.cap = cap
    except ValueError as e:
        raise Refused(str(e)) from None


def _limits_now(dom: HostedDomain) -> DomainLimits:
    """The cgroup of a domain created without one, made on demand with its process in it."""
    pid = dom.live_pid()
    if pid is None:
        raise Refused(f"domain {dom.domid} has no process to limit (it has stopped)")
    limits = DomainLimits.create(group_name(dom))
    try:
        limits.add_process(pid)
    except BaseException:
        with contextlib.suppress(LimitsUnavailable, RuntimeError, OSError):
            limits.remove()
        raise
    of(dom).limits = limits
    return limits


# --- affinity -------------------------------------------------------------------------------
def pin(dom: HostedDomain, vcpu: int | None, cpus: set[int]) -> None:
    """libxl_set_vcpuaffinity(_all): vCPU `vcpu` (None: every vCPU) may run only on `cpus`,
    from now on (a running thread moves) and whenever its thread starts."""
    state = of(dom)
    if vcpu is not None and not 0 <= vcpu < state.maxvcpus:
        raise Refused(f"Could not set affinity for vcpu `{vcpu}': domain {dom.domid} has "
                      f"vCPUs 0 to {state.maxvcpus - 1}")
    wanted = frozenset(_checked_cpus(cpus))
    for index in range(state.maxvcpus) if vcpu is None else (vcpu,):
        state.hard[index] = wanted
        tid = _live_tid(dom, index)
        if tid is None:
            continue
        try:
            pin_thread(tid, set(wanted))
        except ProcessLookupError:
            continue  # the vCPU went down meanwhile; its next thread is pinned as it starts
        except (ValueError, OSError) as e:
            raise Refused(f"Could not set affinity for vcpu `{index}': {e}") from None


def _live_tid(dom: HostedDomain, index: int) -> int | None:
    tid, pid = dom.vcpu_tids.get(index), dom.live_pid()
    if tid is None or pid is None:
        return None
    return tid if procstat.stat_fields(pid, tid) is not None else None


def vcpu_info(dom: HostedDomain) -> list[dict[str, Any]]:
    """libxl_list_vcpu: each vCPU as the kernel sees its thread. A vCPU with no thread is
    offline (not brought up yet, or down), except those of a domain not yet unpaused,
    which Xen holds ready to run."""
    state = of(dom)
    pid = dom.live_pid() or 0
    booting = not dom.started and dom.state == DomainState.PAUSED
    first_vcpus = int(dom.spec.get("vcpus") or 1)
    everyone = frozenset(host_cpus())
    rows = []
    for index in range(state.maxvcpus):
        tid = dom.vcpu_tids.get(index)
        fields = procstat.stat_fields(pid, tid) if tid is not None and pid else None
        row: dict[str, Any] = {"vcpu": index, "tid": None, "online": False, "cpu": None,
                               "running": False, "blocked": False, "time": 0.0,
                               "hard": sorted(state.hard.get(index, everyone)),
                               "soft": sorted(everyone)}
        if tid is not None and fields is not None:
            letter = fields[0]
            row.update(tid=tid, online=True, cpu=int(fields[procstat.PROCESSOR]),
                       running=letter == "R",
                       blocked=letter in ("S", "D", "I"),
                       time=procstat.cpu_ns(fields) / 1e9)
            with contextlib.suppress(OSError):
                row["hard"] = sorted(os.sched_getaffinity(tid))
        elif booting and index < first_vcpus:
            row["online"] = True
        rows.append(row)
    return rows


# --- memory and vCPUs (the nodes libxl writes) -----------------------------------------------
def set_memory_target(xenstored: XenStored, dom: HostedDomain, kib: int) -> None:
    """libxl_set_memory_target(enforce): the balloon target a PV-aware guest follows, never
    above memory/static-max; the page limit follows it (plus libxl's constant)."""
    home = f"/local/domain/{dom.domid}"
    with Client.in_process(xenstored, domid=0) as xs:
        static_max = _read_kib(xs, f"{home}/memory/static-max")
        if kib > static_max:
            raise Refused(f"memory_dynamic_max must be less than or equal to memory_static_max "
                          f"({kib} KiB asked, static-max is {static_max} KiB)")
        _set_max_pages(dom, kib + LIBXL_MAXMEM_CONSTANT)
        xs.write(f"{home}/memory/target", str(kib))
        xs.write(f"/vm/{uuid.UUID(dom.uuid)}/memory", str(kib // 1024))


def set_memory_max(xenstored: XenStored, dom: HostedDomain, kib: int) -> None:
    """libxl_domain_setmaxmem (Xen 4.17): the page limit, never below the current target,
    and memory/static-max, so that mem-set may go up to it."""
    home = f"/local/domain/{dom.domid}"
    with Client.in_process(xenstored, domid=0) as xs:
        target = _read_kib(xs, f"{home}/memory/target")
        if kib < target:
            raise Refused(f"memory_static_max must be greater than or equal to "
                          f"memory_dynamic_max ({kib} KiB asked, the target is {target} KiB)")
        _set_max_pages(dom, kib + LIBXL_MAXMEM_CONSTANT)
        xs.write(f"{home}/memory/static-max", str(kib))


def _read_kib(xs: Client, path: str) -> int:
    try:
        text = xs.read(path).decode()
    except XenStoreError:
        raise Refused(f"Cannot get memory info from {path}") from None
    if not text.isdigit():
        raise Refused(f"Invalid memory {text!r} from {path}")
    return int(text)


def _set_max_pages(dom: HostedDomain, kib: int) -> None:
    """xc_domain_setmaxmem: KiB to pages, as Xen's XEN_DOMCTL_max_mem does."""
    if dom.control is None:
        raise Refused(f"domain {dom.domid} has no process to limit (it has stopped)")
    pages = kib >> 2
    dom.set_max_pages(pages)
    of(dom).max_pages = pages


def set_vcpus_online(xenstored: XenStored, dom: HostedDomain, count: int,
                     check_host: bool) -> None:
    """xl vcpu-set for a PV-aware guest (libxl_set_vcpuonline): cpu/<i>/availability says
    which vCPUs the guest should have up; the guest brings them up or down itself."""
    state = of(dom)
    if count == 0:
        raise Refused("Requested 0 VCPUs!")
    if count > state.maxvcpus:
        raise Refused(f"Requested {count} VCPUs, however maxcpus is {state.maxvcpus}!")
    online = sum(1 for row in vcpu_info(dom) if row["online"])
    physical = len(host_cpus())
    if check_host and count > online and count > physical:
        raise Refused(f"You are overcommitting! You have {physical} physical CPUs and want "
                      f"{count} vCPUs! Aborting, use --ignore-host to continue")
    with Client.in_process(xenstored, domid=0) as xs:
        for t in xs.transactions():
            with t:
                for index in range(state.maxvcpus):
                    t.write(f"/local/domain/{dom.domid}/cpu/{index}/availability",
                            "online" if index < count else "offline")


# --- figures ----------------------------------------------------------------------------------
def live_config(xenstored: XenStored, dom: HostedDomain) -> dict[str, Any]:
    """What libxl_retrieve_domain_configuration reads back from a running domain for
    `xl list -l`: the scheduler parameters, the memory target and maximum from XenStore,
    and which vCPUs are online (avail_vcpus)."""
    state = of(dom)
    home = f"/local/domain/{dom.domid}/memory"
    memory: dict[str, int] = {}
    with Client.in_process(xenstored, domid=0) as xs:
        for key, node in (("target_memkb", "target"), ("max_memkb", "static-max")):
            with contextlib.suppress(Refused):
                memory[key] = _read_kib(xs, f"{home}/{node}")
    online = [row["vcpu"] for row in vcpu_info(dom) if row["online"]]
    return {"sched_params": {"weight": state.weight, "cap": state.cap}, "avail_vcpus": online,
            **memory}


def figures(dom: HostedDomain) -> dict[str, Any]:
    """What `top` shows of a domain, sampled now."""
    state = of(dom)
    return {"domid": dom.domid, "name": dom.name, "state": dom.state_letters(),
            "cpu_ns": dom.cpu_ns(), "mem_kib": int(dom.spec.get("memory") or 0) * 1024,
            "maxmem_kib": state.max_pages * 4, "vcpus": state.maxvcpus,
            "vcpu_seconds": [row["time"] if row["online"] else None for row in vcpu_info(dom)],
            "sampled_ns": time.monotonic_ns()}


def format_cpus(cpus: set[int]) -> str:
    """xl's way of writing a CPU set: ranges and single CPUs, comma-separated."""
    runs: list[list[int]] = []
    for cpu in sorted(cpus):
        if runs and runs[-1][1] == cpu - 1:
            runs[-1][1] = cpu
        else:
            runs.append([cpu, cpu])
    return ",".join(str(a) if a == b else f"{a}-{b}" for a, b in runs)
