"""Host-mode fixtures: a real `pyxen daemon` per test, in the test's temporary directory."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import AVAILABLE
from host.hostkit import Daemon


@pytest.fixture
def daemon(guests, tmp_path: Path) -> Iterator[Daemon]:
    if "soft" not in AVAILABLE:
        pytest.skip("host-mode tests run their guests on the software CPU")
    d = Daemon(tmp_path)
    try:
        yield d
    finally:
        d.stop()
