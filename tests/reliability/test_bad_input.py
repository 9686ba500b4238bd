"""The bad-input corpus: hostile and malformed inputs, each against the real program.

One network namespace holds a real `inet op25b` table, applied from the example NMTnet policy
with one active override. Each case copies that policy and state directory, breaks one thing
(a policy or schedule file, an override or state file, a command-line argument), runs the
real `op25b-ctl` in the namespace, and checks three things: the exit status, an error that
says what is wrong (file, line and field where there is one), and that the live ruleset
(`nft list ruleset` in the namespace) and every file of the state directory are
byte-identical afterwards. Each case is one row of docs/reliability.md.
"""

from __future__ import annotations

import hashlib
import os
import re
import secrets
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.e2e.conftest import lab_unavailable
from tests.policytools import EXAMPLE, REPO
from tests.reliability.conftest import Recorder

SECTION = "bad input"
pytestmark = pytest.mark.root

CTL = str(REPO / ".venv" / "bin" / "op25b-ctl")
FULLFS = str(Path(__file__).with_name("fullfs.py"))
NOW = "2011-01-20T09:00+09:00"  # enforce-east-1 done, west not yet: a table with all modes
POOL = "flets-east-dyn-1"
STATIC = "static-biz"
NOBODY = 65534

Setup = Callable[[Path, Path], list[str]]  # (policy dir, state dir) -> op25b-ctl argv


@dataclass(frozen=True)
class Case:
    name: str
    kind: str  # policy | schedule | overrides | state | disk | cli
    done: str  # what was done, for the report
    setup: Setup
    exit: int
    error: str  # regex that stderr must match
    as_nobody: bool = False
    disk: str = ""  # space | inodes | cache: the state directory on a full filesystem (fullfs.py)


def write(name: str, text: str | bytes) -> Callable[[Path, Path], None]:
    def do(policy: Path, state: Path) -> None:
        path = policy / name
        if isinstance(text, bytes):
            path.write_bytes(text)
        else:
            path.write_text(text)

    return do


def edit(name: str, old: str, new: str) -> Callable[[Path, Path], None]:
    def do(policy: Path, state: Path) -> None:
        path = policy / name
        text = path.read_text()
        assert old in text, (name, old)
        path.write_text(text.replace(old, new, 1))

    return do


def apply_(policy: Path, state: Path) -> list[str]:
    return ["apply", "--policy", str(policy), "--state-dir", str(state), "--now", NOW]


def then(change: Callable[[Path, Path], object], argv: Setup = apply_) -> Setup:
    def setup(policy: Path, state: Path) -> list[str]:
        change(policy, state)
        return argv(policy, state)

    return setup


def pool_cmd(*extra: str, action: str = "enforce", pool: str = POOL) -> Setup:
    def argv(policy: Path, state: Path) -> list[str]:
        return [
            "pool",
            action,
            pool,
            *extra,
            "--policy",
            str(policy),
            "--state-dir",
            str(state),
            "--now",
            NOW,
        ]

    return argv


def cmd(*args: str, now: bool = True) -> Setup:
    def argv(policy: Path, state: Path) -> list[str]:
        out = [a.replace("{P}", str(policy)).replace("{S}", str(state)) for a in args]
        return out + (["--now", NOW] if now else [])

    return argv


def tick(policy: Path, state: Path) -> list[str]:
    return ["rollout", "tick", "--policy", str(policy), "--state-dir", str(state), "--now", NOW]


def state_write(name: str, data: bytes) -> Callable[[Path, Path], None]:
    def do(policy: Path, state: Path) -> None:
        (state / name).unlink(missing_ok=True)
        (state / name).write_bytes(data)

    return do


def alias_bomb() -> str:
    lines = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for prev, cur in zip("abcdefgh", "bcdefghi", strict=True):
        lines.append(f"{cur}: &{cur} [" + ",".join([f"*{prev}"] * 9) + "]")
    return "pools:\n  - name: x\n    prefixes: [192.0.2.0/26]\n" + "\n".join(lines) + "\n"


def replace_with(where: str, name: str, kind: str) -> Callable[[Path, Path], None]:
    def do(policy: Path, state: Path) -> None:
        path = (policy if where == "policy" else state) / name
        path.unlink()
        if kind == "dir":
            path.mkdir()
        else:
            os.mkfifo(path)

    return do


def fifo(name: str) -> Callable[[Path, Path], None]:
    def do(policy: Path, state: Path) -> None:
        (policy / name).unlink()
        os.mkfifo(policy / name)

    return do


def big_file(policy: Path, state: Path) -> None:
    with (policy / "pools.yaml").open("r+b") as fh:
        fh.truncate(65 << 20)  # sparse: 65 MiB of NULs past the real text


def symlink_loop(name: str, where: str = "policy") -> Callable[[Path, Path], None]:
    def do(policy: Path, state: Path) -> None:
        d = policy if where == "policy" else state
        (d / name).unlink(missing_ok=True)
        (d / name).symlink_to(name)

    return do


def planted(name: str) -> Callable[[Path, Path], None]:
    """A symlink planted in the state directory pointing at a file elsewhere."""

    def do(policy: Path, state: Path) -> None:
        target = state.parent / f"precious-{name}"
        target.write_text("must stay as it is\n")
        (state / name).unlink(missing_ok=True)
        (state / name).symlink_to(target)

    return do


def chmod(path: str, mode: int) -> Callable[[Path, Path], None]:
    def do(policy: Path, state: Path) -> None:
        (state if path == "S" else policy).chmod(mode)

    return do


def chown_lock(policy: Path, state: Path) -> None:
    (state / ".lock").touch()
    os.chown(state / ".lock", NOBODY, NOBODY)


def audit_dir(policy: Path, state: Path) -> None:
    (state / "audit.jsonl").unlink()
    (state / "audit.jsonl").mkdir()


def garbage_audit(policy: Path, state: Path) -> None:
    with (state / "audit.jsonl").open("ab") as fh:
        fh.write(b"not json\n\xff\xfe\x1b[2J\n")


