"""Per-domain resource limits: Xen's credit-scheduler knobs as Linux cgroups and CPU affinity.

In host mode every domain is one process and its vCPUs are that process's threads, so what Xen
does per domain, Linux does per cgroup: the credit scheduler's `cap` (percent of one CPU) is the
CPU controller's bandwidth quota, its `weight` the controller's share, and pinning a vCPU is
setting the affinity of its thread. Guest RAM is already held to `maxmem` by pyxen itself; the
memory controller offers an extra ceiling for the whole process (guest RAM plus the VMM's own).

Hosts differ: the CPU controller may sit in the unified (v2) hierarchy or in a v1 `cpu`
mount, and the memory controller may sit in either. Each controller is looked up where this
host has it. A host without cgroups still runs domains: only asking for a limit fails, and
asking for the default (no cap, weight 256, no memory ceiling) is never an error.
"""

from __future__ import annotations

import contextlib
import errno
import os
import threading
import time
from dataclasses import dataclass

from pyxen.host import procstat

DEFAULT_WEIGHT = 256          # Xen's credit scheduler default (CSCHED_DEFAULT_WEIGHT)
MAX_WEIGHT = 65535            # weight and cap are uint16 in xen_domctl_sched_credit
MAX_CAP = 65535
PERIOD_US = 100_000           # the bandwidth period a cap is a share of (the CFS default)
_V2_DEFAULT_WEIGHT = 100      # cpu.weight that corresponds to Xen's 256, as systemd maps shares
_V2_MAX_WEIGHT = 10_000
_V1_SHARES_PER_WEIGHT = 4     # cpu.shares 1024 (the v1 default) for Xen's 256

_PROC_MOUNTS = "/proc/self/mounts"
_ONLINE_CPUS = "/sys/devices/system/cpu/online"
_WANTED = ("cpu", "cpuacct", "memory")
_REMOVE_WAIT_S = 2.0          # how long remove() waits for an exiting process to leave


class LimitsUnavailable(RuntimeError):
    """A limit was asked for that this host's cgroups cannot provide."""


# ---------------------------------------------------------------------------------------------
# Where the controllers live


@dataclass(frozen=True)
class _Hierarchy:
    """One cgroup hierarchy: the directory groups are made under, and its controllers."""

    base: str
    v2: bool
    controllers: frozenset[str]


def _unescape(field: str) -> str:
    """/proc/self/mounts writes space, tab, newline and backslash as octal escapes."""
    for code in ("\\040", "\\011", "\\012", "\\134"):
        field = field.replace(code, chr(int(code[1:], 8)))
    return field


def _mounts() -> list[tuple[str, str, set[str]]]:
    """(mount point, file-system type, options) of every mount."""
    out = []
    try:
        with open(_PROC_MOUNTS) as f:
            for line in f:
                fields = line.split()
                if len(fields) >= 4:
                    out.append((_unescape(fields[1]), fields[2], set(fields[3].split(","))))
    except OSError:
        pass
    return out


def _read(path: str) -> str:
    with open(path) as f:
        return f.read()


def _find_hierarchies(root: str | None) -> dict[str, _Hierarchy]:
    """Map each controller pyxen uses (cpu, cpuacct, memory) to the hierarchy offering it.

    The unified hierarchy wins when it has the controller (its `cpu.stat` also does the
    accounting that v1 leaves to cpuacct). With `root` given, only that directory counts: a
    cgroup2 directory, or a directory holding v1 mounts such as /sys/fs/cgroup.
    """
    found: dict[str, _Hierarchy] = {}
    mounts = _mounts()
    if root is not None:
        root = os.path.normpath(root)
        v2_bases = [root] if os.path.exists(os.path.join(root, "cgroup.controllers")) else []
    else:
        v2_bases = [mp for mp, fstype, _ in mounts if fstype == "cgroup2"][:1]
    for base in v2_bases:
        try:
            names = frozenset(_read(os.path.join(base, "cgroup.controllers")).split())
        except OSError:
            continue
        unified = _Hierarchy(base, True, names)
        for name in ("cpu", "memory"):
            if name in names:
                found[name] = unified
        if "cpu" in names:
            found["cpuacct"] = unified
    for mp, fstype, opts in mounts:
        if fstype != "cgroup":
            continue
        if root is not None and root not in (mp, os.path.dirname(mp)):
            continue
        names = frozenset(opts.intersection(_WANTED))
        for name in names:
            found.setdefault(name, _Hierarchy(mp, False, names))
    return found


