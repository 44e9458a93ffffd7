"""Node: one entry of the tree, immutable so transactions can share it with the live tree."""

from __future__ import annotations

from pyxen.xenstore.perms import Perms


class Node:
    """Value, permissions, ordered child names and the generation of the last change.

    Never mutated in place: a change builds a new Node, so a transaction's view and the
    committed tree can hold the same object safely.
    """

    __slots__ = ("value", "perms", "children", "generation")

    def __init__(
        self, value: bytes, perms: Perms, children: tuple[str, ...] = (), generation: int = 0
    ) -> None:
        self.value = value
        self.perms = perms
        self.children = children
        self.generation = generation

    @property
    def owner(self) -> int:
        return self.perms[0].domid

    def replace(
        self,
        *,
        value: bytes | None = None,
        perms: Perms | None = None,
        children: tuple[str, ...] | None = None,
    ) -> Node:
        return Node(
            self.value if value is None else value,
            self.perms if perms is None else perms,
            self.children if children is None else children,
            self.generation,
        )

    def with_child(self, name: str) -> Node:
        return self.replace(children=(*self.children, name))

    def without_child(self, name: str) -> Node:
        return self.replace(children=tuple(c for c in self.children if c != name))
