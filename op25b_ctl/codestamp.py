"""Which op25b-ctl code this process runs, as a digest a command and the daemon compare.

A command handed to the daemon (`cli/thin.py`) runs in a fork of the daemon, so it runs the
daemon's code, not the caller's. After an upgrade, before the daemon restarts, that would be
the old code: a new option or policy key refused as unknown, or an old answer. The stamp is
taken from the package's source files (name, size, modification time), by the daemon when
it starts and by the client when it asks; a difference sends the command back to run
alone. Standard library only: the thin client imports it.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent


def code_stamp(root: Path = PACKAGE) -> str:
    """A digest of every `.py` file below `root`: its path, size and mtime (no reading)."""
    h = hashlib.sha256()
    stack = [str(root)]
    found: list[tuple[str, int, int]] = []
    while stack:
        with os.scandir(stack.pop()) as entries:
            for entry in entries:
                if entry.is_dir(follow_symlinks=False) and entry.name != "__pycache__":
                    stack.append(entry.path)
                elif entry.name.endswith(".py"):
                    st = entry.stat()
                    found.append((os.path.relpath(entry.path, root), st.st_size, st.st_mtime_ns))
    for name, size, mtime in sorted(found):
        h.update(f"{name}\0{size}\0{mtime}\n".encode())
    return h.hexdigest()[:24]
