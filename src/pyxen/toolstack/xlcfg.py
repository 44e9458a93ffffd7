"""xl domain config files (xl.cfg(5)), read as xl 4.17 reads them.

Two layers. The grammar is libxlu's: ``key = value`` settings separated by newlines or
``;``; a value is a string in '...' or "..." (escapes \\\\ \\' \\" \\a \\b \\f \\n \\r \\t \\v),
a number (kept as its text: ``0x1f`` and octal ``010`` are read by strtol when a key wants
a number), or a list ``[ v, v, ]`` that may nest and span lines; ``#`` starts a comment
that runs to the end of the line; ``key += value`` appends to an earlier string or list.
A later setting of a key replaces an earlier one. Keys are lowercase (``[a-z][._0-9a-z]*``),
and anything else (``-1``, a bare word, a Python expression, a DOS line ending) is an
error, as in xl.

The typed layer, XlConfig, follows xl_parse.c and libxl's defaults for the keys pyxen
implements. Every other key, known to xl or not, is kept untouched in XlConfig.extra: xl
ignores keys it does not know, and pyxen does not act on the ones it does not implement.

Where pyxen is stricter than xl, on purpose: a value of the wrong shape for a key pyxen
uses (a list for ``memory``, ``memory = "512M"``) is an error where xl warns and ignores
the key; numeric string escapes (\\x41, \\101) are refused, because xl 4.17 rejects the
first and silently drops the character of the second; vCPU counts, memory sizes and CPU
numbers are checked against what pyxen and the host can run.
"""

from __future__ import annotations

import errno
import os
import re
import uuid as uuid_mod
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field

from .accel import ACCELS
from .xl_disk import DiskSpec, XlConfigError, parse_disk_spec, shown
from .xl_vif import VifSpec, parse_vif_spec

__all__ = [
    "XlConfig", "XlConfigError", "Setting", "parse_xl_config", "parse_settings",
    "render_config", "render_value", "parse_cpu_list", "DiskSpec", "VifSpec",
    "parse_disk_spec", "parse_vif_spec",
]

Value = str | list  # a string, or a list of Values

ACTIONS = ("destroy", "restart", "rename-restart", "preserve", "coredump-destroy",
           "coredump-restart", "soft-reset")
DEFAULT_MEMORY_MIB = 32            # libxl's default when neither memory nor maxmem is set
DEFAULT_MAX_EVENT_CHANNELS = 1023  # libxl's default (and what max_event_channels = 0 means)
DEFAULT_MAX_GRANT_FRAMES = 64      # xl.conf's default: Xen 4.17's gnttab_max_frames
GNTTAB_MAX_FRAMES = 64             # Xen 4.17 refuses more (gnttab_max_frames is a cap)
MAX_VCPUS = 128                    # Xen's HVM_MAX_VCPUS, which also bounds a PVH guest
MAX_EVENT_CHANNELS = 2**31 - 1     # Xen clamps the port limit to INT_MAX
LONG_MIN, LONG_MAX = -(2**63), 2**63 - 1
XENFIRMWAREDIR = "/usr/lib/xen/boot"  # where xl looks for pvgrub{32,64}.bin
MAX_NESTING = 64                   # lists in lists: no xl key nests more than two
PV_ONLY = "pyxen runs PVH guests only (type = \"pvh\")"


# ----- the grammar ----------------------------------------------------------------------

@dataclass(frozen=True)
class _Token:
    kind: str   # IDENT NUMBER STRING [ ] , = += ; NEWLINE EOF
    text: str   # the source text (for STRING: the dequoted value)
    line: int


@dataclass
class Setting:
    """The current value of one key: ``+=`` already applied, the latest ``=`` wins."""

    name: str
    value: Value
    line: int                      # where the value starts
    op: str = "="                  # the operator of the latest setting: "=" or "+="
    item_lines: list[int] = field(default_factory=list)  # per top-level list item
    source: str = ""               # the file (or "<command line>") it was set in


_IDENT = re.compile(r"[a-z][._0-9a-z]*")
_NUMBER = re.compile(r"[0-9][0-9a-fx]*")
_STRING = re.compile(r"'(?:[^'\\\n]|\\.)*'|\"(?:[^\"\\\n]|\\.)*\"")
_NON_SPACE_RUN = re.compile(r"[^ \t\n]*")
_ESCAPES = {'"': '"', "'": "'", "\\": "\\", "a": "\a", "b": "\b", "f": "\f", "n": "\n",
            "r": "\r", "t": "\t", "v": "\v"}
