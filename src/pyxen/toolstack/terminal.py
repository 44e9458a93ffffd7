"""`pyxen run`'s keyboard: stdin into the guest's PV console ring, as `xl console` does.

On a terminal, input is raw (every key goes to the guest as typed, Ctrl-C included) and
ESCAPE (Ctrl-], xl console's escape) leaves: the caller decides what leaving means (`pyxen
run` stops the domain as Ctrl-C would). Output processing is left on, so a guest's "\\n"
still starts a new line. The terminal's mode is restored on every way out: the normal end,
a stop signal, an exception, interpreter exit. From a pipe or file the bytes are fed as
they are; at EOF feeding stops and the domain keeps running.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import select
import termios
import threading
from collections.abc import Callable, Iterator

from pyxen.backends.console import ConsoleBackend
from pyxen.threads import start_worker

ESCAPE = b"\x1d"  # Ctrl-]
ESCAPE_NAME = "Ctrl-]"
READ_SIZE = 4096


def is_foreground_terminal(fd: int) -> bool:
    """A terminal we may read and switch modes on without being stopped by SIGTTIN/SIGTTOU:
    not our controlling terminal, or one whose foreground process group is ours."""
    if not os.isatty(fd):
        return False
    try:
        return os.tcgetpgrp(fd) == os.getpgrp()
    except OSError:  # not our controlling terminal: no job control applies
        return True


def terminal_name(fd: int = 0) -> str:
    """The terminal the guest's console is on ("" when stdin is not one)."""
    try:
        return os.ttyname(fd) if is_foreground_terminal(fd) else ""
    except OSError:
        return ""


class RawTerminal:
    """Raw input mode on `fd` for the duration; restored however the block ends."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.saved: list | None = None  # type: ignore[type-arg]

    def __enter__(self) -> RawTerminal:
        if not is_foreground_terminal(self.fd):
            return self
        try:
            saved = termios.tcgetattr(self.fd)
        except termios.error:
            return self
        mode = termios.tcgetattr(self.fd)
        mode[0] &= ~(termios.BRKINT | termios.ICRNL | termios.INPCK | termios.ISTRIP
                     | termios.IXON)
        mode[2] = (mode[2] & ~(termios.CSIZE | termios.PARENB)) | termios.CS8
        mode[3] &= ~(termios.ECHO | termios.ICANON | termios.IEXTEN | termios.ISIG)
        mode[6] = list(mode[6])
        mode[6][termios.VMIN], mode[6][termios.VTIME] = 1, 0
        self.saved = saved
        atexit.register(self.restore)
        termios.tcsetattr(self.fd, termios.TCSANOW, mode)  # keep what was typed ahead
        return self

    def restore(self) -> None:
        if self.saved is not None:
            with contextlib.suppress(termios.error, OSError):
                termios.tcsetattr(self.fd, termios.TCSADRAIN, self.saved)
            self.saved = None
            atexit.unregister(self.restore)

    def __exit__(self, *exc: object) -> None:
        self.restore()


class ConsoleInput:
    """Feeds `fd`'s bytes into a console ring's `in` side on its own thread. With `escape`,
    ESCAPE in the input is not fed: `escape()` is called and feeding stops."""

    def __init__(self, fd: int, escape: Callable[[], None] | None = None) -> None:
        self.fd = fd
        self.escape = escape
        self._stop = threading.Event()
        self._wake_r, self._wake_w = os.pipe()
        self._thread: threading.Thread | None = None

    def start(self, backend: ConsoleBackend) -> None:
        self._thread = threading.Thread(target=self._run, args=(backend,),
                                        name="console-input", daemon=True)
        start_worker(self._thread)

    def _run(self, backend: ConsoleBackend) -> None:
        while not self._stop.is_set():
            try:
                ready, _, _ = select.select([self.fd, self._wake_r], [], [])
                if self._wake_r in ready:
                    return
                data = os.read(self.fd, READ_SIZE)
            except (BlockingIOError, InterruptedError):
                continue
            except OSError:  # the terminal went away (EIO): as at EOF
                return
            if not data:
                return  # EOF: stop feeding; the domain keeps running
            escaped = self.escape is not None and ESCAPE in data
            if escaped:
                data = data[:data.index(ESCAPE)]
            if not backend.feed(data, self._stop):
                return
            if escaped:
                assert self.escape is not None
                self.escape()
                return

    def stop(self) -> None:
        """Stop feeding and free the thread's resources (idempotent)."""
        if self._wake_w < 0:
            return
        self._stop.set()
        with contextlib.suppress(OSError):
            os.write(self._wake_w, b"x")
        if self._thread is not None:
            self._thread.join(timeout=5)
        for fd in (self._wake_r, self._wake_w):
            with contextlib.suppress(OSError):
                os.close(fd)
        self._wake_r = self._wake_w = -1


@contextlib.contextmanager
def stdin_console(escape: Callable[[], None]) -> Iterator[ConsoleInput | None]:
    """`pyxen run`'s stdin as console input: raw mode on a terminal (escape on ESCAPE),
    the plain bytes otherwise; None when stdin is a terminal we may not read (a background
    job) or is closed."""
    fd = 0
    try:
        os.fstat(fd)
    except OSError:
        yield None
        return
    if os.isatty(fd) and not is_foreground_terminal(fd):
        yield None
        return
    terminal = os.isatty(fd)
    feeder = ConsoleInput(fd, escape if terminal else None)
    try:
        with RawTerminal(fd):
            yield feeder
    finally:
        feeder.stop()