def latin1(policy: Path, state: Path) -> None:
    path = policy / "pools.yaml"
    path.write_bytes(path.read_bytes().replace(b"PPPoE pool 2", b"PPPoE pool \xe9"))


def nested_dirs_missing(policy: Path, state: Path) -> None:
    shutil.rmtree(policy)


def policy_is_file(policy: Path, state: Path) -> None:
    shutil.rmtree(policy)
    policy.write_text("pools: []\n")


def policy_unreadable(policy: Path, state: Path) -> None:
    policy.chmod(0o300)  # nobody may enter but not list it (root may: test runs as nobody)


def foreign_table(policy: Path, state: Path) -> list[str]:
    return ["teardown", "--yes", "--table", "op25b_foreign", "--state-dir", str(state)]


P = "pools.yaml"
R = "rollout.yaml"
G = "gateway.yaml"
E = "exemptions.yaml"
RL = "relays.yaml"
FIRST_PREFIX = "prefixes: [192.0.2.0/26, 2001:db8:1000::/40]"

CASES: list[Case] = [
    # ------------------------------------------------------------------ hostile YAML
    Case(
        "alias bomb",
        "policy",
        "399-byte billion-laughs YAML in pools.yaml",
        then(write(P, alias_bomb())),
        2,
        r"pools\.yaml:\d+: aliases expand to more than",
    ),
    Case(
        "nesting 1,000 deep",
        "policy",
        "block sequences nested 1,000 levels",
        then(write(P, "pools:\n" + "".join("  " * i + "-\n" for i in range(1, 1000)))),
        2,
        r"pools\.yaml:\d+: nested more than 32 levels",
    ),
    Case(
        "nesting 100,000 deep",
        "policy",
        "flow sequences nested 100,000 levels ([[[...]]])",
        then(write(P, "pools: " + "[" * 100_000 + "]" * 100_000 + "\n")),
        2,
        r"pools\.yaml:1: nested more than 32 levels",
    ),
    Case(
        "recursive alias",
        "policy",
        "an anchor that contains its own alias",
        then(write(P, "pools: &x [*x]\n")),
        2,
        r"pools\.yaml:1: alias \*x refers to itself",
    ),
    Case(
        "file over 64 MiB",
        "policy",
        "pools.yaml grown (sparse) to 65 MiB",
        then(big_file),
        2,
        r"pools\.yaml: 68157440 bytes, more than the 67108864 allowed",
    ),
    Case(
        "non-UTF-8 policy",
        "policy",
        "a Latin-1 byte (0xe9) in a description",
        then(latin1),
        2,
        r"pools\.yaml:\d+: not UTF-8 \(byte 0xe9\)",
    ),
    Case(
        "FIFO as pools.yaml",
        "policy",
        "mkfifo pools.yaml (a plain read would hang)",
        then(fifo(P)),
        2,
        r"pools\.yaml: is a FIFO, not a regular file",
    ),
    Case(
        "directory as relays.yaml",
        "policy",
        "mkdir relays.yaml",
        then(replace_with("policy", RL, "dir")),
        2,
        r"relays\.yaml: is a directory",
    ),
    Case(
        "symlink loop as pools.yaml",
        "policy",
        "pools.yaml -> pools.yaml",
        then(symlink_loop(P)),
        2,
        r"pools\.yaml: cannot read: too many levels of symbolic links",
    ),
    Case(
        "policy directory missing",
        "policy",
        "--policy names no directory",
        then(nested_dirs_missing),
        2,
        r"policy directory not found",
    ),
    Case(
        "policy directory is a file",
        "policy",
        "--policy names a regular file",
        then(policy_is_file),
        2,
        r"not a directory",
    ),
    Case(
        "policy directory unreadable",
        "policy",
        "mode 0300 on the directory, run as nobody (validate)",
        then(policy_unreadable, cmd("validate", "--policy", "{P}", "--state-dir", "{S}")),
        2,
        r"cannot read the policy directory: permission denied",
        as_nobody=True,
    ),
    Case(
        "YAML syntax error",
        "policy",
        "a tab used for indentation",
        then(edit(P, "    tags: [flets, flets-east]\n", "\ttags: [flets]\n")),
        2,
        r"pools\.yaml:\d+: not valid YAML",
    ),
    Case(
        "duplicate key",
        "policy",
        "`mode` twice in one pool",
        then(edit(P, '    mode: "off"   #', '    mode: enforce\n    mode: "off"   #')),
        2,
        r"pools\.yaml:\d+: pools\[0\]\.mode: duplicate key",
    ),
    Case(
        "unknown key",
        "policy",
        "`prefix:` instead of `prefixes:` in a pool",
        then(
            edit(
                P,
                "    description: FLET'S East (NTT East) dynamic IP, PPPoE pool 1",
                "    prefix: 192.0.2.0/26",
            )
        ),
        2,
        r"pools\.yaml:\d+: pools\[0\]\.prefix: unknown key",
    ),
    Case(
        "wrong type",
        "policy",
        "prefixes as one string, not a list",
        then(edit(P, FIRST_PREFIX, "prefixes: 192.0.2.0/26")),
        2,
        r"pools\.yaml:\d+: pools\[0\]\.prefixes: ",
    ),
    Case(
        "bare off",
        "policy",
        "mode: off unquoted (YAML reads false)",
        then(edit(P, 'mode: "off"   #', "mode: off   #")),
        2,
        r"pools\.yaml:\d+: pools\[0\]\.mode: .*quote it",
    ),
    Case(
        "host bits set",
        "policy",
        "192.0.2.1/26",
        then(edit(P, "192.0.2.0/26,", "192.0.2.1/26,")),
        2,
        r"pools\.yaml:\d+: pools\[0\]\.prefixes\[0\]: .*host bits set \(did you mean 192\.0\.2\.0/26\?\)",
    ),
    Case(
        "malformed prefix",
        "policy",
        "192.0.2.300/26",
        then(edit(P, "192.0.2.0/26,", "192.0.2.300/26,")),
        2,
        r"pools\.yaml:\d+: pools\[0\]\.prefixes\[0\]: .*not an IPv4 or IPv6 prefix",
    ),
    Case(
        "IPv4-mapped IPv6 prefix",
        "policy",
        "::ffff:192.0.2.0/122 as a pool prefix",
        then(edit(P, "2001:db8:1000::/40]", '"::ffff:192.0.2.0/122"]')),
        2,
        r"pools\.yaml:\d+: pools\[0\]\.prefixes\[1\]: .*IPv4-mapped",
    ),
    Case(
        "IPv4-mapped, hex spelling",
        "policy",
        "::ffff:c000:200/120 as a relay address",
        then(edit(RL, "203.0.113.25,", '"::ffff:c000:200/120",')),
        2,
        r"relays\.yaml:\d+: relays\[0\]\.addresses\[0\]: .*IPv4-mapped",
    ),
    Case(
        "overlapping pools",
        "policy",
        "pool 2 given pool 1's /26 inside a /25",
        then(edit(P, "192.0.2.64/26,", "192.0.2.0/25,")),
        2,
        r"pools\.yaml:\d+: pools\[\d\]\.prefixes\[\d\]: .*overlap",
    ),
    Case(
        "relay inside a pool",
        "policy",
        "relay address inside flets-west-dyn-1",
        then(edit(RL, "203.0.113.25,", "198.51.100.25,")),
        2,
        r"relays\.yaml:\d+: relays\[0\]\.addresses\[0\]: ",
    ),
    Case(
        "pool wider than /8",
        "policy",
        "0.0.0.0/0 as a pool prefix",
        then(edit(P, "198.51.100.0/25,", "0.0.0.0/0,")),
        2,
        r"pools\.yaml:\d+: pools\[2\]\.prefixes\[0\]: ",
    ),
    Case(
        "static pool enforced",
        "policy",
        "static-biz with mode enforce",
        then(edit(P, "    dynamic: false\n", "    dynamic: false\n    mode: enforce\n")),
        2,
        r"pools\.yaml:\d+: pools\[3\]",
    ),
    Case(
        "empty pools list",
        "policy",
        "pools: []",
        then(write(P, "pools: []\n")),
        2,
        r"pools\.yaml:\d+: pools: ",
    ),
    Case(
        "empty pools.yaml",
        "policy",
        "pools.yaml of zero bytes",
        then(write(P, "")),
        2,
        r"pools\.yaml: pools: (Field required|field required)",
    ),
    Case(
        "unsafe pool name",
        "policy",
        "pool named `East;flush`",
        then(edit(P, "name: flets-east-dyn-2", "name: East;flush")),
        2,
        r"pools\.yaml:\d+: pools\[1\]\.name: 'East;flush'",
    ),
    Case(
        "unknown policy file",
        "policy",
        "an extra pool.yaml (typo) beside pools.yaml",
        then(write("pool.yaml", "pools: []\n")),
        2,
        r"pool\.yaml: unexpected policy file",
    ),
    Case(
        "foreign table name",
        "policy",
        "gateway.table: filter",
        then(edit(G, "table: op25b ", "table: filter ")),
        2,
        r"gateway\.yaml:\d+: gateway\.table: 'filter'",
    ),
    Case(
        "priority out of range",
        "policy",
        "gateway.priority: 100000",
        then(edit(G, "priority: 0 ", "priority: 100000 ")),
        2,
        r"gateway\.yaml:\d+: gateway\.priority: ",
    ),
    Case(
        "huge integer",
        "policy",
        "gateway.priority: 10**100",
        then(edit(G, "priority: 0 ", "priority: 1" + "0" * 100 + " ")),
        2,
        r"gateway\.yaml:\d+: gateway\.priority: ",
    ),
    Case(
        "unknown action",
        "policy",
        "gateway.action: accept",
        then(edit(G, "action: reject", "action: accept")),
        2,
        r"gateway\.yaml:\d+: gateway\.action: ",
    ),
    Case(
        "offender retention without a unit",
        "policy",
        "gateway.offenders.retention: 7",
        then(edit(G, "action: reject", "action: reject\n  offenders: {retention: 7}")),
        2,
        r"gateway\.yaml:\d+: gateway\.offenders\.retention: .*not a duration like 7d",
    ),
    Case(
        "offender retention over 90 days",
        "policy",
        "gateway.offenders.retention: 365d",
        then(edit(G, "action: reject", "action: reject\n  offenders: {retention: 365d}")),
        2,
        r"gateway\.yaml:\d+: gateway\.offenders\.retention: .*outside 1m\.\.90d",
    ),
    Case(
        "offender set size 0",
        "policy",
        "gateway.offenders.size: 0",
        then(edit(G, "action: reject", "action: reject\n  offenders: {size: 0}")),
        2,
        r"gateway\.yaml:\d+: gateway\.offenders\.size: ",
    ),
    Case(
        "offender v6 prefix /8",
        "policy",
        "pools[0].subscriber_prefix_v6: 8",
        then(edit(P, FIRST_PREFIX, FIRST_PREFIX + "\n    subscriber_prefix_v6: 8")),
        2,
        r"pools\.yaml:\d+: pools\[0\]\.subscriber_prefix_v6: ",
    ),
    Case(
        "two YAML documents",
        "policy",
        "pools.yaml with a second `---` document",
        then(lambda p, s: (p / P).write_text((p / P).read_text() + "---\npools: []\n")),
        2,
        r"pools\.yaml:\d+: not valid YAML",
    ),
    Case(
        "python object tag",
        "policy",
        "!!python/object/apply:os.system in a description",
        then(
            edit(
                P,
                "description: FLET'S East (NTT East) dynamic IP, PPPoE pool 1",
                "description: !!python/object/apply:os.system ['true']",
            )
        ),
        2,
        r"pools\.yaml:\d+: not valid YAML",
    ),
    Case(
        "NUL byte",
        "policy",
        "a NUL character inside pools.yaml",
        then(edit(P, "PPPoE pool 2", "PPPoE\x00pool 2")),
        2,
        r"pools\.yaml:\d+: not valid YAML: .*control",
    ),
    # ------------------------------------------------------------------ schedule
    Case(
        "stage time without offset",
        "schedule",
        "at: 2011-01-17T10:00:00 (no UTC offset)",
        then(edit(R, "at: 2011-01-17T10:00:00+09:00", "at: 2011-01-17T10:00:00")),
        2,
        r"rollout\.yaml:\d+: stages\[1\]\.at: .*no UTC offset",
    ),
    Case(
        "stage in year 9999",
        "schedule",
        "at: 9999-12-31T23:59:59-09:00 (overflows in UTC)",
        then(edit(R, "at: 2011-01-17T10:00:00+09:00", "at: 9999-12-31T23:59:59-09:00")),
        2,
        r"rollout\.yaml:\d+: stages\[1\]\.at: .*outside 1970\.\.2099",
    ),
    Case(
        "month 13",
        "schedule",
        'at: "2011-13-01T00:00:00+09:00"',
        then(edit(R, "at: 2011-01-17T10:00:00+09:00", 'at: "2011-13-01T00:00:00+09:00"')),
        2,
        r"rollout\.yaml:\d+: stages\[1\]\.at: .*not a real time: month must be in 1\.\.12",
    ),
    Case(
        "offset +24:00",
        "schedule",
        'at: "2011-01-17T10:00:00+24:00"',
        then(edit(R, "at: 2011-01-17T10:00:00+09:00", 'at: "2011-01-17T10:00:00+24:00"')),
        2,
        r"rollout\.yaml:\d+: stages\[1\]\.at: ",
    ),
    # impossible dates written bare: YAML's timestamp constructor raised before our checks
    *(
        Case(
            f"{name} (bare)",
            "schedule",
            f"at: {text}",
            then(edit(R, "at: 2011-01-17T10:00:00+09:00", f"at: {text}")),
            2,
            rf"rollout\.yaml:\d+: stages\[1\]\.at: .*not a real time: {why}",
        )
        for name, text, why in (
            ("month 13", "2011-13-17T10:00:00+09:00", r"month must be in 1\.\.12"),
            ("30 February", "2011-02-30T10:00:00+09:00", "day is out of range for month"),
            ("hour 25", "2011-01-17T25:00:00+09:00", r"hour must be in 0\.\.23"),
            ("offset +24:00", "2011-01-17T10:00:00+24:00", r"UTC offset \+24:00 is out of range"),
        )
    ),
    Case(
        "exemption expiry 30 February",
        "schedule",
        "expires: 2011-02-30T23:59:59+09:00",
        then(edit(E, "expires: 2011-03-31T23:59:59+09:00", "expires: 2011-02-30T23:59:59+09:00")),
        2,
        r"exemptions\.yaml:\d+: exemptions\[1\]\.expires: .*not a real time: day is out",
    ),
    Case(
        "date without time",
        "schedule",
        "at: 2011-01-17",
        then(edit(R, "at: 2011-01-17T10:00:00+09:00", "at: 2011-01-17")),
        2,
        r"rollout\.yaml:\d+: stages\[1\]\.at: .*date without a time",
    ),
    Case(
        "two stages, one instant, one pool, two modes",
        "schedule",
        "a monitor stage for flets-west-dyn-1 at enforce-west-1's instant, listed before it",
        then(
            edit(
                R,
                "  - name: enforce-west-1\n",
                "  - name: monitor-west-1\n    at: 2011-01-24T10:00:00+09:00\n"
                "    pools: [flets-west-dyn-1]\n    mode: monitor\n\n"
                "  - name: enforce-west-1\n",
            )
        ),
        2,
        r"rollout\.yaml:\d+: stages\[3\]\.at: stage 'enforce-west-1' \(enforce\) and stage "
        r"'monitor-west-1' \(stages\[2\], monitor\) are both at .*ambiguous",
    ),
    Case(
        "stage names unknown pool",
        "schedule",
        "pools: [no-such-pool]",
        then(edit(R, "pools: [flets-east-dyn-1]", "pools: [no-such-pool]")),
        2,
        r"rollout\.yaml:\d+: stages\[1\]\.pools\[0\]: ",
    ),
    Case(
        "stage bad mode",
        "schedule",
        "mode: block",
        then(edit(R, "    mode: monitor", "    mode: block")),
        2,
        r"rollout\.yaml:\d+: stages\[0\]\.mode: ",
    ),
    Case(
        "unknown time zone",
        "schedule",
        "timezone: Mars/Olympus",
        then(edit(R, "timezone: Asia/Tokyo", "timezone: Mars/Olympus")),
        2,
        r"rollout\.yaml:\d+: timezone: .*not a known time zone",
    ),
    Case(
        "exemption ticket unsafe",
        "schedule",
        "ticket with a space and quote",
        then(edit(E, "ticket: NMT-2011-0042", 'ticket: "x\'; y"')),
        2,
        r"exemptions\.yaml:\d+: exemptions\[0\]\.ticket: ",
    ),
    Case(
        "exemption expiry naive",
        "schedule",
        "expires: 2011-03-31T23:59:59 (no offset)",
        then(edit(E, "expires: 2011-03-31T23:59:59+09:00", "expires: 2011-03-31T23:59:59")),
        2,
        r"exemptions\.yaml:\d+: exemptions\[1\]\.expires: .*no UTC offset",
    ),
    Case(
        "stage threshold as text",
        "schedule",
        'max_offenders: "10" (a string)',
        then(
            edit(
                R,
                "    pools: [flets-east-dyn-1]\n",
                '    pools: [flets-east-dyn-1]\n    max_offenders: "10"\n',
            )
        ),
        2,
        r"rollout\.yaml:\d+: stages\[1\]\.max_offenders: Input should be a valid integer",
    ),
    Case(
        "stage warn time without unit",
        "schedule",
        "warn_before: 7 (seven what?)",
        then(
            edit(
                R,
                "    pools: [flets-east-dyn-1]\n",
                "    pools: [flets-east-dyn-1]\n    warn_before: 7\n",
            )
        ),
        2,
        r"rollout\.yaml:\d+: stages\[1\]\.warn_before: Input should be a valid string",
    ),
    # ------------------------------------------------------------------ overrides
    Case(
        "overrides.json truncated",
        "overrides",
        "cut mid-object",
        then(
            lambda p, s: (s / "overrides.json").write_bytes(
                (s / "overrides.json").read_bytes()[:40]
            ),
            tick,
        ),
        1,
        r"overrides\.json: not valid JSON",
    ),
    Case(
        "overrides.json not UTF-8",
        "overrides",
        "bytes ff fe at the start",
        then(state_write("overrides.json", b"\xff\xfe{}"), tick),
        1,
        r"overrides\.json: not UTF-8",
    ),
    Case(
        "overrides.json a list",
        "overrides",
        "[1, 2]",
        then(state_write("overrides.json", b"[1, 2]"), tick),
        1,
        r"overrides\.json: not an op25b-ctl state file",
    ),
    Case(
        "override unknown action",
        "overrides",
        "action: disable",
        then(
            lambda p, s: (s / "overrides.json").write_text(
                (s / "overrides.json").read_text().replace('"rollback"', '"disable"')
            ),
            tick,
        ),
        1,
        r"overrides\.json: malformed override record .*unknown action",
    ),
    Case(
        "override naive time",
        "overrides",
        "set_at without offset",
        then(
            lambda p, s: (s / "overrides.json").write_text(
                re.sub(
                    r'"set_at": "([^"]+?)[+-]\d\d:\d\d"',
                    r'"set_at": "\1"',
                    (s / "overrides.json").read_text(),
                )
            ),
            tick,
        ),
        1,
        r"overrides\.json: malformed override record .*no UTC offset",
    ),
    Case(
        "override set_at month 13",
        "overrides",
        "set_at: 2011-13-20T00:00:00+09:00",
        then(
            lambda p, s: (s / "overrides.json").write_text(
                re.sub(
                    r'"set_at": "\d{4}-\d\d-\d\d',
                    '"set_at": "2011-13-20',
                    (s / "overrides.json").read_text(),
                )
            ),
            tick,
        ),
        1,
        r"overrides\.json: malformed override record .*not a real time: month must be",
    ),
    Case(
        "override until offset +24:00",
        "overrides",
        "until: ...+24:00",
        then(
            lambda p, s: (s / "overrides.json").write_text(
                re.sub(
                    r'("until": "[^"]+?)[+-]\d\d:\d\d"',
                    r'\1+24:00"',
                    (s / "overrides.json").read_text(),
                )
            ),
            tick,
        ),
        1,
        r"overrides\.json: malformed override record .*UTC offset \+24:00 is out of range",
    ),
    Case(
        ".tick.json impossible dates",
        "state",
        ".tick.json with at: month 13, next_change: 30 February (a cache: ignored)",
        then(
            state_write(
                ".tick.json",
                b'{"format": 1, "at": "2011-13-01T00:00:00+09:00", "next_change": '
                b'"2011-02-30T00:00:00+09:00", "inputs": "x", "generation": 1, "ruleset": "x"}',
            ),
            tick,
        ),
        0,
        r"^$",
    ),
    Case(
        "overrides.json symlink loop",
        "overrides",
        "overrides.json -> overrides.json",
        then(symlink_loop("overrides.json", "state"), tick),
        1,
        r"overrides\.json: is a symlink; refused",
    ),
    Case(
        "overrides.json a FIFO",
        "overrides",
        "mkfifo overrides.json",
        then(replace_with("state", "overrides.json", "fifo"), tick),
        1,
        r"overrides\.json: is a FIFO",
    ),
    # ------------------------------------------------------------------ state directory
    Case(
        ".lock planted symlink",
        "state",
        ".lock -> a file outside the state directory",
        then(planted(".lock"), pool_cmd("--reason", "INC-7")),
        1,
        r"lock refused: .*\.lock: is a symlink; refused",
    ),
    Case(
        "audit.jsonl planted symlink",
        "state",
        "audit.jsonl -> a file outside",
        then(planted("audit.jsonl"), pool_cmd("--reason", "INC-7")),
        1,
        r"audit log refused: .*audit\.jsonl: is a symlink; refused",
    ),
    Case(
        "audit log unwritable",
        "state",
        "audit.jsonl replaced by a directory",
        then(audit_dir, pool_cmd("--reason", "INC-7")),
        1,
        r"cannot open audit log .*nothing changed",
    ),
    Case(
        ".lock owned by another user",
        "state",
        "chown nobody .lock",
        then(chown_lock, pool_cmd("--reason", "INC-7")),
        1,
        r"lock refused: .*owned by uid 65534",
    ),
    Case(
        "state dir world-writable",
        "state",
        "chmod 0777 on the state directory",
        then(chmod("S", 0o777), pool_cmd("--reason", "INC-7")),
        1,
        r"state directory refused: .*writable by anyone",
    ),
    Case(
        "rollout.json garbage",
        "state",
        "rollout.json = `{`",
        then(state_write("rollout.json", b"{"), tick),
        1,
        r"rollout\.json: not valid JSON",
    ),
    Case(
        "audit.jsonl garbage lines",
        "state",
        "a non-JSON line and a non-UTF-8 line with ESC appended",
        then(garbage_audit, cmd("audit", "--state-dir", "{S}", "--policy", "{P}", now=False)),
        0,
        r"audit\.jsonl:\d+: skipped: not JSON.*\n.*audit\.jsonl:\d+: skipped: not UTF-8",
    ),
    Case(
        ".tick.json garbage",
        "state",
        ".tick.json = ff fe (a cache: ignored)",
        then(state_write(".tick.json", b"\xff\xfe"), tick),
        0,
        r"^$",
    ),
    # ------------------------------------------------------------------ a full disk
    # the state directory on a full tmpfs (a real ENOSPC): refused before anything changes
    Case(
        "disk full: pool enforce",
        "disk",
        "pool enforce flets-east-dyn-2",
        pool_cmd("--reason", "INC-7", pool="flets-east-dyn-2"),
        1,
        r"no space left on the filesystem of state directory .*/state \(0 bytes free.*"
        r"nothing changed",
        disk="space",
    ),
    Case(
        "disk full: pool clear",
        "disk",
        "pool clear flets-east-dyn-1 (an active override)",
        pool_cmd(action="clear"),
        1,
        r"no space left on the filesystem of state directory .*nothing changed",
        disk="space",
    ),
    Case(
        "disk full: rollout tick",
        "disk",
        "rollout tick with the west stage due",
        cmd(
            "rollout",
            "tick",
            "--policy",
            "{P}",
            "--state-dir",
            "{S}",
            "--now",
            "2011-01-25T09:00+09:00",
            now=False,
        ),
        1,
        r"no space left on the filesystem of state directory .*nothing changed",
        disk="space",
    ),
    Case(
        "disk full: apply",
        "disk",
        "apply",
        apply_,
        1,
        r"no space left on the filesystem of state directory .*nothing changed",
        disk="space",
    ),
    Case(
        "no inodes left: pool enforce",
        "disk",
        "pool enforce flets-east-dyn-2, every inode of the filesystem taken",
        pool_cmd("--reason", "INC-7", pool="flets-east-dyn-2"),
        1,
        r"state directory .* \(no free inodes to record a change\); nothing changed",
        disk="inodes",
    ),
    Case(
        "disk full: status and audit read",
        "disk",
        "status (reads only)",
        cmd("status", "--policy", "{P}", "--state-dir", "{S}"),
        0,
        r"^$",
        disk="space",
    ),
    Case(
        "disk full: policy cache",
        "disk",
        "validate with the policy cache on the full filesystem (a cache: not written)",
        cmd("validate", "--policy", "{P}", "--state-dir", "{S}", now=False),
        0,
        r"^$",
        disk="cache",
    ),
    # ------------------------------------------------------------------ CLI arguments
    Case(
        "--reason with newline",
        "cli",
        "--reason $'ok\\n{\"forged\": 1}'",
        pool_cmd("--reason", 'ok\n{"forged": 1}'),
        2,
        r"--reason contains control characters \(\\n\)",
    ),
    Case(
        "--reason with ESC",
        "cli",
        "--reason $'\\e[2J'",
        pool_cmd("--reason", "\x1b[2Jcleared"),
        2,
        r"--reason contains control characters \(\\x1b\)",
    ),
    Case(
        "--reason with bidi override",
        "cli",
        "--reason with U+202E",
        pool_cmd("--reason", "INC-\u202e1"),
        2,
        r"--reason contains control characters \(\\u202e\)",
    ),
    Case(
        "--reason empty",
        "cli",
        "--reason ''",
        pool_cmd("--reason", " "),
        2,
        r"--reason must say why",
    ),
    Case(
        "--reason too long",
        "cli",
        "--reason of 501 characters",
        pool_cmd("--reason", "x" * 501),
        2,
        r"at most 500",
    ),
    Case(
        "--until 30 February",
        "cli",
        "--until 2011-02-30T10:00+09:00",
        pool_cmd("--reason", "INC-7", "--until", "2011-02-30T10:00+09:00"),
        2,
        r"'2011-02-30T10:00\+09:00' is not a real time: day is out of range for month",
    ),
    Case(
        "--at hour 25",
        "cli",
        "rollout status --at 2011-01-20T25:00+09:00",
        cmd(
            "rollout",
            "status",
            "--policy",
            "{P}",
            "--state-dir",
            "{S}",
            "--at",
            "2011-01-20T25:00+09:00",
        ),
        2,
        r"is not a real time: hour must be in 0\.\.23",
    ),
    Case(
        "--now month 13",
        "cli",
        "apply --now 2011-13-20T09:00+09:00",
        cmd(
            "apply",
            "--policy",
            "{P}",
            "--state-dir",
            "{S}",
            "--now",
            "2011-13-20T09:00+09:00",
            now=False,
        ),
        2,
        r"is not a real time: month must be in 1\.\.12",
    ),
    Case(
        "--until empty",
        "cli",
        "--until ''",
        pool_cmd("--reason", "INC-7", "--until", ""),
        2,
        r"empty time",
    ),
    Case(
        "--until 99999999999d",
        "cli",
        "a duration overflowing timedelta",
        pool_cmd("--reason", "INC-7", "--until", "99999999999d"),
        2,
        r"longer than 3653 days",
    ),
    Case(
        "--until 3654d",
        "cli",
        "just over 10 years",
        pool_cmd("--reason", "INC-7", "--until", "3654d"),
        2,
        r"longer than 3653 days",
    ),
    Case(
        "--until year 9999",
        "cli",
        "--until 9999-12-31T23:59-09:00",
        pool_cmd("--reason", "INC-7", "--until", "9999-12-31T23:59-09:00"),
        2,
        r"outside 1970\.\.2099",
    ),
    Case(
        "--until month 13",
        "cli",
        "--until 2011-13-01T00:00+09:00",
        pool_cmd("--reason", "INC-7", "--until", "2011-13-01T00:00+09:00"),
        2,
        r"not a real time: month must be in 1\.\.12",
    ),
    Case(
        "--until +24:00",
        "cli",
        "--until 2011-01-21T00:00+24:00",
        pool_cmd("--reason", "INC-7", "--until", "2011-01-21T00:00+24:00"),
        2,
        r"not a real time: UTC offset \+24:00 is out of range",
    ),
    Case(
        "--until without offset",
        "cli",
        "--until 2011-01-21T00:00",
        pool_cmd("--reason", "INC-7", "--until", "2011-01-21T00:00"),
        2,
        r"no UTC offset",
    ),
    Case(
        "--until in the past",
        "cli",
        "--until 2010-01-01T00:00+09:00",
        pool_cmd("--reason", "INC-7", "--until", "2010-01-01T00:00+09:00"),
        2,
        r"not in the future",
    ),
    Case(
        "--now garbage",
        "cli",
        "--now yesterday",
        cmd("status", "--policy", "{P}", "--state-dir", "{S}", "--now", "yesterday", now=False),
        2,
        r"not an ISO 8601 time",
    ),
    Case(
        "--lock-timeout nan",
        "cli",
        "--lock-timeout nan",
        cmd("apply", "--policy", "{P}", "--state-dir", "{S}", "--lock-timeout", "nan"),
        2,
        r"finite number of seconds",
    ),
    Case(
        "--lock-timeout inf",
        "cli",
        "--lock-timeout inf",
        cmd("apply", "--policy", "{P}", "--state-dir", "{S}", "--lock-timeout", "inf"),
        2,
        r"finite number of seconds",
    ),
    Case(
        "--lock-timeout negative",
        "cli",
        "--lock-timeout -1",
        cmd("apply", "--policy", "{P}", "--state-dir", "{S}", "--lock-timeout=-1"),
        2,
        r"0 or more seconds",
    ),
    Case(
        "daemon --interval inf",
        "cli",
        "daemon --interval inf",
        cmd("daemon", "--policy", "{P}", "--state-dir", "{S}", "--interval", "inf", now=False),
        2,
        r"finite number of seconds",
    ),
    Case(
        "daemon --interval nan",
        "cli",
        "daemon --interval nan",
        cmd("daemon", "--policy", "{P}", "--state-dir", "{S}", "--interval", "nan", now=False),
        2,
        r"finite number of seconds",
    ),
    Case(
        "daemon --verify-interval -5",
        "cli",
        "daemon --verify-interval -5",
        cmd("daemon", "--policy", "{P}", "--verify-interval=-5", now=False),
        2,
        r"0 or more seconds",
    ),
    Case(
        "daemon bad metrics address",
        "cli",
        "--metrics-address 127.0.0.1:99999",
        cmd("daemon", "--policy", "{P}", "--metrics-address", "127.0.0.1:99999", now=False),
        2,
        r"metrics address",
    ),
    Case(
        "teardown --table injection",
        "cli",
        "--table 'op25b; flush ruleset'",
        cmd(
            "teardown", "--yes", "--table", "op25b; flush ruleset", "--state-dir", "{S}", now=False
        ),
        2,
        r"not an op25b table name",
    ),
    Case(
        "teardown --table other",
        "cli",
        "--table filter",
        cmd("teardown", "--yes", "--table", "filter", "--state-dir", "{S}", now=False),
        2,
        r"not an op25b table name",
    ),
    Case(
        "teardown foreign op25b* table",
        "cli",
        "--table op25b_foreign: a table with a chain named smtp, not ours",
        foreign_table,
        2,
        r"was not created by op25b-ctl",
    ),
    Case(
        "teardown without --yes",
        "cli",
        "teardown (no confirmation)",
        cmd("teardown", "--state-dir", "{S}", now=False),
        2,
        r"Re-run with --yes",
    ),
    Case(
        "pool unknown",
        "cli",
        "pool enforce no-such-pool",
        pool_cmd("--reason", "INC-7", pool="no-such-pool"),
        2,
        r"unknown pool 'no-such-pool'",
    ),
    Case(
        "pool static",
        "cli",
        "pool enforce static-biz",
        pool_cmd("--reason", "INC-7", pool=STATIC),
        2,
        r"is a static pool",
    ),
    Case(
        "explain not an address",
        "cli",
        "explain 192.0.2.999",
        cmd("explain", "192.0.2.999", "--policy", "{P}", "--state-dir", "{S}"),
        2,
        r"not an IP address",
    ),
    Case(
        "explain mixed families",
        "cli",
        "explain 192.0.2.10 --to 2001:db8::1",
        cmd(
            "explain", "192.0.2.10", "--to", "2001:db8::1", "--policy", "{P}", "--state-dir", "{S}"
        ),
        2,
        r"same address family",
    ),
    Case(
        "audit -n not a number",
        "cli",
        "audit -n abc",
        cmd("audit", "-n", "abc", "--state-dir", "{S}", now=False),
        2,
        r"invalid int value",
    ),
    Case(
        "offenders of an unknown pool",
        "cli",
        "offenders --pool nope",
        cmd("offenders", "--pool", "nope", "--policy", "{P}", "--state-dir", "{S}"),
        2,
        r"no such pool in pools\.yaml: nope",
    ),
    Case(
        "offenders --top negative",
        "cli",
        "offenders --top -1",
        cmd("offenders", "--top", "-1", "--policy", "{P}", "--state-dir", "{S}"),
        2,
        r"outside 0\.\.10000000",
    ),
    Case(
        "unknown output format",
        "cli",
        "-o yaml",
        cmd("status", "-o", "yaml", "--policy", "{P}", "--state-dir", "{S}"),
        2,
        r"invalid choice: 'yaml'",
    ),
    # ------------------------------------------------------------------ discovery (docs/discovery.md)
    Case(
        "discovery: proto boot alone",
        "policy",
        "discovery.routes: [{protocols: [boot]}] (ip route add's default)",
        then(edit(G, 'interfaces: ["ppp*"]', "routes: [{protocols: [boot]}]")),
        2,
        r"gateway\.yaml:\d+: gateway\.discovery\.routes\[0\]: proto boot in the main table",
    ),
    Case(
        "discovery: unknown protocol name",
        "policy",
        "discovery.routes: [{protocols: [bootx], interfaces: [ipoe*]}]",
        then(
            edit(G, 'interfaces: ["ppp*"]', "routes: [{protocols: [bootx], interfaces: [ipoe*]}]")
        ),
        2,
        r"gateway\.yaml:\d+: gateway\.discovery\.routes\[0\]\.protocols\[0\]: unknown route protocol name",
    ),
    Case(
        "discovery: every interface",
        "policy",
        "discovery.interfaces: ['*']",
        then(edit(G, 'interfaces: ["ppp*"]', "interfaces: ['*']")),
        2,
        r"gateway\.yaml:\d+: gateway\.discovery\.interfaces\[0\]: '\*' matches every interface",
    ),
    Case(
        "discover --gateway without --store",
        "cli",
        "discover --gateway bras-1",
        cmd("discover", "--gateway", "bras-1", "--policy", "{P}", "--state-dir", "{S}", now=False),
        2,
        r"--gateway goes with --store",
    ),
]


