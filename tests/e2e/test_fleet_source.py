"""A gateway's view of the fleet store (FleetSource) against a real etcd: start, watch, the
local snapshot when etcd is gone, reconnection, compaction, status on a lease."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import TypeVar

import pytest

from op25b_ctl.errors import StoreUnavailable, StoreUsageError
from op25b_ctl.policy.loader import read_policy_files
from op25b_ctl.source.etcd import EtcdStore, Scope, parse_store_url
from op25b_ctl.source.fleet import SNAPSHOT_FILE, FleetSource
from op25b_lab.etcd import EtcdServer
from op25b_lab.lab import wait_for
from tests.daemonpolicy import EAST1, EAST2, WEST1
from tests.fleetpolicy import fleet_policy

T = TypeVar("T")


def rollback(pool: str) -> dict[str, str]:
    now = datetime.now(UTC).isoformat()
    return {"pool": pool, "action": "rollback", "reason": "t", "user": "u", "set_at": now}


@pytest.fixture
def store(etcd: EtcdServer, tmp_path: Path) -> EtcdStore:
    s = EtcdStore(parse_store_url(etcd.store_url))
    files = read_policy_files(fleet_policy(tmp_path / "policy"))
    s.publish(files, {}, base=None, meta={}, now=datetime.now(UTC))
    return s


@pytest.fixture
def sources(store: EtcdStore, tmp_path: Path) -> Iterator[Callable[[str], FleetSource]]:
    made: list[FleetSource] = []

    def make(gateway: str) -> FleetSource:
        src = FleetSource(EtcdStore(store.config, timeout=2.0), gateway, tmp_path / gateway)
        made.append(src)
        return src

    yield make
    for src in made:
        src.stop()


def test_each_gateway_sees_its_pools_and_the_overrides_that_reach_it(
    store: EtcdStore, sources: Callable[[str], FleetSource]
) -> None:
    east1, west1 = sources("bras-east-1"), sources("bras-west-1")
    east1.start()
    west1.start()
    assert [p.name for p in east1.load().policy.pools] == [EAST1, EAST2]
    assert [p.name for p in west1.load().policy.pools] == [EAST1, WEST1]
    since = east1.revision()
    store.set_override(EAST1, Scope("group", "west"), rollback(EAST1), None)
    assert wait_for("west sees it", lambda: EAST1 in west1.load().overrides)
    assert east1.wait(since, 5.0)  # every gateway follows config/; the override is not its
    assert EAST1 not in east1.load().overrides
    # the gateway's own key outranks the group's
    enforce = {**rollback(EAST1), "action": "enforce"}
    store.set_override(EAST1, Scope("gateway", "bras-west-1"), enforce, None)

    def own_key_wins() -> bool:
        o = west1.load().overrides.get(EAST1)
        return o is not None and o.action == "enforce"

    wait_for("the gateway's own key wins over its group's", own_key_wins)


def test_unknown_gateway_is_refused_at_start(sources: Callable[[str], FleetSource]) -> None:
    with pytest.raises(StoreUsageError, match="bras-nowhere.*not in gateways.yaml"):
        sources("bras-nowhere").start(watch=False)


def test_watch_wakes_the_daemon_and_keeps_a_local_snapshot(
    store: EtcdStore, sources: Callable[[str], FleetSource], tmp_path: Path
) -> None:
    src = sources("bras-east-1")
    src.start()
    since = src.revision()
    store.set_override(EAST1, Scope(), rollback(EAST1), None)
    assert src.wait(since, 5.0), "the watch must wake the waiter"
    assert EAST1 in src.load().overrides
    snap = json.loads((tmp_path / "bras-east-1" / SNAPSHOT_FILE).read_text())
    assert snap["revision"] == src.revision() and snap["gateway"] == "bras-east-1"
    assert any("/config/overrides/" in k for k in snap["values"])


def test_the_status_says_watching_only_once_etcd_confirmed_the_watch(
    store: EtcdStore, sources: Callable[[str], FleetSource]
) -> None:
    """`fleet status` shows ok only for a gateway that follows the store now (issue 17)."""
    src = sources("bras-east-1")
    src.start(watch=False)
    src.report({"policy_revision": 1, "in_sync": True})
    assert store.statuses()["bras-east-1"]["watching"] is False  # synced, not yet following
    src.follow()
    wait_for("watching", lambda: store.statuses()["bras-east-1"].get("watching") is True)
    assert src.watching
    since = src.revision()
    store.set_override(EAST1, Scope(), rollback(EAST1), None)
    assert src.wait(since, 5.0)
    src.stop()  # a stopped daemon applies nothing: its key goes (no `ok` for 15 s)
    assert "bras-east-1" not in store.statuses()


def test_store_down_then_back(
    etcd: EtcdServer, store: EtcdStore, sources: Callable[[str], FleetSource], tmp_path: Path
) -> None:
    src = sources("bras-east-1")
    src.start()
    src.report({"policy_revision": 1})
    wait_for("status key", lambda: "bras-east-1" in store.statuses())
    etcd.kill()
    wait_for("disconnected", lambda: not src.connected, deadline=15)
    assert not src.watching
    assert EAST1 in [p.name for p in src.load().policy.pools]  # still answers from memory
    # a second daemon starting now enforces the local snapshot
    again = FleetSource(
        EtcdStore(store.config, timeout=1.0), "bras-east-1", tmp_path / "bras-east-1"
    )
    again.start(watch=False)
    assert not again.connected and again.revision() == src.revision()
    # with neither store nor snapshot: a clear error
    with pytest.raises(StoreUnavailable, match="no local snapshot"):
        FleetSource(EtcdStore(store.config, timeout=1.0), "bras-east-1", tmp_path / "empty").start(
            watch=False
        )
    etcd.start()
    wait_for("reconnected", lambda: src.connected, deadline=20)
    since = src.revision()
    store.set_override(EAST1, Scope(), rollback(EAST1), None)
    assert src.wait(since, 10.0)
    wait_for("status back", lambda: "bras-east-1" in store.statuses(), deadline=20)


def test_compaction_forces_a_full_resync(
    store: EtcdStore, sources: Callable[[str], FleetSource]
) -> None:
    src = sources("bras-east-1")
    src.start(watch=False)
    # while the gateway is not watching: changes, then history compacted past its revision
    admin = EtcdStore(store.config)
    admin.set_override(EAST1, Scope(), rollback(EAST1), None)
    admin.set_override(EAST2, Scope(), rollback(EAST2), None)
    admin.set_override(EAST2, Scope(), None, None)
    admin.compact(admin.revision())
    src.follow()
    wait_for("resynced", lambda: src.resyncs >= 1 and EAST1 in src.load().overrides, deadline=20)
    assert EAST2 not in src.load().overrides
