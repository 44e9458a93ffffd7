"""Live migration's sending side: iterative pre-copy of a running domain, then a short stop.

As Xen's (Clark et al., NSDI 2005; libxc's send_domain_memory_live): the first round sends
every frame while the guest runs with dirty logging on; each later round sends the frames
written since the one before; when what is left would be sent within the downtime the
user asked for (at the rate the rounds measured), or the dirty set stops shrinking, or the
rounds run out, the domain is paused and the rest goes with its vCPU and Xen state. The
policy adapts to the measured dirty rate and link speed instead of Xen's fixed "fewer than
50 pages or 5 rounds", and it says what it predicts before it stops the guest.

The stream is the save stream (stream.py): pages may come more than once, the last copy
wins, so the receiver is `restore_domain` unchanged.
"""

from __future__ import annotations

import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, BinaryIO

from . import stream
from .save import SaveError, populated_frames, write_description, write_pages, write_state
from .stream import StreamWriter

if TYPE_CHECKING:
    from pyxen.domain.domain import Domain
    from pyxen.hv.remote import Links

MAX_ROUNDS = 30
GROUP_ROUND_GAP_S = 0.02  # between rounds while a group member waits for the others
STALL_ROUNDS = 3  # rounds without the dirty set shrinking before the stop
DEFAULT_DOWNTIME_MS = 100.0


@dataclass
class Together:
    """A group migration's members stop at one moment: each says `ready` when its own
    policy would stop, and goes on with rounds until `stop` is set (every member ready,
    or the migration called off)."""

    ready: Callable[[], None]
    stop: threading.Event = field(default_factory=threading.Event)
    ready_sent: bool = False


@dataclass
class Round:
    pages: int
    seconds: float


@dataclass
class Progress:
    """What a migration's pre-copy has done so far (for a progress display and the result)."""

    rounds: list[Round] = field(default_factory=list)
    pages_sent: int = 0
    bytes_sent: int = 0
    dirty: list[int] = field(default_factory=list)  # dirty after the last round: not yet sent
    rate: float = 0.0  # pages per second, measured
    predicted_ms: float = 0.0  # the stop's predicted duration


def precopy(domain: Domain, out: BinaryIO, wait_ack: Callable[[], None],
            downtime_ms: float = DEFAULT_DOWNTIME_MS, toolstack_config: object = None,
            on_progress: Callable[[Progress], None] = lambda p: None, links: Links = False,
            together: Together | None = None) -> tuple[StreamWriter, Progress]:
    """The live rounds, the guest running; returns with the domain paused and everything
    but its state sent (the caller writes it with `finish`, which the toolstack's own
    part may wait for). Each round ends with a SYNC record and `wait_ack` returns once the
    receiver has applied it: the rate is measured end to end, and the stop never waits
    for a receiver still busy with earlier rounds. The domain is unpaused again if this
    raises. `links`: the domains migrating with this one (save.xen_state); `together`:
    how they stop at the same moment."""
    progress = Progress()
    writer = StreamWriter(out)
    write_description(writer, domain, toolstack_config, links)
    domain.set_dirty_logging(True)
    try:
        pending = populated_frames(domain)
        best, stalled = len(pending), 0
        while True:
            started = time.monotonic()
            write_pages(writer, domain, pending)
            writer.record(stream.SYNC, b"")
            out.flush()
            wait_ack()
            took = max(time.monotonic() - started, 1e-6)
            progress.rounds.append(Round(len(pending), took))
            progress.pages_sent += len(pending)
            progress.bytes_sent = writer.written
            if pending:
                progress.rate = len(pending) / took
            pending = sorted(domain.dirty_frames())
            progress.dirty = pending
            progress.predicted_ms = 1000 * len(pending) / max(progress.rate, 1.0)
            on_progress(progress)
            stalled = 0 if len(pending) < best else stalled + 1
            best = min(best, len(pending))
            if together is not None and together.ready_sent:
                if together.stop.wait(GROUP_ROUND_GAP_S):
                    break  # every member of the group is ready: stop now
                continue  # meanwhile, rounds keep what is left small
            if progress.predicted_ms <= downtime_ms or stalled >= STALL_ROUNDS or \
                    len(progress.rounds) >= MAX_ROUNDS:
                if together is None:
                    break
                together.ready_sent = True
                together.ready()
        if not domain.pause():
            domain.unpause()
            raise SaveError("the domain's vCPUs did not stop within 30 s")
    except BaseException:
        domain.set_dirty_logging(False)
        raise
    return writer, progress


def finish(writer: StreamWriter, domain: Domain, progress: Progress,
           toolstack: object = None, links: Links = False) -> None:
    """With the domain paused: the frames dirtied since the last round (and every frame
    another domain may write through a grant), then its state and END."""
    try:
        final = set(progress.dirty) | domain.dirty_frames() | \
            domain.grant_table.writable_granted_frames()
        write_pages(writer, domain, sorted(final))
        progress.pages_sent += len(final)
        write_state(writer, domain, toolstack, links)
        progress.bytes_sent = writer.written
    finally:
        domain.set_dirty_logging(False)


# --- the handshake after the stream (as xl's migrate: ready, go, done) ------------------
READY, GO, DONE, FAIL = b"RDY\0", b"GO!\0", b"DONE", b"FAIL"
MESSAGE = struct.Struct("<4sI")  # word, length of the text that follows (FAIL's reason)

