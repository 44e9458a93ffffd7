"""Node paths: validation, relative paths and the parent/child relation (xenstore.txt rules)."""

from __future__ import annotations

import re

from pyxen.xenstore.errors import XenStoreError

_VALID = re.compile(r"[A-Za-z0-9\-/_@]*")
_LOCAL = re.compile(r"/local/domain/(\d{1,5})/")


def domain_path(domid: int) -> str:
    """The home of a domain, base of its relative paths."""
    return f"/local/domain/{domid}"


def local_offset(path: str) -> int:
    """Length of a leading "/local/domain/N/": path quotas count only what follows it."""
    m = _LOCAL.match(path)
    return m.end() if m else 0


def canonicalize(path: str, domid: int, path_max: int | None, allow_special: bool = False) -> str:
    """Absolute, validated form of `path` as sent by a client of domain `domid`.

    `path_max` is the caller's path-length quota (None when unlimited, i.e. privileged);
    '@' names are only allowed where special watch nodes make sense.
    """
    if not _VALID.fullmatch(path) or (path.startswith("@") and not allow_special):
        raise XenStoreError("EINVAL", f"invalid path {path!r}")
    if path.startswith("@"):
        if len(path) > 2048:
            raise XenStoreError("EINVAL", "special path too long")
        return path
    if not path.startswith("/"):
        path = f"{domain_path(domid)}/{path}"
    if (path.endswith("/") and path != "/") or "//" in path:
        raise XenStoreError("EINVAL", f"invalid path {path!r}")
    if path_max is not None and len(path) - local_offset(path) > path_max:
        raise XenStoreError("EINVAL", "path too long")
    return path


def parent_of(path: str) -> str:
    """Parent path ("/" for top-level nodes)."""
    cut = path.rfind("/")
    return path[:cut] if cut > 0 else "/"


def basename(path: str) -> str:
    return path[path.rfind("/") + 1 :]


def join(parent: str, name: str) -> str:
    return f"/{name}" if parent == "/" else f"{parent}/{name}"


def is_child(child: str, parent: str) -> bool:
    """True if `child` is `parent` or below it ("/" is everyone's parent)."""
    if parent == "/":
        return True
    return child.startswith(parent) and (len(child) == len(parent) or child[len(parent)] == "/")
