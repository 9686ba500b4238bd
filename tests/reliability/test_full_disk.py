"""A full disk after the commit, and every writer of state on a full disk (a real ENOSPC).

The bad-input corpus (test_bad_input.py, kind `disk`) has the commands refused *before*
anything changes (exit 1). Here: the disk that fills between that check and the record
(exit 3: the gateway WAS changed, stderr says how, nothing half-written), and each writer
(state files, audit log, live record, rule reference, policy cache, fleet snapshot) on a
full tmpfs: an error or a silent skip as documented, the old file intact, no temp file left.
Every filesystem here is a tmpfs in a private mount namespace the test makes.
"""

from __future__ import annotations

import json
import secrets
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.conftest import lab_unavailable
from tests.policytools import EXAMPLE, REPO
from tests.reliability.conftest import Recorder
from tests.reliability.test_bad_input import CTL, FULLFS, NOW, in_ns

SECTION = "fault"
pytestmark = pytest.mark.root
EAST2 = "flets-east-dyn-2"


@pytest.fixture
def ns() -> Iterator[str]:
    reason = lab_unavailable()
    if reason:
        pytest.skip(reason)
    name = f"op25b-full-{secrets.token_hex(4)}"
    subprocess.run(["ip", "netns", "add", name], check=True, capture_output=True)
    try:
        yield name
    finally:
        subprocess.run(["ip", "netns", "delete", name], check=False, capture_output=True)


def test_disk_full_after_the_commit(ns: str, tmp_path: Path, record: Recorder) -> None:
    policy, state = tmp_path / "policy", tmp_path / "state"
    shutil.copytree(EXAMPLE, policy)
    base = ["--policy", str(policy), "--state-dir", str(state), "--now", NOW]
    cp = in_ns(ns, [CTL, "apply", *base])
    assert cp.returncode == 0, cp.stderr
    log = state / "audit.jsonl"
    with log.open("ab") as fh:  # whole pages: no slack in the last one takes the next line
        fh.write(b"\n" * (-log.stat().st_size % 4096))
    before_log = log.read_bytes()
    argv = [CTL, "pool", "enforce", EAST2, "--reason", "INC-9", *base]
    cp = in_ns(
        ns,
        ["unshare", "--mount", "--propagation", "private", sys.executable, FULLFS, "audit"]
        + [str(state), "--", *argv],
    )
    chain = in_ns(ns, ["nft", "list", "chain", "inet", "op25b", f"pool_{EAST2}"]).stdout
    overrides = json.loads((state / "overrides.json").read_text())["overrides"]
    first = cp.stderr.strip().splitlines()[-1] if cp.stderr.strip() else ""
    record(
        "disk full after the commit",
        done="audit.jsonl alone on a full tmpfs (the state directory has room, so the "
        "checks before the commit pass); `pool enforce`",
        expected="exit 3; stderr says the gateway WAS changed and why the record failed; "
        "the audit log byte-identical (no half line)",
        observed=f"exit {cp.returncode}: {first[:160]}; pool chain "
        f"{'enforcing' if 'reject' in chain else 'NOT enforcing'}; audit log "
        f"{'identical' if log.read_bytes() == before_log else 'CHANGED'}",
    )
    assert cp.returncode == 3, cp.stderr
    assert "Traceback" not in cp.stderr
    assert "pool enforce: the gateway WAS changed (flets-east-dyn-2 monitor->enforce" in cp.stderr
    assert f"cannot append to audit log {log}: no space left on device" in cp.stderr
    assert "reject" in chain and overrides[EAST2]["action"] == "enforce"
    assert log.read_bytes() == before_log


# every writer of the state directory, the cache and the fleet snapshot on a full tmpfs;
# prints one JSON object: writer -> what happened
WRITERS = r"""
import errno, json, logging, os, sys
from pathlib import Path
from op25b_ctl.errors import StateError
from op25b_ctl.policy import cache
from op25b_ctl.source import audit, rulerefs
from op25b_ctl.source.etcd import StoreSnapshot
from op25b_ctl.source.fleet import FleetSource, save_snapshot
from op25b_ctl.source.state import StateDir, write_atomic
from datetime import UTC, datetime

full, example = Path(sys.argv[1]), Path(sys.argv[2])
state = StateDir(full / "state")
big = "x" * 300_000  # larger than any slack: the write needs new blocks
out = {}

def attempt(name, fn):
    try:
        fn()
        out[name] = "ok"
    except StateError as exc:
        out[name] = "StateError: " + str(exc)
    except OSError as exc:
        out[name] = f"OSError {errno.errorcode.get(exc.errno, exc.errno)}"

attempt("overrides.json", lambda: state._write_json(state.overrides_file, {"overrides": {}, "pad": big}))
attempt("rollout.json", lambda: state._write_json(state.rollout_file, {"applied_stages": {"s": big}}))
attempt("audit.jsonl", lambda: audit.append(state.audit_file, audit.Entry(
    at=datetime(2011, 1, 20, tzinfo=UTC), user="t", command=["t"], action="t", detail=big)))
attempt(".tick.json", lambda: state.save_tick_cache({"pad": big}))
attempt(".rule-digests.json", lambda: rulerefs.save(state.path / ".rule-digests.json", {"r": big}))
snapshot = full / "state" / "fleet-snapshot.json"
attempt("fleet-snapshot.json", lambda: save_snapshot(snapshot, StoreSnapshot(7, {"k": big.encode()}), "etcd://x/p", "gw"))
logging.basicConfig(level=logging.ERROR, format="%(message)s", stream=sys.stdout)
source = FleetSource.__new__(FleetSource)
source.snapshot_file, source.gateway = snapshot, "gw"
source.store = type("S", (), {"config": type("C", (), {"url": "etcd://x/p"})()})()
attempt("fleet snapshot (daemon)", lambda: source._save(StoreSnapshot(7, {"k": big.encode()})))
attempt(".live-sets.json", lambda: state.save_live_sets("k", "f", {"s": {big: None}}))
attempt("policy cache", lambda: cache.load(example, full / "cache"))
print(json.dumps(out))
"""


