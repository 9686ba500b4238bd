"""What our rules look like in the kernel, learned right after our own commits.

A rule's comment carries the id of its text (`op25b:<id>`), so a hand edit that keeps the
comment (`nft replace rule ... comment "op25b:<id>"`) is invisible to the shape diff. The
kernel's encoding of one text is always the same, so the digest of each rule's expressions,
read right after *we* wrote it, is the reference for every later look: a different digest is
an edit; a rule with no reference, or whose digest could not be read, is unverified and gets
rewritten (and then learned). Nothing is learned from a first look at a table that already
existed: that would trust whatever someone left there.

    <state-dir>/.rule-digests.json   {"format": 1, "digests": {rule id: digest}}

The file only saves a rewrite after a restart and lets `status` judge the statements; if it is
missing or unreadable every rule is simply unverified once.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from op25b_ctl.kernel.base import UNREADABLE, RuleDigests
from op25b_ctl.plan.table import RULE_TAG, Table
from op25b_ctl.source.state import write_atomic

log = logging.getLogger("op25b_ctl.rulerefs")

FILE = ".rule-digests.json"
NOT_LEARNED = "not-learned"  # `as_read`'s digest of a rule the reference does not hold
FORMAT = 1
_MAX_BYTES = 16 << 20  # ~100 bytes a rule: far beyond any real policy


@dataclass(frozen=True)
class Verdict:
    """Our chains judged against the reference."""

    tampered: frozenset[str]  # a rule's statements differ from what we wrote, or are unreadable
    unverified: frozenset[str]  # a rule of ours with no reference yet
    unreadable: int  # rules whose expressions could not be read (a reader fault: drift)

    @property
    def ok(self) -> bool:
        return not (self.tampered or self.unverified)


def judge(live: RuleDigests, reference: Mapping[str, str], chains: Iterable[str]) -> Verdict:
    """Compare the live digests of our rules in `chains` with the reference.

    Rules without our tag are left to the shape diff (they show as `foreign:<handle>` ids).
    """
    ours = set(chains)
    tampered: set[str] = set()
    unverified: set[str] = set()
    unreadable = 0
    for (chain, key), digests in live.items():
        if chain not in ours or not key.startswith(RULE_TAG):
            continue
        want = reference.get(key[len(RULE_TAG) :])
        for digest in digests:
            if digest == UNREADABLE:
                unreadable += 1
                tampered.add(chain)
            elif want is None:
                unverified.add(chain)
            elif digest != want:
                tampered.add(chain)
    return Verdict(frozenset(tampered), frozenset(unverified - tampered), unreadable)


def learn(
    reference: Mapping[str, str], written: RuleDigests, keep: Iterable[str]
) -> dict[str, str]:
    """The reference after reading back rules we just wrote; only ids in `keep` (the desired
    table's) are kept, so the file never grows past one policy. An unreadable digest is never
    learned (the rule stays unverified and is rewritten: loud, not silent)."""
    out = dict(reference)
    for (_, key), digests in written.items():
        if key.startswith(RULE_TAG) and len(set(digests)) == 1 and digests[0] != UNREADABLE:
            out[key[len(RULE_TAG) :]] = digests[0]
    wanted = set(keep)
    return {k: v for k, v in out.items() if k in wanted}


def as_read(table: Table, reference: Mapping[str, str]) -> RuleDigests:
    """The digests a read of `table`'s rules would give, when nothing has committed since
    they were read back into `reference`; a rule not in it gets a digest no reference
    holds, so `judge` calls it unverified, as after a read."""
    out: dict[tuple[str, str], list[str]] = {}
    for chain in table.chains.values():
        for rule in chain.rules:
            out.setdefault((chain.name, rule.comment), []).append(
                reference.get(rule.id, NOT_LEARNED)
            )
    return {key: tuple(v) for key, v in out.items()}


def path_in(state_dir: Path | None) -> Path | None:
    """Where a gateway with this state directory keeps its reference (None: in memory only)."""
    return None if state_dir is None else state_dir / FILE


def load(path: Path | None) -> dict[str, str]:
    """The saved reference; {} when absent or not ours (then every rule is verified by
    rewriting it once)."""
    if path is None:
        return {}
    try:
        if path.is_symlink() or not path.is_file() or path.stat().st_size > _MAX_BYTES:
            return {}
        data = json.loads(path.read_bytes())
    except (OSError, ValueError) as exc:
        log.warning("rule reference %s unreadable (%s): rules will be rewritten once", path, exc)
        return {}
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        return {}
    digests = data.get("digests")
    if not isinstance(digests, dict):
        return {}
    return {k: v for k, v in digests.items() if isinstance(k, str) and isinstance(v, str)}


def save(path: Path | None, reference: Mapping[str, str]) -> None:
    """Write the reference atomically; a failure (disk full) only costs a rewrite later."""
    if path is None or not path.parent.is_dir():
        return  # creating the state directory is not this module's business
    text = json.dumps({"format": FORMAT, "digests": dict(sorted(reference.items()))}, indent=0)
    try:
        write_atomic(path, text + "\n")
    except OSError as exc:
        log.warning("cannot save the rule reference %s: %s", path, exc)
