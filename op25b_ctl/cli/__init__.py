"""`op25b-ctl`: the command line, a thin shell over `ops` and `daemon`."""

from op25b_ctl.cli.main import build_parser, main

__all__ = ["build_parser", "main"]
