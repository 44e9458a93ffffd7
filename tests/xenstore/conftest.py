"""Fixtures: an in-process XenStored with dom0/domU clients, and a real daemon process."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from pyxen.xenstore import Client, XenStored

from .helpers import start_daemon


@pytest.fixture
def xsd() -> XenStored:
    return XenStored()


@pytest.fixture
def dom0(xsd: XenStored) -> Iterator[Client]:
    client = Client.in_process(xsd, 0)
    yield client
    client.close()


@pytest.fixture
def domu(xsd: XenStored, dom0: Client) -> Callable[[int], Client]:
    """domu(N): a client of domain N, with /local/domain/N owned by it, as a toolstack sets up."""

    def make(domid: int) -> Client:
        home = f"/local/domain/{domid}"
        dom0.mkdir(home)
        dom0.set_perms(home, [f"n{domid}"])
        dom0.introduce(domid, 1000 + domid, 1)
        return Client.in_process(xsd, domid)

    return make


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[str]:
    """A real `pyxen xenstored` process; yields its socket path."""
    sock = str(tmp_path / "xs.sock")
    proc = start_daemon(sock)
    yield sock
    proc.terminate()
    proc.wait(timeout=120)


@pytest.fixture
def utils_env(daemon: str) -> dict[str, str]:
    return {**os.environ, "XENSTORED_PATH": daemon}
