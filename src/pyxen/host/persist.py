"""What a restarted daemon needs to take its domains back: the host's own record.

`STATE_DIR/host.json` holds the domid rover, the daemon's pid (its cgroups are named after
it) and, per domain, what `HostedDomain.record` and
`sched.record` say (config, on_* actions, state, limits); the XenStore's nodes and the
guests' watches are kept beside it by `pyxen.xenstore.snapshot.Persistence`. Each file is
replaced whole (written to a temporary name, then renamed), so a daemon killed at any
moment leaves the last complete record. A clean stop, which destroys the domains, removes
them; a crash or a handover (`pyxen daemon --replace`) leaves them for the next daemon."""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any

FORMAT = 1
HOST_FILE = "host.json"
XENSTORE_FILES = ("xenstore.json", "xenstore.journal")


class StateError(Exception):
    """The saved state cannot be used; str() names the file and what is wrong."""


def save(state_dir: Path, rover: int, domains: list[dict[str, Any]]) -> None:
    path = state_dir / HOST_FILE
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps({"format": FORMAT, "rover": rover, "daemon_pid": os.getpid(),
                               "domains": domains}))
    os.replace(tmp, path)


def load(state_dir: Path) -> dict[str, Any] | None:
    """The saved host (None if there is none). Checks what the daemon relies on."""
    path = state_dir / HOST_FILE
    try:
        data = json.loads(path.read_bytes())
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise StateError(f"{path}: not a saved host: {e}") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise StateError(f"{path}: not a saved host of format {FORMAT}")
    if not isinstance(data.get("rover"), int) or not isinstance(data.get("domains"), list):
        raise StateError(f"{path}: rover or domains missing")
    for entry in data["domains"]:
        if not (isinstance(entry, dict) and isinstance(entry.get("spec"), dict)
                and isinstance(entry["spec"].get("domid"), int)
                and isinstance(entry.get("actions"), dict)):
            raise StateError(f"{path}: a domain entry lacks its spec, domid or actions")
    return data


def clear(state_dir: Path) -> None:
    """No domain is left to adopt."""
    for name in (HOST_FILE, *XENSTORE_FILES):
        with contextlib.suppress(FileNotFoundError):
            (state_dir / name).unlink()
