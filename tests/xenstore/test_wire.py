"""pyxen.abi.xs_wire against Xen's installed header, compiled by gcc."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from pyxen.abi import xs_wire

HEADER = Path("/usr/include/xen/io/xs_wire.h")
TYPES_4_17 = [m for m in xs_wire.XsdSockmsgType if m.value < xs_wire.XS_TYPE_COUNT_4_17]


@pytest.mark.skipif(not HEADER.exists() or not shutil.which("gcc"), reason="needs libxen-dev and gcc")
def test_layout_and_values_match_header(tmp_path: Path) -> None:
    lines = [f'printf("{m.name} %d\\n", (int){m.name});' for m in TYPES_4_17]
    lines += [
        'printf("XS_TYPE_COUNT %d\\n", (int)XS_TYPE_COUNT);',
        'printf("XS_INVALID %d\\n", (int)XS_INVALID);',
        'printf("sockmsg %zu\\n", sizeof(struct xsd_sockmsg));',
        'printf("iface %zu\\n", sizeof(struct xenstore_domain_interface));',
        'printf("req_cons %zu\\n", offsetof(struct xenstore_domain_interface, req_cons));',
        'printf("error %zu\\n", offsetof(struct xenstore_domain_interface, error));',
        'printf("payload %d\\n", XENSTORE_PAYLOAD_MAX);',
        'for (unsigned i = 0; i < sizeof(xsd_errors)/sizeof(xsd_errors[0]); i++)'
        ' printf("err %d %s\\n", xsd_errors[i].errnum, xsd_errors[i].errstring);',
    ]
    src = tmp_path / "w.c"
    src.write_text(
        "#include <errno.h>\n#include <stdint.h>\n#include <stddef.h>\n#include <stdio.h>\n"
        "#include <xen/io/xs_wire.h>\nint main(void) {\n" + "\n".join(lines) + "\nreturn 0; }\n"
    )
    exe = tmp_path / "w"
    subprocess.run(["gcc", "-o", str(exe), str(src)], check=True)
    out = subprocess.run([str(exe)], check=True, capture_output=True, text=True).stdout.splitlines()
    values = dict(line.split(" ", 1) for line in out if not line.startswith("err "))
    for m in TYPES_4_17:
        assert int(values[m.name]) == m.value, m.name
    assert int(values["XS_TYPE_COUNT"]) == xs_wire.XS_TYPE_COUNT_4_17
    assert int(values["XS_INVALID"]) == xs_wire.XS_INVALID
    assert int(values["sockmsg"]) == xs_wire.XSD_SOCKMSG_SIZE
    assert int(values["iface"]) == xs_wire.XENSTORE_DOMAIN_INTERFACE.size
    assert int(values["req_cons"]) == xs_wire.XSDI_REQ_CONS
    assert int(values["error"]) == xs_wire.XSDI_ERROR
    assert int(values["payload"]) == xs_wire.XENSTORE_PAYLOAD_MAX
    errors = [tuple(line.split()[1:]) for line in out if line.startswith("err ")]
    assert [(int(n), s) for n, s in errors] == list(xs_wire.XSD_ERRORS)
