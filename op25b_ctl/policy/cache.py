"""A cache of the last validated policy, so the many small commands skip YAML and checks.

Reading and validating 110,000 prefixes costs most of a command's time (docs/benchmarks.md); a command that changes one pool
needs none of it when the files have not changed since the last validation. The cache is one
JSON file per policy directory (never pickle: loading it must not run code), holding the
validated policy and, to decide whether it may be used:

- the digest of the policy files' bytes (`loader.policy_digest`): edited files miss;
- the digest of the validating code (model and loader sources): an upgrade misses;
- a sha256 of the entry itself: a truncated or corrupted file misses;
- the file and its directory must belong to the user reading it and be writable by nobody
  else, so another user cannot plant a policy that was never validated.

Any doubt means a miss: the policy is read and validated from the files as if there were no
cache, and a fresh entry is written if possible. Write failures are silent (a read-only cache
directory only costs speed). Only policies that passed validation are ever cached.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import json
import os
import stat
import tempfile
from functools import cache
from pathlib import Path
from typing import Any

from op25b_ctl.fileio import make_dirs
from op25b_ctl.policy import loader, model
from op25b_ctl.policy.model import (
    Exemption,
    FleetGateway,
    Gateway,
    Policy,
    Pool,
    Relay,
    Stage,
)
from op25b_ctl.policy.poolindex import DeferredPoolIndex

FORMAT = 2  # 2: with the packed pool index
ENV = "OP25B_CACHE_DIR"  # "off" disables the cache


def cache_dir() -> Path | None:
    """$OP25B_CACHE_DIR, systemd's $CACHE_DIRECTORY (CacheDirectory=), else the XDG cache."""
    explicit = os.environ.get(ENV)
    if explicit is not None:
        return None if explicit in ("", "off") else Path(explicit)
    systemd = os.environ.get("CACHE_DIRECTORY")
    if systemd:
        return Path(systemd.split(":")[0])
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg) if xdg else Path.home() / ".cache"
    return base / "op25b"


@cache
def code_digest() -> str:
    """Identity of the code that validated an entry: the sources of the checks themselves."""
    h = hashlib.sha256(f"{FORMAT}".encode())
    for module in (model, loader):
        assert module.__file__ is not None
        h.update(Path(module.__file__).read_bytes())
    return h.hexdigest()


def entry_path(directory: Path, where: Path) -> Path:
    key = hashlib.sha256(str(directory.resolve()).encode()).hexdigest()[:24]
    return where / f"policy-{key}.json"


def _owned_by_us(st: os.stat_result) -> bool:
    return st.st_uid == os.geteuid() and not st.st_mode & (stat.S_IWGRP | stat.S_IWOTH)


def _read(path: Path) -> tuple[dict[str, Any], str] | None:
    """The entry's body and its packed pool index (text, parsed only when asked), if the file
    and its directory are ours alone and its seal (the first line, a sha256 of the rest)
    matches, else None."""
    try:
        if not _owned_by_us(path.parent.stat()):
            return None
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        return None
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode) or not _owned_by_us(st):
            return None
        try:
            seal, _, text = f.read().partition(b"\n")
            if seal.decode("ascii", "replace") != hashlib.sha256(text).hexdigest():
                return None
            body, _, index = text.partition(b"\n")
            data = json.loads(body)
            packed = index.decode("ascii")
        except (OSError, ValueError):
            return None
    return (data, packed) if isinstance(data, dict) else None


def _to_json(policy: Policy) -> dict[str, Any]:
    return {
        "gateway": policy.gateway.model_dump(mode="json"),
        "pools": [p.model_dump(mode="json") for p in policy.pools],
        "relays": [r.model_dump(mode="json") for r in policy.relays],
        "stages": [s.model_dump(mode="json") for s in policy.stages],
        "exemptions": [e.model_dump(mode="json") for e in policy.exemptions],
        "timezone": policy.timezone,
        "gateways": [g.model_dump(mode="json") for g in policy.gateways],
    }