def test_every_writer_on_a_full_disk(tmp_path: Path, record: Recorder) -> None:
    if lab_unavailable():
        pytest.skip(str(lab_unavailable()))
    mnt = tmp_path / "full"
    mnt.mkdir()
    files = {
        "overrides.json": '{"format": 1, "overrides": {}}\n',
        "rollout.json": '{"applied_stages": {}, "format": 1}\n',
        "audit.jsonl": '{"action": "apply"}\n',
        ".tick.json": '{"format": 1}\n',
        ".rule-digests.json": '{"format": 1, "digests": {}}\n',
        "fleet-snapshot.json": '{"format": 1}\n',
        ".live-sets.json": '{"format": 1}\n',
    }
    setup = (
        f'set -e; mount -t tmpfs -o size=256k,mode=0755 tmpfs "{mnt}"; '
        f'mkdir -m 0750 "{mnt}/state"; mkdir -m 0700 "{mnt}/cache"; '
        + "".join(
            f"printf '%s' '{text}' > \"{mnt}/state/{name}\"; " for name, text in files.items()
        )
        + f'dd if=/dev/zero of="{mnt}/filler" bs=4k 2>/dev/null || true; '
        f'"{sys.executable}" -c "$1" "{mnt}" "{EXAMPLE}"; '
        f'echo "--"; ls -A "{mnt}/state" "{mnt}/cache"; '
        + "".join(f'printf "%s\\n" "$(cat "{mnt}/state/{name}")"; ' for name in files)
    )
    cp = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c", setup, "sh", WRITERS],
        capture_output=True,
        text=True,
        check=False,
        cwd=REPO,
    )
    assert cp.returncode == 0, cp.stderr
    results_text, _, listing = cp.stdout.rpartition("--\n")
    results = json.loads(results_text.strip().splitlines()[-1])
    logged = results_text
    names = listing.split()
    left = [n for n in names if n.startswith(".") and n not in files and n != ".lock"]
    contents = listing.strip().splitlines()[-len(files) :]
    intact = contents == [t.rstrip("\n") for t in files.values()]
    record(
        "every writer on a full disk",
        done="each writer (overrides.json, rollout.json, audit.jsonl, .tick.json, "
        ".rule-digests.json, fleet snapshot, .live-sets.json, policy cache) on a full 256 KiB "
        "tmpfs",
        expected="state files and the audit log: StateError naming the file; caches and the "
        "snapshot: skipped (the daemon logs the snapshot); old files intact, no temp files",
        observed="; ".join(f"{k}: {v[:60]}" for k, v in results.items())
        + f"; old files {'intact' if intact else 'CHANGED'}; temp files left: {left or 'none'}",
    )
    assert results["overrides.json"].startswith(
        f"StateError: cannot write {mnt}/state/overrides.json: no space left on device"
    ), results
    assert results["rollout.json"].startswith(
        f"StateError: cannot write {mnt}/state/rollout.json: no space left on device"
    ), results
    assert results["audit.jsonl"] == (
        f"StateError: cannot append to audit log {mnt}/state/audit.jsonl: no space left on device"
    ), results
    for cache_like in (
        ".tick.json",
        ".rule-digests.json",
        "fleet snapshot (daemon)",
        ".live-sets.json",
    ):
        assert results[cache_like] == "ok", results  # best effort: skipped, not fatal
    assert results["fleet-snapshot.json"] == "OSError ENOSPC", results
    assert "cannot write the local snapshot" in logged and "No space left" in logged
    assert results["policy cache"] == "ok", results
    assert not left, left
    assert intact, contents


def test_an_idle_tick_on_a_full_disk(ns: str, tmp_path: Path, record: Recorder) -> None:
    """A tick with nothing due and nothing to record (its idle cache holds) needs no space:
    cron stays silent; the first tick with work to do refuses (the corpus, `disk full:
    rollout tick`)."""
    policy, state = tmp_path / "policy", tmp_path / "state"
    shutil.copytree(EXAMPLE, policy)
    base = ["--policy", str(policy), "--state-dir", str(state), "--now", NOW]
    for command in ("apply", "rollout"):
        argv = [CTL, command, *(["tick"] if command == "rollout" else []), *base]
        cp = in_ns(ns, argv)
        assert cp.returncode == 0, cp.stderr
    assert (state / ".tick.json").is_file()
    before = {p.name: p.read_bytes() for p in state.iterdir() if p.name != ".lock"}
    cp = in_ns(
        ns,
        ["unshare", "--mount", "--propagation", "private", sys.executable, FULLFS, "space"]
        + [str(state), "--", CTL, "rollout", "tick", *base],
    )
    after = {p.name: p.read_bytes() for p in state.iterdir() if p.name != ".lock"}
    record(
        "idle tick on a full disk",
        done="state directory on a full tmpfs; `rollout tick` with nothing due (idle cache)",
        expected="exit 0, silent, state unchanged",
        observed=f"exit {cp.returncode}; {(cp.stderr.strip() or '(silent)')[:120]}; state "
        f"{'unchanged' if after == before else 'CHANGED'}",
    )
    assert cp.returncode == 0 and not cp.stdout and not cp.stderr, cp.stderr
    assert after == before
