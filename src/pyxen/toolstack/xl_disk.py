"""Disk spec strings, as xl reads them (xl-disk-configuration(5), libxlu's disk lexer).

xl parses a DISKSPEC with a flex scanner: at each point the longest matching rule wins
(the earlier rule on a tie), and rules that end in trailing context (``raw:/.*``) count the
context towards that length. Parameters are keywords (``vdev=xvda``), flags (``cdrom``) or
positional values, assigned in the order target, format, vdev, access; ``target=`` takes
the rest of the string. The old ``format:target,vdev:devtype,access`` syntax and its
prefixes (``tap:aio:``, ``phy:``, ``iscsi:``...) still work. This module emulates that
scanner rule for rule, so a spec means here what it means to xl 4.17.

Differences from 4.17, on purpose: the ``trusted``/``untrusted`` flags of later Xen
releases are understood (4.17 takes them for a positional target); the COLO options are
refused (pyxen does no disk replication); and ``target=`` with an empty value for a
non-cdrom disk is refused at once, where libxl would fail later.

This module also holds XlConfigError, the error of all three xl parsers (here because it
is the one with no dependencies; xlcfg re-exports it).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

FORMATS = ("raw", "qcow", "qcow2", "vhd", "qed", "empty")
BACKEND_TYPES = ("phy", "tap", "qdisk", "standalone")
SPECIFICATIONS = ("xen", "virtio")
ACCESS = {"r": "ro", "ro": "ro", "rw": "rw", "w": "rw", "": "rw"}


def shown(text: str) -> str:
    """User text inside a one-line message: control characters escaped, never a newline."""
    out = []
    for ch in text:
        if ch == "\n":
            out.append("\\n")
        elif ch == "\t":
            out.append("\\t")
        elif ch == "\r":
            out.append("\\r")
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\x{ord(ch):02x}")
        else:
            out.append(ch)
    return "".join(out)


class XlConfigError(ValueError):
    """A bad xl config, disk spec or vif spec. str() is one line:
    ``FILE:LINE: KEY: what is wrong``, each location part present when known."""

    def __init__(self, what: str, *, source: str | None = None, line: int | None = None,
                 key: str | None = None) -> None:
        self.what = shown(what)
        self.source = source
        self.line = line
        self.key = key
        super().__init__(self.what)

    def located(self, source: str | None = None, line: int | None = None,
                key: str | None = None) -> XlConfigError:
        """The same error with the location parts it lacks filled in."""
        return XlConfigError(self.what, source=self.source or source,
                             line=self.line if self.line is not None else line,
                             key=self.key or key)

    def __str__(self) -> str:
        where = self.source or ""
        if self.line is not None:
            where = f"{where}:{self.line}" if where else f"line {self.line}"
        parts = [p for p in (where, self.key) if p]
        return ": ".join([*parts, self.what])


@dataclass
class DiskSpec:
    """One disk, with xl's defaults applied (raw, read-write, not a cdrom)."""

    vdev: str
    target: str | None = None       # None: not given (a cdrom only); "": an empty cdrom drive
    format: str = "raw"             # one of FORMATS
    access: str = "rw"              # "rw" or "ro"; a cdrom is always "ro"
    devtype: str = "disk"           # "disk" or "cdrom"
    backendtype: str | None = None  # one of BACKEND_TYPES; None: libxl chooses
    backend: str | None = None      # backend domain name; None: the toolstack domain
    script: str | None = None       # block script that interprets target (block-iscsi...)
    specification: str | None = None  # "xen" or "virtio"; None: xen
    direct_io_safe: bool = False
    discard: bool | None = None     # None: libxl's default (advertise discard)
    trusted: bool | None = None     # None: libxl's default (trusted)

    @property
    def is_cdrom(self) -> bool:
        return self.devtype == "cdrom"

    @property
    def readonly(self) -> bool:
        return self.access == "ro"

    def to_spec(self) -> str:
        """The keyword form of this disk, which parse_disk_spec reads back to an equal
        DiskSpec. Raises ValueError for a value the syntax cannot carry (a comma in a
        keyword value, a newline in the target)."""
        parts = [f"format={self.format}", f"vdev={self.vdev}", f"access={self.access}"]
        if self.is_cdrom:
            parts.append("devtype=cdrom")
        for key, value in (("backendtype", self.backendtype), ("backend", self.backend),
                           ("script", self.script), ("specification", self.specification)):
            if value is not None:
                parts.append(f"{key}={value}")
        if self.direct_io_safe:
            parts.append("direct-io-safe")
        if self.discard is not None:
            parts.append("discard" if self.discard else "no-discard")
        if self.trusted is not None:
            parts.append("trusted" if self.trusted else "untrusted")
        for part in parts:
            if "," in part or "\n" in part:
                raise ValueError(f"disk parameter `{shown(part)}' cannot be written in a "
                                 "disk spec (it holds a comma or a newline)")
        if self.target is not None:
            if "\n" in self.target:
                raise ValueError("a disk target with a newline cannot be written in a "
                                 "disk spec")
            # target= swallows the rest of the spec but drops one trailing comma
            target = self.target + "," if self.target.endswith(",") else self.target
            parts.append(f"target={target}")
        return ", ".join(parts)


