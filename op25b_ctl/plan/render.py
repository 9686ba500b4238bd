"""Transaction -> nft script text for libnftables.

Text rather than JSON because at 100,000 elements libnftables parses it faster
(docs/benchmarks.md). It is safe to build: every name in it comes from validated policy names
(a fixed alphabet), every address from netaddr's canonical form, and each op renders to
exactly one line.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from op25b_ctl.plan.transaction import (
    AddChain,
    AddCounter,
    AddElements,
    AddRule,
    AddSet,
    AddTable,
    DeleteChain,
    DeleteCounter,
    DeleteElements,
    DeleteSet,
    DeleteTable,
    FlushChain,
    FlushSet,
    Op,
    Transaction,
)

# One `add element` line per this many elements keeps lines and error messages manageable.
ELEMENTS_PER_LINE = 5000


def _chunks(items: list[str], size: int) -> Iterator[list[str]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def _element(prefix: str, target: str | None) -> str:
    return f"{prefix} : jump {target}" if target is not None else prefix


def render_op(spec: str, op: Op) -> Iterable[str]:
    match op:
        case AddTable(comment=comment):
            yield f'add table {spec} {{ comment "{comment}"; }}'
        case DeleteTable():
            yield f"delete table {spec}"
        case AddCounter(name=name, packets=0, bytes=0):
            yield f"add counter {spec} {name}"
        case AddCounter(name=name, packets=packets, bytes=nbytes):
            yield f"add counter {spec} {name} {{ packets {packets} bytes {nbytes} }}"
        case DeleteCounter(name=name):
            yield f"delete counter {spec} {name}"
        case AddSet(set=s):
            kind = "map" if s.verdict_map else "set"
            key = f"{s.key_type} : verdict" if s.verdict_map else s.key_type
            listed = ", ".join(_element(k, v) for k, v in s.elements.items())
            inline = f" elements = {{ {listed} }};" if listed else ""
            flags = f" flags {', '.join(sorted(s.flags))};" if s.flags else ""
            if s.timeout:
                flags += f" timeout {s.timeout}s;"
            if s.size:
                flags += f" size {s.size};"
            if s.counter:
                flags += " counter;"
            yield f"add {kind} {spec} {s.name} {{ type {key};{flags}{inline} }}"
        case DeleteSet(set=s):
            yield f"delete {'map' if s.verdict_map else 'set'} {spec} {s.name}"
        case FlushSet(set=s):
            yield f"flush {'map' if s.verdict_map else 'set'} {spec} {s.name}"
        case AddChain(name=name, hook=None):
            yield f"add chain {spec} {name}"
        case AddChain(name=name, hook=hook) if hook is not None:
            yield (
                f"add chain {spec} {name} {{ type {hook.type} hook {hook.hook} "
                f"priority {hook.priority}; policy {hook.policy}; }}"
            )
        case DeleteChain(name=name):
            yield f"delete chain {spec} {name}"
        case FlushChain(name=name):
            yield f"flush chain {spec} {name}"
        case AddRule(chain=chain, rule=rule):
            assert rule.text is not None, "only desired rules are rendered"
            yield f'add rule {spec} {chain} {rule.text} comment "{rule.comment}"'
        case AddElements(set=name, elements=elements):
            items = [_element(k, v) for k, v in elements.items()]
            for chunk in _chunks(items, ELEMENTS_PER_LINE):
                yield f"add element {spec} {name} {{ {', '.join(chunk)} }}"
        case DeleteElements(set=name, keys=keys):
            for chunk in _chunks(list(keys), ELEMENTS_PER_LINE):
                yield f"delete element {spec} {name} {{ {', '.join(chunk)} }}"


def render(tx: Transaction) -> str:
    """The whole transaction as one script; libnftables sends a script as one atomic batch.

    A transaction of several batches is shown with a `# commit k of n` comment before each;
    the kernel adapter commits each batch's own script in turn (`nft -f` of this whole text
    would make it one batch: right in the end, but without the split's guarantee)."""
    batches = tx.batches
    lines: list[str] = []
    for k, batch in enumerate(batches, 1):
        if len(batches) > 1:
            lines.append(f"# commit {k} of {len(batches)}")
        lines += [line for op in batch.ops for line in render_op(tx.spec, op)]
    return "\n".join(lines) + ("\n" if lines else "")


def _sample(keys: Iterable[str], limit: int = 4) -> str:
    items = list(keys)
    shown = ", ".join(items[:limit])
    return f"{shown} (+{len(items) - limit} more)" if len(items) > limit else shown


def _brief(text: str) -> str:
    """A rule's text with its anonymous set abbreviated (the exempt chain's may hold
    thousands of prefixes)."""
    start, end = text.find("{ "), text.find(" }")
    if start < 0 or end < start:
        return text
    items = text[start + 2 : end].split(", ")
    return text if len(items) <= 4 else f"{text[: start + 2]}{_sample(items)}{text[end:]}"


def describe(tx: Transaction) -> list[str]:
    """A human-readable diff: one line per change, element lists abbreviated."""
    out: list[str] = []
    refilled = {op.set.name for op in tx.ops if isinstance(op, FlushSet)}
    deleted = {op.set.name for op in tx.ops if isinstance(op, DeleteSet)}
    starts = {at: n for n, at in enumerate((0, *tx.breaks) if tx.breaks else (), 1)}
    for at, op in enumerate(tx.ops):
        if at in starts:
            out.append(f"-- commit {starts[at]} of {len(starts)}")
        match op:
            case FlushSet(set=s) if s.name in deleted:
                pass  # emptied before it goes: told with its DeleteSet
            case FlushSet(set=s):
                added, removed = tx.element_delta(s.name)
                items = [_element(k, v) for k, v in added.items()]
                out.append(
                    f"~ {'map' if s.verdict_map else 'set'} {s.name} refilled: "
                    f"-{len(removed)} +{len(items)} element(s)"
                    + (f"; removed {_sample(removed)}" if removed else "")
                    + (f"; added {_sample(items)}" if items else "")
                )
            case AddElements(set=n) if n in refilled:
                pass  # told with its FlushSet, as the elements that changed
            case AddTable():
                out.append(f"+ table {tx.spec}")
            case DeleteTable():
                out.append(f"- table {tx.spec} (enforcement off)")
            case AddCounter(name=n):
                out.append(f"+ counter {n}")
            case DeleteCounter(name=n):
                out.append(f"- counter {n}")
            case AddSet(set=s):
                items = [_element(k, v) for k, v in s.elements.items()]
                listed = f" with {len(items)} element(s): {_sample(items)}" if items else ""
                out.append(f"+ {'map' if s.verdict_map else 'set'} {s.name}{listed}")
            case DeleteSet(set=s):
                out.append(f"- {'map' if s.verdict_map else 'set'} {s.name}")
            case AddChain(name=n, hook=hook):
                where = f" (hook {hook.hook} priority {hook.priority})" if hook else ""
                out.append(f"+ chain {n}{where}")
            case DeleteChain(name=n):
                out.append(f"- chain {n}")
            case FlushChain(name=n):
                out.append(f"~ chain {n}: rules replaced")
            case AddRule(chain=c, rule=r):
                out.append(f"  + rule {c}: {_brief(r.text or '')}")
            case AddElements(set=n, elements=e):
                items = [_element(k, v) for k, v in e.items()]
                out.append(f"+ {len(items)} element(s) in {n}: {_sample(items)}")
            case DeleteElements(set=n, keys=k):
                out.append(f"- {len(k)} element(s) from {n}: {_sample(k)}")
    return out
