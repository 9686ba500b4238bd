"""The one-pass reader (policy/yamlfast.py) gives what PyYAML's compose, construct and the
loader's walk give, or steps aside: same values (and types), same lines, same duplicate keys."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from op25b_ctl.policy import loader, yamlfast
from op25b_ctl.policy.model import format_path

REPO = Path(__file__).resolve().parents[2]

# tokens that YAML reads as other types, or almost does
SCALARS = [
    "off", "on", "yes", "No", "true", "FALSE", "~", "null", "", "0", "-1", "+1", "0x1f", "0o17",
    "017", "1_000", "1:30", "190:20:30", "1.5", "1e3", ".inf", "-.Inf", ".NaN", "2011-01-20",
    "2011-01-20T09:00:00+09:00", "2011-01-20 09:00:00", "2011-02-30T00:00:00+09:00", "<<", "=",
    "10.0.0.0/30", "2001:db8::/32", "a/b", "1/2", "0/0", "'quoted'", '"dq"', '"1"', "'off'",
    "x y", "- not a list", "!!str 1", "&a 1", "*a", "!x y", "tbd", "a: b",
]  # fmt: skip
KEYS = ["name", "pools", "prefixes", "mode", "1", "true", "~", "a", "a"]


def _scalar() -> st.SearchStrategy[str]:
    return st.sampled_from(SCALARS)


def _node(depth: int) -> st.SearchStrategy[Any]:
    if depth == 0:
        return _scalar()
    child = _node(depth - 1)
    return st.one_of(
        _scalar(),
        st.lists(child, max_size=4).map(lambda xs: ("seq", xs)),
        st.lists(st.tuples(st.sampled_from(KEYS), child), max_size=4).map(lambda kv: ("map", kv)),
    )


def render(node: Any, indent: int = 0, flow: bool = False) -> str:
    """Block or flow YAML text for a generated node (not always valid YAML, on purpose)."""
    pad = " " * indent
    if isinstance(node, str):
        return node
    kind, items = node
    if flow or not items:
        if kind == "seq":
            return "[" + ", ".join(render(x, flow=True) for x in items) + "]"
        return "{" + ", ".join(f"{k}: {render(v, flow=True)}" for k, v in items) + "}"
    out = []
    for item in items:
        if kind == "seq":
            out.append(f"{pad}- " + _inline(item, indent + 2))
        else:
            k, v = item
            out.append(f"{pad}{k}: " + _inline(v, indent + 2))
    return "\n".join(out)


def _inline(node: Any, indent: int) -> str:
    if isinstance(node, str) or not node[1]:
        return render(node, indent)
    if len(node[1]) % 2:  # flow now and then
        return render(node, indent, flow=True)
    return "\n" + render(node, indent)


def typed(value: Any) -> Any:
    """The value with every scalar's type spelled out (True == 1 in Python, not here)."""
    if isinstance(value, dict):
        return [(typed(k), typed(v)) for k, v in value.items()]
    if isinstance(value, list):
        return [typed(v) for v in value]
    return (type(value).__name__, repr(value))


def usual(text: str) -> loader._Doc:
    with pytest.MonkeyPatch.context() as m:
        m.setattr(yamlfast, "read", lambda *a: None)
        return loader._Doc("f.yaml", text)


def check(text: str) -> bool:
    """Both readers agree whenever the fast one answers; whether it did."""
    fast = yamlfast.read(text, loader._PolicyLoader, loader.MAX_DEPTH)
    if fast is None:
        return False
    doc = usual(text)
    assert not [p for p in doc.problems if p.message != "duplicate key"], doc.problems
    data, lines, dupes = fast
    assert typed(data) == typed(doc.data)
    assert lines.full() == doc.lines
    assert all(lines[path] == line and path in lines for path, line in doc.lines.items())
    assert [(format_path(p), at) for p, at in dupes] == [(p.where, p.line) for p in doc.problems]
    # and the loader itself, taking the fast path, ends up with the same document
    taken = loader._Doc("f.yaml", text)
    assert isinstance(taken.lines, yamlfast.Lines)
    assert typed(taken.data) == typed(doc.data) and taken.lines.full() == doc.lines
    assert taken.problems == doc.problems
    return True


@settings(max_examples=400, deadline=None, database=None)
@given(node=_node(3))
def test_generated_documents_read_the_same(node: Any) -> None:
    check(render(node) + "\n")


@settings(max_examples=300, deadline=None, database=None)
@given(text=st.text(alphabet="ab1-:/ ,[]{}\n'\"#&*!.~", max_size=60))
def test_arbitrary_text_reads_the_same_or_steps_aside(text: str) -> None:
    check(text)


def test_the_shipped_policies_and_the_bad_input_corpus_read_the_same() -> None:
    texts = [p.read_text() for p in (REPO / "policies").rglob("*.yaml")]
    corpus = (REPO / "tests" / "reliability" / "test_bad_input.py").read_text()
    # the corpus's YAML, as written in its cases (triple-quoted texts)
    texts += re.findall(r'"""(.*?)"""', corpus, re.S)
    taken = sum(check(t) for t in texts)
    assert taken >= len(list((REPO / "policies").rglob("*.yaml")))


@settings(max_examples=500, deadline=None, database=None)
@given(text=st.text(alphabet="0123456789abcdef:./-+_xoeE ", min_size=1, max_size=30))
def test_a_plain_scalar_with_a_slash_is_always_a_string(text: str) -> None:
    """Why the fast path may skip the implicit resolvers for a value holding '/'."""
    value = text + "/" if "/" not in text else text
    tag = yaml.SafeLoader("").resolve(yaml.ScalarNode, value, (True, False))  # type: ignore[no-untyped-call]
    assert tag == yamlfast.STR_TAG
