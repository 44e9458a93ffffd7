"""The fuzz targets, one module each: `one_input(data)` and `seeds()`."""

from __future__ import annotations

import pkgutil
from pathlib import Path

HERE = Path(__file__).parent


def names() -> list[str]:
    """Every target's name (its module's)."""
    return sorted(m.name for m in pkgutil.iter_modules([str(HERE)]) if not m.name.startswith("_"))
