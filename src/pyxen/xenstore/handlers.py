"""One handler per xsd_sockmsg_type: parse the payload, call the store, build the reply.

A handler returns the reply payload, or raises XenStoreError for an XS_ERROR reply.
Watch events raised meanwhile go out through the session's sink before the reply, as the
C daemon queues them; XS_WATCH's own first event follows its acknowledgement (the store
parks it in `Session.deferred` for the connection to send after the reply).
"""

from __future__ import annotations

from collections.abc import Callable

from pyxen.abi.xs_wire import (
    XS_CONTROL,
    XS_DIRECTORY,
    XS_DIRECTORY_PART,
    XS_GET_DOMAIN_PATH,
    XS_GET_FEATURE,
    XS_GET_PERMS,
    XS_GET_QUOTA,
    XS_INTRODUCE,
    XS_IS_DOMAIN_INTRODUCED,
    XS_MKDIR,
    XS_READ,
    XS_RELEASE,
    XS_RESET_WATCHES,
    XS_RESUME,
    XS_RM,
    XS_SET_FEATURE,
    XS_SET_PERMS,
    XS_SET_QUOTA,
    XS_SET_TARGET,
    XS_TRANSACTION_END,
    XS_TRANSACTION_START,
    XS_UNWATCH,
    XS_WATCH,
    XS_WRITE,
)
from pyxen.xenstore.codec import Message, all_args, args, atoi, decode, one_arg, strings
from pyxen.xenstore.control import do_control
from pyxen.xenstore.errors import XenStoreError
from pyxen.xenstore.paths import domain_path
from pyxen.xenstore.session import Session
from pyxen.xenstore.store import Store

OK = b"OK\0"
Handler = Callable[[Store, Session, Message], bytes]


def do_read(store: Store, s: Session, m: Message) -> bytes:
    return store.read(s, m.tx_id, one_arg(m.payload))


def do_write(store: Store, s: Session, m: Message) -> bytes:
    cut = m.payload.find(b"\0")
    if cut < 0:
        raise XenStoreError("EINVAL", "missing path")
    store.write(s, m.tx_id, decode(m.payload[:cut]), m.payload[cut + 1 :])
    return OK


def do_mkdir(store: Store, s: Session, m: Message) -> bytes:
    store.mkdir(s, m.tx_id, one_arg(m.payload))
    return OK


def do_rm(store: Store, s: Session, m: Message) -> bytes:
    store.rm(s, m.tx_id, one_arg(m.payload))
    return OK


def do_directory(store: Store, s: Session, m: Message) -> bytes:
    return strings(store.directory(s, m.tx_id, one_arg(m.payload)))


def do_directory_part(store: Store, s: Session, m: Message) -> bytes:
    path, offset = args(m.payload, 2)
    return store.directory_part(s, m.tx_id, path, max(0, atoi(offset)))


def do_get_perms(store: Store, s: Session, m: Message) -> bytes:
    return strings(store.get_perms(s, m.tx_id, one_arg(m.payload)))


def do_set_perms(store: Store, s: Session, m: Message) -> bytes:
    items = all_args(m.payload)
    if len(items) < 2:
        raise XenStoreError("EINVAL", "path and permissions expected")
    store.set_perms(s, m.tx_id, items[0], items[1:])
    return OK


def do_watch(store: Store, s: Session, m: Message) -> bytes:
    path, token = args(m.payload, 2)
    store.watch(s, path, token)
    return OK


def do_unwatch(store: Store, s: Session, m: Message) -> bytes:
    path, token = args(m.payload, 2)
    store.unwatch(s, path, token)
    return OK


def do_reset_watches(store: Store, s: Session, m: Message) -> bytes:
    store.reset_watches(s)
    return OK


def do_transaction_start(store: Store, s: Session, m: Message) -> bytes:
    return f"{store.transaction_start(s, m.tx_id)}".encode() + b"\0"


def do_transaction_end(store: Store, s: Session, m: Message) -> bytes:
    arg = one_arg(m.payload)
    if arg not in ("T", "F"):
        raise XenStoreError("EINVAL", "T or F expected")
    store.transaction_end(s, m.tx_id, arg == "T")
    return OK


