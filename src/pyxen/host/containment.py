"""What a domain's process may still do once its domain is built: no new privileges, and a
seccomp filter, so that a guest that escapes into the process (a bug in a hypercall
handler, a back end, the soft CPU or KVM) holds little more than the domain it had.

`contain` runs once, in `domain_process.serve`, after the domain is built and every file it
needs is open (kernel, ramdisk, /dev/kvm, memfd, eventfds, the adopt listener) and before
the guest runs a single instruction. The filter covers every thread (TSYNC), those started
later (vCPUs, back-end workers) inherit it, and nothing can lift it.

Policy: a deny-list (default allow), not an allow-list. The process is CPython with
Unicorn or KVM: it lazily imports modules, maps memory, starts threads, receives devices'
descriptors (SCM_RIGHTS) and runs glibc, whose exact system calls change between versions
and rare paths (a full allow-list collected by strace would be a guess about the paths a
suite happened not to take; one missed call kills a guest). What the process never needs
once built is the escape route, and that is short to name (strace of a contained domain
process through boot, console, shutdown: none of these after the filter, only threads'
clone3 answered as below):

- KILLED (SCMP_ACT_KILL_PROCESS, SIGSYS): the kernel's attack surface and root's tools,
  which no code path here calls: ptrace and the cross-process memory calls, mounts and
  namespaces, uid/gid/capability changes, modules and kexec, bpf, perf, io_uring (its
  operations would bypass the filter), userfaultfd, keyrings, file handles, reboot, swap,
  the clock, port I/O, mknod, TIOCSTI/TIOCLINUX (typing into a terminal). The daemon
  reports such a death as the domain's crash, naming the filter (`hosted`).
- REFUSED (EPERM): process creation and exec, new sockets of any family and
  connect/bind/listen, signals to any process but this one. Library code may try these
  and copes with an error (ctypes.util.find_library runs a subprocess and falls back), so
  they fail instead of killing. The process needs none of them after the build: the
  daemon creates every socket it uses (control channel, peer links) and opens every disk
  and TAP device, and passes the descriptors. clone3 answers ENOSYS (its flags are
  behind a pointer a filter cannot read), so glibc falls back to clone, whose flags are
  checked: threads (CLONE_THREAD) pass, a new process or namespace does not.
- Another system-call ABI (i386 `int 0x80`, x32) kills the process (bad-arch action),
  so the list cannot be sidestepped by calling the same call by another number.

What stays possible is what the process's uid may do with files (seccomp does not see
paths) and the calls not named here; tests/host/test_containment.py shows each claim.
personality is among those: what it changes matters at exec, which is refused.
`pyxen daemon --no-containment` turns all of this off, to tell whether the filter is what
breaks something (strace and gdb attach from outside either way). Without libseccomp the
process runs with no_new_privs alone, and the daemon says so once.
"""

from __future__ import annotations

import ctypes
import errno
import os
import signal
import termios
from typing import Any

CONTAINED = "seccomp"  # no_new_privs and the filter
DISABLED = "off"  # the daemon was told --no-containment
UNAVAILABLE = "no_new_privs only"  # prefix: the filter could not be installed (why follows)

PR_SET_NO_NEW_PRIVS = 38

KILLED = (
    # other processes' memory and descriptors
    "ptrace", "process_vm_readv", "process_vm_writev", "pidfd_getfd", "kcmp",
    "process_madvise",
    # mounts and namespaces
    "mount", "umount2", "pivot_root", "chroot", "unshare", "setns", "open_tree",
    "move_mount", "fsopen", "fsconfig", "fsmount", "fspick", "mount_setattr",
    # identity and privilege
    "setuid", "setgid", "setreuid", "setregid", "setresuid", "setresgid", "setfsuid",
    "setfsgid", "setgroups", "capset",
    # the kernel itself
    "init_module", "finit_module", "delete_module", "kexec_load", "kexec_file_load", "bpf",
    "perf_event_open", "userfaultfd", "io_uring_setup", "io_uring_enter",
    "io_uring_register", "keyctl", "add_key", "request_key", "lookup_dcookie",
    "fanotify_init", "syslog", "uselib",
    # files by handle, devices, the machine
    "open_by_handle_at", "name_to_handle_at", "mknod", "mknodat", "reboot", "swapon",
    "swapoff", "acct", "quotactl", "quotactl_fd", "vhangup", "iopl", "ioperm",
    "settimeofday", "clock_settime", "clock_adjtime", "adjtimex", "sethostname",
    "setdomainname",
)

