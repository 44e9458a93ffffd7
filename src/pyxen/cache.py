"""The user's cache directory for what pyxen builds on demand (the guest kit, the Linux kit,
the software CPU's native hooks): $XDG_CACHE_HOME/pyxen, else ~/.cache/pyxen. A relative
XDG_CACHE_HOME is ignored, as the XDG specification asks."""

from __future__ import annotations

import os
from pathlib import Path


def user_cache() -> Path:
    base = os.environ.get("XDG_CACHE_HOME", "")
    root = Path(base) if os.path.isabs(base) else Path.home() / ".cache"
    return root / "pyxen"
