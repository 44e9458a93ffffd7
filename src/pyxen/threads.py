"""Worker threads that leave the stop signals to the main thread.

The kernel delivers a process-directed signal to any thread that does not block it. If a
worker gets SIGINT, CPython only notes it, and the main thread runs its handler when it next
wakes, which, blocked in a wait, may be never. A worker started here blocks the stop
signals, so they always reach the main thread and interrupt its wait at once: the main
thread can sleep until something happens instead of polling (polling wakes a sleeping
domain's process several times a second, for nothing)."""

from __future__ import annotations

import signal
import threading

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def start_worker(thread: threading.Thread) -> threading.Thread:
    """Start `thread` with the stop signals blocked in it (a new thread inherits its
    creator's signal mask); the caller's own mask is left as it was."""
    saved = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        thread.start()
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, saved)
    return thread
