"""Node permissions: the owner entry first, then per-domain r/w/b/n entries (xs_permissions)."""

from __future__ import annotations

from typing import NamedTuple

from pyxen.xenstore.errors import XenStoreError

XS_PERM_NONE = 0
XS_PERM_READ = 1
XS_PERM_WRITE = 2
XS_PERM_BOTH = XS_PERM_READ | XS_PERM_WRITE
XS_PERM_OWNER = 8

_LETTER_TO_PERM = {"n": XS_PERM_NONE, "r": XS_PERM_READ, "w": XS_PERM_WRITE, "b": XS_PERM_BOTH}
_PERM_TO_LETTER = {v: k for k, v in _LETTER_TO_PERM.items()}
DOMID_MAX = 0xFFFF


class Perm(NamedTuple):
    """One xs_permissions entry: access bits for domain `domid`."""

    perms: int
    domid: int

    def __str__(self) -> str:
        return f"{_PERM_TO_LETTER[self.perms]}{self.domid}"


Perms = tuple[Perm, ...]


def parse_perm(text: str) -> Perm:
    """"b5" -> Perm(XS_PERM_BOTH, 5); anything else malformed is EINVAL."""
    if len(text) < 2 or text[0] not in _LETTER_TO_PERM or not text[1:].isdigit():
        raise XenStoreError("EINVAL", f"bad permission {text!r}")
    domid = int(text[1:])
    if domid > DOMID_MAX:
        raise XenStoreError("EINVAL", f"bad domid in {text!r}")
    return Perm(_LETTER_TO_PERM[text[0]], domid)


def perms_to_strings(perms: Perms) -> list[str]:
    return [str(p) for p in perms]


def perm_for(perms: Perms, domid: int, privileged: bool, target: int | None) -> int:
    """Access bits `domid` has on a node: owner, tools (privileged) and a target's owner get all.

    Otherwise the first entry naming the domain (or its target) applies, else the owner
    entry's bits, which are the default for everybody else.
    """
    owner = perms[0].domid
    if privileged or owner == domid or (target is not None and owner == target):
        return XS_PERM_BOTH | XS_PERM_OWNER
    for p in perms[1:]:
        if p.domid == domid or (target is not None and p.domid == target):
            return p.perms
    return perms[0].perms
