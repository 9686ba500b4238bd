"""Kea memfile lease files: columns by header, holdings over renewals, lookups by address or
prefix at a time, and clear errors naming the file and line."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from op25b_ctl.cli import leases as lease_columns
from op25b_ctl.cli.main import main
from op25b_ctl.errors import LeaseFileError
from op25b_ctl.kernel.memory import MemoryKernel
from op25b_ctl.plan.ruleset import offender_set
from op25b_ctl.source.leases import Leases, load_leases, parse_leases
from tests.policytools import EXAMPLE

V4_HEADER = (
    "address,hwaddr,client_id,valid_lifetime,expire,subnet_id,fqdn_fwd,fqdn_rev,hostname,"
    "state,user_context,pool_id"
)
V6_HEADER = (
    "address,duid,valid_lifetime,expire,subnet_id,pref_lifetime,lease_type,iaid,prefix_len,"
    "fqdn_fwd,fqdn_rev,hostname,hwaddr,state,user_context,hwtype,hwaddr_source,pool_id"
)
T0 = datetime(2011, 1, 10, 12, 0, tzinfo=UTC)
WEEK_MS = 7 * 86400 * 1000  # the example policy's retention: an element just refreshed
HW_A, HW_B = "aa:bb:cc:00:00:01", "aa:bb:cc:00:00:02"


def ts(at: datetime) -> int:
    return int(at.timestamp())


def v4row(
    address: str,
    hw: str,
    start: datetime,
    valid: int = 3600,
    *,
    host: str = "",
    state: int = 0,
    cid: str = "",
) -> str:
    expire = ts(start) + valid
    return f"{address},{hw},{cid},{valid},{expire},1,0,0,{host},{state},,0"


def v6row(
    address: str,
    duid: str,
    start: datetime,
    *,
    lease_type: int = 0,
    plen: int = 128,
    valid: int = 3600,
    state: int = 0,
) -> str:
    expire = ts(start) + valid
    return (
        f"{address},{duid},{valid},{expire},1,1800,{lease_type},7,{plen},0,0,host6,,{state},,0,0,0"
    )


def leases(header: str, *rows: str) -> Leases:
    return parse_leases("\n".join([header, *rows]) + "\n", "kea-leases.csv")


def test_v4_lease_is_found_while_valid_and_not_outside() -> None:
    got = leases(V4_HEADER, v4row("192.0.2.40", HW_A, T0, host="pc-1", cid="01:aa"))
    lease = got.lookup("192.0.2.40", T0 + timedelta(minutes=30))
    assert lease is not None
    assert (lease.hwaddr, lease.client_id, lease.hostname, lease.duid) == (
        HW_A,
        "01:aa",
        "pc-1",
        None,
    )
    assert (lease.start, lease.end) == (T0, T0 + timedelta(hours=1))
    assert (lease.file, lease.line) == ("kea-leases.csv", 2)
    assert got.lookup("192.0.2.40", T0 - timedelta(seconds=1)) is None
    assert got.lookup("192.0.2.40", T0 + timedelta(hours=1, seconds=1)) is None
    assert got.lookup("192.0.2.41", T0) is None


def test_columns_are_read_by_header_name_in_any_version() -> None:
    """Kea 1.x had no state column; 2.2 no pool_id; the order is the header's."""
    old = "address,hwaddr,client_id,valid_lifetime,expire,subnet_id,fqdn_fwd,fqdn_rev,hostname"
    row = f"192.0.2.40,{HW_A},,3600,{ts(T0) + 3600},1,0,0,old-pc"
    lease = leases(old, row).lookup("192.0.2.40", T0)
    assert lease is not None and lease.hostname == "old-pc"
    shuffled = "hostname,expire,valid_lifetime,hwaddr,address,client_id,future_column"
    row = f"new-pc,{ts(T0) + 60},60,{HW_B},192.0.2.41,,x"
    lease = leases(shuffled, row).lookup("192.0.2.41", T0)
    assert lease is not None and (lease.hwaddr, lease.hostname) == (HW_B, "new-pc")


def test_renewals_extend_one_holding_back_to_its_first_row() -> None:
    later = T0 + timedelta(minutes=30)
    got = leases(
        V4_HEADER,
        v4row("192.0.2.40", HW_A, T0, host="first"),
        v4row("192.0.2.40", HW_A, later, host="renamed"),
    )
    early = got.lookup("192.0.2.40", T0 + timedelta(minutes=10))  # before the renewal
    assert early is not None
    assert (early.start, early.end) == (T0, later + timedelta(hours=1))
    assert early.hostname == "renamed" and early.line == 3  # the last row's fields
    assert len(list(got.holdings())) == 1


