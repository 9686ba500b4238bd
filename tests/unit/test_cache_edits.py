"""An edit of one policy file, validated from the cache (only that file read again, then every
cross-file check against the cached rest), is judged exactly as a full validation judges it:
the same policy when valid, the same errors (file:line) when not."""

from __future__ import annotations

import random
import tempfile
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from op25b_ctl.errors import PolicyError
from op25b_ctl.plan.ruleset import sets_key
from op25b_ctl.policy import cache, loader
from op25b_ctl.policy.model import Policy
from tests.policytools import example_policy

JST = timezone(timedelta(hours=9))
# /28 blocks of documentation space (v4) and /48s (v6): pools take whole blocks
V4 = [f"{net}.{i * 16}/28" for net in ("192.0.2", "198.51.100") for i in range(16)]
V6 = [f"2001:db8:{i:x}::/48" for i in range(1, 40)]
NAMES = ["east-1", "east-2", "west-1", "west-2", "kita", "minami", "static-1"]
TAGS = ["flets", "east", "west", "biz"]

Files = dict[str, Any]


def _sub(prefix: str, rng: random.Random, whole: float = 0.0) -> str:
    """A random part of a /28 or /48 (the whole of it with probability `whole`)."""
    if rng.random() < whole:
        return prefix
    if ":" in prefix:
        return f"{prefix.split('::')[0]}:{rng.randrange(1, 0xFFFF):x}::/64"
    net, last = prefix.split("/")[0].rsplit(".", 1)
    start = int(last) + 4 * rng.randrange(4)
    return rng.choice([f"{net}.{start}/30", f"{net}.{start}/32"])


def _time(rng: random.Random) -> datetime:
    return datetime(2011, 1, 1, tzinfo=JST) + timedelta(hours=rng.randrange(24 * 60))


def random_files(rng: random.Random) -> Files:
    """A policy as the data of its files: valid more often than not, not always."""
    blocks4, blocks6 = rng.sample(V4, 10), rng.sample(V6, 6)
    pools: list[dict[str, Any]] = []
    for i, name in enumerate(rng.sample(NAMES, rng.randint(2, 5))):
        dynamic = not name.startswith("static")
        prefixes = [blocks4[2 * i], *blocks6[i : i + rng.randint(0, 1)]]
        if rng.random() < 0.5:
            prefixes.append(blocks4[2 * i + 1])
        pools.append(
            {
                "name": name,
                "dynamic": dynamic,
                "mode": rng.choice(["off", "monitor"]) if dynamic else "off",
                "tags": rng.sample(TAGS, rng.randint(0, 2)),
                "prefixes": prefixes,
            }
        )
    dynamic_pools = [p for p in pools if p["dynamic"]]
    stages = []
    at = _time(rng)
    for k in range(rng.randint(0, 3)):
        stages.append(
            {
                "name": f"stage-{k}",
                "at": at,
                "mode": rng.choice(["monitor", "enforce"]),
                "pools": [p["name"] for p in rng.sample(dynamic_pools, 1)] if dynamic_pools else [],
                "tags": [],
            }
        )
        at += timedelta(days=rng.randint(0, 5))
    for stage in stages:
        if not stage["pools"]:
            stage["tags"] = ["flets"]
    exemptions = []
    for k, pool in enumerate(rng.sample(dynamic_pools, min(len(dynamic_pools), 2))):
        exemptions.append({"prefix": _sub(pool["prefixes"][0], rng), "ticket": f"T-{k}"})
    files: Files = {
        "gateway.yaml": {"gateway": {"action": rng.choice(["drop", "reject"])}},
        "pools.yaml": {"pools": pools},
        "relays.yaml": {"relays": [{"name": "relay", "addresses": ["203.0.113.25/32"]}]},
        "rollout.yaml": {"stages": stages},
        "exemptions.yaml": {"exemptions": exemptions},
    }
    if rng.random() < 0.3:
        files["gateways.yaml"] = {
            "gateways": [{"name": "bras-1", "group": "east", "pools": [pools[0]["name"]]}]
        }
    return files


def _pool_names(files: Files) -> list[str]:
    return [p["name"] for p in files["pools.yaml"]["pools"]]