# ----- the scanner ----------------------------------------------------------------------

class _State:
    """What the scanner has collected so far (libxl_device_disk's fields, in effect)."""

    def __init__(self, spec: str) -> None:
        self.spec = spec
        self.target: str | None = None
        self.vdev: str | None = None
        self.format: str | None = None
        self.access = "rw"
        self.access_set = False
        self.cdrom = False
        self.backendtype: str | None = None
        self.backend: str | None = None
        self.script: str | None = None
        self.specification: str | None = None
        self.direct_io_safe = False
        self.discard: bool | None = None
        self.trusted: bool | None = None
        self.had_depr_prefix = False

    def fail(self, what: str, near: str | None = None) -> XlConfigError:
        at = f" near `{near}'" if near is not None else ""
        return XlConfigError(f"{what}{at} in `{self.spec}'", key="disk")

    def save(self, what: str, attr: str, value: str) -> None:
        """Set a string once: xl complains when a non-empty value is given again."""
        if getattr(self, attr):
            raise self.fail(f"{what} respecified", value)
        setattr(self, attr, value)

    def set_enum(self, what: str, attr: str, value: str, allowed: tuple[str, ...],
                 name: str) -> None:
        """Set an enum; giving it again with a different value is an error."""
        if value not in allowed:
            raise self.fail(f"unknown value for {name}", value)
        current = getattr(self, attr)
        if current is not None and current != value:
            raise self.fail(f"{what} respecified", value)
        setattr(self, attr, value)

    def set_format(self, value: str) -> None:
        self.set_enum("format", "format", value or "raw", FORMATS, "format")

    def set_access(self, value: str) -> None:
        if value not in ACCESS:
            raise self.fail("unknown value for access", value)
        self.access = ACCESS[value]

    def vdev_and_devtype(self, text: str) -> bool:
        """The deprecated positional ``vdev:devtype``; False when text has no colon."""
        vdev, colon, devtype = text.rpartition(":")
        if not colon:
            return False
        self.save("vdev", "vdev", vdev)
        if devtype == "cdrom":
            self.cdrom = True
        elif devtype == "disk":
            self.cdrom = False
        else:
            raise self.fail("unknown deprecated type", devtype)
        return True

    def positional(self, text: str) -> None:
        if self.target is None:
            self.save("target", "target", text)
        elif not self.had_depr_prefix and self.format is None:
            if self.target == "" and self.vdev_and_devtype(text):
                self.format = "empty"
            else:
                self.set_format(text)
        elif self.vdev is None:
            if not self.vdev_and_devtype(text):
                self.save("vdev", "vdev", text)
        elif not self.access_set:
            self.access_set = True
            self.set_access(text)
        else:
            raise self.fail("too many positional parameters", text)


def _strip(text: str, delim: str) -> str:
    return text[:-1] if text.endswith(delim) else text


def _value(text: str) -> str:
    """The value of a ``key=value,`` token: after the first '=', one trailing comma off."""
    return _strip(text, ",").split("=", 1)[1]


def _refuse_colo(st: _State, text: str) -> None:
    raise st.fail("COLO disk replication is not supported by pyxen", _strip(text, ","))


def _set_flag(attr: str, value: bool) -> Callable[[_State, str], None]:
    def action(st: _State, text: str) -> None:
        setattr(st, attr, value)
    return action


def _ignore(st: _State, text: str) -> None:
    pass


def _format_prefix(st: _State, text: str) -> None:
    st.had_depr_prefix = True
    st.set_format(_strip(text, ":"))


def _script_prefix(st: _State, text: str) -> None:
    st.had_depr_prefix = True
    st.save("script", "script", "block-" + _strip(text, ":"))


def _deprecated_prefix(st: _State, text: str) -> None:
    st.had_depr_prefix = True


def _unknown_prefix(st: _State, text: str) -> None:
    raise st.fail("unknown deprecated disk prefix", text)


def _unknown_parameter(st: _State, text: str) -> None:
    raise st.fail("unknown parameter", text)


def _unknown_devtype(st: _State, text: str) -> None:
    raise st.fail("unknown value for type", text)


def _keyword(name: str, setter: Callable[[_State, str], None]) -> tuple[str, None, Callable]:
    return (re.escape(name) + r"=[^,]*,?", None, lambda st, text: setter(st, _value(text)))