def _from_json(data: dict[str, Any], digest: str, packed_index: str) -> Policy:
    """The policy back. The small models are validated again (cheap, and it turns times back
    into datetimes); pools and relays, 110,000 prefixes, are rebuilt without per-prefix checks
    because the seal and the digests say they are what validation produced."""
    policy = Policy(
        gateway=Gateway.model_validate(data["gateway"]),
        pools=tuple(
            Pool.model_construct(**{**p, "prefixes": list(p["prefixes"])}) for p in data["pools"]
        ),
        relays=tuple(Relay.model_construct(**r) for r in data["relays"]),
        stages=tuple(Stage.model_validate(s) for s in data["stages"]),
        exemptions=tuple(Exemption.model_validate(e) for e in data["exemptions"]),
        timezone=str(data["timezone"]),
        gateways=tuple(FleetGateway.model_validate(g) for g in data["gateways"]),
        digest=digest,
    )
    # `pool_of` from the packed spans (unpacked on first use) instead of 110,000 parses
    policy.__dict__["_pool_spans"] = DeferredPoolIndex(
        packed_index, functools.partial(Policy.build_pool_spans, policy)
    )
    return policy


def lookup(directory: Path, digest: str, where: Path) -> Policy | None:
    """The cached policy for these exact files and this code, or None on any doubt."""
    entry = _read(entry_path(directory, where))
    if entry is None:
        return None
    body, packed_index = entry
    if (
        body.get("format") != FORMAT
        or body.get("code") != code_digest()
        or body.get("digest") != digest
        or body.get("directory") != str(directory.resolve())
    ):
        return None
    try:
        return _from_json(body["policy"], digest, packed_index)
    except (KeyError, TypeError, ValueError):
        return None


def store(directory: Path, digest: str, policy: Policy, where: Path) -> None:
    """Write the entry atomically (0600, in a 0700 directory); failures only cost speed."""
    body = {
        "format": FORMAT,
        "code": code_digest(),
        "digest": digest,
        "directory": str(directory.resolve()),
        "policy": _to_json(policy),
    }
    # line 2: the body; line 3: the pools' packed index, which only `pool_of` parses
    text = (
        json.dumps(body, sort_keys=True) + "\n" + json.dumps(policy._pool_spans.to_json())
    ).encode()
    with contextlib.suppress(OSError):
        make_dirs(where, mode=0o700)  # umask-proof: never a world-writable parent
        fd, tmp = tempfile.mkstemp(dir=where, prefix=".policy-", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(hashlib.sha256(text).hexdigest().encode() + b"\n" + text)
            os.replace(tmp, entry_path(directory, where))
        except OSError:
            with contextlib.suppress(OSError):
                os.unlink(tmp)


def load(directory: Path | str, where: Path | None = None) -> Policy:
    """`loader.load_policy`, answered from the cache when the files and code are unchanged."""
    root = Path(directory)
    where = cache_dir() if where is None else where
    if where is None or not root.is_dir():
        return loader.load_policy(root)
    digest = loader.policy_digest(root)
    hit = lookup(root, digest, where)
    if hit is not None:
        return hit
    policy = loader.load_policy(root)  # raises on an invalid policy: those are never cached
    if loader.policy_digest(root) != digest:  # edited while we read it: digest unknown
        return policy
    store(root, digest, policy, where)
    return dataclasses.replace(policy, digest=digest)


_loaded: list[tuple[Path, str, Policy]] = []


def load_policy_cached(directory: Path | str) -> Policy:
    """`loader.load_policy`, reusing the last result while the files' bytes are the same.

    For the daemon: a stage falling due or an override changing recomputes the desired
    state, and re-validating 110,000 prefixes each time costs seconds where hashing the files
    costs milliseconds (docs/performance.md). The same Policy object back also lets the ruleset reuse its sets.
    The first load goes through `load`, the on-disk cache: a restart with unchanged
    files skips validation.
    """
    root = Path(directory).resolve()
    digest = loader.policy_digest(root)
    for cached_root, cached_digest, policy in _loaded:
        if cached_root == root and cached_digest == digest:
            return policy
    policy = load(root)
    _loaded[:] = [(root, digest, policy)]
    return policy
