"""The validated-policy cache: used only for the exact files, code and user that made it."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

import netaddr
import pytest

from op25b_ctl.errors import PolicyError
from op25b_ctl.policy import cache
from op25b_ctl.policy.loader import load_policy, policy_digest
from op25b_ctl.policy.model import address_net, parse_net

EXAMPLE = Path(__file__).resolve().parents[2] / "policies" / "nmtnet"


@pytest.fixture
def policy_dir(tmp_path: Path) -> Path:
    d = tmp_path / "policy"
    shutil.copytree(EXAMPLE, d)
    return d


@pytest.fixture
def where(tmp_path: Path) -> Path:
    return tmp_path / "cache"


def _entry(policy_dir: Path, where: Path) -> Path:
    return cache.entry_path(policy_dir, where)


def _parts(path: Path) -> tuple[dict[str, Any], dict[str, Any], bytes]:
    """An entry's header, each file's model (by file name) and the packed pool index."""
    header, *lines, index = path.read_bytes().partition(b"\n")[2].split(b"\n")
    head = json.loads(header)
    return head, dict(zip(sorted(head["files"]), map(json.loads, lines), strict=True)), index


def _reseal(path: Path, edit: object) -> None:
    """Rewrite an entry with `edit(header, models)` applied and a correct seal, as a forger
    would."""
    head, models, index = _parts(path)
    assert callable(edit)
    edit(head, models)
    lines = [json.dumps(models[name]).encode() for name in sorted(head["files"])]
    text = b"\n".join([json.dumps(head).encode(), *lines, index])
    path.write_bytes(hashlib.sha256(text).hexdigest().encode() + b"\n" + text)


def _enforce_everything(head: dict[str, Any], models: dict[str, Any]) -> None:
    for pool in models["pools.yaml"]["pools"]:
        pool["mode"] = "enforce"


def test_a_hit_is_the_validated_policy(policy_dir: Path, where: Path) -> None:
    first = cache.load(policy_dir, where)
    assert first == load_policy(policy_dir)
    assert _entry(policy_dir, where).exists()
    hit = cache.lookup(policy_dir, policy_digest(policy_dir), where)
    assert hit is not None and hit == first
    assert hit.stages and hit.exemptions  # times came back as datetimes, not strings
    assert hit.stages[0].scheduled is None or hit.stages[0].scheduled.tzinfo is not None
    assert oct(_entry(policy_dir, where).stat().st_mode & 0o777) == "0o600"
    # the packed pool index came with it and answers as the parsed prefixes do
    assert "_pool_spans" in hit.__dict__ and hit.digest == policy_digest(policy_dir)
    fresh = load_policy(policy_dir)
    for pool in fresh.pools:
        for prefix in pool.prefixes:
            net = parse_net(prefix)
            for probe in (
                net,
                address_net(net.version, net.first),
                address_net(net.version, net.last),
            ):
                assert hit.pool_of(probe) == fresh.pool_of(probe) == pool
    for outside in ("203.0.113.1", "2001:db8:ffff::1", "0.0.0.0", "255.255.255.255"):
        addr = netaddr.IPAddress(outside)
        assert hit.pool_of(address_net(addr.version, int(addr))) is None


def test_a_damaged_pool_index_falls_back_to_the_prefixes(policy_dir: Path, where: Path) -> None:
    """The index is sealed with the rest; one that still does not unpack (other code) is
    rebuilt from the prefixes, never guessed from."""
    fresh = cache.load(policy_dir, where)
    path = _entry(policy_dir, where)
    body, _, _ = path.read_bytes().partition(b"\n")[2].rpartition(b"\n")
    text = body + b"\n" + json.dumps({"itemsize": "4", "v4_first": "not base64!"}).encode()
    path.write_bytes(hashlib.sha256(text).hexdigest().encode() + b"\n" + text)
    hit = cache.lookup(policy_dir, policy_digest(policy_dir), where)
    assert hit is not None
    for pool in fresh.pools:
        net = parse_net(pool.prefixes[0])
        assert hit.pool_of(net) == pool


@pytest.mark.parametrize(
    "damage",
    [
        lambda b: b[: len(b) // 2],  # truncated
        lambda b: b.replace(b'"enforce"', b'"off"', 1),  # one value changed, seal kept
        lambda b: b"0" * 64 + b"\n" + b.partition(b"\n")[2],  # seal replaced
        lambda b: b"not json at all",
        lambda b: b"",
    ],
    ids=["truncated", "body-edited", "bad-seal", "garbage", "empty"],
)
def test_a_corrupted_entry_is_ignored_and_replaced(
    policy_dir: Path, where: Path, damage: object
) -> None:
    good = cache.load(policy_dir, where)
    entry = _entry(policy_dir, where)
    assert callable(damage)
    entry.write_bytes(damage(entry.read_bytes()))
    assert cache.lookup(policy_dir, policy_digest(policy_dir), where) is None
    assert cache.load(policy_dir, where) == good
    assert cache.lookup(policy_dir, policy_digest(policy_dir), where) == good  # rewritten


def test_a_stale_entry_never_hides_an_edit(policy_dir: Path, where: Path) -> None:
    cache.load(policy_dir, where)
    pools = policy_dir / "pools.yaml"
    pools.write_text(pools.read_text().replace("prefixes: [", "prefixes: [198.51.100.7/24, ", 1))
    assert cache.lookup(policy_dir, policy_digest(policy_dir), where) is None
    with pytest.raises(PolicyError, match="host bits set"):
        cache.load(policy_dir, where)


def test_an_entry_from_other_code_or_another_directory_is_ignored(
    policy_dir: Path, where: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache.load(policy_dir, where)
    digest = policy_digest(policy_dir)
    monkeypatch.setattr(cache, "code_digest", lambda: "0" * 64)
    assert cache.lookup(policy_dir, digest, where) is None
    monkeypatch.undo()
    _reseal(_entry(policy_dir, where), lambda h, m: h.update(directory="/elsewhere"))
    assert cache.lookup(policy_dir, digest, where) is None


def test_a_resealed_forgery_for_other_files_is_ignored(policy_dir: Path, where: Path) -> None:
    """A well-formed entry whose digests are not the files' own (e.g. copied from another
    gateway) is a miss, whatever it says, and none of its files is taken."""
    cache.load(policy_dir, where)

    def other_files(head: dict[str, Any], models: dict[str, Any]) -> None:
        _enforce_everything(head, models)
        head.update(digest="x", files={name: "x" for name in head["files"]})

    _reseal(_entry(policy_dir, where), other_files)
    assert cache.lookup(policy_dir, policy_digest(policy_dir), where) is None
    assert cache.load(policy_dir, where) == load_policy(policy_dir)


@pytest.mark.parametrize("target", ["file", "directory"])
def test_an_entry_others_can_write_is_ignored(policy_dir: Path, where: Path, target: str) -> None:
    cache.load(policy_dir, where)
    entry = _entry(policy_dir, where)
    _reseal(entry, _enforce_everything)  # what a second user with write access could plant
    (entry if target == "file" else where).chmod(0o666 if target == "file" else 0o777)
    assert cache.lookup(policy_dir, policy_digest(policy_dir), where) is None
    assert all(p.mode != "enforce" or p.dynamic for p in cache.load(policy_dir, where).pools)
    assert cache.load(policy_dir, where) == load_policy(policy_dir)


def test_a_symlinked_entry_is_ignored(policy_dir: Path, where: Path, tmp_path: Path) -> None:
    cache.load(policy_dir, where)
    entry = _entry(policy_dir, where)
    elsewhere = tmp_path / "planted.json"
    entry.rename(elsewhere)
    entry.symlink_to(elsewhere)
    assert cache.lookup(policy_dir, policy_digest(policy_dir), where) is None


def test_an_entry_of_another_user_is_ignored(
    policy_dir: Path, where: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Seen by a reader with another uid: sealed, right digest, right mode, wrong owner.
    (tests/e2e/test_cache_owner.py does the same with a real chown, as root.)"""
    good = cache.load(policy_dir, where)
    _reseal(_entry(policy_dir, where), _enforce_everything)
    other = os.geteuid() + 1
    monkeypatch.setattr(os, "geteuid", lambda: other)
    assert cache.lookup(policy_dir, policy_digest(policy_dir), where) is None
    monkeypatch.undo()
    assert cache.lookup(policy_dir, policy_digest(policy_dir), where) is not None
    assert good is not None


