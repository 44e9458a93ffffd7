"""Where the host daemon listens: `--host`/`PYXEN_HOST`, else a per-user default."""

from __future__ import annotations

import os
from pathlib import Path

HOST_ENV = "PYXEN_HOST"


def default_socket() -> Path:
    """/run/pyxen/pyxen.sock for root (as Xen's daemons live under /run/xen), else under
    $XDG_RUNTIME_DIR, else /tmp/pyxen-UID."""
    if os.geteuid() == 0:
        return Path("/run/pyxen/pyxen.sock")
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    base = Path(runtime) / "pyxen" if runtime else Path(f"/tmp/pyxen-{os.geteuid()}")
    return base / "pyxen.sock"


def host_socket(explicit: str | None) -> Path:
    """The API socket: the --host option, else $PYXEN_HOST, else the default."""
    return Path(explicit or os.environ.get(HOST_ENV) or default_socket())
