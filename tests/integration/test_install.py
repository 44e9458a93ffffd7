"""A non-editable install of pyxen, used as a newcomer would: `pip install .`, then `pyxen demo`.

The install goes into a fresh venv (the runtime dependencies come from the system site); the
demo runs outside the source tree with HOME and XDG_CACHE_HOME in a temporary directory, so
the guest kit must come from the package data and build in the user's cache.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
NOT_SOURCES = shutil.ignore_patterns(".git", "build", "dist", "*.egg-info", "__pycache__",
                                     ".pytest_cache", ".ruff_cache", ".hypothesis", ".venv")


def _run(argv: list[str | Path], cwd: Path | None = None,
         env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(a) for a in argv], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)


def _can_build_offline(python: Path) -> bool:
    """Whether the venv sees setuptools>=68 and wheel, so pip needs no build isolation."""
    probe = ("import setuptools, wheel; "
             "raise SystemExit(int(setuptools.__version__.split('.')[0]) < 68)")
    return _run([python, "-c", probe]).returncode == 0


@pytest.fixture(scope="module")
def venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A venv with pyxen installed from a copy of this checkout (pip builds a wheel)."""
    if not (shutil.which("make") and shutil.which("gcc") and Path("/usr/include/xen/xen.h").exists()):
        pytest.skip("building the guest kit needs make, gcc and libxen-dev")
    tmp = tmp_path_factory.mktemp("install")
    # A copy, so pip's in-tree build (build/, *.egg-info) stays out of the shared checkout.
    checkout = tmp / "checkout"
    shutil.copytree(ROOT, checkout, symlinks=True, ignore=NOT_SOURCES)
    venv = tmp / "venv"
    made = _run([sys.executable, "-m", "venv", "--system-site-packages", venv])
    assert made.returncode == 0, made.stderr
    pip = [venv / "bin" / "python", "-m", "pip", "install", "--no-deps", "--no-input"]
    if _can_build_offline(venv / "bin" / "python"):
        pip.append("--no-build-isolation")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = _run([*pip, checkout], cwd=tmp, env=env)
    if done.returncode and "--no-build-isolation" not in pip and (
            "No matching distribution found for setuptools" in done.stderr
            or "No matching distribution found for wheel" in done.stderr):
        pytest.skip("no setuptools>=68/wheel here and pip cannot fetch them for the build")
    assert done.returncode == 0, f"pip install failed:\n{done.stdout}{done.stderr}"
    return venv


def _user_env(tmp: Path, **extra: str) -> dict[str, str]:
    """A user's environment with its home and cache in tmp, and no path into the checkout."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "XEN_INC", "CC")}
    env.update(HOME=str(tmp / "home"), XDG_CACHE_HOME=str(tmp / "cache"), **extra)
    (tmp / "home").mkdir(exist_ok=True)
    return env


def test_the_installed_package_is_imported(venv: Path, tmp_path: Path) -> None:
    where = _run([venv / "bin" / "python", "-c", "import pyxen; print(pyxen.__file__)"],
                 cwd=tmp_path, env=_user_env(tmp_path))
    assert where.returncode == 0, where.stderr
    assert Path(where.stdout.strip()).is_relative_to(venv), where.stdout
    kit = next((venv / "lib").glob("python3*/site-packages/pyxen/guests"))
    assert (kit / "Makefile").is_file() and (kit / "runtime" / "entry.S").is_file()
    assert not (kit / "build").exists(), "build products were packaged"


def test_pyxen_demo_builds_the_kit_in_the_cache(venv: Path, tmp_path: Path) -> None:
    env = _user_env(tmp_path)
    demo = _run([venv / "bin" / "pyxen", "demo", "--accel", "soft"], cwd=tmp_path, env=env)
    assert demo.returncode == 0, f"{demo.stdout}{demo.stderr}"
    assert "Goodbye from the demo guest." in demo.stdout
    image = tmp_path / "cache" / "pyxen" / "guests" / "build" / "demo.elf"
    assert image.is_file()
    # The software CPU's native code, compiled from the installed package's sources.
    assert len(list((tmp_path / "cache" / "pyxen" / "native").glob("pyxen-soft-*.so"))) == 1

    # A second run copies nothing and rebuilds nothing.
    built = image.stat().st_mtime_ns
    again = _run([venv / "bin" / "pyxen", "demo", "--accel", "soft"], cwd=tmp_path, env=env)
    assert again.returncode == 0, f"{again.stdout}{again.stderr}"
    assert image.stat().st_mtime_ns == built


@pytest.mark.parametrize(("extra", "says"), [
    ({"XEN_INC": "/nonexistent/xen"}, "install libxen-dev"),
    ({"CC": "no-such-gcc"}, "`no-such-gcc` is needed to build the guest kit"),
])
def test_a_missing_build_tool_is_one_clear_line(venv: Path, tmp_path: Path,
                                                extra: dict[str, str], says: str) -> None:
    demo = _run([venv / "bin" / "pyxen", "demo", "--accel", "soft"], cwd=tmp_path,
                env=_user_env(tmp_path, **extra))
    assert demo.returncode == 1
    assert demo.stdout == ""
    assert demo.stderr.count("\n") == 1 and says in demo.stderr, demo.stderr