_UNESCAPES = {v: k for k, v in _ESCAPES.items() if k != "'"}
_PUNCT = {",": ",", "[": "[", "]": "]", "=": "=", ";": ";"}


def _dequote(quoted: str, source: str, line: int) -> str:
    out, body, i = [], quoted[1:-1], 0
    while i < len(body):
        ch = body[i]
        if ch != "\\":
            out.append(ch)
            i += 1
            continue
        nxt = body[i + 1]
        if nxt in _ESCAPES:
            out.append(_ESCAPES[nxt])
        elif nxt == "x" or "0" <= nxt <= "7":
            raise XlConfigError(
                f"config parsing error near `{quoted}': numeric escape `\\{nxt}...' in a "
                "quoted string (xl 4.17 rejects \\x escapes and drops the character of "
                "octal ones)", source=source, line=line)
        else:
            raise XlConfigError(f"config parsing error near `{quoted}': invalid character "
                                "after backslash in quoted string", source=source, line=line)
        i += 2
    return "".join(out)


def _lexical_error(text: str, pos: int, line: int, source: str) -> XlConfigError:
    bad = text[pos] + _NON_SPACE_RUN.match(text, pos + 1).group()
    if text[pos] == "\r":
        hint = ": carriage return (a DOS line ending; xl wants Unix ones)"
    elif text[pos] in "'\"":
        hint = ": unterminated string (a string must end on its line)"
    elif text[pos] == "#":
        hint = ": a comment must end with a newline"
    elif text[pos] == "-":
        hint = " (xl has no negative numbers)"
    elif text[pos] in "+.():":
        hint = " (xl config files are not Python)"
    else:
        hint = ""
    return XlConfigError(f"config parsing error near `{bad}': lexical error{hint}",
                         source=source, line=line)


def _tokens(text: str, source: str) -> Iterator[_Token]:
    """libxlu's scanner: flex rules, longest match first."""
    pos, line, n = 0, 1, len(text)
    while pos < n:
        ch = text[pos]
        if ch in " \t":
            pos += 1
        elif ch == "\n":
            yield _Token("NEWLINE", "\n", line)
            pos, line = pos + 1, line + 1
        elif ch == "#" and (end := text.find("\n", pos)) >= 0:
            yield _Token("NEWLINE", "\n", line)
            pos, line = end + 1, line + 1
        elif "a" <= ch <= "z":
            m = _IDENT.match(text, pos)
            yield _Token("IDENT", m.group(), line)
            pos = m.end()
        elif "0" <= ch <= "9":
            m = _NUMBER.match(text, pos)
            yield _Token("NUMBER", m.group(), line)
            pos = m.end()
        elif ch in "'\"" and (m := _STRING.match(text, pos)):
            yield _Token("STRING", _dequote(m.group(), source, line), line)
            pos = m.end()
        elif ch == "+" and text.startswith("+=", pos):
            yield _Token("+=", "+=", line)
            pos += 2
        elif ch in _PUNCT:
            yield _Token(_PUNCT[ch], ch, line)
            pos += 1
        elif pos + 1 == n and ch < "\x80":
            # flex meets the end of input before it reports a stray last character, and
            # xl goes on without it (a final '#' or '-' without a newline, say)
            break
        else:
            raise _lexical_error(text, pos, line, source)
    yield _Token("EOF", "", line)


_DESCRIBE = {"IDENT": "word", "NUMBER": "number", "STRING": "string",
             "NEWLINE": "end of line", "EOF": "end of file"}


