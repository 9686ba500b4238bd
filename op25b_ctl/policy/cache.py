"""A cache of the last validated policy, so the many small commands skip YAML and checks.

Reading and validating 110,000 prefixes costs most of a command's time (docs/benchmarks.md); a command that changes one pool
needs none of it when the files have not changed since the last validation. The cache is one
JSON file per policy directory (never pickle: loading it must not run code), holding each
file's validated model on its own line under that file's digest, and, to decide whether it
may be used:

- the digest of the policy files' bytes (`loader.policy_digest`) and of each file: when all
  match, the entry is the policy; after an edit, the files whose digest still matches are
  taken from the entry and only the others are read and validated, then every cross-file
  check runs again (overlaps with the cached pools are answered from their packed spans);
- the digest of the validating code (model and loader sources): an upgrade misses;
- a sha256 of the entry itself: a truncated or corrupted file misses;
- the file and its directory must belong to the user reading it and be writable by nobody
  else, so another user cannot plant a policy that was never validated.

Any doubt means a miss: the policy is read and validated from the files as if there were no
cache, and a fresh entry is written if possible; any problem in an edited policy is reported
by a validation from scratch, so errors are exactly a full validation's. Write failures are
silent (a read-only cache directory only costs speed). Only policies that passed validation
are ever cached.
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

from pydantic import BaseModel

from op25b_ctl.fileio import make_dirs
from op25b_ctl.policy import loader, model
from op25b_ctl.policy.model import Policy, Pool, PoolsFile, SpanPrefixes
from op25b_ctl.policy.poolindex import DeferredPoolIndex, PoolIndex

FORMAT = 3  # 3: one line per file, each under its own digest
ENV = "OP25B_CACHE_DIR"  # "off" disables the cache
POOLS = "pools.yaml"
# The files the table's sets are built from (plan/ruleset.py): an edit of any other file
# (a stage's date, the gateway's settings) leaves the sets, and their 110,000 elements, alone.
SETS_FILES = ("pools.yaml", "relays.yaml")


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


def sets_digest(files: dict[str, str]) -> str:
    """The identity of the files the sets are built from, by their digests."""
    h = hashlib.sha256()
    for name in SETS_FILES:
        h.update(f"{name}\0{files.get(name, '')}\0".encode())
    return h.hexdigest()


def _owned_by_us(st: os.stat_result) -> bool:
    return st.st_uid == os.geteuid() and not st.st_mode & (stat.S_IWGRP | stat.S_IWOTH)


@dataclasses.dataclass(frozen=True)
class _Entry:
    """A sealed entry: the policy's digest, each file's digest and validated model (its JSON
    line, parsed only when used), and the pools' packed index."""

    digest: str
    files: dict[str, str]
    lines: dict[str, bytes]
    index: bytes

    def model(self, name: str) -> BaseModel | None:
        """File `name`'s validated model back, or None if the line does not restore."""
        try:
            return _restore(name, json.loads(self.lines[name]))
        except (KeyError, TypeError, ValueError, AttributeError):
            return None

    def spans(self) -> PoolIndex | None:
        try:
            return PoolIndex.from_json(json.loads(self.index))
        except (KeyError, TypeError, ValueError, AttributeError):
            return None


def _read(path: Path, directory: Path) -> _Entry | None:
    """The entry, if the file and its directory are ours alone, its seal (the first line, a
    sha256 of the rest) matches and it was written by this code for this directory."""
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
            header, *lines, index = text.split(b"\n")
            head = json.loads(header)
            if not isinstance(head, dict):
                return None
            files = head.get("files")
            if (
                head.get("format") != FORMAT
                or head.get("code") != code_digest()
                or head.get("directory") != str(directory.resolve())
                or not isinstance(files, dict)
                or len(files) != len(lines)
            ):
                return None
            return _Entry(
                str(head["digest"]), files, dict(zip(sorted(files), lines, strict=True)), index
            )
        except (OSError, ValueError, KeyError, TypeError):
            return None