def test_another_client_cuts_the_earlier_holding_and_wins_after() -> None:
    moved = T0 + timedelta(minutes=20)
    got = leases(V4_HEADER, v4row("192.0.2.40", HW_A, T0), v4row("192.0.2.40", HW_B, moved))
    before = got.lookup("192.0.2.40", T0 + timedelta(minutes=10))
    after = got.lookup("192.0.2.40", moved + timedelta(minutes=1))
    assert before is not None and before.hwaddr == HW_A and before.end == moved
    assert after is not None and after.hwaddr == HW_B
    assert got.lookup("192.0.2.40", moved).hwaddr == HW_B  # type: ignore[union-attr]


def test_a_gap_starts_a_new_holding() -> None:
    back = T0 + timedelta(hours=3)
    got = leases(V4_HEADER, v4row("192.0.2.40", HW_A, T0), v4row("192.0.2.40", HW_A, back))
    assert got.lookup("192.0.2.40", T0 + timedelta(hours=2)) is None  # expired in between
    assert len(list(got.holdings())) == 2


def test_release_is_flagged_and_decline_cuts() -> None:
    """A release (valid_lifetime 0, as Kea 2.2 writes it) says not when: shown, flagged."""
    released = leases(
        V4_HEADER,
        v4row("192.0.2.40", HW_A, T0, host="pc"),
        f"192.0.2.40,{HW_A},,0,{ts(T0)},1,0,0,pc,0,,0",
    )
    lease = released.lookup("192.0.2.40", T0 + timedelta(minutes=5))
    assert lease is not None and lease.ended
    declined_at = T0 + timedelta(minutes=10)
    declined = leases(
        V4_HEADER,
        v4row("192.0.2.40", HW_A, T0),
        v4row("192.0.2.40", "", declined_at, valid=86400, state=1),
    )
    assert declined.lookup("192.0.2.40", T0 + timedelta(minutes=5)) is not None
    assert declined.lookup("192.0.2.40", T0 + timedelta(minutes=15)) is None
    # after a release, the same client coming back is a new holding
    again = leases(
        V4_HEADER,
        v4row("192.0.2.40", HW_A, T0),
        v4row("192.0.2.40", HW_A, T0, state=3),
        v4row("192.0.2.40", HW_A, T0 + timedelta(minutes=5)),
    )
    assert len(list(again.holdings())) == 2


def test_escaped_commas_in_hostname() -> None:
    lease = leases(V4_HEADER, v4row("192.0.2.40", HW_A, T0, host="a&#x2cb")).lookup(
        "192.0.2.40", T0
    )
    assert lease is not None and lease.hostname == "a,b"


def test_v6_address_inside_the_subscriber_prefix() -> None:
    got = leases(V6_HEADER, v6row("2001:db8:1000:1::42", "00:01:aa", T0))
    lease = got.lookup("2001:db8:1000:1::/64", T0 + timedelta(minutes=1))
    assert lease is not None
    assert (lease.duid, lease.lease_type, lease.address) == (
        "00:01:aa",
        "na",
        "2001:db8:1000:1::42",
    )
    assert got.lookup("2001:db8:1000:2::/64", T0) is None
    assert got.lookup("2001:db8:1000:1::42", T0) is not None  # a single address too
    assert got.lookup("2001:db8:1000:1::/64", T0 + timedelta(hours=2)) is None


def test_v6_delegated_prefix_covering_the_subscriber_prefix() -> None:
    got = leases(
        V6_HEADER,
        v6row("2001:db8:1000:100::", "00:01:bb", T0, lease_type=2, plen=56),
        v6row("2001:db8:1000:1::42", "00:01:aa", T0),
    )
    lease = got.lookup("2001:db8:1000:1a0::/64", T0)  # inside the /56
    assert lease is not None
    assert (lease.duid, lease.lease_type, lease.address) == (
        "00:01:bb",
        "pd",
        "2001:db8:1000:100::/56",
    )
    # a /48 counting prefix is not covered by a /56: no delegated match, no address inside
    assert got.lookup("2001:db8:1001::/48", T0) is None


def test_v6_several_clients_in_one_prefix_are_ambiguous() -> None:
    got = leases(
        V6_HEADER,
        v6row("2001:db8:1000:1::42", "00:01:aa", T0),
        v6row("2001:db8:1000:1::43", "00:01:cc", T0),
    )
    assert got.lookup("2001:db8:1000:1::/64", T0) is None
    assert got.lookup("2001:db8:1000:1::43", T0).duid == "00:01:cc"  # type: ignore[union-attr]


