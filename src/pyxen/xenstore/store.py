"""Store: the XenStore database and its operations, with Xen 4.17's C xenstored semantics.

Pure Python objects and no I/O: every operation is a synchronous method taking the
caller's `Session`, so a socket server, a vCPU thread serving a guest ring, or a test can
drive it alike. Failures raise `XenStoreError` with the Xen errno name.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Protocol

from pyxen.abi.xs_wire import XENSTORE_PAYLOAD_MAX
from pyxen.xenstore.domains import DOMID_FIRST_RESERVED, DOMID_SELF, Domain
from pyxen.xenstore.errors import XenStoreError
from pyxen.xenstore.node import Node
from pyxen.xenstore.paths import basename, canonicalize, domain_path, is_child, join, parent_of
from pyxen.xenstore.perms import (
    XS_PERM_NONE,
    XS_PERM_OWNER,
    XS_PERM_READ,
    XS_PERM_WRITE,
    Perm,
    Perms,
    parse_perm,
    perm_for,
    perms_to_strings,
)
from pyxen.xenstore.quota import Quotas, node_size
from pyxen.xenstore.session import EventSink, Session, Watch
from pyxen.xenstore.transaction import QueuedEvent, Transaction, TreeView

SPECIAL_NODES = ("@introduceDomain", "@releaseDomain")
DEFAULT_PERMS: Perms = (Perm(XS_PERM_NONE, 0),)
SERVER_FEATURES = 0  # no guest ring yet: neither reconnection nor the error field


class Journal(Protocol):
    """What the store tells persistence (`snapshot.Persistence`) so a new daemon can get it back."""

    def committed(self, path: str, node: Node | None) -> None:
        """A node was written (or deleted, None) in the committed tree."""

    def session_changed(self, domid: int, structural: bool) -> None:
        """A guest session (domid > 0) opened, closed or changed its watches (structural),
        or started a transaction (its next transaction id moved)."""

    def domains_changed(self) -> None:
        """Domain records, global quotas or special-node permissions changed."""

    def batch_end(self) -> None:
        """A batch of requests is handled and its replies are about to leave."""


@dataclass
class StoreHooks:
    """Callbacks for the hypervisor: map/unmap a guest's ring when the toolstack says so."""

    introduce: Callable[[Domain], None] | None = None
    release: Callable[[int], None] | None = None


