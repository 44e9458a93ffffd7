"""A domain process's containment (pyxen.host.containment): no_new_privs and a seccomp filter.

The policy is tried from inside: a forked child of the test applies it exactly as a domain
process does, then makes the calls and reports what happened through a pipe, or dies. Then
the real thing: a daemon's domain process is contained, on all its threads, while its guest
boots and shuts down, and `--no-containment` turns it off."""

from __future__ import annotations

import ctypes
import errno
import os
import re
import resource
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from conftest import AVAILABLE
from host.hostkit import Daemon, start, wait_for

pyseccomp = pytest.importorskip("pyseccomp", reason="libseccomp or pyseccomp is missing")
from pyxen.host import containment  # noqa: E402 - only once pyseccomp is known to load

libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
LONG_IDLE = "idle=3600 idle_how=block"


def in_contained_child(check: Callable[[], object],
                       contain: Callable[[], object] = containment.apply) -> tuple[int, str]:
    """Fork, contain the child as a domain process is contained, run `check` there; the
    child's wait status and the repr of what `check` returned (or raised)."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        code = 0
        try:
            os.close(r)
            resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # SIGSYS would dump core
            contain()
            os.write(w, repr(check()).encode())
        except BaseException as e:  # noqa: BLE001 - reported to the parent
            os.write(w, f"raised {e!r}".encode())
            code = 1
        finally:
            os._exit(code)
    os.close(w)
    with os.fdopen(r, "rb") as pipe:
        out = pipe.read().decode()
    return os.waitpid(pid, 0)[1], out


def attempt(call: Callable[[], object]) -> str:
    """'EPERM' (or another errno's name) if `call` fails so, else 'allowed'."""
    try:
        call()
    except OSError as e:
        return errno.errorcode.get(e.errno or 0, str(e))
    return "allowed"


def fork_and_leave() -> None:
    if os.fork() == 0:
        os._exit(0)


def refused_calls() -> dict[str, str]:
    """What a domain process may not do, but library code might try: each must fail."""
    me = os.getpid()
    outcome = {f"socket({fam.name})": attempt(lambda f=fam: socket.socket(f, socket.SOCK_DGRAM))
               for fam in (socket.AF_INET, socket.AF_INET6, socket.AF_UNIX, socket.AF_NETLINK,
                           socket.AF_PACKET)}
    outcome.update({
        "execve": attempt(lambda: os.execv("/bin/true", ["true"])),
        "fork": attempt(fork_and_leave),
        "subprocess": attempt(lambda: subprocess.run(["/bin/true"], check=False)),
        "kill(parent)": attempt(lambda: os.kill(os.getppid(), 0)),
        "kill(init)": attempt(lambda: os.kill(1, 0)),
        "kill(group)": attempt(lambda: os.kill(0, 0)),
        "kill(self)": attempt(lambda: os.kill(me, 0)),
    })
    return outcome


def test_process_creation_exec_new_sockets_and_signals_to_others_are_refused() -> None:
    status, out = in_contained_child(refused_calls)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, (status, out)
    outcome = eval(out)  # noqa: S307 - our own child's repr of a dict of str
    assert outcome.pop("kill(self)") == "allowed"
    assert outcome == dict.fromkeys(outcome, "EPERM")
    assert len(outcome) == 11


def still_allowed() -> dict[str, object]:
    """What a domain process does after its build: all of it must still work."""
    out: dict[str, object] = {}
    ran: list[int] = []
    thread = threading.Thread(target=lambda: ran.append(threading.get_native_id()))
    thread.start()
    thread.join()
    out["thread"] = len(ran) == 1 and ran[0] != threading.get_native_id()
    with ThreadPoolExecutor(4) as pool:
        out["pool"] = sorted(pool.map(lambda x: x * x, range(4))) == [0, 1, 4, 9]
    assert "wave" not in sys.modules
    __import__("wave")  # a lazy import: openat, read, mmap
    out["import"] = "wave" in sys.modules
    memory = bytearray(64 << 20)  # the heap grows (mmap/brk)
    memory[-1] = 1
    out["memory"] = memory[-1] == 1
    fd = os.eventfd(0, os.EFD_CLOEXEC)
    os.eventfd_write(fd, 1)
    out["eventfd"] = os.eventfd_read(fd) == 1
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    a.send(b"x")
    out["socketpair"] = b.recv(1) == b"x"
    mem = os.memfd_create("guest-ram")
    os.ftruncate(mem, 1 << 20)
    out["memfd"] = os.fstat(mem).st_size == 1 << 20
    kicked = threading.Event()
    signal.signal(signal.SIGUSR1, lambda *_: kicked.set())
    signal.pthread_kill(threading.main_thread().ident or 0, signal.SIGUSR1)  # a vCPU kick
    out["kick"] = kicked.wait(5)
    status = Path("/proc/self/status").read_text()
    out["status"] = re.findall(r"^(NoNewPrivs|Seccomp):\s+(\d+)$", status, re.M)
    return out


def test_threads_imports_memory_eventfds_and_kicks_still_work() -> None:
    status, out = in_contained_child(still_allowed)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, (status, out)
    outcome = eval(out)  # noqa: S307 - our own child's repr
    assert outcome.pop("status") == [("NoNewPrivs", "1"), ("Seccomp", "2")]
    assert outcome == dict.fromkeys(outcome, True)


def sys_call(name: str, *args: object) -> Callable[[], int]:
    """libc's syscall(2) of `name` (numbered by libseccomp), arguments harmless even if the
    filter were missing: each fails on its own (bad fd, pid, path or magic)."""
    number = pyseccomp.resolve_syscall(pyseccomp.Arch.NATIVE, name)
    return lambda: libc.syscall(ctypes.c_long(number), *args)


def machine_code(code: bytes) -> Callable[[], int]:
    """Run `code` (ending in ret) as a function: for system calls by another ABI."""
    def call() -> int:
        import mmap
        page = mmap.mmap(-1, mmap.PAGESIZE, prot=mmap.PROT_READ | mmap.PROT_WRITE |
                         mmap.PROT_EXEC)
        page.write(code)
        address = ctypes.addressof(ctypes.c_char.from_buffer(page))
        return ctypes.CFUNCTYPE(ctypes.c_long)(address)()
    return call


NOWHERE = b"/nonexistent-pyxen-containment/x"
TIOCSTI = 0x5412
KILLED = {
    "ptrace": sys_call("ptrace", 3, 999_999_999, 0, 0),  # PTRACE_PEEKUSER of no process
    "process_vm_readv": sys_call("process_vm_readv", 999_999_999, 0, 0, 0, 0, 0),
    "pidfd_getfd": sys_call("pidfd_getfd", -1, 0, 0),
    "mount": sys_call("mount", b"none", NOWHERE, b"tmpfs", 0, 0),
    "unshare": sys_call("unshare", 0x04000000),  # CLONE_NEWUTS: harmless in a child
    "setns": sys_call("setns", -1, 0),
    "setuid": sys_call("setuid", os.getuid()),
    "capset": sys_call("capset", 0, 0),
    "init_module": sys_call("init_module", 0, 0, b""),
    "finit_module": sys_call("finit_module", -1, b"", 0),
    "kexec_load": sys_call("kexec_load", 0, 0, 0, 0xBEEF),
    "bpf": sys_call("bpf", 999, 0, 0),
    "perf_event_open": sys_call("perf_event_open", 0, 0, -1, -1, 0),
    "io_uring_setup": sys_call("io_uring_setup", 0, 0),
    "userfaultfd": sys_call("userfaultfd", 0xBEEF),
    "keyctl": sys_call("keyctl", 999, 0, 0, 0, 0),
    "open_by_handle_at": sys_call("open_by_handle_at", -1, 0, 0),
    "reboot": sys_call("reboot", 0, 0, 0, 0),  # wrong magic
    "mknodat": sys_call("mknodat", -100, NOWHERE, 0, 0),
    "clock_settime": sys_call("clock_settime", 999, 0),
    "iopl": sys_call("iopl", 0),
    "ioctl(TIOCSTI)": sys_call("ioctl", -1, TIOCSTI, 0),
    "ioctl(TIOCSTI, high bits)": sys_call("ioctl", -1, ctypes.c_long((1 << 32) | TIOCSTI), 0),
    # the same calls by another ABI's numbers: getpid, as i386 (int 0x80) and as x32
    "i386 int 0x80": machine_code(bytes.fromhex("b814000000" "cd80" "c3")),
    "x32 syscall": machine_code(bytes.fromhex("b827000040" "0f05" "c3")),
}


@pytest.mark.parametrize("name", KILLED)
def test_what_no_domain_process_does_kills_it_with_sigsys(name: str) -> None:
    status, out = in_contained_child(KILLED[name])
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGSYS, (status, out)
    assert out == ""


def test_no_containment_without_being_asked() -> None:
    assert containment.contain(False) == containment.DISABLED
    assert re.search(r"^Seccomp:\s+0$", Path("/proc/self/status").read_text(), re.M)


def without_libseccomp() -> tuple[str, list[str]]:
    del sys.modules["pyseccomp"]
    sys.modules["pyseccomp"] = None  # type: ignore[assignment]  # import fails, as uninstalled
    said = containment.contain(True)
    status = Path("/proc/self/status").read_text()
    return said, re.findall(r"^(?:NoNewPrivs|Seccomp):\s+(\d+)$", status, re.M)


def test_without_libseccomp_a_domain_runs_with_no_new_privs_alone() -> None:
    status, out = in_contained_child(without_libseccomp, contain=lambda: None)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, (status, out)
    said, flags = eval(out)  # noqa: S307 - our own child's repr
    assert said.startswith(f"{containment.UNAVAILABLE} (libseccomp: ")
    assert flags == ["1", "0"]


# --- a daemon's domain processes ---------------------------------------------------------
def proc_status(pid: int, task: str | None = None) -> dict[str, str]:
    where = f"/proc/{pid}" + (f"/task/{task}" if task else "")
    lines = Path(f"{where}/status").read_text().splitlines()
    return dict(line.split(":\t", 1) for line in lines if ":\t" in line)


def test_a_domain_process_is_contained_on_every_thread_and_its_guest_runs(
        daemon: Daemon) -> None:
    start(daemon, "web")  # the kit's pvguest on hvc0, as examples/web.cfg
    dom = daemon.domains()["web"]
    assert dom["containment"] == containment.CONTAINED
    status = proc_status(dom["pid"])
    assert (status["NoNewPrivs"], status["Seccomp"]) == ("1", "2")
    tasks = os.listdir(f"/proc/{dom['pid']}/task")
    assert len(tasks) > 1  # the vCPU thread and others, started after the filter
    for task in tasks:
        assert proc_status(dom["pid"], task)["Seccomp"] == "2"
    done = daemon.pyxen("shutdown", "-w", "web")
    assert "Domain 1 has been shut down" in done.stdout
    wait_for("the domain to be destroyed", lambda: "web" not in daemon.domains())
    assert "(XEN) domain 1 (web) poweroff" in daemon.dmesg()


def test_death_by_sigsys_is_reported_as_the_filters_kill(daemon: Daemon) -> None:
    daemon.create("victim", "block", LONG_IDLE)
    pid = daemon.domains()["victim"]["pid"]
    resource.prlimit(pid, resource.RLIMIT_CORE, (0, 0))  # no core file in the cwd
    os.kill(pid, signal.SIGSYS)  # as the filter kills (the daemon cannot tell who sent it)
    wait_for("the domain to be gone", lambda: "victim" not in daemon.domains())
    assert re.search(r"\(XEN\) domain 1 \(victim\) crash: the domain's process killed by "
                     r"SIGSYS, as its seccomp filter kills a forbidden system call",
                     daemon.dmesg())


def test_no_containment_option_runs_domain_processes_uncontained(guests,
                                                                 tmp_path: Path) -> None:
    if "soft" not in AVAILABLE:
        pytest.skip("host-mode tests run their guests on the software CPU")
    daemon = Daemon(tmp_path, "--no-containment")
    try:
        daemon.create("loose", "block", LONG_IDLE)
        dom = daemon.domains()["loose"]
        assert dom["containment"] == containment.DISABLED
        status = proc_status(dom["pid"])
        assert (status["NoNewPrivs"], status["Seccomp"]) == ("0", "0")
        assert "--no-containment" in daemon.errors()
    finally:
        daemon.stop()
