"""Views of the tree: the committed tree, and a transaction's private overlay on it.

Like the C xenstored, a transaction remembers the generation of every node it touches
(read or written) the first time it touches it, and its commit fails with EAGAIN only if
one of *those* nodes changed meanwhile: unrelated writes do not conflict.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from pyxen.xenstore.errors import XenStoreError
from pyxen.xenstore.node import Node
from pyxen.xenstore.perms import Perms

if TYPE_CHECKING:
    from pyxen.xenstore.store import Store

ABSENT = -1  # generation recorded for a node that did not exist when first touched


@dataclass
class QueuedEvent:
    """A watch event held back until commit."""

    path: str
    exact: bool
    perms: Perms | None
    old_perms: Perms | None


class TreeView:
    """The committed tree: writes take effect at once, with a fresh generation."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def get(self, path: str) -> Node | None:
        return self.store.nodes.get(path)

    def put(self, path: str, node: Node) -> None:
        self.store.commit_node(path, node)

    def delete(self, path: str) -> None:
        self.store.commit_node(path, None)

    def owned(self, domid: int) -> int:
        return self.store.owned.get(domid, 0)


@dataclass(eq=False)
class Transaction:
    """A transaction's overlay: private copies of every node it touched."""

    store: Store
    tx_id: int
    domid: int
    node_limit: int | None  # transaction-nodes quota, None when privileged
    view: dict[str, Node | None] = field(default_factory=dict)
    accessed: dict[str, int] = field(default_factory=dict)
    modified: dict[str, None] = field(default_factory=dict)  # ordered set
    owned_delta: defaultdict[int, int] = field(default_factory=lambda: defaultdict(int))
    events: list[QueuedEvent] = field(default_factory=list)

    def get(self, path: str) -> Node | None:
        try:
            return self.view[path]
        except KeyError:
            pass
        if self.node_limit is not None and len(self.accessed) >= self.node_limit:
            raise XenStoreError("ENOSPC", "too many nodes touched by transaction")
        node = self.store.nodes.get(path)
        self.accessed[path] = ABSENT if node is None else node.generation
        self.view[path] = node
        return node

    def _set(self, path: str, node: Node | None) -> None:
        old = self.get(path)
        if old is not None:
            self.owned_delta[old.owner] -= 1
        if node is not None:
            self.owned_delta[node.owner] += 1
        self.view[path] = node
        self.modified[path] = None

    def put(self, path: str, node: Node) -> None:
        self._set(path, node)

    def delete(self, path: str) -> None:
        self._set(path, None)

    def owned(self, domid: int) -> int:
        return self.store.owned.get(domid, 0) + self.owned_delta.get(domid, 0)

    def conflicts(self) -> bool:
        """True if a node this transaction touched has changed since it touched it."""
        nodes = self.store.nodes
        for path, generation in self.accessed.items():
            node = nodes.get(path)
            if (ABSENT if node is None else node.generation) != generation:
                return True
        return False

    def apply(self) -> None:
        """Write every modified node into the committed tree."""
        for path in self.modified:
            self.store.commit_node(path, self.view[path])