class _Parser:
    """libxlu's grammar: file := { [assignment] (NEWLINE | ';') } [assignment] EOF."""

    def __init__(self, text: str, source: str) -> None:
        self.toks = list(_tokens(text, source))
        self.i = 0
        self.source = source
        self.key: str | None = None

    @property
    def tok(self) -> _Token:
        return self.toks[self.i]

    def error(self, expected: str) -> XlConfigError:
        tok = self.tok
        got = _DESCRIBE.get(tok.kind, f"`{tok.kind}'")
        near = "" if tok.kind in ("NEWLINE", "EOF") else f" near `{tok.text}'"
        hint = ""
        if tok.kind == "IDENT" and expected.startswith("a value"):
            hint = f" (quote it: \"{tok.text}\")"
        return XlConfigError(f"config parsing error{near}: syntax error: unexpected {got}, "
                             f"expected {expected}{hint}",
                             source=self.source, line=tok.line, key=self.key)

    def skip_newlines(self) -> None:
        while self.tok.kind == "NEWLINE":
            self.i += 1

    def value(self, depth: int = 0) -> tuple[Value, int, list[int]]:
        tok = self.tok
        if tok.kind in ("STRING", "NUMBER"):
            self.i += 1
            return tok.text, tok.line, []
        if tok.kind != "[":
            raise self.error("a value (a string, a number or a [list])")
        if depth == MAX_NESTING:
            # xl's bison parser gives up too (its stack is bounded), deeper down
            raise XlConfigError(f"config parsing error near `[': lists nested more than "
                                f"{MAX_NESTING} deep", source=self.source, line=tok.line,
                                key=self.key)
        self.i += 1
        items: list[Value] = []
        lines: list[int] = []
        self.skip_newlines()
        while self.tok.kind != "]":
            item, line, _ = self.value(depth + 1)
            items.append(item)
            lines.append(line)
            self.skip_newlines()
            if self.tok.kind == ",":
                self.i += 1
                self.skip_newlines()
            elif self.tok.kind != "]":
                raise self.error("`,' or `]'")
        self.i += 1
        return items, tok.line, lines

    def settings(self) -> Iterator[tuple[str, str, Value, int, list[int]]]:
        while True:
            self.key = None
            tok = self.tok
            if tok.kind == "EOF":
                return
            if tok.kind in ("NEWLINE", ";"):
                self.i += 1
                continue
            if tok.kind != "IDENT":
                raise self.error("a key (lowercase letters, digits, `_' and `.')")
            self.key = tok.text
            self.i += 1
            op = self.tok.kind
            if op not in ("=", "+="):
                raise self.error("`=' or `+='")
            self.i += 1
            value, line, lines = self.value()
            if self.tok.kind not in ("NEWLINE", ";", "EOF"):
                raise self.error("end of line or `;'")
            yield tok.text, op, value, line, lines


def _store(store: dict[str, Setting], name: str, op: str, value: Value, line: int,
           lines: list[int], source: str) -> None:
    """Apply one setting as libxlu does: ``+=`` concatenates with the previous value."""
    prev = store.get(name)
    if op == "+=" and prev is not None:
        if isinstance(prev.value, list) != isinstance(value, list):
            raise XlConfigError("can't add [list] to \"string\" or vice versa",
                                source=source, line=line, key=name)
        if isinstance(value, list):
            value, lines = [*prev.value, *value], [*prev.item_lines, *lines]
        else:
            value = prev.value + value
    store[name] = Setting(name, value, line, op, lines, source)


def parse_settings(text: str, source: str = "<config>",
                   store: dict[str, Setting] | None = None,
                   at_line: int | None = None) -> dict[str, Setting]:
    """The settings of a config text, applied on top of ``store`` when given. With
    at_line, every setting (and error) is placed on that line: a command-line override."""
    store = {} if store is None else store
    try:
        for name, op, value, line, lines in _Parser(text, source).settings():
            if at_line is not None:
                line, lines = at_line, [at_line] * len(lines)
            _store(store, name, op, value, line, lines, source)
    except XlConfigError as e:
        if at_line is None:
            raise
        raise XlConfigError(e.what, source=source, line=at_line, key=e.key) from None
    return store


def render_value(value: Value | int) -> str:
    """A value in config syntax: strings double-quoted, numbers bare, lists in [ ]."""
    if isinstance(value, bool):
        raise ValueError("xl configs have no booleans: use 0 or 1")
    if isinstance(value, int):
        return str(value) if value >= 0 else f'"{value}"'
    if isinstance(value, list):
        return "[ " + ", ".join(render_value(v) for v in value) + " ]"
    out = []
    for ch in value:
        if ch in _UNESCAPES:
            out.append("\\" + _UNESCAPES[ch])
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            raise ValueError(f"character {ord(ch):#04x} cannot be written in an xl config "
                             "string")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def render_config(values: Mapping[str, Value | int]) -> str:
    """A config text that parse_settings reads back to the same values."""
    lines = []
    for name, value in values.items():
        if not _IDENT.fullmatch(name):
            raise ValueError(f"`{shown(name)}' is not an xl config key")
        lines.append(f"{name} = {render_value(value)}\n")
    return "".join(lines)