# ---------------------------------------------------------------------------- the namespace


def in_ns(
    ns: str, argv: list[str], *, user: int | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    prefix = ["ip", "netns", "exec", ns]
    if user is not None:
        prefix += ["setpriv", f"--reuid={user}", f"--regid={user}", "--clear-groups"]
    # no policy cache in root's home: the case's files are all it may read or write
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1", "OP25B_CACHE_DIR": "off"}
    return subprocess.run(
        [*prefix, *argv], capture_output=True, text=True, timeout=timeout, env=env, check=False
    )


def ruleset(ns: str) -> str:
    cp = in_ns(ns, ["nft", "list", "ruleset"])
    assert cp.returncode == 0, cp.stderr
    return cp.stdout


def tree_digest(root: Path) -> dict[str, str]:
    """Every entry under `root` (the lock file's holder line excepted): file bytes, link
    targets, kinds. Byte-identical state means this is equal before and after."""
    out: dict[str, str] = {}
    if not root.exists() and not root.is_symlink():
        return {"": "absent"}
    if root.is_file() and not root.is_symlink():
        return {"": hashlib.sha256(root.read_bytes()).hexdigest()}
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            rel = str(path.relative_to(root))
            st = path.lstat()
            if path.is_symlink():
                out[rel] = "-> " + os.readlink(path)
            elif path.is_dir():
                out[rel] = f"dir {st.st_mode:o}"
            elif not path.is_file():
                out[rel] = f"special {st.st_mode:o}"
            elif name == ".lock":  # holds the last holder's pid: rewritten by every command
                out[rel] = f"lock {st.st_mode:o} uid {st.st_uid}"
            elif name == ".tick.json":  # a cache that any full tick may replace
                out[rel] = "cache"
            else:
                out[rel] = f"{st.st_mode:o} " + hashlib.sha256(path.read_bytes()).hexdigest()
    return out


@dataclass
class Base:
    ns: str
    policy: Path
    state: Path
    can_nobody: bool


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Base]:
    reason = lab_unavailable()
    if reason:
        pytest.skip(reason)
    ns = f"op25b-bad-{secrets.token_hex(4)}"
    subprocess.run(["ip", "netns", "add", ns], check=True, capture_output=True)
    try:
        root = tmp_path_factory.mktemp("badinput")
        policy = root / "policy"
        policy.mkdir()
        for f in EXAMPLE.glob("*.yaml"):
            shutil.copy(f, policy / f.name)
        state = root / "state"
        for argv in (
            apply_(policy, state),
            pool_cmd("--reason", "INC-1 relay outage", "--until", "4h", action="rollback")(
                policy, state
            ),
        ):
            cp = in_ns(ns, [CTL, *argv])
            assert cp.returncode == 0, cp.stderr
        # a foreign table whose name passes the name check (op25b_*) and has a chain `smtp`
        foreign = (
            'table inet op25b_foreign {\n chain smtp {\n counter accept comment "theirs"\n }\n}\n'
        )
        cp = subprocess.run(
            ["ip", "netns", "exec", ns, "nft", "-f", "-"],
            input=foreign,
            text=True,
            capture_output=True,
            check=False,
        )
        assert cp.returncode == 0, cp.stderr
        os.chmod(root, 0o755)
        can_nobody = (
            subprocess.run(
                ["runuser", "-u", "nobody", "--", "test", "-x", CTL], check=False
            ).returncode
            == 0
        )
        yield Base(ns, policy, state, can_nobody)
    finally:
        subprocess.run(["ip", "netns", "delete", ns], check=False, capture_output=True)


