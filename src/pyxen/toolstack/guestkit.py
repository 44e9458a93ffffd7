"""Finding and building the guest kit (guests/): `pyxen demo` and the benchmarks boot its images.

In a source checkout the kit is guests/ at the top of the tree and builds in place, into
guests/build/ where the tests look. An installed pyxen carries the kit's sources as package
data (pyxen/guests, which in the checkout is a symlink to guests/); site-packages may be
read-only for the user, so the sources are copied to $XDG_CACHE_HOME/pyxen/guests (default
~/.cache/pyxen/guests) and built there.
"""

from __future__ import annotations

import fcntl
import os
import shlex
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path

from pyxen.cache import user_cache

# The top of the source tree this module sits in, if it sits in one (src/pyxen/toolstack/).
CHECKOUT = Path(__file__).resolve().parents[3]


class GuestKitError(RuntimeError):
    """The kit cannot be built here; the message is one line saying what to install."""


def checkout_kit() -> Path | None:
    """guests/ of the source checkout pyxen runs from, or None for an installed pyxen."""
    kit = CHECKOUT / "guests"
    if (CHECKOUT / "pyproject.toml").is_file() and (kit / "Makefile").is_file():
        return kit
    return None


def shipped_kit() -> Traversable:
    """The kit's sources inside the installed package."""
    return resources.files("pyxen") / "guests"


def cache_kit() -> Path:
    """Where an installed pyxen builds the kit: the user's cache."""
    return user_cache() / "guests"


def _files(node: Traversable, rel: Path = Path()) -> Iterator[tuple[Path, Traversable]]:
    for child in node.iterdir():
        if child.is_dir():
            if child.name not in ("build", "__pycache__"):
                yield from _files(child, rel / child.name)
        else:
            yield rel / child.name, child


def sync(source: Traversable, dest: Path) -> None:
    """Copy the kit's sources to dest, rewriting only files whose content changed.

    Unchanged files keep their mtime, so make rebuilds only what an upgrade of pyxen changed.
    """
    for rel, src in _files(source):
        data = src.read_bytes()
        target = dest / rel
        try:
            if target.read_bytes() == data:
                continue
        except FileNotFoundError:
            target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(target.name + ".tmp")
        tmp.write_bytes(data)
        os.replace(tmp, target)


def check_toolchain() -> None:
    """Raise GuestKitError naming the missing tool or header before make fails obscurely."""
    cc = shlex.split(os.environ.get("CC", "gcc"))[:1] or ["gcc"]
    for tool, package in (("make", "make"), (cc[0], "gcc")):
        if not shutil.which(tool):
            raise GuestKitError(f"`{tool}` is needed to build the guest kit: "
                                f"install it (apt-get install {package})")
    header = Path(os.environ.get("XEN_INC", "/usr/include/xen")) / "xen.h"
    if not header.is_file():
        raise GuestKitError(f"the Xen public headers are missing ({header}): "
                            "install libxen-dev (apt-get install libxen-dev)")


@contextmanager
def _locked(kit: Path) -> Iterator[None]:
    """Serialise copying and building in the shared cache between pyxen processes."""
    kit.parent.mkdir(parents=True, exist_ok=True)
    with open(kit.parent / "guests.lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        yield


def _make(kit: Path, target: str) -> None:
    done = subprocess.run(["make", "-s", "-C", str(kit), target], capture_output=True, text=True)
    if done.returncode:
        raise GuestKitError(f"building {kit / target} failed:\n{done.stdout}{done.stderr}")


def guest_image(name: str) -> Path:
    """The kit's build/NAME.elf, built with make if it is missing or stale."""
    check_toolchain()
    target = f"build/{name}.elf"
    kit = checkout_kit()
    if kit is not None:
        _make(kit, target)
        return kit / target
    source = shipped_kit()
    if not source.joinpath("Makefile").is_file():
        raise GuestKitError(f"the guest kit's sources are not in this installation ({source})")
    kit = cache_kit()
    with _locked(kit):
        sync(source, kit)
        _make(kit, target)
    return kit / target
