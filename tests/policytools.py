"""Build policy directories for tests: the example NMTnet policy, edited per test."""

from __future__ import annotations

import shutil
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "policies" / "nmtnet"


def example_policy(dest: Path, **replace: str) -> Path:
    """Copy the example policy to `dest`; `replace` maps file name -> new file text."""
    dest.mkdir(parents=True, exist_ok=True)
    for f in EXAMPLE.glob("*.yaml"):
        shutil.copy(f, dest / f.name)
    for name, text in replace.items():
        (dest / name.replace("_", ".", 1) if "." not in name else dest / name).write_text(text)
    return dest


def edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, f"{old!r} not in {path}"
    path.write_text(text.replace(old, new))