def test_merged_files_answer_both_families() -> None:
    both = Leases.merged(
        [
            leases(V4_HEADER, v4row("192.0.2.40", HW_A, T0)),
            leases(V6_HEADER, v6row("2001:db8:1000:1::42", "00:01:aa", T0)),
        ]
    )
    assert both.lookup("192.0.2.40", T0) is not None
    assert both.lookup("2001:db8:1000:1::/64", T0) is not None
    assert both.rows == 2 and len(both) == 2


def test_bad_source_is_a_value_error() -> None:
    got = leases(V4_HEADER)
    for bad in ("not-an-ip", "192.0.2.0/24", "2001:db8::/129"):
        with pytest.raises(ValueError):
            got.lookup(bad, T0)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "kea-leases.csv:1: empty"),
        ("a,b,c\n", "kea-leases.csv:1: header lacks address, hwaddr"),
        (f"{V4_HEADER}\n192.0.2.40,{HW_A}\n", "kea-leases.csv:2: 2 fields, the header has 12"),
        (
            f"{V4_HEADER}\n{v4row('192.0.2.40', HW_A, T0)}\n{v4row('192.0.2.999', HW_A, T0)}\n",
            "kea-leases.csv:3: address '192.0.2.999' is not an IPv4 address",
        ),
        (
            f"{V4_HEADER}\n192.0.2.40,{HW_A},,soon,0,1,0,0,,0,,0\n",
            "kea-leases.csv:2: valid_lifetime, expire",
        ),
        (
            f"{V6_HEADER}\n{v6row('2001:db8::1', '00:01', T0, lease_type=7)}\n",
            "kea-leases.csv:2: lease_type '7'",
        ),
    ],
)
def test_malformed_files_name_file_and_line(text: str, message: str) -> None:
    with pytest.raises(LeaseFileError) as err:
        parse_leases(text, "kea-leases.csv")
    assert str(err.value).startswith(message), str(err.value)


def test_missing_unreadable_and_odd_files(tmp_path: Path) -> None:
    with pytest.raises(LeaseFileError, match="no such lease file"):
        load_leases(tmp_path / "absent.csv")
    with pytest.raises(LeaseFileError, match="is a directory, not a regular file"):
        load_leases(tmp_path)
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(LeaseFileError, match="a FIFO"):  # refused at once, never blocks
        load_leases(fifo)
    binary = tmp_path / "binary.csv"
    binary.write_bytes(f"{V4_HEADER}\n".encode() + b"\xff\xfe\n")
    with pytest.raises(LeaseFileError, match=r"binary.csv:2: not UTF-8"):
        load_leases(binary)
    if os.geteuid() != 0:  # root reads anything
        locked = tmp_path / "locked.csv"
        locked.write_text(V4_HEADER + "\n")
        locked.chmod(0)
        with pytest.raises(LeaseFileError, match="permission denied"):
            load_leases(locked)
    good = tmp_path / "kea-leases4.csv"
    good.write_text(f"{V4_HEADER}\n{v4row('192.0.2.40', HW_A, T0)}\n")
    got = load_leases(good)
    assert got.files == (str(good),) and got.lookup("192.0.2.40", T0) is not None


@dataclass(frozen=True)
class Row:
    source: str
    last_seen: datetime