# ---------------------------------------------------------------------------------------------
# Files


def _write(path: str, value: str) -> None:
    """One write(2) of `value`, as the cgroup interface files want, with one-line errors.
    (O_TRUNC as a shell's `>` does: the kernel ignores it on these files.)"""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_TRUNC)
    except FileNotFoundError:
        raise LimitsUnavailable(
            f"{path} does not exist: its controller is not enabled for this cgroup") from None
    except OSError as e:
        raise LimitsUnavailable(f"cannot open {path}: {e.strerror}") from None
    try:
        os.write(fd, value.encode())
    except OSError as e:
        if e.errno == errno.ESRCH:
            raise ProcessLookupError(f"no process {value.strip()} to move into {path}") from None
        if e.errno in (errno.EINVAL, errno.ERANGE, errno.EBUSY):
            raise ValueError(f"{path} refused {value.strip()!r}: {e.strerror}") from None
        raise LimitsUnavailable(f"cannot write {path}: {e.strerror}") from None
    finally:
        os.close(fd)


def _check_int(what: str, value: object, low: int, high: int, why: str = "") -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{what} must be an integer, not {value!r}")
    if not low <= value <= high:
        raise ValueError(f"{what} {value} is out of range: valid is {low} to {high}{why}")
    return value


def _check_name(name: str) -> str:
    parts = name.split("/") if isinstance(name, str) else []
    if not parts or any(p in ("", ".", "..") or "\0" in p or "\n" in p for p in parts):
        raise ValueError(f"cgroup name {name!r} must be a relative path like 'pyxen/dom3-web'")
    return name


# ---------------------------------------------------------------------------------------------
# One group in one hierarchy


# The parent directories this process made (e.g. `pyxen/`), which the last group to leave one
# removes; a parent made by someone else (an administrator's, with settings of its own) stays.
# The lock keeps one thread's pruning from racing another's mkdir below the same parent.
_made_parents: set[str] = set()
_tree_lock = threading.Lock()


