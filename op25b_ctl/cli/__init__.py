"""`op25b-ctl`: the command line, a thin shell over `ops` and `daemon`.

The installed entry point is `entry`: it first offers the command to a running daemon
(`thin`, standard library only) and imports the command modules only if it runs the command
itself.
"""

from __future__ import annotations

import argparse

__all__ = ["build_parser", "entry"]


def entry() -> int:
    """The `op25b-ctl` executable: the daemon's warm process if it answers, else this one."""
    import gc
    import sys

    # A policy of 110,000 prefixes is about a million objects that all live until the
    # process ends; the collector's default pass every 700 allocations walks them again and
    # again for nothing (~0.1 s of a cold `apply`, docs/performance.md). Fewer, larger
    # young generations; cycles are still collected.
    gc.set_threshold(50_000, 20, 100)

    from op25b_ctl.cli import thin

    argv = sys.argv[1:]
    served = thin.forward(argv)
    if served is not None:
        return served
    from op25b_ctl.cli.main import main

    return main(argv)


def build_parser() -> argparse.ArgumentParser:
    """The whole command line (for the man page and completion, debian/gen-docs)."""
    from op25b_ctl.cli.main import build_parser as build

    return build()
