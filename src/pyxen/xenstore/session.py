"""Session: what the store keeps per client connection (domain, watches, transactions).

It knows nothing of bytes or sockets: events leave through `sink`, so the same session
serves a Unix socket client today and a guest's shared ring later.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pyxen.xenstore.transaction import Transaction

EventSink = Callable[[str, str], None]


@dataclass(eq=False)
class Watch:
    node: str  # canonical path, or "@introduceDomain"-style special name
    token: str
    relative_prefix: str | None  # set when registered with a relative path

    def event_path(self, path: str) -> str:
        """The path as reported to the watcher: relative if the watch was."""
        if self.relative_prefix is None or path.startswith("@"):
            return path
        rest = path[len(self.relative_prefix) :]
        return rest[1:] if rest.startswith("/") else rest


@dataclass(eq=False)
class Session:
    domid: int
    sink: EventSink
    watches: list[Watch] = field(default_factory=list)
    transactions: dict[int, Transaction] = field(default_factory=dict)
    next_tx_id: int = 1
    closed: bool = False
    deferred: list[tuple[str, str]] = field(default_factory=list)  # events due after the reply
    # Re-created from a snapshot by a new daemon: transaction ids it does not know were
    # opened before the restart, so they get EAGAIN (the guest retries), not ENOENT.
    restored: bool = False