def _edits(rng: random.Random, files: Files) -> list[tuple[str, Callable[[Any], None]]]:
    """One-file edits an engineer makes: (file, change of its data)."""
    names = _pool_names(files)
    all_prefixes = [x for p in files["pools.yaml"]["pools"] for x in p["prefixes"]]

    def move_date(d: Any) -> None:
        if d["stages"]:
            rng.choice(d["stages"])["at"] = rng.choice([_time(rng), "tbd"])

    def add_stage(d: Any) -> None:
        target = rng.choice([*names, "gone-pool"])
        d["stages"].append(
            {"name": f"stage-{rng.randrange(9)}", "at": _time(rng), "mode": "enforce",
             "pools": [target], "groups": rng.choice([[], ["east"], ["nowhere"]])}
        )  # fmt: skip

    def backwards(d: Any) -> None:
        if d["stages"]:
            rng.choice(d["stages"])["mode"] = "off"

    def add_exemption(d: Any) -> None:
        inside = _sub(rng.choice(all_prefixes), rng, whole=0.2)
        outside = _sub(rng.choice([x for x in V4 + V6 if x not in all_prefixes]), rng)
        d["exemptions"].append(
            {"prefix": rng.choice([inside, inside, outside]), "ticket": f"T-{rng.randrange(99)}"}
        )

    def drop_exemption(d: Any) -> None:
        if d["exemptions"]:
            d["exemptions"].pop(rng.randrange(len(d["exemptions"])))

    def remove_pool(d: Any) -> None:
        if len(d["pools"]) > 1:
            d["pools"].pop(rng.randrange(len(d["pools"])))

    def rename_pool(d: Any) -> None:
        rng.choice(d["pools"])["name"] = rng.choice(["renamed", *NAMES])

    def add_prefix(d: Any) -> None:
        rng.choice(d["pools"])["prefixes"].append(rng.choice(V4 + V6 + ["203.0.113.0/24"]))

    def retag(d: Any) -> None:
        rng.choice(d["pools"])["tags"] = rng.sample(TAGS, rng.randint(0, 2))

    def static(d: Any) -> None:
        rng.choice(d["pools"])["dynamic"] = rng.random() < 0.5

    def relay(d: Any) -> None:
        d["relays"][0]["addresses"] = [rng.choice(["203.0.113.26/32", _sub(all_prefixes[0], rng)])]

    def action(d: Any) -> None:
        d["gateway"]["action"] = rng.choice(["drop", "reject", "bounce"])

    def yaml_error(d: Any) -> None:
        d["__broken__"] = True

    return [
        ("rollout.yaml", move_date), ("rollout.yaml", add_stage), ("rollout.yaml", backwards),
        ("exemptions.yaml", add_exemption), ("exemptions.yaml", drop_exemption),
        ("pools.yaml", remove_pool), ("pools.yaml", rename_pool), ("pools.yaml", add_prefix),
        ("pools.yaml", retag), ("pools.yaml", static), ("relays.yaml", relay),
        ("gateway.yaml", action), (rng.choice(list(files)), yaml_error),
    ]  # fmt: skip


def write(directory: Path, files: Files) -> None:
    for name, data in files.items():
        if data.pop("__broken__", False):
            (directory / name).write_text("pools: [unclosed\n")
        else:
            (directory / name).write_text(yaml.safe_dump(data, sort_keys=False))


def _outcome(load: Callable[[], Policy | None]) -> tuple[str, Policy | None]:
    try:
        return "ok", load()
    except PolicyError as exc:
        return str(exc), None


