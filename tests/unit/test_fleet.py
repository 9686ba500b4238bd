"""Fleet pieces without a store: URLs, key layout, gateways.yaml, per-gateway policies, rows."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import yaml

from op25b_ctl.cli.fleet import fleet_rows, reached
from op25b_ctl.errors import PolicyError, StoreUsageError
from op25b_ctl.plan.modes import decide, modes
from op25b_ctl.policy.loader import load_policy
from op25b_ctl.source.etcd import (
    Keys,
    Published,
    Scope,
    StoreSnapshot,
    files_digest,
    parse_store_url,
)
from tests.daemonpolicy import EAST1, EAST2, WEST1
from tests.fleetpolicy import fleet_policy

T0 = datetime(2011, 1, 10, tzinfo=UTC)


def test_store_url_forms() -> None:
    cfg = parse_store_url("etcd://10.0.0.1:2379,etcd-2,[2001:db8::1]:2380/op25b/")
    assert cfg.endpoints == (("10.0.0.1", 2379), ("etcd-2", 2379), ("2001:db8::1", 2380))
    assert cfg.prefix == "/op25b" and not cfg.tls
    assert cfg.url == "etcd://10.0.0.1:2379,etcd-2:2379,[2001:db8::1]:2380/op25b"
    assert parse_store_url("etcds://h:1/p").tls


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("http://h:2379/op25b", "expected etcd://"),
        ("etcd://h:2379", "key prefix"),
        ("etcd://h:2379/", "key prefix"),
        ("etcd://h:99999/op25b", "no valid port"),
        ("etcd://h:1,,h:2/op25b", "empty endpoint"),
        ("etcd://u@h:1/op25b", "no user"),
    ],
)
def test_store_url_refused(url: str, why: str) -> None:
    with pytest.raises(StoreUsageError, match=why):
        parse_store_url(url)


def test_tls_files_must_exist_and_pair(tmp_path: Path) -> None:
    with pytest.raises(StoreUsageError, match="go together"):
        parse_store_url("etcd://h:1/p", cert=str(tmp_path / "c.pem"))
    with pytest.raises(StoreUsageError, match="no such file"):
        parse_store_url("etcd://h:1/p", cacert=str(tmp_path / "ca.pem"))
    ca = tmp_path / "ca.pem"
    ca.write_text("x")
    assert parse_store_url("etcd://h:1/p", cacert=str(ca)).tls  # a CA switches to https


def test_key_layout_and_scopes() -> None:
    keys = Keys("/op25b")
    assert keys.policy == "/op25b/config/policy"
    assert keys.override("p", Scope()) == "/op25b/config/overrides/p/all"
    assert keys.override("p", Scope("group", "east")) == "/op25b/config/overrides/p/group/east"
    assert keys.gateway_status("gw1") == "/op25b/status/gw1"
    assert keys.audit_entry(T0).startswith("/op25b/audit/20110110T000000")
    for scope in (Scope(), Scope("group", "e"), Scope("gateway", "g")):
        assert Scope.from_key(scope.key) == scope
    assert Scope.from_key("bogus/x") is None
    assert Scope("group", "east").reaches("gw", "east")
    assert not Scope("gateway", "a").reaches("b", "east")


def test_snapshot_reads_overrides_and_survives_json(tmp_path: Path) -> None:
    keys = Keys("/f")
    pub = Published(3, files_digest({"a": "b"}), {"a": "b"}, {"reason": "r"})
    import json

    snap = StoreSnapshot(
        9,
        {
            keys.policy: json.dumps(pub.to_json()).encode(),
            keys.override(EAST1, Scope("group", "east")): b'{"action": "rollback"}',
            keys.overrides + "junk": b"{}",
        },
    )
    again = StoreSnapshot.from_json(json.loads(json.dumps(snap.to_json())))
    assert again == snap
    published = again.published(keys)
    assert published is not None and published.revision == 3 and published.files == {"a": "b"}
    assert again.overrides(keys) == [
        (Scope("group", "east"), {"action": "rollback", "pool": EAST1})
    ]


def test_gateways_and_per_gateway_policy(tmp_path: Path) -> None:
    policy = load_policy(fleet_policy(tmp_path / "p", east_stage_at=T0))
    assert policy.groups() == ["east", "west"]
    assert reached(policy, EAST1, Scope()) == ["bras-east-1", "bras-east-2", "bras-west-1"]
    assert reached(policy, WEST1, Scope("group", "east")) == ["bras-east-2"]
    east2 = policy.for_gateway("bras-east-2")
    west1 = policy.for_gateway("bras-west-1")
    assert [p.name for p in east2.pools] == [EAST1, WEST1]
    assert [p.name for p in policy.for_gateway("bras-east-1").pools] == [EAST1, EAST2]
    # the east stage: on an east gateway it fires, on the west one it is not there at all
    after = T0 + timedelta(minutes=1)
    assert modes(decide(east2, after))[WEST1] == "enforce"
    assert modes(decide(west1, after))[WEST1] == "monitor"
    assert west1.stages == ()
    # without a gateway identity, a group stage never fires
    assert modes(decide(policy, after))[WEST1] == "monitor"
    with pytest.raises(KeyError, match="not in gateways.yaml"):
        policy.for_gateway("bras-nowhere")


def test_gateways_yaml_is_validated(tmp_path: Path) -> None:
    d = fleet_policy(tmp_path / "p", east_stage_at=T0)
    (d / "gateways.yaml").write_text(
        yaml.safe_dump(
            {
                "gateways": [
                    {"name": "a", "group": "east", "pools": ["nope"]},
                    {"name": "a", "tags": ["no-tag"]},
                    {"name": "b"},
                ]
            }
        )
    )
    with pytest.raises(PolicyError) as err:
        load_policy(d)
    text = str(err.value)
    assert "gateways.yaml:5: gateways[0].pools[0]: unknown pool 'nope'" in text
    assert "duplicate gateway name 'a'" in text
    assert "no pool has tag 'no-tag'" in text
    assert "gateway carries no pools" in text


def test_stage_groups_must_exist_and_backwards_is_judged_per_group(tmp_path: Path) -> None:
    d = fleet_policy(tmp_path / "p")
    stages = [
        {"name": "east-on", "at": "2011-01-10T00:00:00+09:00", "mode": "enforce",
         "pools": [EAST2], "groups": ["east"]},
        # monitor after enforce, but in another group: not a step backwards on any gateway
        {"name": "west-mon", "at": "2011-01-11T00:00:00+09:00", "mode": "monitor",
         "pools": [EAST2], "groups": ["west"]},
    ]  # fmt: skip
    (d / "rollout.yaml").write_text(yaml.safe_dump({"stages": stages}))
    load_policy(d)
    stages[1]["groups"] = ["east"]
    stages.append(
        {"name": "x", "at": "2011-01-12T00:00:00+09:00", "mode": "enforce", "pools": [EAST2],
         "groups": ["north"]}
    )  # fmt: skip
    (d / "rollout.yaml").write_text(yaml.safe_dump({"stages": stages}))
    with pytest.raises(PolicyError) as err:
        load_policy(d)
    text = str(err.value)
    assert "backwards (enforce -> monitor) in group 'east'" in text
    assert "no gateway in gateways.yaml is in group 'north'" in text


def test_fleet_rows_mark_laggards_and_missing(tmp_path: Path) -> None:
    policy = load_policy(fleet_policy(tmp_path / "p"))
    published = Published(5, "d", {})
    now = datetime(2026, 1, 1, tzinfo=UTC)
    fresh = now.isoformat()
    rows = fleet_rows(
        published,
        policy,
        {
            "bras-east-1": {"policy_revision": 5, "store_revision": 40, "reported_at": fresh},
            "bras-east-2": {"policy_revision": 4, "store_revision": 30, "reported_at": fresh},
            "stray": {"policy_revision": 5, "store_revision": 40, "reported_at": fresh},
        },
        40,
        now,
    )
    state = {r["gateway"]: (r["state"], r.get("lag")) for r in rows}
    assert state == {
        "bras-east-1": ("ok", 0),
        "bras-east-2": ("LAGGING", 1),
        "bras-west-1": ("MISSING", None),
        "stray": ("STALE", 0),
    }
    # bras-west-1 never ran: no key is all the store knows, so no talk of a lost lease
    (missing,) = [r for r in rows if r["state"] == "MISSING"]
    assert missing["problems"] == ["never reported, or its daemon is down (no live status key)"]


def test_ok_needs_the_gateways_watch_open(tmp_path: Path) -> None:
    """A gateway that applied the start-up sync but whose watch etcd has not confirmed yet
    is STARTING, not ok: a change made now waits until the watch is open (issue 17)."""
    policy = load_policy(fleet_policy(tmp_path / "p"))
    now = datetime(2026, 1, 1, tzinfo=UTC)
    applied = {"policy_revision": 5, "store_revision": 40, "reported_at": now.isoformat()}
    rows = fleet_rows(
        Published(5, "d", {}),
        policy,
        {
            "bras-east-1": {**applied, "watching": True},
            "bras-east-2": {**applied, "watching": False},
            "bras-west-1": {**applied, "watching": False, "last_error": "nft refused"},
        },
        40,
        now,
    )
    state = {r["gateway"]: r["state"] for r in rows}
    assert state == {"bras-east-1": "ok", "bras-east-2": "STARTING", "bras-west-1": "ERROR"}
    starting = next(r for r in rows if r["gateway"] == "bras-east-2")
    assert starting["problems"] == ["watch on the store not open yet: changes wait until it is"]


def test_policy_cache_keeps_gateways_and_stage_groups(tmp_path: Path) -> None:
    from op25b_ctl.policy import cache

    d = fleet_policy(tmp_path / "p", east_stage_at=T0)
    where = tmp_path / "cache"
    first = cache.load(d, where)
    again = cache.load(d, where)  # from the cache entry
    assert again.gateways == first.gateways and len(again.gateways) == 3
    assert again.stages[0].groups == ["east"]


def test_the_narrowest_override_reaches_each_gateway() -> None:
    from op25b_ctl.source.fleet import gateway_overrides

    def rec(action: str) -> dict[str, str]:
        return {"pool": EAST1, "action": action, "reason": "r", "set_at": T0.isoformat()}

    records = [
        (Scope(), rec("rollback")),
        (Scope("group", "east"), rec("monitor")),
        (Scope("gateway", "bras-east-2"), rec("enforce")),
        (Scope("group", "west"), {"pool": EAST1, "action": "bogus"}),  # malformed: ignored
    ]
    mode = {
        gw: gateway_overrides(records, gw, group)[EAST1].action
        for gw, group in (("bras-east-1", "east"), ("bras-east-2", "east"), ("bras-west-1", "west"))
    }
    assert mode == {"bras-east-1": "monitor", "bras-east-2": "enforce", "bras-west-1": "rollback"}
    assert gateway_overrides(records[2:3], "bras-west-1", "west") == {}


def test_validate_lists_the_gateways(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import json

    from op25b_ctl.cli.main import main

    d = fleet_policy(tmp_path / "p")
    assert main(["validate", "--policy", str(d), "-o", "json"]) == 0
    gateways = json.loads(capsys.readouterr().out)["gateways"]
    assert gateways[1] == {"name": "bras-east-2", "group": "east", "pools": [EAST1, WEST1]}
    assert main(["validate", "--policy", str(d)]) == 0
    assert "3 gateways in 2 group(s)" in capsys.readouterr().out