# ----- reading typed values -------------------------------------------------------------

def _strtol(text: str) -> int | None:
    """C strtol(text, &end, 0) that must consume all of text: None if it does not."""
    m = re.fullmatch(r"[ \t\n\v\f\r]*([+-]?)(0[xX][0-9a-fA-F]+|0[0-7]*|[1-9][0-9]*)", text)
    if not m:
        return None
    digits = m.group(2)
    if digits[:2].lower() == "0x":
        value = int(digits, 16)
    elif digits.startswith("0"):
        value = int(digits, 8)
    else:
        value = int(digits)
    return -value if m.group(1) == "-" else value


class _Reader:
    """Typed access to settings, remembering which keys the typed layer used."""

    def __init__(self, store: dict[str, Setting], source: str) -> None:
        self.store = store
        self.source = source
        self.used: set[str] = set()
        self.warnings: list[str] = []

    def error(self, key: str, what: str, line: int | None = None) -> XlConfigError:
        setting = self.store.get(key)
        if line is None and setting is not None:
            line = setting.line
        return XlConfigError(what, source=self.source_of(key), line=line, key=key)

    def warn(self, key: str, what: str, line: int | None = None) -> None:
        self.warnings.append(str(self.error(key, what, line)))

    def source_of(self, key: str) -> str:
        setting = self.store.get(key)
        return setting.source if setting is not None else self.source

    def get(self, key: str) -> Setting | None:
        self.used.add(key)
        return self.store.get(key)

    def string(self, key: str) -> str | None:
        setting = self.get(key)
        if setting is None:
            return None
        if isinstance(setting.value, list):
            raise self.error(key, "is a list but should be a single value")
        return setting.value

    def number(self, key: str, low: int = LONG_MIN, high: int = LONG_MAX,
               what: str = "") -> int | None:
        setting = self.get(key)
        if setting is None:
            return None
        if isinstance(setting.value, list):
            raise self.error(key, "is a list but should be a single value")
        if setting.op == "+=":
            raise self.error(key, "can't use += with numbers")
        value = _strtol(setting.value)
        if value is None:
            hint = ""
            if re.fullmatch(r"\s*[0-9]+\s*[kKmMgGtT]i?[bB]?\s*", setting.value):
                hint = " (a plain number is needed: sizes are in MiB, without a unit)"
            raise self.error(key, f"`{setting.value}' is not a valid number{hint}")
        if value < LONG_MIN or value > LONG_MAX:
            raise self.error(key, f"`{setting.value}' could not be parsed as a number: "
                             f"{os.strerror(errno.ERANGE)}")
        if not low <= value <= high:
            limit = f"from {low} to {high}" if high < LONG_MAX else f"at least {low}"
            raise self.error(key, f"{value} is out of range: {what or 'must be'} {limit}")
        return value

    def list_items(self, key: str) -> list[tuple[str, int]] | None:
        """A list of strings, each with its line."""
        setting = self.get(key)
        if setting is None:
            return None
        if not isinstance(setting.value, list):
            raise self.error(key, "is a single value but should be a list")
        items = []
        for idx, (item, line) in enumerate(zip(setting.value, setting.item_lines,
                                               strict=True)):
            if isinstance(item, list):
                raise self.error(key, f"item {idx + 1} is a list but should be a string",
                                 line)
            items.append((item, line))
        return items

    def extra(self) -> dict[str, object]:
        return {k: s.value for k, s in self.store.items() if k not in self.used}


