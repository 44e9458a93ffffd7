"""Vif spec strings, as xl reads them (xl-network-configuration(5), xl_parse.c).

A vifspec is a comma-separated list of ``key=value`` settings (empty items are skipped,
leading spaces dropped, as strtok does). xl itself warns about an unknown key and goes on;
so does this parser, into VifSpec.warnings. A bad value of a known key (type, mac, rate,
mtu, devid) is an error here: xl reports it too, but for some of them carries on with the
setting half-applied, or with a random MAC instead of the one asked for.

``rate`` follows libxlu: ``RATE/s[@INTERVAL]``, RATE a number (C rules: a leading 0 means
octal) with an optional K/M/G (decimal) prefix and B (bytes) or b (bits); INTERVAL a
number with an optional ``s``, ``ms`` or ``us`` suffix. A bare INTERVAL is in seconds (the
man page says microseconds; libxlu's code, which decides, says seconds). The default
interval is 50 ms.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from .xl_disk import XlConfigError, shown

DEFAULT_BRIDGE = "xenbr0"
DEFAULT_SCRIPT = "vif-bridge"  # looked for in Xen's script directory, as libxl does
DEFAULT_RATE_INTERVAL_USECS = 50_000
NIC_TYPES = ("vif", "ioemu")
UINT32_MAX = 2**32 - 1
UINT64_MAX = 2**64 - 1
MAX_MTU = 65535

# Plain string settings: the spec key and the VifSpec attribute.
_STRINGS = {"bridge": "bridge", "gatewaydev": "gatewaydev", "ip": "ip", "script": "script",
            "backend": "backend", "vifname": "vifname", "model": "model"}
# COLO network settings: kept as given, pyxen does not replicate.
COLO_KEYS = (
    "forwarddev",
    *[f"colo_sock_{what}_{part}" for what in (
        "mirror", "compare_sec_in", "redirector0", "redirector1", "redirector2",
        "compare_pri_in", "compare_notify", "sec_redirector0", "sec_redirector1")
      for part in ("id", "ip", "port")],
    "colo_filter_mirror_queue", "colo_filter_mirror_outdev",
    *[f"colo_filter_{r}_{part}" for r in ("redirector0", "redirector1", "sec_redirector0",
                                          "sec_redirector1")
      for part in ("queue", "indev", "outdev")],
    "colo_filter_sec_rewriter0_queue",
    "colo_compare_pri_in", "colo_compare_sec_in", "colo_compare_out",
    "colo_compare_notify_dev", "colo_checkpoint_host", "colo_checkpoint_port",
)


@dataclass
class VifSpec:
    """One network interface. None means "not given": libxl then picks (a random MAC in
    Xen's 00:16:3e range, vif<domid>.<devid> as the name, the bridge's MTU...)."""

    devid: int | None = None        # None: its index in the vif list
    mac: str | None = None          # lowercase, aa:bb:cc:dd:ee:ff
    bridge: str = DEFAULT_BRIDGE
    type: str | None = None         # "vif" or "ioemu"; None: "vif" for a PV/PVH guest
    model: str | None = None        # emulated NIC model (type=ioemu only)
    vifname: str | None = None      # backend interface name
    script: str = DEFAULT_SCRIPT
    ip: str | None = None
    backend: str | None = None      # backend domain; None: the toolstack domain
    gatewaydev: str | None = None
    rate: str | None = None         # as written; parsed into the two fields below
    rate_bytes_per_sec: int | None = None
    rate_interval_usecs: int | None = None
    mtu: int | None = None
    colo: dict[str, str] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list, compare=False)

    @property
    def rate_bytes_per_interval(self) -> int | None:
        """The credit replenished every interval, as libxl computes it."""
        if self.rate_bytes_per_sec is None or self.rate_interval_usecs is None:
            return None
        return self.rate_bytes_per_sec * self.rate_interval_usecs // 1_000_000

    def to_spec(self) -> str:
        """A vifspec that parse_vif_spec reads back to an equal VifSpec. Raises ValueError
        for a value the syntax cannot carry (a comma, or leading spaces)."""
        items: list[tuple[str, str | None]] = [
            ("devid", None if self.devid is None else str(self.devid)),
            ("mac", self.mac), ("type", self.type), ("model", self.model),
            ("bridge", None if self.bridge == DEFAULT_BRIDGE else self.bridge),
            ("vifname", self.vifname),
            ("script", None if self.script == DEFAULT_SCRIPT else self.script),
            ("ip", self.ip), ("backend", self.backend), ("gatewaydev", self.gatewaydev),
            ("rate", self.rate), ("mtu", None if self.mtu is None else str(self.mtu)),
            *self.colo.items(),
        ]
        out = []
        for key, value in items:
            if value is None:
                continue
            if "," in value:
                raise ValueError(f"vif {key} `{shown(value)}' cannot be written in a vifspec "
                                 "(it holds a comma)")
            out.append(f"{key}={value}")
        return ",".join(out)


_MAC = re.compile(r"([0-9a-fA-F]{1,2})(?:[:-]([0-9a-fA-F]{1,2})){5}")
_RATE = re.compile(r"[0-9]+[GMK]?[Bb]/s")
_INTERVAL = re.compile(r"[0-9]+[mu]?s?")
_C_NUMBER = re.compile(r"0[0-7]*|[1-9][0-9]*")


def parse_mac(text: str, spec: str) -> tuple[str, list[str]]:
    """Six hex octets separated by ':' (or '-'), as lowercase aa:bb:cc:dd:ee:ff, and a
    warning for a multicast address (a NIC cannot have one)."""
    value = text.strip()
    if not _MAC.fullmatch(value):
        raise XlConfigError(f"invalid mac `{text}' in `{spec}' (expected six hex octets "
                            "such as 00:16:3e:12:34:56)", key="vif")
    octets = [int(x, 16) for x in re.split("[:-]", value)]
    mac = ":".join(f"{o:02x}" for o in octets)
    warnings = []
    if octets[0] & 1:
        warnings.append(f"mac {mac} is a multicast address: a guest NIC cannot use it")
    return mac, warnings


def _c_leading_number(text: str) -> tuple[int, str]:
    """strtoull(text, &end, 0) for text that starts with a digit: value and the rest."""
    m = _C_NUMBER.match(text)
    assert m is not None
    digits = m.group()
    value = int(digits, 8) if digits.startswith("0") else int(digits)
    return value, text[m.end():]


def parse_rate(rate: str, spec: str = "") -> tuple[int, int]:
    """``RATE/s[@INTERVAL]`` into (bytes per second, interval in microseconds)."""
    where = f" in `{spec}'" if spec else ""

    def bad(what: str) -> XlConfigError:
        return XlConfigError(f"{what} `{rate}'{where}", key="vif")

    amount, at, interval_text = rate.partition("@")
    if not amount:
        raise bad("no rate specified in rate")
    if not _RATE.fullmatch(amount):
        raise bad("invalid rate")
    value, rest = _c_leading_number(amount)
    if value == 0 or value > UINT32_MAX:
        raise bad("rate overflow")
    value *= {"G": 10**9, "M": 10**6, "K": 10**3}.get(rest[0], 1)
    if rest[0] == "b" or rest[1] == "b":
        value //= 8
    interval = DEFAULT_RATE_INTERVAL_USECS
    if at:
        if not _INTERVAL.fullmatch(interval_text):
            raise bad("invalid replenishment interval in rate")
        usecs, unit = _c_leading_number(interval_text)
        if usecs == 0 or usecs > UINT32_MAX:
            raise bad("replenishment interval overflow in rate")
        if unit in ("", "s"):
            usecs *= 1_000_000
        elif unit.startswith("m"):
            usecs *= 1_000
        if usecs > UINT32_MAX:
            raise bad("replenishment interval overflow in rate")
        interval = usecs
    if value > UINT64_MAX // interval:
        raise bad("rate overflow")
    return value, interval


def _parse_count(key: str, text: str, spec: str, low: int, high: int) -> int:
    if not re.fullmatch(r"[0-9]+", text) or not low <= int(text) <= high:
        raise XlConfigError(f"{key} `{text}' is not a number from {low} to {high} "
                            f"in `{spec}'", key="vif")
    return int(text)


def parse_vif_spec(spec: str) -> VifSpec:
    """One NET_SPEC_STRING as xl reads it; XlConfigError (key ``vif``) if a value is bad.
    Unknown keys are skipped with a warning, as xl does."""
    vif = VifSpec()
    for token in spec.split(","):
        token = token.lstrip(" ")
        if not token:
            continue
        key, eq, value = token.partition("=")
        if not eq:
            vif.warnings.append(f"unrecognized argument `{shown(token)}'")
        elif key == "type":
            if value not in NIC_TYPES:
                raise XlConfigError(f"invalid type `{value}' in `{spec}' (expected vif or "
                                    "ioemu)", key="vif")
            vif.type = value
        elif key == "mac":
            vif.mac, warnings = parse_mac(value, spec)
            vif.warnings += warnings
        elif key in _STRINGS:
            setattr(vif, _STRINGS[key], value)
        elif key == "netdev":
            vif.warnings.append("the netdev parameter is deprecated, please use gatewaydev "
                                "instead")
            vif.gatewaydev = value
        elif key == "rate":
            vif.rate_bytes_per_sec, vif.rate_interval_usecs = parse_rate(value, spec)
            vif.rate = value
        elif key in COLO_KEYS:
            vif.colo[key] = value
        elif key == "accel":
            vif.warnings.append("the accel parameter for vifs is currently not supported")
        elif key == "devid":
            vif.devid = _parse_count("devid", value, spec, 0, 2**31 - 1)
        elif key == "mtu":
            vif.mtu = _parse_count("mtu", value, spec, 1, MAX_MTU)
        else:
            vif.warnings.append(f"unrecognized argument `{shown(token)}'")
    return vif
