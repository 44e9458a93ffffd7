"""Each fuzz target, run briefly under atheris (`python -m fuzz TARGET --runs N`, a fixed
seed): it starts, its seeds pass, and a few thousand mutations find nothing. The long
campaigns are run by hand (fuzz/__init__.py says how); this keeps the harness working.
The whole file stays under a minute on a busy two-core machine."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from fuzz.targets import names  # noqa: E402

# Runs per target: a second or two each (the XenStore target builds a store per input).
RUNS = {"xlcfg": 1500, "disk": 3000, "vif": 3000, "image_elf": 800, "image_bzimage": 1000,
        "xenstore_wire": 300, "api": 800, "domain_wire": 3000, "savestream": 3000,
        "peer_link": 3000}

pytestmark = pytest.mark.skipif(importlib.util.find_spec("atheris") is None,
                                reason="atheris is not installed (pip install atheris)")


def test_every_target_has_a_run_count() -> None:
    assert sorted(RUNS) == names()


def test_list_names_every_target() -> None:
    out = subprocess.run([sys.executable, "-m", "fuzz", "--list"], cwd=ROOT, check=True,
                         capture_output=True, text=True, timeout=60).stdout
    assert [line.split()[0] for line in out.splitlines()] == names()


@pytest.mark.parametrize("target", sorted(RUNS))
def test_target_runs_clean(target: str, tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "fuzz", target, "--runs", str(RUNS[target]), "--seed", "1",
         "--artifacts", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=120)
    tail = "\n".join(proc.stderr.splitlines()[-40:])
    assert proc.returncode == 0, f"{target} failed:\n{tail}"
    assert f"Done {RUNS[target]} runs" in proc.stderr or "Done" in proc.stderr, tail
    assert not list(tmp_path.iterdir()), f"{target} left {list(tmp_path.iterdir())}"
