"""Policy directory -> validated `Policy`, with errors that point at the user's file and line.

The only module that reads policy files. YAML is parsed once into nodes; we keep the line of
every mapping key and sequence item so a pydantic error location such as
`('pools', 2, 'prefixes', 1)` becomes `pools.yaml:14: pools[2].prefixes[1]: ...`.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from op25b_ctl.errors import PolicyError, Problem
from op25b_ctl.fileio import UnsafeFileError, describe_oserror, read_bounded
from op25b_ctl.policy import yamlfast
from op25b_ctl.policy.model import (
    PATTERN_HELP,
    ExemptionsFile,
    GatewayFile,
    GatewaysFile,
    Policy,
    PoolPrefixes,
    PoolsFile,
    RelaysFile,
    RolloutFile,
    check_policy,
    format_path,
    parsed_nets,
)

Path_ = tuple[str | int, ...]
M = TypeVar("M", bound=BaseModel)

# file name -> (model, required)
FILES: dict[str, tuple[type[BaseModel], bool]] = {
    "gateway.yaml": (GatewayFile, False),
    "pools.yaml": (PoolsFile, True),
    "relays.yaml": (RelaysFile, True),
    "rollout.yaml": (RolloutFile, False),
    "exemptions.yaml": (ExemptionsFile, False),
    "gateways.yaml": (GatewaysFile, False),  # the fleet: gateways, groups, their pools
}

_Loader: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class _PolicyLoader(_Loader):  # type: ignore[valid-type,misc]
    """The safe loader, except that a timestamp that cannot exist stays a string."""


def _timestamp(loader: yaml.SafeLoader, node: yaml.ScalarNode) -> object:
    """YAML's timestamp, or the scalar's text if it names no real time (month 13,
    30 February, hour 25, offset +24:00): PyYAML's constructor raises ValueError for those
    before any check of ours runs, which was a traceback; as text, the model refuses it with
    file, line, field and why (`model.aware_datetime`), together with every other problem."""
    try:
        return yaml.constructor.SafeConstructor.construct_yaml_timestamp(loader, node)
    except (ValueError, OverflowError):
        return loader.construct_scalar(node)


_PolicyLoader.add_constructor("tag:yaml.org,2002:timestamp", _timestamp)

# Bounds checked on the event stream, before anything is composed or expanded: a 399-byte
# alias bomb would otherwise expand to gigabytes, and deep nesting recurses in the composer
# (RecursionError at 1,000 levels, SIGSEGV in libyaml's at 100,000). A policy needs neither:
# its deepest path is 5 levels, and 1,000,000 prefixes fit in ~30 MB. The event pass costs
# ~0.1 s at 100,000 prefixes (composing them costs ~0.6 s).
MAX_FILE_BYTES = 64 << 20
MAX_DEPTH = 32
MAX_ALIASES = 1_000
MAX_ALIAS_NODES = 100_000  # nodes that aliases may add beyond the document's own


def check_bounds(text: str) -> tuple[str, int | None] | None:
    """Walk the parser's events (iterative, no recursion, nothing expanded) and refuse
    nesting deeper than MAX_DEPTH, more than MAX_ALIASES aliases, aliases that would expand
    to more than MAX_ALIAS_NODES extra nodes, and recursive aliases: (why, line) of the first
    bound crossed, or None. Syntax errors are left to the real parse (it gives their line)."""
    try:
        return _bounds(text)
    except yaml.YAMLError:
        return None


def _bounds(text: str) -> tuple[str, int | None] | None:
    sizes: dict[str, int] = {}  # anchor -> nodes in its subtree, aliases expanded
    stack: list[tuple[str | None, int]] = []  # open collections: (anchor, node count at start)
    nodes = added = aliases = 0
    for event in yaml.parse(text, Loader=_Loader):
        line = event.start_mark.line + 1 if event.start_mark is not None else None
        if isinstance(event, yaml.CollectionStartEvent):
            stack.append((event.anchor, nodes))
            nodes += 1
            if len(stack) > MAX_DEPTH:
                return f"nested more than {MAX_DEPTH} levels deep; refused", line
        elif isinstance(event, yaml.CollectionEndEvent):
            anchor, start = stack.pop()
            if anchor is not None:
                sizes[anchor] = nodes - start
        elif isinstance(event, yaml.ScalarEvent):
            nodes += 1
            if event.anchor is not None:
                sizes[event.anchor] = 1
        elif isinstance(event, yaml.AliasEvent):
            aliases += 1
            if aliases > MAX_ALIASES:
                return f"more than {MAX_ALIASES} aliases (*name); refused", line
            if event.anchor in (a for a, _ in stack):
                return f"alias *{event.anchor} refers to itself; refused", line
            size = sizes.get(str(event.anchor), 1)
            nodes += size
            added += size
            if added > MAX_ALIAS_NODES:
                return (
                    f"aliases expand to more than {MAX_ALIAS_NODES} nodes (an alias bomb?); "
                    "refused before expanding",
                    line,
                )
    return None


class _Doc:
    """One parsed YAML file: its data and the line of each path in it."""

    def __init__(self, name: str, text: str) -> None:
        self.name = name
        self.lines: dict[Path_, int] = {}
        self.problems: list[Problem] = []
        self.data: Any = None
        fast = yamlfast.read(text, _PolicyLoader, MAX_DEPTH)
        if fast is not None:  # a plain file: one pass over the events (policy/yamlfast.py)
            self.data, self.lines, dupes = fast
            for path, at in dupes:
                self.problems.append(Problem(name, format_path(path), "duplicate key", at))
            return
        refused = check_bounds(text)
        if refused is not None:
            self.problems.append(Problem(name, "", refused[0], refused[1]))
            return
        loader = _PolicyLoader(text)
        try:
            node = loader.get_single_node()
            self.data = loader.construct_document(node) if node is not None else None
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            line = mark.line + 1 if mark is not None else None
            position = getattr(exc, "position", None)  # a ReaderError (a NUL, say) has no mark
            if line is None and isinstance(position, int):
                line = text[:position].count("\n") + 1
            reason = getattr(exc, "problem", None) or str(exc)
            self.problems.append(Problem(name, "", f"not valid YAML: {reason}", line))
            self.data = None
            return
        finally:
            loader.dispose()
        if node is not None:
            self._walk(node, ())

    def _walk(self, node: yaml.Node, path: Path_) -> None:
        self.lines.setdefault(path, node.start_mark.line + 1)
        if isinstance(node, yaml.MappingNode):
            seen: set[str] = set()
            for key, value in node.value:
                k = str(key.value)
                if k in seen:
                    self.problems.append(
                        Problem(
                            self.name,
                            format_path((*path, k)),
                            "duplicate key",
                            key.start_mark.line + 1,
                        )
                    )
                seen.add(k)
                self.lines[(*path, k)] = key.start_mark.line + 1
                self._walk(value, (*path, k))
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                self._walk(item, (*path, i))

    def line(self, path: Path_) -> int | None:
        """The line of the deepest part of `path` that the file actually has."""
        for end in range(len(path), -1, -1):
            if path[:end] in self.lines:
                return self.lines[path[:end]]
        return None

    def validate(self, model: type[M]) -> M | None:
        if self.problems:
            return None
        data = {} if self.data is None else self.data
        try:
            return model.model_validate(data)
        except ValidationError as exc:
            for err in exc.errors(include_url=False):
                path: Path_ = tuple(err["loc"])
                msg = err["msg"].removeprefix("Value error, ")
                if err["type"] == "extra_forbidden":
                    msg = "unknown key"
                elif isinstance(err.get("input"), bool) and err["type"] != "bool_type":
                    msg = (
                        f"{msg} (YAML read a bare on/off/yes/no as the boolean "
                        f'{str(err["input"]).lower()}: quote it, e.g. "off")'
                    )
                elif err["type"] == "string_pattern_mismatch":
                    pattern = str((err.get("ctx") or {}).get("pattern", ""))
                    msg = PATTERN_HELP.get(pattern, msg)
                    msg = f"{err['input']!r:.60}: {msg}"
                elif err["type"] == "model_type":  # not "instance of Offenders": say YAML
                    got = err.get("input")
                    what = "nothing" if got is None else f"a {type(got).__name__}"
                    msg = f"expected a mapping (`key: value` lines under it), got {what}"
                elif err["type"] != "value_error" and isinstance(
                    err.get("input"), str | int | bool | float
                ):
                    msg = f"{msg} (got {err['input']!r:.60})"  # value errors already quote it
                self.problems.append(Problem(self.name, format_path(path), msg, self.line(path)))
            return None


DEFAULT_POLICY_DIR = "/etc/op25b"


def policy_files(root: Path) -> list[Path]:
    """The directory's `*.yaml`/`*.yml` entries, sorted; PolicyError if it cannot be listed
    (saying *why*: a directory we may not read is not a missing one)."""
    try:
        names = sorted(e.name for e in os.scandir(root))
    except FileNotFoundError:
        raise PolicyError([Problem(str(root), "", "policy directory not found")]) from None
    except NotADirectoryError:
        raise PolicyError([Problem(str(root), "", "not a directory")]) from None
    except OSError as exc:
        raise PolicyError(
            [Problem(str(root), "", f"cannot read the policy directory: {describe_oserror(exc)}")]
        ) from None
    return [root / n for n in names if n.endswith((".yaml", ".yml")) and not n.startswith(".")]


def read_text(path: Path) -> str:
    """A policy file's text: a regular file (symlinks to one are fine), at most
    MAX_FILE_BYTES, UTF-8. Raises PolicyError naming the file, and for a byte that is not
    UTF-8 its line (`pools.yaml:16: not UTF-8`, like every other located problem)."""

    def refuse(message: str, line: int | None = None) -> PolicyError:
        return PolicyError([Problem(path.name, "", message, line)])

    try:
        data = read_bounded(path, MAX_FILE_BYTES)
    except UnsafeFileError as exc:
        raise refuse(str(exc).removeprefix(f"{path}: ")) from None
    except OSError as exc:
        raise refuse(f"cannot read: {describe_oserror(exc)}") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise refuse(f"not UTF-8 (byte 0x{data[exc.start]:02x})", line) from None


def read_policy_files(directory: Path | str) -> dict[str, str]:
    """The policy directory's YAML files by name, as text (unexpected names included: the
    parser reports them with everything else). Only regular files (a FIFO would hang the
    read), at most MAX_FILE_BYTES each, UTF-8; permission denied is said as such."""
    problems: list[Problem] = []
    texts: dict[str, str] = {}
    for path in policy_files(Path(directory)):
        try:
            texts[path.name] = read_text(path)
        except PolicyError as exc:
            problems.extend(exc.problems)
    if problems:
        raise PolicyError(problems)
    return texts


def load_policy(directory: Path | str) -> Policy:
    """Read, validate and cross-check a policy directory; raise PolicyError with every problem."""
    return parse_policy(read_policy_files(directory), origin=str(Path(directory)))


def parse_policy(texts: Mapping[str, str], origin: str = "the policy") -> Policy:
    """Validate and cross-check policy files given as {file name: text}: a directory's, or
    the ones published to the fleet store (so both are checked by exactly the same code)."""
    return parse_policy_files(texts, origin)[0]


def parse_policy_files(
    texts: Mapping[str, str],
    origin: str = "the policy",
    known: Mapping[str, BaseModel] | None = None,
    checked_pools: PoolPrefixes | None = None,
) -> tuple[Policy, dict[str, BaseModel]]:
    """`parse_policy`, and each file's validated model (what the validated cache keeps).

    `known`: models of files whose text is the one they were validated from (the cache's
    parts, matched by digest): per-file validation is a function of the text alone, so those
    files are not parsed again. `checked_pools`: the spans of a `pools.yaml` that passed the
    pools-only checks as part of a whole valid policy; they are then skipped, and every
    other check runs against those spans (model.check_policy). On any problem at all the
    files are validated from scratch, so the errors are exactly a full validation's.
    """
    with parsed_nets():  # the validators' integers, reused by check_policy
        if known:
            try:
                return _parse_policy(texts, origin, known, checked_pools)
            except PolicyError:
                pass  # the full validation below says what, with every file's lines
        return _parse_policy(texts, origin, {}, None)


def _parse_policy(
    texts: Mapping[str, str],
    origin: str,
    known: Mapping[str, BaseModel],
    checked_pools: PoolPrefixes | None,
) -> tuple[Policy, dict[str, BaseModel]]:
    problems: list[Problem] = []
    docs: dict[str, _Doc] = {}
    for name in sorted(texts):
        if name not in FILES:
            problems.append(
                Problem(name, "", f"unexpected policy file (known: {', '.join(sorted(FILES))})")
            )
            continue
        if name not in known:
            docs[name] = _Doc(name, texts[name])
    models: dict[str, BaseModel] = {}
    for name, (model, required) in FILES.items():
        if name in known and name in texts:
            models[name] = known[name]
            continue
        doc = docs.get(name)
        if doc is None:
            if required and not any(p.file == name for p in problems):
                problems.append(Problem(name, "", f"missing from {origin}"))
            elif not required:
                models[name] = model()
            continue
        parsed = doc.validate(model)
        problems.extend(doc.problems)
        if parsed is not None:
            models[name] = parsed
    if problems:
        raise PolicyError(problems)
    policy = assemble(models)
    findings = check_policy(policy, checked_pools if "pools.yaml" in known else None)
    if findings:
        raise PolicyError(
            [
                Problem(
                    f.file,
                    format_path(f.path),
                    f.message,
                    docs[f.file].line(f.path) if f.file in docs else None,
                )
                for f in findings
            ]
        )
    return policy, {name: models[name] for name in texts}


def assemble(models: Mapping[str, BaseModel]) -> Policy:
    """The Policy from each file's validated model (an absent optional file: its defaults;
    an absent required one: KeyError)."""
    files = {
        name: models[name] if name in models or required else model()
        for name, (model, required) in FILES.items()
    }
    gateway = files["gateway.yaml"]
    pools = files["pools.yaml"]
    relays = files["relays.yaml"]
    assert isinstance(gateway, GatewayFile)
    assert isinstance(pools, PoolsFile)
    assert isinstance(relays, RelaysFile)
    rollout = files["rollout.yaml"]
    exemptions = files["exemptions.yaml"]
    assert isinstance(rollout, RolloutFile)
    assert isinstance(exemptions, ExemptionsFile)
    gateways = files["gateways.yaml"]
    assert isinstance(gateways, GatewaysFile)
    return Policy(
        gateway=gateway.gateway,
        pools=tuple(pools.pools),
        relays=tuple(relays.relays),
        stages=tuple(rollout.stages),
        exemptions=tuple(exemptions.exemptions),
        timezone=rollout.timezone,
        gateways=tuple(gateways.gateways),
    )


def texts_digest(texts: Mapping[str, str]) -> str:
    """`policy_digest` of a directory whose readable policy files are these (same bytes,
    same order), without reading them again."""
    h = hashlib.sha256()
    for name in sorted(texts):
        h.update(name.encode() + b"\0" + texts[name].encode() + b"\0")
    return h.hexdigest()


def file_digest(text: str) -> str:
    """One policy file's identity: the sha256 of its bytes (UTF-8, as read)."""
    return hashlib.sha256(text.encode()).hexdigest()


def policy_digest(directory: Path | str, *also: Path) -> str:
    """sha256 over the policy files' names and contents (and of `also`, e.g. the overrides
    file): the policy's identity, without parsing it (milliseconds at 100,000 prefixes)."""
    h = hashlib.sha256()
    try:
        files = policy_files(Path(directory))
    except PolicyError as exc:
        files = []
        h.update(str(exc).encode())
    for path in [*files, *also]:
        h.update(path.name.encode() + b"\0")
        try:  # never blocks on a FIFO, never reads more than the loader would
            h.update(read_bounded(path, MAX_FILE_BYTES))
        except (OSError, UnsafeFileError) as exc:
            h.update(b"\0unreadable " + str(exc).encode())
        h.update(b"\0")
    return h.hexdigest()