class _Group:
    """The domain's directory in one hierarchy."""

    def __init__(self, hierarchy: _Hierarchy, name: str) -> None:
        self.hierarchy = hierarchy
        self.name = name
        self.path = os.path.join(hierarchy.base, name)

    def file(self, name: str) -> str:
        return os.path.join(self.path, name)

    def make(self) -> None:
        # Another process may prune a parent between two mkdirs here: try again.
        for attempt in range(3):
            try:
                with _tree_lock:
                    self._make_once()
                return
            except FileNotFoundError:
                if attempt == 2:
                    raise LimitsUnavailable(f"cannot create cgroup {self.path}") from None

    def _make_once(self) -> None:
        here = self.hierarchy.base
        for part in self.name.split("/"):
            if self.hierarchy.v2:
                self._delegate(here)
            here = os.path.join(here, part)
            try:
                os.mkdir(here)
                if here != self.path:
                    _made_parents.add(here)
            except FileExistsError:
                pass
            except FileNotFoundError:
                raise
            except OSError as e:
                raise LimitsUnavailable(f"cannot create cgroup {here}: {e.strerror}") from None

    def _delegate(self, directory: str) -> None:
        """v2 hands a controller to a directory's children only when its subtree_control
        names it. The cpu controller must get through when this hierarchy is the one that has
        it; memory is taken when offered (without it only set_memory_max fails)."""
        control = os.path.join(directory, "cgroup.subtree_control")
        try:
            offered = _read(os.path.join(directory, "cgroup.controllers")).split()
            enabled = _read(control).split()
        except OSError as e:
            raise LimitsUnavailable(f"cannot read the controllers of {directory}: "
                                    f"{e.strerror}") from None
        needs_cpu = "cpu" in self.hierarchy.controllers
        if needs_cpu and "cpu" not in offered:
            raise LimitsUnavailable(f"the cpu controller is not offered in {directory}")
        for name in ("cpu", "memory"):
            if name in enabled or name not in offered or name not in self.hierarchy.controllers:
                continue
            try:
                _write(control, f"+{name}")
            except (ValueError, LimitsUnavailable) as e:
                if name == "cpu":
                    raise LimitsUnavailable(
                        f"cannot enable the cpu controller below {directory} (a v2 cgroup "
                        f"holding processes cannot pass it on): {e}") from None

    def join(self, pid: int) -> None:
        _write(self.file("cgroup.procs"), f"{pid}\n")

    def remove(self) -> None:
        """Remove the group, waiting briefly for an exiting process to leave it, then the
        parents this process made that are now empty."""
        deadline = time.monotonic() + _REMOVE_WAIT_S
        while True:
            try:
                with _tree_lock:
                    with contextlib.suppress(FileNotFoundError):
                        os.rmdir(self.path)
                    self._prune(os.path.dirname(self.path))
                return
            except OSError as e:
                if e.errno != errno.EBUSY:
                    raise LimitsUnavailable(f"cannot remove cgroup {self.path}: "
                                            f"{e.strerror}") from None
                if time.monotonic() >= deadline:
                    raise RuntimeError(f"cgroup {self.path} still holds processes") from None
            time.sleep(0.01)

    def _prune(self, directory: str) -> None:
        while directory in _made_parents:
            try:
                os.rmdir(directory)
            except FileNotFoundError:
                pass
            except OSError:
                return      # another group below it: the last one out removes it
            _made_parents.discard(directory)
            directory = os.path.dirname(directory)


# ---------------------------------------------------------------------------------------------
# The per-domain object