def test_lease_columns_for_a_source_list(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    v4 = tmp_path / "kea-leases4.csv"
    v4.write_text(f"{V4_HEADER}\n{v4row('192.0.2.40', HW_A, T0, host='pc-1')}\n")
    v6 = tmp_path / "kea-leases6.csv"
    v6.write_text(
        f"{V6_HEADER}\n{v6row('2001:db8:1000:100::', '00:01:bb', T0, lease_type=2, plen=56)}\n"
    )
    cols = lease_columns.load([str(v4), str(v6)])
    assert not cols.failed and capsys.readouterr().err == ""
    seen = T0 + timedelta(minutes=5)
    a, b, nobody = (
        Row("192.0.2.40", seen),
        Row("2001:db8:1000:1a0::/64", seen),
        Row("192.0.2.41", seen),
    )
    assert cols.text(a) == f"{HW_A} pc-1"
    assert cols.text(b) == "duid 00:01:bb host6 (pd 2001:db8:1000:100::/56)"
    assert cols.text(nobody) == "-"
    assert cols.json(a)["lease"]["hwaddr"] == HW_A
    assert cols.json(nobody) == {"lease": None}
    assert cols.text(Row("192.0.2.40", T0 + timedelta(hours=2))) == "-"  # after it expired


def test_a_broken_lease_file_is_reported_and_the_rest_still_used(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    good = tmp_path / "kea-leases4.csv"
    good.write_text(f"{V4_HEADER}\n{v4row('192.0.2.40', HW_A, T0)}\n")
    cols = lease_columns.load([str(tmp_path / "missing.csv"), str(good)])
    err = capsys.readouterr().err
    assert cols.failed and "missing.csv: no such lease file; the list is shown" in err
    assert cols.text(Row("192.0.2.40", T0)) == HW_A
    none = lease_columns.load([str(tmp_path / "missing.csv")])
    assert none.failed and none.json(Row("192.0.2.40", T0)) == {"lease": None}
    assert lease_columns.load([]).json(Row("192.0.2.40", T0)) == {}  # not asked: no field


def test_offenders_leases_names_the_client_and_a_broken_file_hides_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    kernel = MemoryKernel()
    assert main(["apply", "--policy", str(EXAMPLE)], kernel=kernel) == 0
    # 192.0.2.40 (7 SYNs, a second ago) and 192.0.2.41 (no lease) in flets-east-dyn-1
    set_v4 = offender_set("flets-east-dyn-1", 4)
    kernel.seen[set_v4] = [(bytes([192, 0, 2, 40]), 7, 0, WEEK_MS - 1000), (bytes([192, 0, 2, 41]), 2, 0, WEEK_MS - 1000)]  # fmt: skip
    now = datetime.now(UTC)
    good = tmp_path / "kea-leases4.csv"
    good.write_text(f"{V4_HEADER}\n{v4row('192.0.2.40', HW_A, now - timedelta(minutes=10), host='pc-1')}\n")  # fmt: skip
    capsys.readouterr()
    argv = ["offenders", "--policy", str(EXAMPLE), "--leases", str(good)]
    assert main([*argv, "-o", "json"], kernel=kernel) == 0
    rows = {r["source"]: r for r in json.loads(capsys.readouterr().out)["offenders"]}
    assert rows["192.0.2.40"]["lease"]["hwaddr"] == HW_A
    assert rows["192.0.2.40"]["lease"]["hostname"] == "pc-1"
    assert rows["192.0.2.41"]["lease"] is None
    assert main(argv, kernel=kernel) == 0
    text = capsys.readouterr().out
    assert "LEASE" in text and f"{HW_A} pc-1" in text
    # a malformed file: said on stderr with its line, the list printed all the same, exit 1
    bad = tmp_path / "broken.csv"
    bad.write_text(f"{V4_HEADER}\n192.0.2.40,{HW_A}\n")
    code = main(["offenders", "--policy", str(EXAMPLE), "--leases", str(bad)], kernel=kernel)
    out, err = capsys.readouterr()
    assert code == 1
    assert f"{bad}:2: 2 fields, the header has 12; malformed row" in err
    assert "192.0.2.40" in out and "192.0.2.41" in out and "LEASE" not in out
    # without --leases: no lease field at all
    assert main(["offenders", "--policy", str(EXAMPLE), "-o", "json"], kernel=kernel) == 0
    assert "lease" not in json.loads(capsys.readouterr().out)["offenders"][0]


def test_fleet_offenders_with_leases(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """`offenders --store --leases`: the gateways' reported rows (JSON, ISO times) get the
    lease of one DHCP server serving the fleet."""
    from op25b_ctl.cli import fleet as cli_fleet

    seen = T0 + timedelta(minutes=5)
    top = [
        {"source": "192.0.2.40", "pool": "flets-east-dyn-1", "mode": "enforce", "attempts": 7,
         "last_seen": seen.isoformat()},
        {"source": "192.0.2.41", "pool": "flets-east-dyn-1", "mode": "enforce", "attempts": 2,
         "last_seen": "not a time"},
    ]  # fmt: skip
    statuses = {"gw1": {"offenders": {"pools": {"flets-east-dyn-1": 2}, "top": top}}}

    class Store:
        def statuses(self) -> dict[str, Any]:
            return statuses

        def published(self) -> None:
            return None

    monkeypatch.setattr(cli_fleet, "store_of", lambda ctx: Store())
    good = tmp_path / "kea-leases4.csv"
    good.write_text(f"{V4_HEADER}\n{v4row('192.0.2.40', HW_A, T0, host='pc-1')}\n")
    argv = ["offenders", "--store", "etcd://127.0.0.1:9/op25b", "--leases", str(good)]
    assert main([*argv, "-o", "json"]) == 0
    rows = json.loads(capsys.readouterr().out)["offenders"]
    assert rows[0]["lease"]["hwaddr"] == HW_A and rows[1]["lease"] is None  # no time: none
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "LEASE" in text and f"{HW_A} pc-1" in text