def parse_cpu_list(text: str, host_cpus: int) -> set[int]:
    """xl's CPU list syntax ("0-3,5,^1", "all,^7"): the set of host CPUs it selects.
    NUMA node selections (``node:``, ``nodes:``) are refused: pyxen has no NUMA model."""
    cpus: set[int] = set()
    for part in text.split(","):
        if not part:
            continue
        body = part[1:] if part.startswith("^") else part
        negate = body is not part
        if body.startswith(("node:", "nodes:")):
            raise ValueError(f"`{part}': NUMA node selections (node:, nodes:) are not "
                             "supported by pyxen")
        if body == "all":
            if negate:
                raise ValueError("can't combine \"^\" and \"all\"")
            cpus |= set(range(host_cpus))
            continue
        m = re.fullmatch(r"[ \t\n\v\f\r]*([0-9]+)(?:-[ \t\n\v\f\r]*([0-9]+))?", body)
        if not m or (m.group(2) is not None and int(m.group(2)) < int(m.group(1))):
            raise ValueError(f"invalid pcpu range `{part}'")
        first = int(m.group(1))
        last = int(m.group(2)) if m.group(2) is not None else first
        if last >= host_cpus:
            raise ValueError(f"CPU {last} does not exist: this host has CPUs 0 to "
                             f"{host_cpus - 1}")
        span = set(range(first, last + 1))
        cpus = cpus - span if negate else cpus | span
    return cpus


# ----- the typed config -----------------------------------------------------------------

@dataclass
class XlConfig:
    """A PVH domain's configuration, with xl's and libxl's defaults applied."""

    name: str
    type: str = "pvh"
    uuid: str | None = None            # None: xl generates a fresh one
    memory: int = DEFAULT_MEMORY_MIB   # MiB
    maxmem: int | None = None          # MiB; None: equal to memory
    vcpus: int = 1
    maxvcpus: int | None = None        # None: equal to vcpus
    # Hard affinity (pinning). cpus_by_vcpu[i] is vCPU i's host CPUs; xl's list form may
    # pin fewer vCPUs than there are (the rest are not pinned). cpus is their union.
    cpus: list[int] | None = None
    cpus_by_vcpu: list[list[int]] | None = None
    cpu_weight: int = 256
    cap: int = 0                       # percent of one CPU; 0: no cap
    kernel: str | None = None          # as written: relative to the cwd of `xl create`
    ramdisk: str | None = None
    cmdline: str = ""
    on_poweroff: str = "destroy"
    on_reboot: str = "restart"
    on_crash: str = "destroy"
    on_watchdog: str = "destroy"
    max_event_channels: int = DEFAULT_MAX_EVENT_CHANNELS
    max_grant_frames: int = DEFAULT_MAX_GRANT_FRAMES
    accel: str = "auto"                # pyxen's own key: auto | kvm | soft
    acpi: bool = True                  # ACPI tables for the guest (libxl's PVH default)
    disk: list[DiskSpec] = field(default_factory=list)
    vif: list[VifSpec] = field(default_factory=list)
    extra: dict[str, object] = field(default_factory=dict)  # keys pyxen does not use
    warnings: list[str] = field(default_factory=list)       # what xl would warn about
    source: str = ""

    @property
    def effective_maxmem(self) -> int:
        return self.memory if self.maxmem is None else self.maxmem

    @property
    def effective_maxvcpus(self) -> int:
        return self.vcpus if self.maxvcpus is None else self.maxvcpus


def _prefix_of(text: str, word: str) -> bool:
    """xl's strncmp(text, word, strlen(text)) == 0: text is a prefix of word."""
    return word.startswith(text)


def _guest_type(r: _Reader) -> str:
    """type (and the deprecated builder): xl matches prefixes, "hvm" before "pv"."""
    kind = None
    text = r.string("type")
    if text is not None:
        kind = next((t for t in ("hvm", "pv", "pvh") if _prefix_of(text, t)), None)
        if kind is None:
            raise r.error("type", f"Invalid domain type {text}")
    builder = r.string("builder")
    if builder is not None:
        built = next((t for word, t in (("hvm", "hvm"), ("generic", "pv"))
                      if _prefix_of(builder, word)), None)
        if built is None:
            raise r.error("builder", f"Invalid domain type {builder}")
        if kind is not None and kind != built:
            raise r.error("builder", "Contradicting \"builder\" and \"type\" options "
                          "specified")
        kind = built
    if kind is None:
        r.warn("type", "type not given: xl would build a PV guest on x86; pyxen builds PVH")
        return "pvh"
    if kind != "pvh":
        key = "type" if text is not None else "builder"
        raise r.error(key, f"\"{kind}\" guests are not supported: {PV_ONLY}")
    return kind


