"""A policy file's data and line map from one pass over the YAML parser's events.

PyYAML's usual path parses the text into events, composes a node per value (with two marks
each), constructs Python objects from the nodes, and the loader then walks the nodes again
for the line of every path: ~0.8 s for a 110,000-prefix pools.yaml, most of validating it
after an edit. The events alone cost ~0.1 s (the bounds check walks them anyway). Plain
policy files use none of what needs the node graph (anchors, aliases, explicit tags, merge
keys, several documents), so for those the values are built straight from the events, with
the same resolver and the same constructors as the loader's. Anything else, or any error,
returns None and the loader takes the usual path, so its results and messages are its own.
"""

from __future__ import annotations

from typing import Any

import yaml
from yaml.constructor import SafeConstructor

Path_ = tuple[str | int, ...]
STR_TAG = "tag:yaml.org,2002:str"
MERGE_TAG = "tag:yaml.org,2002:merge"


# raised for what only the usual path handles (caught in `read`: that path is taken)
Fallback = yaml.YAMLError


class Lines(dict[Path_, int]):
    """The line of each path, as a dict; but a list's items are kept as one line number
    each in `lists` (keyed by the list's path) and found on lookup: 110,000 prefixes then
    need no tuple key and dict entry of their own (~40 ms of a pools.yaml edit)."""

    def __init__(self) -> None:
        super().__init__()
        # each list at a path, in document order (a duplicate key repeats a path: the first
        # list's lines win, as the usual path's setdefault has it)
        self.lists: dict[Path_, list[list[int]]] = {}

    def _item(self, path: Path_) -> int | None:
        if path and type(path[-1]) is int:
            index = path[-1]
            for found in self.lists.get(path[:-1], ()):
                if 0 <= index < len(found):
                    return found[index]
        return None

    def __missing__(self, path: Path_) -> int:
        line = self._item(path)
        if line is None:
            raise KeyError(path)
        return line

    def __contains__(self, path: object) -> bool:
        return dict.__contains__(self, path) or (
            isinstance(path, tuple) and self._item(path) is not None
        )

    def get(self, path: Path_, default: int | None = None) -> int | None:  # type: ignore[override]
        return self[path] if path in self else default  # noqa: SIM401 - this is `get`

    def full(self) -> dict[Path_, int]:
        """Every path's line in one plain dict (what the usual path builds)."""
        out = dict(self)
        for path, lists in self.lists.items():
            for found in lists:
                for i, line in enumerate(found):
                    out.setdefault((*path, i), line)
        return out


def read(
    text: str, loader: type[yaml.SafeLoader], max_depth: int
) -> tuple[Any, Lines, list[tuple[Path_, int]]] | None:
    """(data, line of each path, (path, line) of each duplicate key) as the loader's compose,
    construct and walk would give them, or None: use those instead."""
    try:
        return _read(text, loader, max_depth)
    except Exception:  # noqa: BLE001 - whatever failed, the usual path says what it means
        return None


def _read(
    text: str, loader: type[yaml.SafeLoader], max_depth: int
) -> tuple[Any, Lines, list[tuple[Path_, int]]]:
    ctor = loader("")
    try:
        fast_str = ctor.yaml_constructors.get(STR_TAG) is SafeConstructor.construct_yaml_str
        # PyYAML's own implicit types (bool, int, float, null, timestamp, merge, value) all
        # spell without '/' (tests/unit/test_yamlfast.py), so a plain scalar with one, every
        # prefix, is a string without trying their regexes; only for exactly those resolvers
        slash_str = ctor.yaml_implicit_resolvers == yaml.SafeLoader.yaml_implicit_resolvers
        if ctor.yaml_path_resolvers:
            raise Fallback
        lines = Lines()
        dupes: list[tuple[Path_, int]] = []
        # open collections: [container, path, seen keys (maps), pending key (maps) or None,
        # the line of each item (lists: `Lines.lists`)]
        stack: list[list[Any]] = []
        data: Any = None
        documents = 0

        def scalar(event: yaml.ScalarEvent) -> Any:
            if slash_str and fast_str and event.implicit[0] and "/" in event.value:
                return event.value
            tag = ctor.resolve(yaml.ScalarNode, event.value, event.implicit)  # type: ignore[no-untyped-call]
            if tag == STR_TAG and fast_str:
                return event.value
            if tag == MERGE_TAG:
                raise Fallback
            start: Any = event.start_mark  # the C parser's own Mark type
            node = yaml.ScalarNode(tag, event.value, start, event.end_mark, style=event.style)  # type: ignore[arg-type]
            return ctor.construct_object(node)

        def place(value: Any, line: int, event: yaml.Event) -> tuple[Path_, bool]:
            """Put a new value where the document is; its path, and whether it is a key."""
            nonlocal data
            if not stack:
                lines.setdefault((), line)
                data = value
                return (), False
            top = stack[-1]
            container, path = top[0], top[1]
            if isinstance(container, list):
                here = (*path, len(container))
                container.append(value)
                top[4].append(line)
                return here, False
            if top[3] is None:  # a key
                if not isinstance(event, yaml.ScalarEvent):
                    raise Fallback  # a collection as a key
                raw = str(event.value)
                if raw in top[2]:
                    dupes.append(((*path, raw), line))
                top[2].add(raw)
                lines[(*path, raw)] = line
                top[3] = (value, raw)
                return (*path, raw), True
            key, raw = top[3]
            top[3] = None
            container[key] = value
            here = (*path, raw)
            lines.setdefault(here, line)
            return here, False

        scalar_event = yaml.ScalarEvent
        for event in yaml.parse(text, Loader=loader):
            # The common case first: a plain scalar in a list (110,000 prefixes), with what
            # `place` does for a list inline. The same checks as below, in the same order.
            if type(event) is scalar_event and stack and type(stack[-1][0]) is list:
                if event.anchor is not None or event.tag is not None:
                    raise Fallback
                top = stack[-1]
                top[0].append(scalar(event))
                top[4].append(event.start_mark.line + 1)  # type: ignore[union-attr]
                continue
            if isinstance(event, (yaml.StreamStartEvent, yaml.StreamEndEvent)):
                continue
            if isinstance(event, yaml.DocumentStartEvent):
                documents += 1
                if documents > 1:
                    raise Fallback
                continue
            if isinstance(event, yaml.DocumentEndEvent):
                continue
            if isinstance(event, yaml.AliasEvent):
                raise Fallback
            if isinstance(event, yaml.CollectionEndEvent):
                stack.pop()
                continue
            assert isinstance(event, yaml.NodeEvent)
            if event.anchor is not None or getattr(event, "tag", None) is not None:
                raise Fallback
            assert event.start_mark is not None
            line = event.start_mark.line + 1
            if isinstance(event, yaml.ScalarEvent):
                place(scalar(event), line, event)
                continue
            value: Any = [] if isinstance(event, yaml.SequenceStartEvent) else {}
            path, _ = place(value, line, event)
            items: list[int] = []
            if isinstance(value, list):
                lines.lists.setdefault(path, []).append(items)
            stack.append([value, path, set(), None, items])
            if len(stack) > max_depth:
                raise Fallback
        return data, lines, dupes
    finally:
        ctor.dispose()