def _restore(name: str, data: dict[str, Any]) -> BaseModel:
    """A file's model from its JSON. The small files are validated again (cheap, and it
    turns times back into datetimes); pools.yaml, 110,000 prefixes, is rebuilt without
    per-prefix checks because the seal and the digests say it is what validation produced."""
    if name == POOLS:
        pools = [
            Pool.model_construct(**{**p, "prefixes": list(p["prefixes"])}) for p in data["pools"]
        ]
        return PoolsFile.model_construct(pools=pools)
    return loader.FILES[name][0].model_validate(data)


def _finish(
    policy: Policy, digest: str, files: dict[str, str], packed_index: str, root: Path
) -> Policy:
    """The policy with its identities and the pools' packed index (`pool_of`, unpacked on
    first use; rebuilt from the prefixes if it does not unpack)."""
    done = dataclasses.replace(policy, digest=digest, sets_digest=sets_digest(files))
    if "_pool_index" in policy.__dict__:  # the checks' own index: same pools, keep it
        done.__dict__["_pool_index"] = policy.__dict__["_pool_index"]
    done.__dict__["_pool_spans"] = DeferredPoolIndex(
        packed_index, functools.partial(Policy.build_pool_spans, done)
    )
    return done


def lookup(directory: Path, digest: str, where: Path) -> Policy | None:
    """The cached policy for these exact files and this code, or None on any doubt."""
    entry = _read(entry_path(directory, where), directory)
    return _hit(entry, digest, directory) if entry is not None else None


def _hit(entry: _Entry, digest: str, directory: Path) -> Policy | None:
    """The entry's policy, if it is the one of these files (`digest`)."""
    if entry.digest != digest:
        return None
    models = {name: entry.model(name) for name in entry.files}
    known = {name: m for name, m in models.items() if m is not None}
    if len(known) != len(models):
        return None
    try:
        policy = loader.assemble(known)
    except (KeyError, AssertionError):
        return None
    return _finish(policy, digest, entry.files, entry.index.decode("ascii", "replace"), directory)


def store(
    directory: Path,
    digest: str,
    files: dict[str, str],
    lines: dict[str, bytes],
    index: bytes,
    where: Path,
) -> None:
    """Write the entry atomically (0600, in a 0700 directory); failures only cost speed.
    `lines`: each file's model as one line of JSON; `index`: the pools' packed spans."""
    header = {
        "format": FORMAT,
        "code": code_digest(),
        "digest": digest,
        "directory": str(directory.resolve()),
        "files": files,
    }
    text = b"\n".join(
        [json.dumps(header, sort_keys=True).encode(), *(lines[n] for n in sorted(files)), index]
    )
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


def _line(m: BaseModel) -> bytes:
    return json.dumps(m.model_dump(mode="json"), sort_keys=True).encode()


def load(directory: Path | str, where: Path | None = None) -> Policy:
    """`loader.load_policy`, answered from the cache when the files and code are unchanged,
    and validating only the edited files (then every cross-file check) when some are not."""
    root = Path(directory)
    where = cache_dir() if where is None else where
    if where is None or not root.is_dir():
        return loader.load_policy(root)
    texts = loader.read_policy_files(root)  # read once: what is digested is what is parsed
    digest = loader.texts_digest(texts)
    files = {name: loader.file_digest(text) for name, text in texts.items()}
    entry = _read(entry_path(root, where), root)
    if entry is not None and entry.files == files:
        hit = _hit(entry, digest, root)
        if hit is not None:
            return hit
    known: dict[str, BaseModel] = {}
    spans: PoolIndex | None = None
    if entry is not None:
        for name, file_digest in files.items():
            m = entry.model(name) if entry.files.get(name) == file_digest else None
            if m is not None:
                known[name] = m
        spans = entry.spans() if POOLS in known else None
        if spans is None:
            known.pop(POOLS, None)
    policy, models = loader.parse_policy_files(
        texts, str(root), known, SpanPrefixes(spans) if spans is not None else None
    )  # raises on an invalid policy: those are never cached
    # the lines of the files taken from the entry are copied, not encoded again
    lines = {
        name: entry.lines[name] if entry is not None and name in known else _line(m)
        for name, m in models.items()
    }
    if entry is not None and POOLS in known:
        index = entry.index
    else:
        index = json.dumps(policy._pool_spans.to_json()).encode()
    store(root, digest, files, lines, index, where)
    return _finish(policy, digest, files, index.decode("ascii"), root)


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