def _flag(name: str, action: Callable[[_State, str], None]) -> tuple[str, None, Callable]:
    return (re.escape(name) + ",?", None, action)


# Each rule: (pattern, trailing-context head or None, action), in the scanner's order.
# A pattern with a head is flex's ``head/context``: the whole pattern's length decides
# the match, the action sees only the head, and scanning resumes after the head.
_RULES: list[tuple[str, str | None, Callable[[_State, str], None]]] = [
    (r"[ \t\n]+(?:[^ \t\n].*)?", r"[ \t\n]+", _ignore),
    _keyword("format", _State.set_format),
    _flag("cdrom", _set_flag("cdrom", True)),
    _flag("devtype=cdrom", _set_flag("cdrom", True)),
    _flag("devtype=disk", _set_flag("cdrom", False)),
    (r"devtype=[^,]*,?", None, _unknown_devtype),
    _keyword("access", _State.set_access),
    _keyword("backend", lambda st, v: st.save("backend", "backend", v)),
    _keyword("backendtype", lambda st, v: st.set_enum("backendtype", "backendtype", v,
                                                      BACKEND_TYPES, "backendtype")),
    _keyword("specification", lambda st, v: st.set_enum(
        "specification", "specification", v, SPECIFICATIONS, "specification")),
    _keyword("vdev", lambda st, v: st.save("vdev", "vdev", v)),
    _keyword("script", lambda st, v: st.save("script", "script", v)),
    _flag("direct-io-safe", _set_flag("direct_io_safe", True)),
    _flag("discard", _set_flag("discard", True)),
    _flag("no-discard", _set_flag("discard", False)),
    _flag("colo", _refuse_colo),
    _flag("no-colo", _ignore),
    *[(re.escape(k) + r"=[^,]*,?", None, _refuse_colo)
      for k in ("colo-host", "colo-port", "colo-export", "active-disk", "hidden-disk")],
    _flag("trusted", _set_flag("trusted", True)),
    _flag("untrusted", _set_flag("trusted", False)),
    (r"target=.*", None,
     lambda st, text: st.save("target", "target", _strip(text, ",").split("=", 1)[1])),
    (r"[a-z][-a-z0-9]*=[^,],?", None, _unknown_parameter),
    (r"(?:raw|qcow2?|vhd):.*", r"(?:raw|qcow2?|vhd):", _format_prefix),
    (r"(?:iscsi|e?nbd|drbd):.*", r"(?:iscsi|e?nbd|drbd):", _script_prefix),
    *[(p + r":.*", p + ":", _deprecated_prefix)
      for p in ("tapdisk", "tap2?", "aio", "ioemu", "file", "phy")],
    (r"[a-z][a-z0-9]*:(?:[^a-z0-9].*)?", r"[a-z][a-z0-9]*:", _unknown_prefix),
    (r"[^=,]*,", None, lambda st, text: st.positional(_strip(text, ","))),
    (r"[^=,]+,?", None, lambda st, text: st.positional(_strip(text, ","))),
]
_COMPILED = [(re.compile(p), re.compile(h) if h else None, a) for p, h, a in _RULES]


def _scan(st: _State) -> None:
    spec, pos = st.spec, 0
    while pos < len(spec):
        best_len, best = 0, None
        for pattern, head, action in _COMPILED:
            m = pattern.match(spec, pos)
            if m and m.end() - pos > best_len:
                best_len, best = m.end() - pos, (head, action)
        if best is None:
            # No rule matches (only '=' can get here): flex's catch-all reports it with
            # the rest of the line, except that a '=' that ends the spec meets the end of
            # input first, and xl ignores it.
            if pos + 1 == len(spec):
                break
            raise st.fail("bad disk syntax", spec[pos:].split("\n", 1)[0])
        head, action = best
        end = head.match(spec, pos).end() if head else pos + best_len
        action(st, spec[pos:end])
        pos = end


def parse_disk_spec(spec: str) -> DiskSpec:
    """One DISK_SPEC_STRING as xl reads it; XlConfigError (key ``disk``) if it is bad."""
    st = _State(spec)
    _scan(st)
    fmt = st.format or "raw"
    if st.cdrom and not st.target:
        fmt = "empty"
    if st.vdev is None:
        raise st.fail("no vdev specified")
    if not st.target and not st.cdrom:
        raise st.fail("no target specified (and device not removable)")
    return DiskSpec(vdev=st.vdev, target=st.target, format=fmt,
                    access="ro" if st.cdrom else st.access,
                    devtype="cdrom" if st.cdrom else "disk", backendtype=st.backendtype,
                    backend=st.backend, script=st.script, specification=st.specification,
                    direct_io_safe=st.direct_io_safe, discard=st.discard, trusted=st.trusted)
