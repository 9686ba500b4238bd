"""Where the daemon's log records go: the systemd journal with fields, or plain stderr.

Under systemd, stderr is a stream into journald and $JOURNAL_STREAM names its device and inode
(systemd.exec(5)). Then records are sent over the journal's native protocol by python3-systemd's
JournalHandler, carrying the fields below, so `journalctl -u op25b-ctl POOL=flets-east-dyn-1`
lists one pool's history. Anywhere else (a terminal, cron, the tests, a container) the same
records are plain lines on stderr, so nothing depends on journald being there.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import IO, Any

POOL, MODE, REVISION, REASON = "POOL", "MODE", "REVISION", "REASON"
FIELDS = (POOL, MODE, REVISION, REASON)
IDENTIFIER = "op25b-ctl"


def fields(
    *,
    pool: str | None = None,
    mode: str | None = None,
    revision: str | None = None,
    reason: str | None = None,
) -> dict[str, str]:
    """`extra=` for a log call: the journal fields that are set (journal names are upper case)."""
    given = {POOL: pool, MODE: mode, REVISION: revision, REASON: reason}
    return {k: v for k, v in given.items() if v is not None}


def under_journald(stream: IO[Any], environ: Mapping[str, str] = os.environ) -> bool:
    """Whether `stream` is the journal stream systemd connected (JOURNAL_STREAM=dev:inode)."""
    dev, _, ino = environ.get("JOURNAL_STREAM", "").partition(":")
    if not (dev.isdigit() and ino.isdigit()):
        return False
    try:
        st = os.fstat(stream.fileno())
    except (OSError, ValueError):
        return False
    return (st.st_dev, st.st_ino) == (int(dev), int(ino))


class _Text(logging.Formatter):
    """stderr lines: the message, then the fields a reader would grep for."""

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        extra = [f"{k.lower()}={getattr(record, k)}" for k in FIELDS if hasattr(record, k)]
        return f"{line} [{' '.join(extra)}]" if extra else line


def handler(stream: IO[Any], environ: Mapping[str, str] = os.environ) -> logging.Handler:
    """The journal handler when stderr goes to journald and python3-systemd is there, else a
    stderr handler (with a timestamp unless something else stamps the lines)."""
    if under_journald(stream, environ):
        try:
            from systemd.journal import JournalHandler
        except ImportError:  # python3-systemd missing: the stream still reaches the journal
            pass
        else:
            journal: logging.Handler = JournalHandler(SYSLOG_IDENTIFIER=IDENTIFIER)
            return journal
    text = logging.StreamHandler(stream)
    fmt = "%(levelname)s %(message)s"
    if "JOURNAL_STREAM" not in environ:
        fmt = "%(asctime)s " + fmt
    text.setFormatter(_Text(fmt))
    return text


def configure(stream: IO[Any], *, verbose: bool = False) -> logging.Handler:
    """Route the root logger to `handler(stream)`; returns the handler (for tests)."""
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    chosen = handler(stream)
    root.addHandler(chosen)
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    return chosen