def do_introduce(store: Store, s: Session, m: Message) -> bytes:
    domid, mfn, evtchn = args(m.payload, 3)
    store.introduce(atoi(domid), atoi(mfn), atoi(evtchn))
    return OK


def do_release(store: Store, s: Session, m: Message) -> bytes:
    store.release(atoi(one_arg(m.payload)))
    return OK


def do_resume(store: Store, s: Session, m: Message) -> bytes:
    store.resume(atoi(one_arg(m.payload)))
    return OK


def do_set_target(store: Store, s: Session, m: Message) -> bytes:
    domid, target = args(m.payload, 2)
    store.set_target(atoi(domid), atoi(target))
    return OK


def do_get_domain_path(store: Store, s: Session, m: Message) -> bytes:
    return domain_path(atoi(one_arg(m.payload))).encode() + b"\0"


def do_is_domain_introduced(store: Store, s: Session, m: Message) -> bytes:
    return b"T\0" if store.is_domain_introduced(atoi(one_arg(m.payload))) else b"F\0"


def do_get_feature(store: Store, s: Session, m: Message) -> bytes:
    items = all_args(m.payload)
    if len(items) > 1:
        raise XenStoreError("EINVAL", "at most a domid expected")
    return f"{store.get_feature(atoi(items[0]) if items else None)}".encode() + b"\0"


def do_set_feature(store: Store, s: Session, m: Message) -> bytes:
    domid, value = args(m.payload, 2)
    store.set_feature(atoi(domid), atoi(value))
    return OK


def do_get_quota(store: Store, s: Session, m: Message) -> bytes:
    items = all_args(m.payload)
    if not items:
        return " ".join(store.quotas.NAMES).encode() + b"\0"
    if len(items) > 2:
        raise XenStoreError("EINVAL", "too many arguments")
    domid = atoi(items[0]) if len(items) == 2 else None
    return f"{store.get_quota(domid, items[-1])}".encode() + b"\0"


def do_set_quota(store: Store, s: Session, m: Message) -> bytes:
    items = all_args(m.payload)
    if len(items) not in (2, 3):
        raise XenStoreError("EINVAL", "[domid] name value expected")
    domid = atoi(items[0]) if len(items) == 3 else None
    store.set_quota(domid, items[-2], atoi(items[-1]))
    return OK


def do_control_msg(store: Store, s: Session, m: Message) -> bytes:
    return do_control(store, all_args(m.payload))


HANDLERS: dict[int, Handler] = {
    XS_CONTROL: do_control_msg,
    XS_DIRECTORY: do_directory,
    XS_READ: do_read,
    XS_GET_PERMS: do_get_perms,
    XS_WATCH: do_watch,
    XS_UNWATCH: do_unwatch,
    XS_TRANSACTION_START: do_transaction_start,
    XS_TRANSACTION_END: do_transaction_end,
    XS_INTRODUCE: do_introduce,
    XS_RELEASE: do_release,
    XS_GET_DOMAIN_PATH: do_get_domain_path,
    XS_WRITE: do_write,
    XS_MKDIR: do_mkdir,
    XS_RM: do_rm,
    XS_SET_PERMS: do_set_perms,
    XS_IS_DOMAIN_INTRODUCED: do_is_domain_introduced,
    XS_RESUME: do_resume,
    XS_SET_TARGET: do_set_target,
    XS_RESET_WATCHES: do_reset_watches,
    XS_DIRECTORY_PART: do_directory_part,
    XS_GET_FEATURE: do_get_feature,
    XS_SET_FEATURE: do_set_feature,
    XS_GET_QUOTA: do_get_quota,
    XS_SET_QUOTA: do_set_quota,
}

# Operations only the privileged domain (dom0 or the socket) may use.
PRIVILEGED = frozenset(
    {
        XS_CONTROL,
        XS_INTRODUCE,
        XS_RELEASE,
        XS_RESUME,
        XS_SET_TARGET,
        XS_IS_DOMAIN_INTRODUCED,
        XS_GET_FEATURE,
        XS_SET_FEATURE,
        XS_GET_QUOTA,
        XS_SET_QUOTA,
    }
)

__all__ = ["HANDLERS", "PRIVILEGED", "Handler", "XS_TRANSACTION_START"]
