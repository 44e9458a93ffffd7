"""pyxen.toolstack.xl_vif: vif spec strings as xl reads them.

Every example of xl-network-configuration(5); VifSpec -> spec -> VifSpec round trips; and
the rate syntax against the real thing, Debian's libxlutil 4.17 (xlu_vif_parse_rate),
where gcc and libxen-dev are installed."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pyxen.toolstack.xl_vif import (
    COLO_KEYS,
    DEFAULT_BRIDGE,
    DEFAULT_SCRIPT,
    VifSpec,
    XlConfigError,
    parse_rate,
    parse_vif_spec,
)

# ----- xl-network-configuration(5), its examples -----------------------------------------


def test_man_page_example_with_model_and_bridge() -> None:
    vif = parse_vif_spec("mac=00:16:3E:74:3d:76,model=rtl8139,bridge=xenbr0")
    assert vif == VifSpec(mac="00:16:3e:74:3d:76", model="rtl8139", bridge="xenbr0")
    assert vif.warnings == []


def test_man_page_example_mac_only() -> None:
    assert parse_vif_spec("mac=00:16:3E:74:34:32") == VifSpec(mac="00:16:3e:74:34:32")


def test_man_page_example_empty_string_means_all_defaults() -> None:
    vif = parse_vif_spec("")
    assert vif == VifSpec()
    assert (vif.mac, vif.bridge, vif.script, vif.devid) == (None, DEFAULT_BRIDGE,
                                                            DEFAULT_SCRIPT, None)


def test_man_page_example_second_vif() -> None:
    assert parse_vif_spec("mac=00:16:3e:5f:48:e4,bridge=xenbr1") == VifSpec(
        mac="00:16:3e:5f:48:e4", bridge="xenbr1")


@pytest.mark.parametrize(("rate", "per_sec", "usecs", "per_interval"), [
    ("10Mb/s", 1_250_000, 50_000, 62_500),     # up to 10 megabits every second
    ("250KB/s", 250_000, 50_000, 12_500),      # up to 250 kilobytes every second
    ("1MB/s@20ms", 1_000_000, 20_000, 20_000),  # 20,000 bytes every 20,000 us
])
def test_man_page_rate_examples(rate: str, per_sec: int, usecs: int, per_interval: int) -> None:
    vif = parse_vif_spec(f"rate={rate}")
    assert (vif.rate, vif.rate_bytes_per_sec, vif.rate_interval_usecs) == (rate, per_sec, usecs)
    assert vif.rate_bytes_per_interval == per_interval


@pytest.mark.parametrize(("rate", "per_sec", "usecs"), [
    ("1GB/s", 10**9, 50_000), ("8b/s", 1, 50_000), ("1Gb/s@1s", 125_000_000, 10**6),
    ("100B/s@250us", 100, 250), ("100B/s@3", 100, 3_000_000), ("100B/s@7m", 100, 7_000),
    ("010KB/s", 8_000, 50_000),  # C's strtoull: a leading 0 is octal
])
def test_rate_units(rate: str, per_sec: int, usecs: int) -> None:
    assert parse_rate(rate) == (per_sec, usecs)


def test_every_keyword() -> None:
    vif = parse_vif_spec("devid=3,mac=aa:bb:cc:dd:ee:f0,type=vif,model=e1000,bridge=br1,"
                         "vifname=web0,script=vif-route,ip=10.0.0.2 10.0.0.3,backend=net,"
                         "gatewaydev=eth1,rate=1MB/s,mtu=9000")
    assert vif == VifSpec(devid=3, mac="aa:bb:cc:dd:ee:f0", type="vif", model="e1000",
                          bridge="br1", vifname="web0", script="vif-route",
                          ip="10.0.0.2 10.0.0.3", backend="net", gatewaydev="eth1",
                          rate="1MB/s", rate_bytes_per_sec=10**6,
                          rate_interval_usecs=50_000, mtu=9000)
    assert vif.warnings == []


def test_empty_items_and_leading_spaces_are_skipped_as_strtok_does() -> None:
    assert parse_vif_spec(",, bridge=br1,,  mac=00:16:3e:00:00:01,") == VifSpec(
        bridge="br1", mac="00:16:3e:00:00:01")


def test_a_later_setting_wins() -> None:
    assert parse_vif_spec("bridge=a,bridge=b").bridge == "b"


def test_netdev_is_the_deprecated_name_of_gatewaydev() -> None:
    vif = parse_vif_spec("netdev=eth0")
    assert vif.gatewaydev == "eth0"
    assert vif.warnings == ["the netdev parameter is deprecated, please use gatewaydev "
                            "instead"]


def test_unknown_keys_and_accel_warn_and_are_ignored() -> None:
    vif = parse_vif_spec("foo=bar,bridge=br1,accel=x,flag")
    assert vif == VifSpec(bridge="br1")
    assert vif.warnings == ["unrecognized argument `foo=bar'",
                            "the accel parameter for vifs is currently not supported",
                            "unrecognized argument `flag'"]


def test_colo_keys_are_kept_as_given() -> None:
    vif = parse_vif_spec("forwarddev=eth2,colo_sock_mirror_port=9003")
    assert vif.colo == {"forwarddev": "eth2", "colo_sock_mirror_port": "9003"}
    assert vif.warnings == []


def test_mac_forms() -> None:
    assert parse_vif_spec("mac=0:16:3e:1:2:3").mac == "00:16:3e:01:02:03"
    assert parse_vif_spec("mac=00-16-3E-01-02-03").mac == "00:16:3e:01:02:03"
    multicast = parse_vif_spec("mac=01:00:5e:00:00:01")
    assert multicast.mac == "01:00:5e:00:00:01"
    assert "multicast" in multicast.warnings[0]


# ----- errors ----------------------------------------------------------------------------

@pytest.mark.parametrize(("spec", "message"), [
    ("mac=random", "invalid mac `random'"),
    ("mac=00:16:3e:00:00", "invalid mac"),
    ("mac=00:16:3e:00:00:01:02", "invalid mac"),
    ("mac=00:16:3e:100:00:01", "invalid mac"),
    ("type=virtio", "invalid type `virtio'"),
    ("rate=", "no rate specified in rate `'"),
    ("rate=10Mb", "invalid rate `10Mb'"),
    ("rate=10 Mb/s", "invalid rate"),
    ("rate=0Mb/s", "rate overflow `0Mb/s'"),
    ("rate=08MB/s", "rate overflow"),
    ("rate=4294967296B/s", "rate overflow"),
    ("rate=1MB/s@", "invalid replenishment interval in rate `1MB/s@'"),
    ("rate=1MB/s@20ns", "invalid replenishment interval"),
    ("rate=1MB/s@0ms", "replenishment interval overflow"),
    ("rate=1MB/s@4295s", "replenishment interval overflow"),
    ("mtu=abc", "mtu `abc' is not a number from 1 to 65535"),
    ("mtu=0", "mtu `0' is not a number"),
    ("mtu=70000", "mtu `70000'"),
    ("devid=-1", "devid `-1' is not a number"),
])
def test_errors_are_one_line_and_name_the_problem(spec: str, message: str) -> None:
    with pytest.raises(XlConfigError) as info:
        parse_vif_spec(spec)
    text = str(info.value)
    assert "\n" not in text
    assert text.startswith("vif: ")
    assert message in text
    assert f"in `{spec}'" in text


# ----- round trips -----------------------------------------------------------------------

WORDS = st.text(st.sampled_from("abcdefghijklmnopqrstuvwxyz0123456789-_./:=@ "), min_size=1,
                max_size=10).filter(lambda s: not s.startswith(" "))
MACS = st.lists(st.integers(0, 255), min_size=6, max_size=6).map(
    lambda o: ":".join(f"{x:02x}" for x in o))
RATES = st.tuples(st.integers(1, 999), st.sampled_from(["", "K", "M", "G"]),
                  st.sampled_from("Bb"), st.sampled_from(["", "@20ms", "@1s", "@500us",
                                                          "@2"])).map(
    lambda t: f"{t[0]}{t[1]}{t[2]}/s{t[3]}")


@st.composite
def vif_specs(draw: st.DrawFn) -> VifSpec:
    rate = draw(st.one_of(st.none(), RATES))
    per_sec, usecs = parse_rate(rate) if rate else (None, None)
    return VifSpec(
        devid=draw(st.one_of(st.none(), st.integers(0, 1000))),
        mac=draw(st.one_of(st.none(), MACS)),
        bridge=draw(st.one_of(st.just(DEFAULT_BRIDGE), WORDS)),
        type=draw(st.sampled_from([None, "vif", "ioemu"])),
        model=draw(st.one_of(st.none(), WORDS)), vifname=draw(st.one_of(st.none(), WORDS)),
        script=draw(st.one_of(st.just(DEFAULT_SCRIPT), WORDS)),
        ip=draw(st.one_of(st.none(), WORDS)), backend=draw(st.one_of(st.none(), WORDS)),
        gatewaydev=draw(st.one_of(st.none(), WORDS)), rate=rate,
        rate_bytes_per_sec=per_sec, rate_interval_usecs=usecs,
        mtu=draw(st.one_of(st.none(), st.integers(1, 65535))),
        colo=draw(st.dictionaries(st.sampled_from(COLO_KEYS), WORDS, max_size=3)),
    )


@settings(max_examples=150, deadline=None)
@given(vif_specs())
def test_to_spec_round_trips(vif: VifSpec) -> None:
    back = parse_vif_spec(vif.to_spec())
    assert back == vif
    assert all("multicast" in w for w in back.warnings)


@settings(max_examples=150, deadline=None)
@given(vif_specs(), st.randoms(use_true_random=False))
def test_key_order_does_not_matter(vif: VifSpec, rnd: object) -> None:
    items = vif.to_spec().split(",") if vif.to_spec() else []
    rnd.shuffle(items)  # type: ignore[attr-defined]
    assert parse_vif_spec(", ".join(items)) == vif


def test_to_spec_refuses_a_comma() -> None:
    with pytest.raises(ValueError, match="comma"):
        VifSpec(ip="10.0.0.1,10.0.0.2").to_spec()


# ----- the real libxlutil ----------------------------------------------------------------

ORACLE = r"""
#include <stdio.h>
#include <string.h>
#include <libxlutil.h>
int main(void) {
    static char line[4096];
    FILE *null = fopen("/dev/null", "w");
    XLU_Config *c = xlu_cfg_init(null, "rate");
    while (fgets(line, sizeof line, stdin)) {
        line[strcspn(line, "\n")] = 0;
        libxl_device_nic nic; libxl_device_nic_init(&nic);
        if (xlu_vif_parse_rate(c, line, &nic)) { printf("ERR\n"); continue; }
        printf("%llu %u\n", (unsigned long long)nic.rate_bytes_per_interval,
               nic.rate_interval_usecs);
    }
    return 0;
}
"""


@pytest.fixture(scope="module")
def libxlu_rate(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not shutil.which("gcc") or not Path("/usr/include/libxlutil.h").exists():
        pytest.skip("needs gcc and libxen-dev (libxlutil)")
    work = tmp_path_factory.mktemp("xlu_rate")
    (work / "oracle.c").write_text(ORACLE)
    exe = work / "oracle"
    built = subprocess.run(["gcc", "-o", str(exe), str(work / "oracle.c"), "-lxlutil",
                            "-lxenlight"], capture_output=True, text=True)
    if built.returncode:
        pytest.skip(f"cannot build against libxlutil: {built.stderr.strip()[:200]}")
    return exe


RATE_TEXT = st.text(st.sampled_from("0123456789GMKBbgmkus/@x "), max_size=14)
RATE_LIKE = st.tuples(
    st.sampled_from(["0", "1", "08", "010", "4294967295", "4294967296", "18446744073", "7",
                     "999999999", ""]),
    st.sampled_from(["", "G", "M", "K", "k"]), st.sampled_from(["B", "b", ""]),
    st.sampled_from(["/s", "/m", ""]),
    st.sampled_from(["", "@", "@0", "@20ms", "@20m", "@20us", "@20u", "@4294s", "@4295",
                     "@010ms", "@1s", "@5x"]),
).map("".join)


@settings(max_examples=100, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.one_of(RATE_TEXT, RATE_LIKE), min_size=1, max_size=40))
def test_rate_same_as_libxlutil(libxlu_rate: Path, rates: list[str]) -> None:
    out = subprocess.run([str(libxlu_rate)], input="".join(r + "\n" for r in rates),
                         capture_output=True, text=True, check=True,
                         timeout=120).stdout.splitlines()
    for rate, theirs in zip(rates, out, strict=True):
        try:
            per_sec, usecs = parse_rate(rate)
        except XlConfigError:
            assert theirs == "ERR", f"{rate!r}: xl accepts it ({theirs})"
            continue
        assert theirs == f"{per_sec * usecs // 1_000_000} {usecs}", rate
