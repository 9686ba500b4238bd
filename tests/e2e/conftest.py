"""End-to-end fixtures: a throw-away lab gateway in network namespaces (root only)."""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import subprocess
from collections.abc import Callable, Iterator

import pytest

from op25b_lab.etcd import EtcdServer, etcd_binary
from op25b_lab.kea import KeaServer, dhclient_binary, kea_binary
from op25b_lab.lab import Lab


def lab_unavailable() -> str | None:
    """Why a lab cannot be built here, or None; a skip must say which prerequisite is missing."""
    if os.geteuid() != 0:
        return "needs root: the lab creates network namespaces"
    path = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])
    for tool in ("ip", "nft"):
        if shutil.which(tool, path=path) is None:
            return f"needs `{tool}` (iproute2 / nftables) installed"
    return None


@pytest.fixture
def make_lab() -> Iterator[Callable[[], Lab]]:
    """Build labs on demand (for tests that destroy one themselves); all are destroyed after."""
    reason = lab_unavailable()
    if reason:
        pytest.skip(reason)
    made: list[Lab] = []

    def make() -> Lab:
        made.append(Lab.create())
        return made[-1]

    yield make
    for lab in made:
        lab.destroy()


@pytest.fixture
def lab(make_lab: Callable[[], Lab]) -> Lab:
    """A fresh lab per test (~0.2 s to build), so no test sees another's rules or servers."""
    return make_lab()


@contextlib.contextmanager
def fresh_netns() -> Iterator[str]:
    """A fresh, empty network namespace, deleted by name afterwards."""
    name = f"op25b-t-{secrets.token_hex(4)}"
    subprocess.run(["ip", "netns", "add", name], check=True, capture_output=True)
    try:
        yield name
    finally:
        subprocess.run(["ip", "netns", "delete", name], check=False, capture_output=True)


@pytest.fixture
def netns() -> Iterator[str]:
    """A fresh, empty network namespace, deleted by name afterwards."""
    with fresh_netns() as name:
        yield name


@pytest.fixture
def second_netns() -> Iterator[str]:
    """Another one, for a test that compares two namespaces."""
    with fresh_netns() as name:
        yield name


@pytest.fixture
def etcd() -> Iterator[EtcdServer]:
    """A real etcd member on loopback with its own data directory, killed by pid after."""
    if etcd_binary() is None:
        pytest.fail("etcd missing: scripts/bootstrap installs etcd-server")
    server = EtcdServer(prefix=f"/op25b-{secrets.token_hex(3)}")
    try:
        yield server.start()
    finally:
        server.destroy()


@pytest.fixture
def kea(lab: Lab) -> Iterator[KeaServer]:
    """Debian's real kea-dhcp4 in the lab's gateway namespace, serving the subscriber link
    from a memfile in the lab's temp dir; the lab kills it by pid."""
    if kea_binary() is None or dhclient_binary() is None:
        pytest.fail("kea-dhcp4 or dhclient missing: scripts/bootstrap installs both")
    server = KeaServer.start(lab)
    try:
        yield server
    finally:
        server.stop()