def test_the_cache_directory_is_never_world_writable(policy_dir: Path, tmp_path: Path) -> None:
    deep = tmp_path / "a" / "b" / "cache"
    old = os.umask(0)
    try:
        cache.load(policy_dir, deep)
    finally:
        os.umask(old)
    for d in (tmp_path / "a", tmp_path / "a" / "b", deep):
        assert not d.stat().st_mode & 0o022, (d, oct(d.stat().st_mode))
    assert _entry(policy_dir, deep).exists()


def test_an_unwritable_cache_only_costs_speed(policy_dir: Path, tmp_path: Path) -> None:
    blocked = tmp_path / "not-a-dir"
    blocked.write_text("")
    assert cache.load(policy_dir, blocked) == load_policy(policy_dir)


def test_the_cache_can_be_switched_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(cache.ENV, "off")
    assert cache.cache_dir() is None
    monkeypatch.setenv(cache.ENV, "/somewhere")
    assert cache.cache_dir() == Path("/somewhere")


def test_the_daemons_loader_goes_through_the_disk_cache(
    policy_dir: Path, where: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A daemon restart with unchanged files must not re-validate: its first load writes
    (and a fresh process would read) the same entry the CLI uses."""
    monkeypatch.setenv(cache.ENV, str(where))
    monkeypatch.setattr(cache, "_loaded", [])
    policy = cache.load_policy_cached(policy_dir)
    assert cache.lookup(policy_dir.resolve(), policy_digest(policy_dir), where) == policy
