"""xl.cfg files, as `pyxen create` reads them: the grammar, the typed rules, the spec.

The bytes are a config file (decoded as read_config decodes it); a NUL splits off
command-line overrides (`pyxen create CFG key=value...`). Expected failure: XlConfigError,
one line. Anything else, or a domain spec that does not survive JSON, is a bug.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

from fuzz.targets._check import one_line, require
from pyxen.toolstack.xl_create import MAX_CONFIG_BYTES, domain_spec
from pyxen.toolstack.xl_disk import parse_disk_spec
from pyxen.toolstack.xl_vif import parse_vif_spec
from pyxen.toolstack.xlcfg import XlConfigError, parse_xl_config

INSTRUMENT = ("pyxen.toolstack.xlcfg", "pyxen.toolstack.xl_disk", "pyxen.toolstack.xl_vif",
              "pyxen.toolstack.xl_create")

EXAMPLES = Path(__file__).parents[2] / "examples"


def one_input(data: bytes) -> None:
    text = data[:MAX_CONFIG_BYTES].decode("utf-8", "surrogateescape")
    config, *overrides = text.split("\0")
    try:
        cfg = parse_xl_config(config, "fuzz.cfg", overrides[:4], host_cpus=4)
        spec = domain_spec(cfg)
    except XlConfigError as e:
        one_line(e)
        return
    json.dumps(spec)
    for warning in cfg.warnings:
        require("\n" not in warning, f"a warning is not one line: {warning!r}")
    # the daemon reads the devices back from the spec: they must mean the same there
    for disk, text in zip(cfg.disk, spec["disks"], strict=True):
        again = parse_disk_spec(text)
        target = str(Path(disk.target).absolute()) if disk.target else disk.target
        require(again == replace(disk, target=target), f"disk {disk} reads back as {again}")
    for vif, text in zip(cfg.vif, spec["vifs"], strict=True):
        require(parse_vif_spec(text) == vif, f"vif {vif} reads back differently from {text!r}")


def seeds() -> list[bytes]:
    found = [p.read_bytes() for p in sorted(EXAMPLES.glob("*.cfg"))]
    return found + [
        b'name = "a"\nkernel = "k"\ntype = "pvh"\nmemory = 0x40\nvcpus = 2\ncpus = ["0-1", "all,^1"]\n',
        b'name="b";kernel="k";disk=["/d.img,raw,xvda,rw", "format=qcow2,vdev=xvdb,target=/x"]\n'
        b'vif=["mac=00:16:3e:00:00:01,bridge=br0,rate=10Mb/s@20ms", "devid=3,mtu=1500"]\n',
        b'name = "c"\nkernel = "k"\nextra = "x"\nextra += " y"\nroot = "/dev/xvda"\n'
        b'on_crash = "preserve"\nmaxmem = 128\ncap = 50\nacpi = 0\n\0memory=64\0vcpus=1',
    ]