@dataclass
class Store:
    quotas: Quotas = field(default_factory=Quotas)
    hooks: StoreHooks = field(default_factory=StoreHooks)
    priv_domid: int = 0
    nodes: dict[str, Node] = field(default_factory=dict)
    owned: dict[int, int] = field(default_factory=dict)
    generation: int = 0
    domains: dict[int, Domain] = field(default_factory=dict)
    sessions: list[Session] = field(default_factory=list)
    special_perms: dict[str, Perms] = field(default_factory=dict)
    trace: Callable[[str], None] | None = None  # set by CONTROL log on
    journal: Journal | None = None  # set while a daemon keeps the store on disk

    def __post_init__(self) -> None:
        if not self.nodes:
            for path in ("/", "/tool", "/tool/xenstored"):
                self._bootstrap(path)
        for name in SPECIAL_NODES:
            self.special_perms.setdefault(name, DEFAULT_PERMS)

    def _bootstrap(self, path: str) -> None:
        if path != "/":
            parent = self.nodes[parent_of(path)]
            self.commit_node(parent_of(path), parent.with_child(basename(path)))
        self.commit_node(path, Node(b"", DEFAULT_PERMS))

    # ---- bookkeeping -------------------------------------------------------------------

    def commit_node(self, path: str, node: Node | None) -> None:
        """Write (or delete, if None) a node in the committed tree, counting owners."""
        old = self.nodes.get(path)
        if old is not None:
            self.owned[old.owner] -= 1
        if node is None:
            self.nodes.pop(path, None)
        else:
            self.generation += 1
            node.generation = self.generation
            self.nodes[path] = node
            self.owned[node.owner] = self.owned.get(node.owner, 0) + 1
        if self.journal is not None:
            self.journal.committed(path, node)

    def _session_changed(self, session: Session, structural: bool = True) -> None:
        """Tell persistence; a dom0 session dies with the daemon and is not kept."""
        if self.journal is not None and session.domid > 0:
            self.journal.session_changed(session.domid, structural)

    def _domains_changed(self) -> None:
        if self.journal is not None:
            self.journal.domains_changed()

    def open_session(self, domid: int, sink: EventSink) -> Session:
        session = Session(domid, sink)
        self.sessions.append(session)
        self._session_changed(session)
        return session

    def close_session(self, session: Session) -> None:
        session.closed = True
        session.watches.clear()
        session.transactions.clear()
        if session in self.sessions:
            self.sessions.remove(session)
            self._session_changed(session)

    def is_privileged(self, session: Session) -> bool:
        return session.domid in (0, self.priv_domid)

    def quotas_for(self, domid: int) -> Quotas:
        domain = self.domains.get(domid)
        return domain.quotas if domain and domain.quotas else self.quotas

    def _target(self, domid: int) -> int | None:
        domain = self.domains.get(domid)
        return domain.target if domain else None

    def _perm(self, session: Session, perms: Perms) -> int:
        return perm_for(perms, session.domid, self.is_privileged(session), self._target(session.domid))

    def _path(self, session: Session, path: str, special: bool = False) -> str:
        limit = None if self.is_privileged(session) else self.quotas_for(session.domid).path_max
        return canonicalize(path, session.domid, limit, special)

    def _view(self, session: Session, tx_id: int) -> TreeView | Transaction:
        if not tx_id:
            return TreeView(self)
        try:
            return session.transactions[tx_id]
        except KeyError:
            raise XenStoreError("ENOENT", f"no transaction {tx_id}") from None

    def _get(self, view: TreeView | Transaction, session: Session, path: str, want: int) -> Node:
        """The node at `path` if `session` has `want` access; hides what it may not see."""
        node = view.get(path)
        if node is not None:
            if self._perm(session, node.perms) & want != want:
                raise XenStoreError("EACCES", path)
            return node
        # Missing: say EACCES rather than ENOENT if the nearest ancestor is not accessible,
        # so that unreadable parts of the tree do not leak their layout.
        ancestor = path
        while ancestor != "/":
            ancestor = parent_of(ancestor)
            anc = view.get(ancestor)
            if anc is not None:
                if self._perm(session, anc.perms) & want != want:
                    raise XenStoreError("EACCES", path)
                break
        raise XenStoreError("ENOENT", path)

    def _check_size(self, session: Session, node: Node) -> None:
        if self.is_privileged(session):
            return
        limit = self.quotas_for(session.domid).node_size
        if node_size(node.value, len(node.perms), node.children) > limit:
            raise XenStoreError("ENOSPC", "node too large")

    # ---- watches -----------------------------------------------------------------------

    def _fire(
        self,
        view: TreeView | Transaction,
        path: str,
        exact: bool = False,
        perms: Perms | None = None,
        old_perms: Perms | None = None,
    ) -> None:
        if isinstance(view, Transaction):
            view.events.append(QueuedEvent(path, exact, perms, old_perms))
        else:
            self.deliver(path, exact, perms, old_perms)

    def deliver(
        self, path: str, exact: bool, perms: Perms | None = None, old_perms: Perms | None = None
    ) -> None:
        """Send a WATCH_EVENT for `path` to every matching watch allowed to see it."""
        for session in self.sessions:
            permitted: bool | None = None
            for watch in session.watches:
                if not (path == watch.node if exact else is_child(path, watch.node)):
                    continue
                if permitted is None:
                    permitted = self._watch_permitted(session, path, perms, old_perms)
                if not permitted:
                    break
                session.sink(watch.event_path(path), watch.token)

    def _watch_permitted(
        self, session: Session, path: str, perms: Perms | None, old_perms: Perms | None
    ) -> bool:
        if self.is_privileged(session):
            return True
        if path.startswith("@"):
            return bool(self._perm(session, self.special_perms.get(path, DEFAULT_PERMS)) & XS_PERM_READ)
        candidates: list[Perms] = [p for p in (old_perms, perms) if p is not None]
        node = self.nodes.get(path)
        if node is not None:
            candidates.append(node.perms)
        parent = self.nodes.get(parent_of(path))
        if parent is not None:
            candidates.append(parent.perms)
        return any(self._perm(session, p) & XS_PERM_READ for p in candidates)

    def watch(self, session: Session, path: str, token: str) -> Watch:
        """Register a watch; its first event waits in `session.deferred` for the reply."""
        relative = not path.startswith(("/", "@"))
        node = self._path(session, path, special=True)
        for w in session.watches:
            if w.node == node and w.token == token:
                raise XenStoreError("EEXIST", "duplicate watch")
        if not self.is_privileged(session):
            count = sum(len(s.watches) for s in self.sessions if s.domid == session.domid)
            if count >= self.quotas_for(session.domid).watches:
                raise XenStoreError("E2BIG", "too many watches")
        watch = Watch(node, token, domain_path(session.domid) if relative else None)
        session.watches.append(watch)
        # Every new watch fires once, right after its acknowledgement.
        session.deferred.append((watch.event_path(watch.node), watch.token))
        self._session_changed(session)
        return watch

    def unwatch(self, session: Session, path: str, token: str) -> None:
        node = self._path(session, path, special=True)
        for i, w in enumerate(session.watches):
            if w.node == node and w.token == token:
                del session.watches[i]
                self._session_changed(session)
                return
        raise XenStoreError("ENOENT", "no such watch")

    def reset_watches(self, session: Session) -> None:
        session.watches.clear()
        session.transactions.clear()
        self._session_changed(session)

    # ---- node operations ---------------------------------------------------------------

    def read(self, session: Session, tx_id: int, path: str) -> bytes:
        view = self._view(session, tx_id)
        return self._get(view, session, self._path(session, path), XS_PERM_READ).value

    def directory(self, session: Session, tx_id: int, path: str) -> tuple[str, ...]:
        view = self._view(session, tx_id)
        return self._get(view, session, self._path(session, path), XS_PERM_READ).children

    def directory_part(self, session: Session, tx_id: int, path: str, offset: int) -> bytes:
        """DIRECTORY_PART reply: generation, then as many children from byte `offset` as fit.

        An empty string after the last child marks the end of the list.
        """
        view = self._view(session, tx_id)
        node = self._get(view, session, self._path(session, path), XS_PERM_READ)
        gen = f"{node.generation}".encode() + b"\0"
        childlist = b"".join(c.encode() + b"\0" for c in node.children)
        if offset >= len(childlist):
            return gen + b"\0"
        room = XENSTORE_PAYLOAD_MAX - len(gen) - 1
        chunk = childlist[offset:]
        if len(chunk) <= room:
            return gen + chunk + b"\0"
        cut = chunk.rfind(b"\0", 0, room) + 1
        return gen + chunk[:cut]

    def get_perms(self, session: Session, tx_id: int, path: str) -> list[str]:
        if path.startswith("@"):
            return perms_to_strings(self._special(path))
        view = self._view(session, tx_id)
        return perms_to_strings(self._get(view, session, self._path(session, path), XS_PERM_READ).perms)

    def _special(self, path: str) -> Perms:
        try:
            return self.special_perms[path]
        except KeyError:
            raise XenStoreError("ENOENT", path) from None

    def set_perms(self, session: Session, tx_id: int, path: str, perm_strings: Iterable[str]) -> None:
        perms = tuple(parse_perm(p) for p in perm_strings)
        if not perms:
            raise XenStoreError("EINVAL", "no permissions")
        if not self.is_privileged(session) and len(perms) > self.quotas_for(session.domid).permissions:
            raise XenStoreError("ENOSPC", "too many permissions")
        if path.startswith("@"):
            old = self._special(path)
            if not self._perm(session, old) & XS_PERM_OWNER:
                raise XenStoreError("EACCES", path)
            self.special_perms[path] = perms
            self._domains_changed()
            return
        view = self._view(session, tx_id)
        name = self._path(session, path)
        node = self._get(view, session, name, XS_PERM_WRITE | XS_PERM_OWNER)
        if not self.is_privileged(session) and perms[0].domid != node.owner:
            raise XenStoreError("EPERM", "only dom0 may change the owner")
        if perms[0].domid >= DOMID_FIRST_RESERVED:
            raise XenStoreError("EINVAL", "bad owner")
        new = node.replace(perms=perms)
        self._check_size(session, new)
        view.put(name, new)
        self._fire(view, name, perms=perms, old_perms=node.perms)

    def write(self, session: Session, tx_id: int, path: str, value: bytes) -> None:
        view = self._view(session, tx_id)
        name = self._path(session, path)
        try:
            node = self._get(view, session, name, XS_PERM_WRITE)
        except XenStoreError as e:
            if e.name != "ENOENT":
                raise
            self._create(view, session, name, value)
        else:
            new = node.replace(value=value)
            self._check_size(session, new)
            view.put(name, new)
        self._fire(view, name)

    def mkdir(self, session: Session, tx_id: int, path: str) -> None:
        view = self._view(session, tx_id)
        name = self._path(session, path)
        try:
            self._get(view, session, name, XS_PERM_WRITE)
        except XenStoreError as e:
            if e.name != "ENOENT":
                raise
            self._create(view, session, name, b"")
            self._fire(view, name)

    def _create(self, view: TreeView | Transaction, session: Session, path: str, value: bytes) -> None:
        """Create `path` and any missing parents; they inherit the nearest parent's perms.

        An unprivileged creator becomes the owner of what it creates. Quotas are checked
        before anything changes, so a refused request leaves no partial nodes behind.
        """
        missing = [path]
        anchor = parent_of(path)
        while (parent := view.get(anchor)) is None:
            missing.append(anchor)
            anchor = parent_of(anchor)
        perms = parent.perms
        privileged = self.is_privileged(session)
        if not privileged:
            perms = (Perm(perms[0].perms, session.domid), *perms[1:])
            if view.owned(session.domid) + len(missing) > self.quotas_for(session.domid).nodes:
                raise XenStoreError("ENOSPC", "node quota exceeded")
        missing.reverse()
        updated_parent = parent.with_child(basename(missing[0]))
        self._check_size(session, updated_parent)
        new_nodes = []
        for i, p in enumerate(missing):
            last = i == len(missing) - 1
            children = () if last else (basename(missing[i + 1]),)
            node = Node(value if last else b"", perms, children)
            self._check_size(session, node)
            new_nodes.append((p, node))
        view.put(anchor, updated_parent)
        for p, node in new_nodes:
            view.put(p, node)

    def rm(self, session: Session, tx_id: int, path: str) -> None:
        view = self._view(session, tx_id)
        name = self._path(session, path)
        try:
            node = self._get(view, session, name, XS_PERM_WRITE)
        except XenStoreError as e:
            if e.name == "ENOENT" and name != "/" and view.get(parent_of(name)) is not None:
                return  # removing what is not there is fine if its parent is
            raise
        if name == "/":
            raise XenStoreError("EINVAL", "cannot remove the root")
        self._remove(view, name, node)

    def _remove(self, view: TreeView | Transaction, name: str, node: Node) -> None:
        parent_name = parent_of(name)
        parent = view.get(parent_name)
        if parent is not None:
            view.put(parent_name, parent.without_child(basename(name)))
        self._delete_subtree(view, name, node, top=True)
        self._fire(view, name)

    def _delete_subtree(self, view: TreeView | Transaction, name: str, node: Node, top: bool) -> None:
        for child in node.children:
            child_name = join(name, child)
            child_node = view.get(child_name)
            if child_node is not None:
                self._delete_subtree(view, child_name, child_node, top=False)
        view.delete(name)
        if not top:
            self._fire(view, name, exact=True, perms=node.perms)

    # ---- transactions ------------------------------------------------------------------

    def transaction_start(self, session: Session, tx_id: int = 0) -> int:
        if tx_id:
            self._view(session, tx_id)  # ENOENT for an unknown id
            raise XenStoreError("EBUSY", "already in a transaction")
        privileged = self.is_privileged(session)
        quotas = self.quotas_for(session.domid)
        if not privileged and len(session.transactions) >= quotas.transactions:
            raise XenStoreError("ENOSPC", "too many transactions")
        new_id = session.next_tx_id
        while new_id == 0 or new_id in session.transactions:
            new_id = (new_id + 1) & 0xFFFFFFFF
        session.next_tx_id = (new_id + 1) & 0xFFFFFFFF
        session.transactions[new_id] = Transaction(
            self, new_id, session.domid, None if privileged else quotas.transaction_nodes
        )
        self._session_changed(session, structural=False)
        return new_id

    def transaction_end(self, session: Session, tx_id: int, commit: bool) -> None:
        if not tx_id:
            raise XenStoreError("ENOENT", "not in a transaction")
        tx = session.transactions.pop(tx_id, None)
        if tx is None:
            raise XenStoreError("ENOENT", f"no transaction {tx_id}")
        if not commit:
            return
        if tx.conflicts():
            raise XenStoreError("EAGAIN", "conflicting change")
        if not self.is_privileged(session):
            for domid, delta in tx.owned_delta.items():
                if delta > 0 and self.owned.get(domid, 0) + delta > self.quotas_for(domid).nodes:
                    raise XenStoreError("ENOSPC", "node quota exceeded")
        tx.apply()
        for ev in tx.events:
            self.deliver(ev.path, ev.exact, ev.perms, ev.old_perms)

    # ---- domains -----------------------------------------------------------------------

    def introduce(self, domid: int, mfn: int, evtchn: int) -> None:
        if domid == 0 or domid >= DOMID_FIRST_RESERVED:
            raise XenStoreError("EINVAL", f"bad domid {domid}")
        domain = self.domains.get(domid)
        if domain is not None and domain.introduced:
            domain.mfn, domain.evtchn = mfn, evtchn  # re-introduction rebinds, no event
            self._domains_changed()
            return
        domain = Domain(domid, mfn, evtchn, features=SERVER_FEATURES)
        self.domains[domid] = domain
        self._domains_changed()
        if self.hooks.introduce:
            self.hooks.introduce(domain)
        self.deliver("@introduceDomain", exact=False)

    def _connected(self, domid: int) -> Domain:
        if domid == 0 or domid >= DOMID_FIRST_RESERVED:
            raise XenStoreError("EINVAL", f"bad domid {domid}")
        domain = self.domains.get(domid)
        if domain is None:
            raise XenStoreError("ENOENT", f"domain {domid} not introduced")
        return domain

    def release(self, domid: int) -> None:
        """Forget a domain: its sessions go, and so do the nodes it owns."""
        self._connected(domid)
        del self.domains[domid]
        for session in [s for s in self.sessions if s.domid == domid]:
            self.close_session(session)
        if self.hooks.release:
            self.hooks.release(domid)
        view = TreeView(self)
        for path in sorted(self.nodes, key=len):
            node = self.nodes.get(path)
            if node is not None and path != "/" and node.owner == domid:
                self._remove(view, path, node)
        for path, node in list(self.nodes.items()):
            if any(p.domid == domid for p in node.perms[1:]):
                kept = (node.perms[0], *(p for p in node.perms[1:] if p.domid != domid))
                self.commit_node(path, node.replace(perms=kept))
        for other in self.domains.values():
            if other.target == domid:
                other.target = None
        self._domains_changed()
        self.deliver("@releaseDomain", exact=False)

    def resume(self, domid: int) -> None:
        self._connected(domid).shutdown = False
        self._domains_changed()

    def set_target(self, domid: int, target: int) -> None:
        domain = self._connected(domid)
        if target != 0:
            self._connected(target)
        domain.target = target
        self._domains_changed()

    def is_domain_introduced(self, domid: int) -> bool:
        return domid in (0, DOMID_SELF) or domid in self.domains

    # ---- features and quotas -----------------------------------------------------------

    def get_feature(self, domid: int | None) -> int:
        if domid is None:
            return SERVER_FEATURES
        return self._connected(domid).features

    def set_feature(self, domid: int, features: int) -> None:
        domain = self._connected(domid)
        if features & ~SERVER_FEATURES:
            raise XenStoreError("EINVAL", "feature not supported by the server")
        domain.features = features
        self._domains_changed()

    def get_quota(self, domid: int | None, name: str) -> int:
        if name not in Quotas.NAMES:
            raise XenStoreError("EINVAL", f"unknown quota {name!r}")
        if domid is None:
            return self.quotas.get(name)
        return self.quotas_for(self._connected(domid).domid).get(name)

    def set_quota(self, domid: int | None, name: str, value: int) -> None:
        if name not in Quotas.NAMES or value < 0:
            raise XenStoreError("EINVAL", f"bad quota {name!r}")
        if domid is None:
            self.quotas.set(name, value)
        else:
            domain = self._connected(domid)
            if domain.quotas is None:
                domain.quotas = self.quotas.copy()
            domain.quotas.set(name, value)
        self._domains_changed()

    def usage(self, domid: int) -> dict[str, int]:
        """Current consumption of a domain, for `xenstore-control quota <domid>`."""
        sessions = [s for s in self.sessions if s.domid == domid]
        return {
            "nodes": self.owned.get(domid, 0),
            "watches": sum(len(s.watches) for s in sessions),
            "transactions": sum(len(s.transactions) for s in sessions),
        }
