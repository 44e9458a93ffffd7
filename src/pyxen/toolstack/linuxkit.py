"""The Linux guest kit (guests/linux/kit.py) for the tests and benchmarks that boot Linux.

kit.py is a script of the source checkout, run as `make -C guests linux`; this loads it as a
module once (dataclasses look their module up in sys.modules) and names the cache its users
share, so one build serves the kit's checks, the boot test and the benchmark.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path
from types import ModuleType

from pyxen.cache import user_cache

KIT_PY = Path(__file__).resolve().parents[1] / "guests" / "linux" / "kit.py"
MODULE = "pyxen_linux_kit"


def load_kit() -> ModuleType:
    if MODULE in sys.modules:
        return sys.modules[MODULE]
    spec = importlib.util.spec_from_file_location(MODULE, KIT_PY)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[MODULE] = module
    spec.loader.exec_module(module)
    return module


def kit_dir() -> Path:
    """Where the tests and benchmarks build the kit: PYXEN_LINUX_DIR, else the user's cache
    (not guests/build/linux, whose root.img the examples write to)."""
    return Path(os.environ.get("PYXEN_LINUX_DIR", user_cache() / "linux-kit"))
