"""A save file, as `pyxen restore` reads it before it builds anything big: the stream's
framing (pyxen.migration.stream), the domain's description and settings, PAGE_DATA into a
small guest memory, HVM_PARAMS, and the JSON records.

A save file comes from a disk or a network: the reader must not trust it. Expected:
StreamError or ValueError, one line. A bug: any other exception, or a page record that
changed memory although it was refused.
"""

from __future__ import annotations

import io
import json

from fuzz.targets._check import one_line, require
from pyxen import __version__
from pyxen.domain.memory import GuestMemory
from pyxen.migration import stream
from pyxen.migration.pages import apply_page_data, page_records
from pyxen.migration.restore import _json, domain_config, load_hvm_params, read_description
from pyxen.migration.save import hvm_params
from pyxen.migration.stream import StreamError, StreamWriter

INSTRUMENT = ("pyxen.migration.stream", "pyxen.migration.pages", "pyxen.migration.restore",
              "pyxen.domain.saved")

MiB = 1 << 20
MEMORY = GuestMemory(4 * MiB, 4 * MiB, name="fuzz-savestream")
FRAMES = MEMORY.nr_populated
NR_PARAMS = 64


def one_input(data: bytes) -> None:
    try:
        description, rest = read_description(io.BytesIO(data))
        domain_config(description)
        for record in rest:
            if record.type == stream.PAGE_DATA:
                before = bytes(MEMORY.populated)
                try:
                    apply_page_data(MEMORY, record.body, FRAMES)
                except StreamError:
                    require(bytes(MEMORY.populated) == before, "a refused record changed memory")
                    raise
            elif record.type == stream.HVM_PARAMS:
                load_hvm_params(record.body, NR_PARAMS)
            else:
                _json(record)
    except (StreamError, ValueError) as e:
        one_line(e)


def seeds() -> list[bytes]:
    out = io.BytesIO()
    writer = StreamWriter(out)
    description = {"pyxen": __version__, "backend": "soft", "name": "seed", "domid": 3,
                   "uuid": "00" * 16, "memory_mib": 4, "maxmem_mib": None, "vcpus": 1,
                   "max_vcpus": 1, "cmdline": "", "max_grant_frames": 32,
                   "max_event_channels": 1023, "acpi": True, "tsc_khz": 1000000,
                   "max_pages": 1024, "extra_pages": 0, "special_frames": {}, "toolstack": None}
    writer.record(stream.DOMAIN_CONFIG, json.dumps(description).encode())
    MEMORY.write(0x3000, b"seed" * 8)
    for body in page_records(MEMORY, range(2, 6)):
        writer.record(stream.PAGE_DATA, body, compress=True)
    writer.record(stream.HVM_PARAMS, hvm_params([0, 5, 0, 7]))
    writer.record(stream.XEN_STATE, b'{"system_time": 5}')
    writer.end()
    return [out.getvalue()]