def test_the_corpus_has_at_least_60_distinct_cases() -> None:
    names = [c.name for c in CASES]
    assert len(names) == len(set(names)) and len(names) >= 60


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input(case: Case, base: Base, tmp_path: Path, record: Recorder) -> None:
    if case.as_nobody and not base.can_nobody:
        pytest.skip("user nobody cannot run this checkout's venv")
    policy = tmp_path / "policy"
    state = tmp_path / "state"
    shutil.copytree(base.policy, policy)
    shutil.copytree(base.state, state, symlinks=True)
    tmp_path.chmod(0o755)
    if case.as_nobody:
        shutil.chown(policy, NOBODY, NOBODY)
    argv = case.setup(policy, state)
    before_rules = ruleset(base.ns)
    before_state = tree_digest(state)
    before_policy = tree_digest(policy)
    outside = sorted(tmp_path.glob("precious-*"))
    t0 = time.monotonic()
    command = [CTL, *argv]
    if case.disk:  # a private mount namespace of its own: a full tmpfs over the state dir
        command = ["unshare", "--mount", "--propagation", "private", sys.executable, FULLFS]
        command += [case.disk, str(state), "--", CTL, *argv]
    cp = in_ns(base.ns, command, user=NOBODY if case.as_nobody else None)
    elapsed = time.monotonic() - t0
    after_rules = ruleset(base.ns)
    first = next((line for line in cp.stderr.splitlines() if line.strip()), "")
    same_rules = after_rules == before_rules
    same_state = tree_digest(state) == before_state and tree_digest(policy) == before_policy
    untouched = all(p.read_text() == "must stay as it is\n" for p in outside)
    record(
        case.name,
        done=f"{case.kind}: {case.done}; `op25b-ctl {argv[0]}{' ' + argv[1] if len(argv) > 1 and not argv[1].startswith('-') and '/' not in argv[1] else ''}`",
        expected=f"exit {case.exit}; {'stderr names the problem' if case.exit else 'tolerated'}; ruleset and state byte-identical",
        observed=f"exit {cp.returncode}; {first[:160] or '(silent)'}; ruleset {'identical' if same_rules else 'CHANGED'}, state {'identical' if same_state and untouched else 'CHANGED'}",
        figure=f"{elapsed:.2f} s",
    )
    assert cp.returncode == case.exit, cp.stderr + cp.stdout
    assert re.search(case.error, cp.stderr, re.S | re.M), cp.stderr
    assert "Traceback" not in cp.stderr
    assert same_rules, "the live ruleset changed"
    assert same_state, (
        "the state or policy directory changed",
        before_state,
        tree_digest(state),
    )
    assert untouched, "a symlink target outside the state directory was written"
