"""No garbage collection in a daemon while a migration runs, at either end.

A full collection of a daemon's heap took 30-50 ms and fell inside the stop of about one
move in two (the 512 MiB migrate benchmark's downtime: 11 ms without it, 40-70 ms with
it). A migration is short and the daemon allocates little meanwhile that only the
collector frees, so the collector waits until the daemon's last migration is over. Holds
nest: several migrations may run at once. (Holding it in the domain processes too made
the restore slower, 7 to 11 ms of the stop: they allocate much more.)
"""

from __future__ import annotations

import contextlib
import gc
import threading
from collections.abc import Iterator

_lock = threading.Lock()
_holds = 0
_was_enabled = True


@contextlib.contextmanager
def gc_held() -> Iterator[None]:
    global _holds, _was_enabled
    with _lock:
        if _holds == 0:
            _was_enabled = gc.isenabled()
            gc.disable()
        _holds += 1
    try:
        yield
    finally:
        with _lock:
            _holds -= 1
            if _holds == 0 and _was_enabled:
                gc.enable()
