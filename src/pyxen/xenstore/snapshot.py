"""XenStore state that outlives its daemon: a snapshot plus a journal of changes since it.

A new `pyxen daemon` re-adopts domain processes that outlived the old one (killed, or
replaced). Their guests must find the store exactly as they left it: every node with its
value, permissions, child order and generation; the introduced-domain records; quotas;
the special nodes' permissions; and each guest ring's session (its watches and its next
transaction id). This is the role of C xenstored's live-update state records
(xenstore-migration.md), kept here as JSON on disk:

- DIRECTORY/xenstore.json: `dump()` of the whole store, written to a temporary file and
  renamed over the old one, so a reader sees the old snapshot or the new, never half.
- DIRECTORY/xenstore.journal: one JSON line per batch of requests handled since that
  snapshot, holding the *full new state* of what the batch changed: each node written or
  deleted, each guest session, and the domain records/quotas/special permissions when
  those changed. Replay is therefore idempotent: replaying an old journal onto a newer
  snapshot (a crash between the rename and the journal's truncation) ends in the
  snapshot's state. A batch is one `os.write` done before any of its replies leaves, so a
  guest never hears "done" about a change that is not on disk, and a crash never keeps
  half of a transaction or of a recursive rm; a torn last line (the daemon was killed in
  mid-write) is ignored, as its replies never went out. There is no fsync: the threat is
  the daemon dying, not the machine, and the kernel keeps what was written.

Transactions in flight are not saved (C xenstored's live update ignores them too): a
transaction is a private view that only its connection's next requests would complete,
and it cannot be rebuilt soundly from the node records. A restored session instead
answers any transaction id it does not know with EAGAIN, which makes Linux's xenbus
retry the whole transaction from its start; `next_tx_id` is kept so that the retry never
gets the id of a transaction the guest still believes is open. Watch events and replies
queued but not yet written when the old daemon died are not saved either.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pyxen.xenstore.domains import DOMID_FIRST_RESERVED, Domain
from pyxen.xenstore.errors import XenStoreError
from pyxen.xenstore.node import Node
from pyxen.xenstore.paths import basename, join, parent_of
from pyxen.xenstore.perms import Perms, parse_perm, perms_to_strings
from pyxen.xenstore.quota import QUOTA_MAX, Quotas
from pyxen.xenstore.session import Session, Watch
from pyxen.xenstore.store import DEFAULT_PERMS, SPECIAL_NODES, Store

if TYPE_CHECKING:
    from pyxen.xenstore.connection import Connection
    from pyxen.xenstore.xenstored import XenStored

log = logging.getLogger("pyxen.xenstore")

FORMAT = "pyxen-xenstore"
VERSION = 1
SNAPSHOT_NAME = "xenstore.json"
JOURNAL_NAME = "xenstore.journal"
COMPACT_AFTER = 10_000  # journal lines after which on_structure asks for a new snapshot
U32_MAX = 0xFFFF_FFFF
INT_MAX = 2**63 - 1
_PATH = re.compile(r"/|(/[A-Za-z0-9\-_@]+)+")
_NAME = re.compile(r"[A-Za-z0-9\-_@]+")
_DOMID = re.compile(r"[1-9][0-9]{0,4}")
_ENCODER = json.JSONEncoder(separators=(",", ":"))  # made once: json.dumps(separators=) is slower
_RECORD_KEYS = {"generation", "nodes", "sessions", "domains", "quotas", "special_perms"}


class SnapshotError(Exception):
    """A snapshot or journal that cannot be restored; str() names what is wrong and where."""


# ---- writing ---------------------------------------------------------------------------


def _node_out(node: Node) -> dict[str, Any]:
    return {
        "value": node.value.decode("latin-1"),
        "perms": perms_to_strings(node.perms),
        "children": list(node.children),
        "generation": node.generation,
    }


def _quotas_out(quotas: Quotas) -> dict[str, int]:
    return {name: quotas.get(name) for name in Quotas.NAMES}


def _domain_out(domain: Domain) -> dict[str, Any]:
    return {
        "domid": domain.domid,
        "mfn": domain.mfn,
        "evtchn": domain.evtchn,
        "introduced": domain.introduced,
        "shutdown": domain.shutdown,
        "target": domain.target,
        "features": domain.features,
        "quotas": None if domain.quotas is None else _quotas_out(domain.quotas),
    }


def _session_out(session: Session) -> dict[str, Any]:
    return {
        "watches": [[w.node, w.token, w.relative_prefix] for w in session.watches],
        "next_tx_id": session.next_tx_id,
    }


def _guest_session(store: Store, domid: int) -> Session | None:
    """The session saved for a domain: its first live one (the guest ring's)."""
    for session in store.sessions:
        if session.domid == domid and not session.closed:
            return session
    return None


def _domains_out(store: Store) -> dict[str, Any]:
    return {
        "domains": [_domain_out(d) for d in store.domains.values()],
        "quotas": _quotas_out(store.quotas),
        "special_perms": {name: perms_to_strings(p) for name, p in store.special_perms.items()},
    }


def dump(xenstored: XenStored) -> dict[str, Any]:
    """The whole store as JSON-able data (node values as latin-1 text: any byte survives)."""
    store = xenstored.store
    with xenstored.lock:
        sessions: dict[str, Any] = {}
        for session in store.sessions:
            if session.domid > 0 and not session.closed:
                sessions.setdefault(str(session.domid), _session_out(session))
        return {
            "format": FORMAT,
            "version": VERSION,
            "generation": store.generation,
            "nodes": {path: _node_out(node) for path, node in store.nodes.items()},
            **_domains_out(store),
            "sessions": sessions,
        }


# ---- reading (every check names the place, so a bad file gives one clear line) -------


def _fail(where: str, what: str) -> SnapshotError:
    return SnapshotError(f"{where}: {what}")


def _kind(value: object) -> str:
    names = {dict: "an object", list: "a list", str: "a string", bool: "true/false",
             int: "a number", float: "a number", type(None): "null"}
    return names.get(type(value), type(value).__name__)


def _obj(value: object, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _fail(where, f"expected an object, found {_kind(value)}")
    return value


def _list(value: object, where: str) -> list[Any]:
    if not isinstance(value, list):
        raise _fail(where, f"expected a list, found {_kind(value)}")
    return value


def _str(value: object, where: str) -> str:
    if not isinstance(value, str):
        raise _fail(where, f"expected a string, found {_kind(value)}")
    return value


def _bool(value: object, where: str) -> bool:
    if not isinstance(value, bool):
        raise _fail(where, f"expected true or false, found {_kind(value)}")
    return value


def _int(value: object, where: str, low: int = 0, high: int = INT_MAX) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise _fail(where, f"expected a whole number, found {_kind(value)}")
    if not low <= value <= high:
        raise _fail(where, f"{value} is outside {low}..{high}")
    return value


def _key(obj: dict[str, Any], key: str, where: str) -> Any:
    if key not in obj:
        raise _fail(where, f"missing {key!r}")
    return obj[key]


def _perms(value: object, where: str) -> Perms:
    items = _list(value, where)
    if not items:
        raise _fail(where, "no permissions")
    try:
        return tuple(parse_perm(_str(p, where)) for p in items)
    except XenStoreError as e:
        raise _fail(where, str(e).removeprefix(f"{e.name}: ")) from None


def _node(path: str, value: object, where: str) -> Node:
    where = f"{where} node {path!r}"
    if not _PATH.fullmatch(path):
        raise _fail(where, "not a valid absolute path")
    obj = _obj(value, where)
    try:
        data = _str(_key(obj, "value", where), f"{where} value").encode("latin-1")
    except UnicodeEncodeError:
        raise _fail(f"{where} value", "a character beyond \\u00ff (values are latin-1)") from None
    perms = _perms(_key(obj, "perms", where), f"{where} perms")
    children = tuple(_str(c, f"{where} children") for c in _list(_key(obj, "children", where),
                                                                 f"{where} children"))
    for child in children:
        if not _NAME.fullmatch(child):
            raise _fail(f"{where} children", f"{child!r} is not a node name")
    if len(set(children)) != len(children):
        raise _fail(f"{where} children", "a name appears twice")
    generation = _int(_key(obj, "generation", where), f"{where} generation")
    return Node(data, perms, children, generation)


def _check_tree(nodes: dict[str, Node], where: str) -> None:
    """Every child listed exists and every node is listed by its parent: one tree from /."""
    if "/" not in nodes:
        raise _fail(where, "no root node '/'")
    for path, node in nodes.items():
        for child in node.children:
            if join(path, child) not in nodes:
                raise _fail(where, f"node {path!r} lists child {child!r}, which is missing")
        if path != "/":
            parent = nodes.get(parent_of(path))
            if parent is None or basename(path) not in parent.children:
                raise _fail(where, f"node {path!r} is not listed by its parent")


def _quotas(value: object, where: str) -> Quotas:
    quotas = Quotas()
    for name, limit in _obj(value, where).items():
        if name not in Quotas.NAMES:
            raise _fail(where, f"unknown quota {name!r}")
        quotas.set(name, _int(limit, f"{where} {name}", 0, QUOTA_MAX))
    return quotas


def _domain(value: object, where: str) -> Domain:
    obj = _obj(value, where)
    domid = _int(_key(obj, "domid", where), f"{where} domid", 1, DOMID_FIRST_RESERVED - 1)
    where = f"{where} (dom{domid})"
    target = _key(obj, "target", where)
    quotas = _key(obj, "quotas", where)
    return Domain(
        domid,
        mfn=_int(_key(obj, "mfn", where), f"{where} mfn"),
        evtchn=_int(_key(obj, "evtchn", where), f"{where} evtchn", 0, U32_MAX),
        introduced=_bool(_key(obj, "introduced", where), f"{where} introduced"),
        shutdown=_bool(_key(obj, "shutdown", where), f"{where} shutdown"),
        target=None if target is None else _int(target, f"{where} target", 0,
                                                DOMID_FIRST_RESERVED - 1),
        features=_int(_key(obj, "features", where), f"{where} features", 0, U32_MAX),
        quotas=None if quotas is None else _quotas(quotas, f"{where} quotas"),
    )


def _session(value: object, where: str) -> tuple[list[Watch], int]:
    obj = _obj(value, where)
    watches = []
    for i, item in enumerate(_list(_key(obj, "watches", where), f"{where} watches")):
        at = f"{where} watch {i}"
        entry = _list(item, at)
        if len(entry) != 3:
            raise _fail(at, "expected [node, token, relative prefix or null]")
        node, token, prefix = entry
        node = _str(node, f"{at} node")
        if not (_PATH.fullmatch(node) or (node.startswith("@") and _NAME.fullmatch(node))):
            raise _fail(f"{at} node", f"{node!r} is not a path or special node")
        prefix = None if prefix is None else _str(prefix, f"{at} prefix")
        if prefix is not None and not _PATH.fullmatch(prefix):
            raise _fail(f"{at} prefix", f"{prefix!r} is not a path")
        watches.append(Watch(node, _str(token, f"{at} token"), prefix))
    next_tx_id = _int(_key(obj, "next_tx_id", where), f"{where} next_tx_id", 0, U32_MAX)
    return watches, next_tx_id


def _sessions(value: object, where: str, deleted: bool = False) -> None:
    """Check a sessions map (in a journal record, `deleted` allows null: session gone)."""
    for key, session in _obj(value, where).items():
        if not _DOMID.fullmatch(key) or int(key) >= DOMID_FIRST_RESERVED:
            raise _fail(where, f"{key!r} is not a domain id")
        if not (deleted and session is None):
            _session(session, f"{where} dom{key}")


@dataclass
class _State:
    generation: int
    nodes: dict[str, Node]
    special_perms: dict[str, Perms]
    quotas: Quotas
    domains: dict[int, Domain]


def _parse(data: object, where: str = "snapshot") -> _State:
    """Validate a whole snapshot and build the store's objects from it."""
    obj = _obj(data, where)
    if obj.get("format") != FORMAT:
        raise _fail(where, f"not a pyxen XenStore snapshot (format is not {FORMAT!r})")
    version = obj.get("version")
    if version != VERSION:
        raise _fail(where, f"version {version!r} is not supported (this pyxen reads {VERSION})")
    nodes = {
        _str(path, f"{where} nodes"): _node(path, node, where)
        for path, node in _obj(_key(obj, "nodes", where), f"{where} nodes").items()
    }
    _check_tree(nodes, where)
    generation = _int(_key(obj, "generation", where), f"{where} generation")
    generation = max(generation, *(n.generation for n in nodes.values()))
    special = {name: DEFAULT_PERMS for name in SPECIAL_NODES}
    for name, perms in _obj(_key(obj, "special_perms", where), f"{where} special_perms").items():
        if name not in SPECIAL_NODES:
            raise _fail(f"{where} special_perms", f"{name!r} is not a special node")
        special[name] = _perms(perms, f"{where} special_perms {name}")
    quotas = _quotas(_key(obj, "quotas", where), f"{where} quotas")
    domains: dict[int, Domain] = {}
    for i, item in enumerate(_list(_key(obj, "domains", where), f"{where} domains")):
        domain = _domain(item, f"{where} domain {i}")
        if domain.domid in domains:
            raise _fail(f"{where} domains", f"dom{domain.domid} appears twice")
        domains[domain.domid] = domain
    _sessions(obj.get("sessions", {}), f"{where} sessions")
    return _State(generation, nodes, special, quotas, domains)


# ---- restoring -------------------------------------------------------------------------


def restore(xenstored: XenStored, data: dict[str, Any]) -> None:
    """Put `dump()`'s state into a fresh XenStored, replacing its nodes, domain records,
    quotas and special-node permissions. Fires no watch and calls no introduce hook: the
    guests already saw all of it. Sessions come back one by one (`restore_session`).
    Malformed data raises SnapshotError and leaves the store as it was."""
    state = _parse(data)
    store = xenstored.store
    with xenstored.lock:
        owned: dict[int, int] = {}
        for node in state.nodes.values():
            owned[node.owner] = owned.get(node.owner, 0) + 1
        gone = [path for path in store.nodes if path not in state.nodes]
        store.nodes.clear()
        store.nodes.update(state.nodes)
        store.owned.clear()
        store.owned.update(owned)
        store.generation = state.generation
        store.special_perms.clear()
        store.special_perms.update(state.special_perms)
        for name in Quotas.NAMES:
            store.quotas.set(name, state.quotas.get(name))
        store.domains.clear()
        store.domains.update(state.domains)
        journal = store.journal
        if journal is not None:  # persistence started before the restore: keep it true
            for path in gone:
                journal.committed(path, None)
            for path, node in state.nodes.items():
                journal.committed(path, node)
            journal.domains_changed()
            journal.batch_end()


def restore_session(conn: Connection, data: dict[str, Any]) -> None:
    """Give a new guest-ring connection the session its domain had in the old daemon:
    its watches (no initial event: the guest had it) and its next transaction id. The
    session is marked restored, so transaction ids from before the restart get EAGAIN."""
    watches, next_tx_id = _session(data, f"session of dom{conn.domid}")
    xenstored = conn.xenstored
    with xenstored.lock:
        session = conn.session
        session.watches[:] = watches
        session.next_tx_id = next_tx_id
        session.restored = True
        journal = xenstored.store.journal
        if journal is not None and session.domid > 0:
            journal.session_changed(session.domid, True)
            journal.batch_end()


# ---- files -----------------------------------------------------------------------------


def _decode(raw: bytes, where: str) -> object:
    try:
        return json.loads(raw)
    except ValueError as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise _fail(where, f"not valid JSON ({' '.join(str(e).split())})") from None


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _replay(data: dict[str, Any], value: object, where: str) -> None:
    """Apply one journal record (full states, so applying it twice changes nothing)."""
    record = _obj(value, where)
    unknown = set(record) - _RECORD_KEYS
    if unknown:
        raise _fail(where, f"unknown record field {sorted(unknown)[0]!r}")
    if "generation" in record:
        generation = _int(record["generation"], f"{where} generation")
        data["generation"] = max(data["generation"], generation)
    nodes = data["nodes"]
    for path, node in _obj(record.get("nodes", {}), f"{where} nodes").items():
        if node is None:
            nodes.pop(path, None)
        else:
            _node(path, node, where)
            nodes[path] = node
    changed = record.get("sessions", {})
    _sessions(changed, f"{where} sessions", deleted=True)
    sessions = data.setdefault("sessions", {})
    for key, session in changed.items():
        if session is None:
            sessions.pop(key, None)
        else:
            sessions[key] = session
    for key in ("domains", "quotas", "special_perms"):
        if key in record:
            data[key] = record[key]


class Persistence:
    """Keeps DIRECTORY/xenstore.json (snapshot) and DIRECTORY/xenstore.journal (one line per
    batch of requests since that snapshot) current for one XenStored.

    A new daemon loads, restores, then calls `start()` (a restore after it is journaled too).
    The journal alone keeps everything, so `save()` is compaction: the daemon sets
    `on_structure` to schedule one soon after a change the snapshot should hold; it is also
    called every COMPACT_AFTER journal lines, so the journal stays short. `on_structure`
    runs with the store's lock held, on whatever thread served the request, so it must only
    schedule.
    """

    def __init__(self, xenstored: XenStored, directory: Path) -> None:
        self.xenstored = xenstored
        self.directory = Path(directory)
        self.snapshot_path = self.directory / SNAPSHOT_NAME
        self.journal_path = self.directory / JOURNAL_NAME
        self.on_structure: Callable[[], None] | None = None
        self.journal_lines = 0
        self._fd: int | None = None
        self._broken = False  # a journal write failed: nothing more until the next save
        self._nodes: dict[str, Node | None] = {}
        self._sessions: set[int] = set()
        self._domains = False

    # ---- lifecycle ---------------------------------------------------------------------

    def start(self) -> None:
        """Write a snapshot of the store now, and from then on journal every change."""
        with self.xenstored.lock:
            if self._fd is not None:
                return
            self.directory.mkdir(parents=True, exist_ok=True)
            flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC
            self._fd = os.open(self.journal_path, flags, 0o600)
            self.xenstored.store.journal = self
            try:
                self.save()
            except BaseException:
                self.close()
                raise

    def save(self) -> None:
        """A new snapshot (temporary file, then rename), then an empty journal."""
        with self.xenstored.lock:
            # What is pending goes to the old journal first: if we die between the rename
            # and the truncation, replaying it onto the new snapshot then changes nothing.
            self.batch_end()
            if self._broken:
                self._truncate()  # its last records are older than what it missed
            data = _ENCODER.encode(dump(self.xenstored)).encode()
            tmp = self.snapshot_path.with_name(SNAPSHOT_NAME + ".tmp")
            try:
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
                try:
                    _write_all(fd, data)
                finally:
                    os.close(fd)
                os.replace(tmp, self.snapshot_path)
            except BaseException:
                tmp.unlink(missing_ok=True)
                raise
            self._truncate()
            self._broken = False

    def close(self) -> None:
        """Write what is pending, stop journaling and close the journal."""
        with self.xenstored.lock:
            store = self.xenstored.store
            if store.journal is self:
                self.batch_end()
                store.journal = None
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None

    def _truncate(self) -> None:
        if self._fd is not None:
            os.ftruncate(self._fd, 0)
        elif self.journal_path.exists():
            os.truncate(self.journal_path, 0)
        self.journal_lines = 0

    # ---- the store's Journal protocol (called with the store's lock held) -----------

    def committed(self, path: str, node: Node | None) -> None:
        self._nodes[path] = node

    def session_changed(self, domid: int, structural: bool) -> None:
        self._sessions.add(domid)
        if structural:
            self._notify()

    def domains_changed(self) -> None:
        self._domains = True
        self._notify()

    def batch_end(self) -> None:
        """Write what the batch changed as one line, in one os.write."""
        if not (self._nodes or self._sessions or self._domains):
            return
        store = self.xenstored.store
        record: dict[str, Any] = {"generation": store.generation}
        if self._nodes:
            record["nodes"] = {p: None if n is None else _node_out(n) for p, n in self._nodes.items()}
        if self._sessions:
            sessions = {}
            for domid in sorted(self._sessions):
                session = _guest_session(store, domid)
                sessions[str(domid)] = None if session is None else _session_out(session)
            record["sessions"] = sessions
        if self._domains:
            record.update(_domains_out(store))
        self._nodes = {}
        self._sessions = set()
        self._domains = False
        if self._fd is None or self._broken:
            return
        line = _ENCODER.encode(record).encode() + b"\n"
        try:
            _write_all(self._fd, line)
        except OSError as e:
            self._broken = True
            log.warning("%s: %s; journaling stops until the next snapshot",
                        self.journal_path, e.strerror)
            self._notify()
            return
        self.journal_lines += 1
        if self.journal_lines % COMPACT_AFTER == 0:
            self._notify()  # time the daemon wrote a snapshot: the journal is long

    def _notify(self) -> None:
        callback = self.on_structure
        if callback is None:
            return
        try:
            callback()
        except Exception:  # the daemon's bug must not fail a guest's request
            log.exception("xenstore persistence: on_structure failed")

    # ---- reading it back ---------------------------------------------------------------

    @staticmethod
    def load(directory: Path) -> dict[str, Any] | None:
        """The state a store kept in `directory` last had: the snapshot with the journal
        replayed onto it, ready for `restore`. None if there is no snapshot."""
        directory = Path(directory)
        snapshot = directory / SNAPSHOT_NAME
        journal = directory / JOURNAL_NAME
        try:
            raw = snapshot.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as e:
            raise _fail(str(snapshot), f"cannot read it ({e.strerror})") from None
        data = _decode(raw, str(snapshot))
        _parse(data, str(snapshot))
        assert isinstance(data, dict)
        try:
            lines = journal.read_bytes().split(b"\n")
        except FileNotFoundError:
            lines = [b""]
        except OSError as e:
            raise _fail(str(journal), f"cannot read it ({e.strerror})") from None
        lines.pop()  # after the last newline: nothing, or a line the daemon died writing
        for number, line in enumerate(lines, 1):
            where = f"{journal} line {number}"
            _replay(data, _decode(line, where), where)
        if lines:
            _parse(data, f"{snapshot} with its journal")
        return data