class DomainLimits:
    """The cgroups of one domain's process, one per hierarchy that holds a controller pyxen
    uses. The cpu (and its accounting) groups are made at once; a v1 memory group only when a
    memory ceiling is set, so that a domain without one stays in its parent's memory cgroup."""

    def __init__(self, name: str, hierarchies: dict[str, _Hierarchy]) -> None:
        self._name = name
        self._hierarchies = hierarchies
        self._groups: dict[str, _Group] = {}    # by hierarchy base
        self._pids: list[int] = []

    @classmethod
    def create(cls, group_name: str, root: str | None = None) -> DomainLimits:
        """The domain's groups, e.g. `pyxen/dom3-web`. `root` is a cgroup2 directory or a
        directory holding v1 mounts (None: this host's hierarchies, groups made at their tops).
        Succeeds on hosts without cgroups; limits asked for there fail."""
        limits = cls(_check_name(group_name), _find_hierarchies(root))
        for controller in ("cpu", "cpuacct"):
            if controller in limits._hierarchies:
                # On failure the reason is given again when a limit is asked for.
                with contextlib.suppress(LimitsUnavailable):
                    limits._group(controller)
        return limits

    @property
    def path(self) -> str:
        """The group that holds the CPU limits ('' without a cpu controller, or once removed)."""
        for controller in ("cpu", "memory"):
            group = self._made(controller)
            if group is not None:
                return group.path
        return ""

    def _made(self, controller: str) -> _Group | None:
        hierarchy = self._hierarchies.get(controller)
        return None if hierarchy is None else self._groups.get(hierarchy.base)

    def _group(self, controller: str) -> _Group:
        """The group for `controller`, made (and joined by the processes added so far) if new."""
        group = self._made(controller)
        if group is not None:
            return group
        hierarchy = self._hierarchies.get(controller)
        if hierarchy is None:
            raise LimitsUnavailable(f"this host has no cgroup {controller} controller")
        group = _Group(hierarchy, self._name)
        group.make()
        self._groups[hierarchy.base] = group
        for pid in list(self._pids):
            try:
                group.join(pid)
            except ProcessLookupError:
                self._pids.remove(pid)
        return group

    def add_process(self, pid: int) -> None:
        """Move process `pid`, all its threads, into the domain's groups."""
        _check_int("pid", pid, 1, 2**31 - 1)
        for group in self._groups.values():
            group.join(pid)
        if pid not in self._pids:
            self._pids.append(pid)

    def set_cap(self, percent: int, vcpus: int | None = None) -> None:
        """Xen's credit cap: at most `percent` of one CPU (0: no cap). With `vcpus`, the
        range is libxl's, 0 to 100 per vCPU."""
        high, why = MAX_CAP, ""
        if vcpus is not None:
            _check_int("vcpus", vcpus, 1, MAX_CAP // 100)
            high, why = 100 * vcpus, f" for {vcpus} vCPU{'s' if vcpus > 1 else ''}"
        _check_int("cpu cap", percent, 0, high, why)
        if percent == 0 and self._made("cpu") is None:
            return
        group = self._group("cpu")
        quota = percent * PERIOD_US // 100
        if group.hierarchy.v2:
            _write(group.file("cpu.max"), f"{quota if percent else 'max'} {PERIOD_US}")
        else:
            _write(group.file("cpu.cfs_period_us"), str(PERIOD_US))
            _write(group.file("cpu.cfs_quota_us"), str(quota if percent else -1))

    def set_weight(self, weight: int) -> None:
        """Xen's credit weight (1..65535, default 256), relative to other domains."""
        _check_int("cpu weight", weight, 1, MAX_WEIGHT)
        if weight == DEFAULT_WEIGHT and self._made("cpu") is None:
            return
        group = self._group("cpu")
        if group.hierarchy.v2:
            # Proportional, 256 -> 100; v2 stops at 10000, i.e. Xen weights above 25600 saturate.
            mapped = (weight * _V2_DEFAULT_WEIGHT + DEFAULT_WEIGHT // 2) // DEFAULT_WEIGHT
            _write(group.file("cpu.weight"), str(min(max(mapped, 1), _V2_MAX_WEIGHT)))
        else:
            _write(group.file("cpu.shares"), str(weight * _V1_SHARES_PER_WEIGHT))

    def set_memory_max(self, nbytes: int | None) -> None:
        """A ceiling on the whole process's memory (None: none). On v1 it counts only what the
        process allocates after it joined, so set it before add_process."""
        if nbytes is not None:
            _check_int("memory max", nbytes, 1, 2**63 - 1)
        elif self._made("memory") is None:
            return
        group = self._group("memory")
        if group.hierarchy.v2:
            _write(group.file("memory.max"), "max" if nbytes is None else str(nbytes))
        else:
            _write(group.file("memory.limit_in_bytes"), "-1" if nbytes is None else str(nbytes))

    def cpu_usage_ns(self) -> int:
        """CPU time used by the domain's processes, cumulative, in nanoseconds."""
        group = self._made("cpuacct")
        if group is None:
            return _proc_cpu_ns(self._pids)
        if group.hierarchy.v2:
            for line in _read(group.file("cpu.stat")).splitlines():
                key, _, value = line.partition(" ")
                if key == "usage_usec":
                    return int(value) * 1000
            raise LimitsUnavailable(f"{group.file('cpu.stat')} has no usage_usec")
        return int(_read(group.file("cpuacct.usage")))

    def remove(self) -> None:
        """Remove the groups once the process has exited; calling it again does nothing."""
        for base, group in list(self._groups.items()):
            group.remove()
            del self._groups[base]
        self._pids.clear()


def remove_abandoned(group_name: str, root: str | None = None) -> None:
    """Remove the groups a daemon that is gone made (a domain's, or a whole `host<PID>`
    tree), children first, then the parents left empty. rmdir refuses a group that still
    holds a process or a child, so groups in use, and another daemon's, are safe."""
    _check_name(group_name)
    bases = {h.base for h in _find_hierarchies(root).values()}
    for base in bases:
        top = os.path.join(base, group_name)
        with _tree_lock:
            for directory, _, _ in os.walk(top, topdown=False):
                if directory != top:
                    with contextlib.suppress(OSError):
                        os.rmdir(directory)
            directory = top
            while directory != base:
                try:
                    os.rmdir(directory)
                except FileNotFoundError:
                    pass
                except OSError:
                    break
                directory = os.path.dirname(directory)


def _proc_cpu_ns(pids: list[int]) -> int:
    """CPU time of live processes from /proc, for hosts without cgroup accounting."""
    return sum(procstat.cpu_ns(procstat.stat_fields(pid)) for pid in pids)


# ---------------------------------------------------------------------------------------------
# Pinning


def _format_cpus(cpus: set[int]) -> str:
    runs: list[str] = []
    for cpu in sorted(cpus):
        if runs and runs[-1][1] == cpu - 1:
            runs[-1] = (runs[-1][0], cpu)
        else:
            runs.append((cpu, cpu))
    return ",".join(str(a) if a == b else f"{a}-{b}" for a, b in runs)


def host_cpus() -> set[int]:
    """The CPUs online on this host."""
    try:
        text = _read(_ONLINE_CPUS).strip()
    except OSError:
        return set(range(os.cpu_count() or 1))
    cpus: set[int] = set()
    for item in filter(None, text.split(",")):
        low, _, high = item.partition("-")
        cpus.update(range(int(low), int(high or low) + 1))
    return cpus


def _check_cpus(cpus: set[int]) -> set[int]:
    if not isinstance(cpus, set | frozenset) or not cpus:
        raise ValueError(f"CPU set must be a non-empty set of CPU numbers, not {cpus!r}")
    if any(isinstance(c, bool) or not isinstance(c, int) for c in cpus):
        raise ValueError(f"CPU set must hold CPU numbers, not {sorted(cpus, key=str)!r}")
    online = host_cpus()
    missing = set(cpus) - online
    if missing:
        raise ValueError(f"CPU {_format_cpus(missing)} not on this host "
                         f"(it has {_format_cpus(online)})")
    return set(cpus)


def pin_thread(tid: int, cpus: set[int]) -> None:
    """Hard-pin one thread (a vCPU) to `cpus`, as xl vcpu-pin does a vCPU."""
    wanted = _check_cpus(cpus)
    try:
        os.sched_setaffinity(tid, wanted)
    except ProcessLookupError:
        raise ProcessLookupError(f"no thread {tid} to pin") from None
    except OSError as e:
        if e.errno == errno.EINVAL:
            raise ValueError(f"thread {tid} may not run on CPU {_format_cpus(wanted)} "
                             f"(its cpuset excludes them)") from None
        raise


def pin_process(pid: int, cpus: set[int]) -> None:
    """Pin every thread of process `pid` (xl.cfg `cpus=` for all vCPUs). Threads made later
    inherit their creator's affinity; the loop catches those made while it runs."""
    wanted = _check_cpus(cpus)
    done: set[int] = set()
    while True:
        try:
            tids = {int(t) for t in os.listdir(f"/proc/{pid}/task")}
        except FileNotFoundError:
            raise ProcessLookupError(f"no process {pid} to pin") from None
        new = tids - done
        if not new:
            return
        for tid in new:
            with contextlib.suppress(ProcessLookupError):   # the thread has exited
                pin_thread(tid, wanted)
        done |= new