class Parsed:
    """Which files a validation read and parsed (loader._Doc)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.names: list[str] = []
        real = loader._Doc

        def spy(name: str, text: str) -> Any:
            self.names.append(name)
            return real(name, text)

        monkeypatch.setattr(loader, "_Doc", spy)


@settings(
    max_examples=120,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(seed=st.integers(0, 2**32 - 1))
def test_an_edit_of_one_file_is_judged_as_a_full_validation_judges_it(
    seed: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    rng = random.Random(seed)
    files = random_files(rng)
    with tempfile.TemporaryDirectory() as tmp:
        directory, where = Path(tmp) / "policy", Path(tmp) / "cache"
        directory.mkdir()
        write(directory, {k: dict(v) for k, v in files.items()})
        before = _outcome(lambda: cache.load(directory, where))
        if before[1] is None:  # an invalid start: nothing cached, nothing to compare against
            return
        name, change = rng.choice(_edits(rng, files))
        old = (directory / name).read_text()
        data = yaml.safe_load(old)
        change(data)
        write(directory, {name: data})
        edited = (directory / name).read_text() != old
        parsed = Parsed(monkeypatch)
        got = _outcome(lambda: cache.load(directory, where))
        monkeypatch.undo()
        full = _outcome(lambda: loader.load_policy(directory))
        assert got[0] == full[0]  # "ok", or the very same errors, file:line and all
        assert got[1] == full[1]
        if got[1] is not None:
            assert parsed.names == ([name] if edited else [])  # only the edited file was read
            again = _outcome(
                lambda: cache.lookup(directory, loader.policy_digest(directory), where)
            )
            assert again[1] == full[1]  # and the entry now holds the edited policy


def test_a_stage_naming_a_pool_the_edit_removed_is_caught(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """pools.yaml edited, rollout.yaml not: the unchanged stage now names nothing."""
    directory, where = example_policy(tmp_path / "policy"), tmp_path / "cache"
    cache.load(directory, where)
    data = yaml.safe_load((directory / "pools.yaml").read_text())
    data["pools"] = [p for p in data["pools"] if p["name"] != "flets-east-dyn-1"]
    data_ex = yaml.safe_load((directory / "exemptions.yaml").read_text())
    (directory / "pools.yaml").write_text(yaml.safe_dump(data))
    with pytest.raises(PolicyError) as full:
        loader.load_policy(directory)
    with pytest.raises(PolicyError) as edited:
        cache.load(directory, where)
    assert str(edited.value) == str(full.value)
    assert "rollout.yaml:" in str(full.value) and "unknown pool 'flets-east-dyn-1'" in str(
        full.value
    )
    assert data_ex  # the exemptions inside that pool are reported too, as a full run does
    assert [p.line for p in edited.value.problems] == [p.line for p in full.value.problems]


def test_an_exemption_outside_every_pool_is_caught(tmp_path: Path) -> None:
    directory, where = example_policy(tmp_path / "policy"), tmp_path / "cache"
    cache.load(directory, where)
    path = directory / "exemptions.yaml"
    path.write_text(path.read_text() + "  - prefix: 203.0.113.128/30\n    ticket: NMT-2011-0099\n")
    with pytest.raises(PolicyError) as full:
        loader.load_policy(directory)
    with pytest.raises(PolicyError) as edited:
        cache.load(directory, where)
    assert str(edited.value) == str(full.value)
    assert "exemptions.yaml:" in str(full.value)
    assert "203.0.113.128/30 is not inside any subscriber pool" in str(full.value)


def test_a_relay_moved_into_a_pool_is_caught(tmp_path: Path) -> None:
    directory, where = example_policy(tmp_path / "policy"), tmp_path / "cache"
    good = cache.load(directory, where)
    inside = good.pools[0].prefixes[0].split("/")[0] + "/32"
    relays = yaml.safe_load((directory / "relays.yaml").read_text())
    relays["relays"][0]["addresses"] = [inside]
    (directory / "relays.yaml").write_text(yaml.safe_dump(relays))
    with pytest.raises(PolicyError) as full:
        loader.load_policy(directory)
    with pytest.raises(PolicyError) as edited:
        cache.load(directory, where)
    assert str(edited.value) == str(full.value)
    assert "lies inside subscriber pool" in str(full.value)


def test_moving_a_date_reads_only_rollout_yaml_and_keeps_the_sets_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The sets (110,000 elements at ISP scale) are built from pools.yaml and relays.yaml
    alone: a stage's new date must not make a command build and diff them again."""
    directory, where = example_policy(tmp_path / "policy"), tmp_path / "cache"
    first = cache.load(directory, where)
    path = directory / "rollout.yaml"
    path.write_text(path.read_text().replace("2011-01-17T10:00", "2011-01-18T10:00", 1))
    parsed = Parsed(monkeypatch)
    moved = cache.load(directory, where)
    assert parsed.names == ["rollout.yaml"]
    assert moved == loader.load_policy(directory) != first
    assert moved.digest != first.digest
    assert sets_key(moved) == sets_key(first)
    pools = directory / "pools.yaml"
    pools.write_text(pools.read_text() + "\n# a comment is an edit too\n")
    assert sets_key(cache.load(directory, where)) != sets_key(first)


def test_the_texts_digest_is_the_directorys(tmp_path: Path) -> None:
    directory = example_policy(tmp_path / "policy")
    texts = loader.read_policy_files(directory)
    assert loader.texts_digest(texts) == loader.policy_digest(directory)


def test_a_reload_after_moving_a_date_keeps_the_very_same_sets(tmp_path: Path) -> None:
    """The daemon reloads after an edit; with pools.yaml and relays.yaml unchanged its
    desired table holds the same set objects, which the diff skips without comparing."""
    from op25b_ctl.plan.ruleset import desired_table

    directory, where = example_policy(tmp_path / "policy"), tmp_path / "cache"
    first = cache.load(directory, where)
    path = directory / "rollout.yaml"
    path.write_text(path.read_text().replace("2011-01-17T10:00", "2011-01-18T10:00", 1))
    moved = cache.load(directory, where)
    assert moved is not first and moved.sets_digest == first.sets_digest
    a, b = desired_table(first, {}, ()), desired_table(moved, {}, ())
    filled = [name for name, s in a.sets.items() if not s.dynamic]
    assert filled and all(a.sets[name] is b.sets[name] for name in filled)
    assert a.sets == b.sets
    # the offender sets follow gateway.yaml, not pools.yaml: an edit there shows at once
    gateway = directory / "gateway.yaml"
    gateway.write_text(
        gateway.read_text().replace("  # offenders:", "  offenders:\n    retention: 1d\n  #", 1)
    )
    retimed = cache.load(directory, where)
    assert retimed.sets_digest == first.sets_digest
    d = desired_table(retimed, {}, ())
    assert all(d.sets[name] is a.sets[name] for name in filled)
    offender = [name for name, s in d.sets.items() if s.dynamic]
    assert offender and all(d.sets[name] != a.sets[name] for name in offender)
    pools = directory / "pools.yaml"
    pools.write_text(pools.read_text().replace("192.0.2.64/26", "192.0.2.64/27"))
    edited = cache.load(directory, where)
    c = desired_table(edited, {}, ())
    assert c.sets["pools_v4"] is not a.sets["pools_v4"]
    assert "192.0.2.64/27" in c.sets["pools_v4"].elements