def _uuid(r: _Reader) -> str | None:
    text = r.string("uuid")
    if text is None:
        return None
    if not re.fullmatch(r"[0-9a-fA-F]{8}(-[0-9a-fA-F]{4}){3}-[0-9a-fA-F]{12}", text):
        raise r.error("uuid", f"Failed to parse UUID: `{text}' (expected "
                      "xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx in hex)")
    return str(uuid_mod.UUID(text))


def _memory(r: _Reader, cfg: XlConfig) -> None:
    memory = r.number("memory", 1, LONG_MAX // 1024, "memory in MiB must be")
    maxmem = r.number("maxmem", 1, LONG_MAX // 1024, "maxmem in MiB must be")
    # libxl: an unset maximum is the target; an unset target is the maximum; neither: 32
    cfg.memory = memory if memory is not None else (maxmem or DEFAULT_MEMORY_MIB)
    cfg.maxmem = maxmem
    if maxmem is not None and maxmem < cfg.memory:
        raise r.error("maxmem", f"maxmem ({maxmem} MiB) is smaller than memory "
                      f"({cfg.memory} MiB): it must be equal or greater")


def _vcpus(r: _Reader, cfg: XlConfig) -> None:
    vcpus = r.number("vcpus", 1, MAX_VCPUS, "vcpus must be")
    cfg.maxvcpus = r.number("maxvcpus", 1, MAX_VCPUS, "maxvcpus must be")
    cfg.vcpus = 1 if vcpus is None else vcpus
    if cfg.maxvcpus is not None and cfg.maxvcpus < cfg.vcpus:
        raise r.error("maxvcpus", f"maxvcpus < vcpus ({cfg.maxvcpus} < {cfg.vcpus})")


def _cpus(r: _Reader, cfg: XlConfig, host_cpus: int) -> None:
    setting = r.get("cpus")
    if setting is None:
        return
    vcpus = cfg.effective_maxvcpus
    if isinstance(setting.value, list):
        # one CPU list per vCPU; entries past the last vCPU are ignored, as in xl
        specs = r.list_items("cpus") or []
        specs = specs[:vcpus]
    else:
        specs = [(setting.value, setting.line)] * vcpus
    per_vcpu = []
    for text, line in specs:
        try:
            chosen = parse_cpu_list(text, host_cpus)
        except ValueError as e:
            raise r.error("cpus", str(e), line) from None
        if not chosen:
            raise r.error("cpus", f"`{text}' selects no CPU", line)
        per_vcpu.append(sorted(chosen))
    cfg.cpus_by_vcpu = per_vcpu
    cfg.cpus = sorted(set().union(*per_vcpu)) if per_vcpu else None


def _boot(r: _Reader, cfg: XlConfig) -> None:
    cfg.kernel = r.string("kernel")
    cfg.ramdisk = r.string("ramdisk")
    firmware = r.string("firmware")
    if firmware is not None:
        if cfg.kernel is not None:
            raise r.error("firmware", "both kernel and firmware specified")
        if not (_prefix_of(firmware, "pvgrub32") or _prefix_of(firmware, "pvgrub64")):
            raise r.error("firmware", "only pvgrub{32|64} supported as firmware options")
        cfg.kernel = f"{XENFIRMWAREDIR}/{firmware}.bin"
    if r.string("bootloader") is not None:
        raise r.error("bootloader", "pyxen does not run bootloaders (pygrub): give the "
                      "guest's kernel with kernel = \"PATH\"")
    if cfg.kernel is None:
        raise XlConfigError("Neither kernel nor bootloader specified (pyxen needs "
                            "kernel = \"PATH\")", source=r.source, key="kernel")
    cmdline, root, extra = r.string("cmdline"), r.string("root"), r.string("extra")
    if cmdline is not None:
        if root is not None or extra is not None:
            r.warn("cmdline", "ignoring root= and extra= in favour of cmdline=")
        cfg.cmdline = cmdline
    elif root is not None:
        cfg.cmdline = f"root={root} {extra}" if extra is not None else f"root={root}"
    elif extra is not None:
        cfg.cmdline = extra


def _devices(r: _Reader, cfg: XlConfig) -> None:
    vdevs: dict[str, int] = {}
    for spec, line in r.list_items("disk") or []:
        try:
            disk = parse_disk_spec(spec)
        except XlConfigError as e:
            raise e.located(r.source_of("disk"), line) from None
        if disk.vdev in vdevs:
            raise r.error("disk", f"vdev {disk.vdev} used twice (also on line "
                          f"{vdevs[disk.vdev]})", line)
        vdevs[disk.vdev] = line
        cfg.disk.append(disk)
    devids: dict[int, int] = {}
    for index, (spec, line) in enumerate(r.list_items("vif") or []):
        try:
            vif = parse_vif_spec(spec)
        except XlConfigError as e:
            raise e.located(r.source_of("vif"), line) from None
        if vif.devid is None:
            vif.devid = index
        if vif.devid in devids:
            raise r.error("vif", f"devid {vif.devid} used twice (also on line "
                          f"{devids[vif.devid]})", line)
        devids[vif.devid] = line
        if vif.type == "ioemu":
            raise r.error("vif", "type=ioemu is an emulated NIC, which a PVH guest does "
                          "not have: use type=vif or leave type out", line)
        for warning in vif.warnings:
            r.warn("vif", warning, line)
        cfg.vif.append(vif)


def _from_settings(store: dict[str, Setting], source: str, host_cpus: int) -> XlConfig:
    r = _Reader(store, source)
    guest_type = _guest_type(r)
    name = r.string("name")
    if name is None:
        raise XlConfigError("Domain name must be specified", source=source, key="name")
    if not name:
        raise r.error("name", "the domain name must not be empty")
    cfg = XlConfig(name=name, type=guest_type, source=source)
    cfg.uuid = _uuid(r)
    _memory(r, cfg)
    _vcpus(r, cfg)
    _cpus(r, cfg, host_cpus)
    cfg.cpu_weight = r.number("cpu_weight", 1, 65535, "cpu_weight must be") or 256
    cap = r.number("cap", 0, 100 * cfg.effective_maxvcpus,
                   f"for {cfg.effective_maxvcpus} vCPUs cap must be")
    cfg.cap = cap or 0
    events = r.number("max_event_channels", 0, MAX_EVENT_CHANNELS,
                      "max_event_channels must be")
    cfg.max_event_channels = events or DEFAULT_MAX_EVENT_CHANNELS
    frames = r.number("max_grant_frames", 1, GNTTAB_MAX_FRAMES,
                      "max_grant_frames (Xen 4.17's gnttab_max_frames caps it) must be")
    cfg.max_grant_frames = DEFAULT_MAX_GRANT_FRAMES if frames is None else frames
    for key, default in (("on_poweroff", "destroy"), ("on_reboot", "restart"),
                         ("on_watchdog", "destroy"), ("on_crash", "destroy")):
        action = r.string(key)
        if action is not None and action not in ACTIONS:
            raise r.error(key, f"Unknown {key} action \"{action}\" specified (one of "
                          f"{', '.join(ACTIONS)})")
        setattr(cfg, key, action or default)
    accel = r.string("accel")
    if accel is not None and accel not in ACCELS:
        raise r.error("accel", f"unknown accel \"{accel}\" (one of {', '.join(ACCELS)})")
    cfg.accel = accel or "auto"
    acpi = r.number("acpi")  # xl's defbool: a number, any but 0 is true
    cfg.acpi = acpi is None or acpi != 0
    _boot(r, cfg)
    _devices(r, cfg)
    cfg.extra = r.extra()
    cfg.warnings = r.warnings
    return cfg


def parse_xl_config(text: str, source: str = "<config>", overrides: Sequence[str] = (),
                    *, host_cpus: int | None = None) -> XlConfig:
    """An xl domain config, with `xl create CFG key=value...` overrides applied after it
    (each read with the same grammar, as xl appends them to the file). Errors in an
    override name the source ``<command line>`` and the override's position as its line.
    host_cpus (default: this machine's) bounds and expands CPU lists."""
    store = parse_settings(text, source)
    for index, override in enumerate(overrides, start=1):
        if "=" not in override:
            raise XlConfigError(f"`{override}' is not a key=value setting",
                                source="<command line>", line=index)
        parse_settings(override, "<command line>", store, at_line=index)
    return _from_settings(store, source, host_cpus or os.cpu_count() or 1)
