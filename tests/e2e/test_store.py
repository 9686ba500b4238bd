"""The fleet store against a real etcd (Debian's etcd-server on loopback; no root needed):
publish, its guard, fleet overrides, the audit trail, watches, compaction, status leases."""

from __future__ import annotations

import json
import threading
from collections.abc import Generator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from op25b_ctl.cli.main import main
from op25b_ctl.errors import Compacted, ConcurrentPublish, StoreUnavailable
from op25b_ctl.policy.loader import read_policy_files
from op25b_ctl.source.etcd import (
    EtcdStore,
    Event,
    Scope,
    parse_store_url,
)
from op25b_lab.etcd import EtcdServer
from tests.daemonpolicy import EAST1, WEST1, break_prefix, set_mode
from tests.fleetpolicy import fleet_policy


def ctl(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def store_of(server: EtcdServer) -> EtcdStore:
    return EtcdStore(parse_store_url(server.store_url))


@pytest.fixture
def policy(tmp_path: Path) -> Path:
    return fleet_policy(tmp_path / "policy")


def test_publish_numbers_revisions_and_audits(
    etcd: EtcdServer, policy: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store = store_of(etcd)
    code, out, err = ctl(
        capsys, "publish", "--policy", str(policy), "--store", etcd.store_url, "-o", "json"
    )
    assert code == 0, err
    first = json.loads(out)
    assert first["published"] is True and first["revision"] == 1
    published = store.published()
    assert published is not None and published.files == read_policy_files(policy)
    # the same files again: nothing written, the revision stays
    before = store.revision()
    code, out, _ = ctl(capsys, "publish", "--policy", str(policy), "--store", etcd.store_url)
    assert code == 0 and "already published as revision 1" in out
    assert store.revision() == before
    set_mode(policy, EAST1, "monitor")
    code, out, _ = ctl(
        capsys,
        "publish", "--policy", str(policy), "--store", etcd.store_url, "--reason", "CHG-1",
        "-o", "json",
    )  # fmt: skip
    assert code == 0 and json.loads(out)["revision"] == 2
    entries = store.audit()
    assert [e["action"] for e in entries] == ["publish", "publish"]
    assert entries[1]["policy_revision"] == 2 and entries[1]["reason"] == "CHG-1"
    assert entries[1]["host"] and entries[1]["user"]


def test_bad_policy_is_refused_before_anything_is_written(
    etcd: EtcdServer, policy: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store = store_of(etcd)
    break_prefix(policy)
    before = store.revision()
    code, _, err = ctl(capsys, "publish", "--policy", str(policy), "--store", etcd.store_url)
    assert code == 2
    assert "pools.yaml" in err and "host bits" in err
    assert store.revision() == before and store.published() is None


def test_concurrent_publish_is_refused(
    etcd: EtcdServer, policy: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store = store_of(etcd)
    assert ctl(capsys, "publish", "--policy", str(policy), "--store", etcd.store_url)[0] == 0
    # two engineers read revision 1; the first one's publish wins, the second is refused
    base = store.published()
    files = read_policy_files(policy)
    now = datetime.now(UTC)
    store.publish(
        {**files, "relays.yaml": files["relays.yaml"] + "\n"}, {}, base=base, meta={}, now=now
    )
    with pytest.raises(ConcurrentPublish, match="changed since revision 1"):
        store.publish(files, {}, base=base, meta={}, now=now)
    published = store.published()
    assert published is not None and published.revision == 2
    # from the command line: reviewed against revision 1, the store is at 2
    set_mode(policy, EAST1, "monitor")
    code, _, err = ctl(
        capsys,
        "publish", "--policy", str(policy), "--store", etcd.store_url, "--base-revision", "1",
    )  # fmt: skip
    assert code == 2 and "store holds policy revision 2" in err and "nothing written" in err
    published = store.published()
    assert published is not None and published.revision == 2


def test_fleet_override_writes_one_key_and_is_audited(
    etcd: EtcdServer, policy: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store = store_of(etcd)
    assert ctl(capsys, "publish", "--policy", str(policy), "--store", etcd.store_url)[0] == 0
    before = store.snapshot()
    code, out, err = ctl(
        capsys,
        "pool", "rollback", EAST1, "--reason", "INC-4711 relay outage", "--until", "4h",
        "--store", etcd.store_url, "-o", "json",
    )  # fmt: skip
    assert code == 0, err
    data = json.loads(out)
    assert data["gateways"] == ["bras-east-1", "bras-east-2", "bras-west-1"]
    after = store.snapshot()
    new_keys = set(after.values) - set(before.values)
    assert new_keys == {store.keys.override(EAST1, Scope())}
    ((scope, record),) = after.overrides(store.keys)
    assert scope == Scope() and record["action"] == "rollback" and record["until"]
    # narrowed to a group, then to a gateway that does not carry the pool
    code, out, _ = ctl(
        capsys,
        "pool", "monitor", WEST1, "--reason", "test", "--group", "east",
        "--store", etcd.store_url, "-o", "json",
    )  # fmt: skip
    assert code == 0 and json.loads(out)["gateways"] == ["bras-east-2"]
    code, _, err = ctl(
        capsys,
        "pool", "monitor", WEST1, "--reason", "x", "--gateway", "bras-east-1",
        "--store", etcd.store_url,
    )  # fmt: skip
    assert code == 2 and "does not carry pool" in err
    code, _, err = ctl(
        capsys,
        "pool", "monitor", WEST1, "--reason", "x", "--gateway", "bras-nowhere",
        "--store", etcd.store_url,
    )  # fmt: skip
    assert code == 2 and "not in gateways.yaml" in err
    code, _, _ = ctl(capsys, "pool", "clear", EAST1, "--reason", "fixed", "--store", etcd.store_url)
    assert code == 0
    assert store.keys.override(EAST1, Scope()) not in store.snapshot().values
    code, out, _ = ctl(capsys, "audit", "--store", etcd.store_url, "-o", "json")
    actions = [(e["action"], e.get("pool"), e.get("scope")) for e in json.loads(out)["entries"]]
    assert actions[1:] == [
        ("pool rollback", EAST1, "all"),
        ("pool monitor", WEST1, "group/east"),
        ("pool clear", EAST1, "all"),
    ]
    last = json.loads(out)["entries"][-1]
    assert last["reason"] == "fixed" and last["host"] and last["policy_revision"] == 1


def test_watch_resumes_from_a_revision_and_reports_compaction(
    etcd: EtcdServer, policy: Path
) -> None:
    store = store_of(etcd)
    files = read_policy_files(policy)
    now = datetime.now(UTC)
    first = store.publish(files, {}, base=None, meta={}, now=now)
    store.set_override(EAST1, Scope(), {"action": "rollback"}, {}, now)
    # from the first publish's revision: both changes replayed, in order
    batches: list[list[Event]] = []
    closer: list[object] = []
    stream = store.watch(first.mod_revision, on_open=closer.append)
    assert isinstance(stream, Generator)  # closing it ends the watch
    for batch in stream:
        batches.append(batch)
        if any(e.key == store.keys.override(EAST1, Scope()) for e in batch):
            break
    keys = [e.key for b in batches for e in b]
    assert keys.index(store.keys.policy) < keys.index(store.keys.override(EAST1, Scope()))
    stream.close()
    # history compacted past that revision: the watch must say so, not go quiet
    store.set_override(EAST1, Scope(), None, {}, now)
    store.compact(store.revision())
    with pytest.raises(Compacted):
        next(iter(store.watch(first.mod_revision)))


def test_watch_ends_when_etcd_dies(etcd: EtcdServer, policy: Path) -> None:
    store = store_of(etcd)
    rev = store.revision()
    failure: list[BaseException] = []

    def follow() -> None:
        try:
            for _ in store.watch(rev + 1):
                pass
        except StoreUnavailable as exc:
            failure.append(exc)

    reader = threading.Thread(target=follow)
    reader.start()
    store.publish(read_policy_files(policy), {}, base=None, meta={}, now=datetime.now(UTC))
    etcd.kill()
    reader.join(10)
    assert not reader.is_alive() and failure, "the watch must end, not hang, when etcd dies"
    with pytest.raises(StoreUnavailable, match="unreachable"):
        store.revision()


def test_status_on_a_lease_and_fleet_status(
    etcd: EtcdServer, policy: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store = store_of(etcd)
    assert ctl(capsys, "publish", "--policy", str(policy), "--store", etcd.store_url)[0] == 0
    lease = store.grant(30)
    store.put_status(
        "bras-east-1",
        {
            "gateway": "bras-east-1",
            "group": "east",
            "policy_revision": 1,
            "store_revision": store.config_revision(),
            "pools": {"enforce": 1, "monitor": 1},
            "blocked_packets": 7,
            "reported_at": datetime.now(UTC).isoformat(),
            "connected": True,
        },
        lease,
    )
    code, out, _ = ctl(capsys, "fleet", "status", "--store", etcd.store_url, "-o", "json")
    assert code == 4  # the store answered, but not every gateway is ok: scripts can tell
    rows = {r["gateway"]: r for r in json.loads(out)["gateways"]}
    assert rows["bras-east-1"]["state"] == "ok" and rows["bras-east-1"]["blocked_packets"] == 7
    assert rows["bras-east-2"]["state"] == rows["bras-west-1"]["state"] == "MISSING"
    code, out, _ = ctl(capsys, "fleet", "status", "--store", etcd.store_url)
    assert code == 4
    assert "\n!bras-west-1 " in out and "\nbras-east-1 " in out and "need attention" in out
    # every listed gateway reporting, in sync: exit 0
    others = store.grant(30)
    for name, group in (("bras-east-2", "east"), ("bras-west-1", "west")):
        store.put_status(
            name,
            {
                "gateway": name,
                "group": group,
                "policy_revision": 1,
                "store_revision": store.config_revision(),
                "pools": {"enforce": 1},
                "blocked_packets": 0,
                "reported_at": datetime.now(UTC).isoformat(),
                "connected": True,
            },
            others,
        )
    code, out, _ = ctl(capsys, "fleet", "status", "--store", etcd.store_url, "-o", "json")
    assert code == 0 and json.loads(out)["ok"] is True, out
    store.revoke(others)
    # a new publish the gateway has not applied: it lags by one revision
    set_mode(policy, EAST1, "monitor")
    assert ctl(capsys, "publish", "--policy", str(policy), "--store", etcd.store_url)[0] == 0
    code, out, _ = ctl(capsys, "fleet", "status", "--store", etcd.store_url, "-o", "json")
    rows = {r["gateway"]: r for r in json.loads(out)["gateways"]}
    assert rows["bras-east-1"]["state"] == "LAGGING" and rows["bras-east-1"]["lag"] == 1
    assert code == 4
    # its lease revoked (a dead gateway's lease expires the same way): missing
    store.revoke(lease)
    assert "bras-east-1" not in store.statuses()


def test_store_url_errors_are_usage_errors(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = ctl(capsys, "fleet", "status", "--store", "http://127.0.0.1:2379/x")
    assert code == 2 and "etcd://HOST:PORT" in err
    code, _, err = ctl(capsys, "fleet", "status", "--store", "etcd://127.0.0.1:1/op25b")
    assert code == 1 and "unreachable" in err


def test_tls_with_client_certificates(
    policy: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """etcd with --client-cert-auth: the etcdctl-named flags (and variables) get through;
    without a client certificate, or without the CA, nothing is written."""
    with EtcdServer(prefix="/op25b-tls", tls=True) as server:
        assert server.tls is not None
        tls = server.tls
        flags = [
            "--cacert",
            str(tls.ca),
            "--cert",
            str(tls.client_cert),
            "--key",
            str(tls.client_key),
        ]
        code, out, err = ctl(
            capsys, "publish", "--policy", str(policy), "--store", server.store_url, *flags,
            "-o", "json",
        )  # fmt: skip
        assert code == 0, err
        assert json.loads(out)["revision"] == 1
        # the same through etcdctl's environment variables
        monkeypatch.setenv("ETCDCTL_CACERT", str(tls.ca))
        monkeypatch.setenv("ETCDCTL_CERT", str(tls.client_cert))
        monkeypatch.setenv("ETCDCTL_KEY", str(tls.client_key))
        code, out, err = ctl(capsys, "fleet", "status", "--store", server.store_url, "-o", "json")
        # the store answered over TLS (no gateway reports here: exit 4, not all ok)
        assert code == 4 and json.loads(out)["policy_revision"] == 1, err
        # no client certificate: refused by etcd, reported, nothing written
        for name in ("ETCDCTL_CERT", "ETCDCTL_KEY"):
            monkeypatch.delenv(name)
        set_mode(policy, EAST1, "monitor")
        code, _, err = ctl(capsys, "publish", "--policy", str(policy), "--store", server.store_url)
        assert code == 1 and "unreachable" in err
        # no CA: etcd's certificate is not trusted
        monkeypatch.delenv("ETCDCTL_CACERT")
        code, _, err = ctl(
            capsys, "publish", "--policy", str(policy), "--store", server.store_url,
            "--cert", str(tls.client_cert), "--key", str(tls.client_key),
        )  # fmt: skip
        assert code == 1 and "unreachable" in err
        store = EtcdStore(parse_store_url(server.store_url, cacert=str(tls.ca), cert=str(tls.client_cert), key=str(tls.client_key)))  # fmt: skip
        published = store.published()
        assert published is not None and published.revision == 1


def test_fleet_exemptions_are_checked_and_audited(
    etcd: EtcdServer, policy: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store = store_of(etcd)
    assert ctl(capsys, "publish", "--policy", str(policy), "--store", etcd.store_url)[0] == 0
    base = ["--store", etcd.store_url]
    code, out, err = ctl(
        capsys, "exempt", "add", "192.0.2.10/32", "--ticket", "OPT-1", "--reason", "opt-out",
        "--until", "30d", *base, "-o", "json",
    )  # fmt: skip
    assert code == 0, err
    data = json.loads(out)
    assert data["gateways"] == ["bras-east-1", "bras-east-2", "bras-west-1"]
    assert data["exemption"]["pool"] == EAST1
    assert [r["ticket"] for r in store.snapshot().exemptions(store.keys)] == ["OPT-1"]
    # refused like exemptions.yaml: overlapping, outside every pool, a whole pool prefix
    for prefix, why in (
        ("192.0.2.8/29", "overlaps"),
        ("203.0.113.5/32", "not inside any subscriber pool"),
        ("192.0.2.0/26", "the whole of a prefix"),
    ):
        code, _, err = ctl(
            capsys, "exempt", "add", prefix, "--ticket", "OPT-2", "--reason", "x", *base
        )
        assert code == 2 and why in err, err
    code, _, err = ctl(capsys, "exempt", "remove", "OPT-9", "--reason", "x", *base)
    assert code == 2 and "no fleet exemption" in err
    assert ctl(capsys, "exempt", "remove", "OPT-1", "--reason", "closed", *base)[0] == 0
    assert store.snapshot().exemptions(store.keys) == []
    actions = [e["action"] for e in store.audit()]
    assert actions == ["publish", "exempt add", "exempt remove"]


def test_store_commands_need_no_state_dir(
    etcd: EtcdServer, policy: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The engineers' --store commands work on the store alone (as docs/fleet.md and --help
    say): a --state-dir that could not even be created is never touched."""
    nowhere = tmp_path / "not-a-dir"
    nowhere.write_text("a file: no state directory can be made here\n")
    state = ["--state-dir", str(nowhere / "state"), "--store", etcd.store_url]
    for argv in (
        ["publish", "--policy", str(policy)],
        ["pool", "rollback", EAST1, "--reason", "INC-1", "--until", "1h"],
        ["exempt", "list"],
        ["audit"],
        ["pool", "clear", EAST1, "--reason", "INC-1 done"],
    ):
        code, _, err = ctl(capsys, *argv, *state)
        assert code == 0, (argv, err)
    code, _, err = ctl(capsys, "fleet", "status", *state)
    assert code == 4, err  # nobody reports: not all ok, but it ran
    assert nowhere.read_text() == "a file: no state directory can be made here\n"
