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


def read(
    text: str, loader: type[yaml.SafeLoader], max_depth: int
) -> tuple[Any, dict[Path_, int], list[tuple[Path_, int]]] | None:
    """(data, line of each path, (path, line) of each duplicate key) as the loader's compose,
    construct and walk would give them, or None: use those instead."""
    try:
        return _read(text, loader, max_depth)
    except Exception:  # noqa: BLE001 - whatever failed, the usual path says what it means
        return None


def _read(
    text: str, loader: type[yaml.SafeLoader], max_depth: int
) -> tuple[Any, dict[Path_, int], list[tuple[Path_, int]]]:
    ctor = loader("")
    try:
        fast_str = ctor.yaml_constructors.get(STR_TAG) is SafeConstructor.construct_yaml_str
        # PyYAML's own implicit types (bool, int, float, null, timestamp, merge, value) all
        # spell without '/' (tests/unit/test_yamlfast.py), so a plain scalar with one, every
        # prefix, is a string without trying their regexes; only for exactly those resolvers
        slash_str = ctor.yaml_implicit_resolvers == yaml.SafeLoader.yaml_implicit_resolvers
        if ctor.yaml_path_resolvers:
            raise Fallback
        lines: dict[Path_, int] = {}
        dupes: list[tuple[Path_, int]] = []
        # open collections: [container, path, seen keys (maps), pending key (maps) or None]
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
                lines.setdefault(here, line)
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

        for event in yaml.parse(text, Loader=loader):
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
            stack.append([value, path, set(), None])
            if len(stack) > max_depth:
                raise Fallback
        return data, lines, dupes
    finally:
        ctor.dispose()