REFUSED = ("execve", "execveat", "fork", "vfork", "socket", "connect", "bind", "listen",
           "pidfd_open", "pidfd_send_signal", "tkill")

# a new namespace even for a thread (clone's flags; CLONE_NEWTIME only reaches clone3)
CLONE_NAMESPACES = (0x00020000, 0x02000000, 0x04000000, 0x08000000, 0x10000000,
                    0x20000000, 0x40000000)
CLONE_THREAD = 0x00010000
TERMINAL_INJECTION = (termios.TIOCSTI, getattr(termios, "TIOCLINUX", 0x541C))


class Unavailable(Exception):
    """libseccomp cannot be loaded (or the kernel refuses the filter)."""


def set_no_new_privs() -> None:
    """No exec of this process can gain privileges (setuid files, file capabilities)."""
    libc = ctypes.CDLL(None, use_errno=True)  # not find_library: that runs a subprocess
    if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"PR_SET_NO_NEW_PRIVS: {os.strerror(err)}")


def build_filter(pid: int) -> Any:
    """The filter for process `pid` (signals to it alone stay allowed), not yet loaded."""
    try:
        import pyseccomp as sc
    except (ImportError, OSError, RuntimeError) as e:  # RuntimeError: no libseccomp
        raise Unavailable(f"libseccomp: {e}") from None
    f = sc.SyscallFilter(sc.ALLOW)
    f.set_attr(sc.Attr.CTL_TSYNC, 1)  # every thread, whatever started it
    f.set_attr(sc.Attr.ACT_BADARCH, sc.KILL_PROCESS)
    eperm = sc.ERRNO(errno.EPERM)

    def rule(action: int, name: str, *args: Any) -> None:
        if sc.resolve_syscall(sc.Arch.NATIVE, name) != -1:  # unknown to this libseccomp
            f.add_rule(action, name, *args)

    for name in KILLED:
        rule(sc.KILL_PROCESS, name)
    for name in REFUSED:
        rule(eperm, name)
    rule(sc.ERRNO(errno.ENOSYS), "clone3")
    rule(eperm, "clone", sc.Arg(0, sc.MASKED_EQ, CLONE_THREAD, 0))
    for flag in CLONE_NAMESPACES:
        rule(eperm, "clone", sc.Arg(0, sc.MASKED_EQ, flag, flag))
    # the kernel reads these as 32-bit: an argument that differs in any bit is refused
    for name in ("kill", "tgkill", "rt_sigqueueinfo", "rt_tgsigqueueinfo"):
        rule(eperm, name, sc.Arg(0, sc.NE, pid))
    for request in TERMINAL_INJECTION:
        rule(sc.KILL_PROCESS, "ioctl", sc.Arg(1, sc.MASKED_EQ, 0xFFFFFFFF, request))
    return f


def apply() -> None:
    """Contain the calling process: no_new_privs, then the filter on all its threads.
    Unavailable if the filter cannot be had (no_new_privs is set all the same)."""
    set_no_new_privs()
    f = build_filter(os.getpid())
    try:
        f.load()
    except OSError as e:
        raise Unavailable(f"seccomp: {e.strerror or e}") from None


def contain(enabled: bool) -> str:
    """The domain process's containment, as the daemon is told (CONTAINED, DISABLED or
    UNAVAILABLE with the reason). Never raises: a host without libseccomp runs its
    domains as before, and says so."""
    if not enabled:
        return DISABLED
    try:
        apply()
    except (Unavailable, OSError) as e:
        return f"{UNAVAILABLE} ({e})"
    return CONTAINED


def killed_by_filter(status: int | None) -> bool:
    """Whether a process's exit status (Popen's: -signal) is death by SIGSYS, which is how
    the filter kills."""
    return status == -signal.SIGSYS
