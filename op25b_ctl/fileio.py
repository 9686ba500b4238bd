"""(I/O) Opening files we do not fully trust: regular files only, bounded, and checked owners.

Policy files and state files are inputs: a FIFO where `pools.yaml` should be would hang a
plain `read()` forever, a 10 GB file would be read into memory, and a symlink planted as
`STATE/.lock` or `STATE/audit.jsonl` would make a root process truncate or append to its
target. Every open here is non-blocking (a FIFO opens at once, then is refused as not a
regular file), size-bounded, and, where asked, refuses symlinks (O_NOFOLLOW) and files that
someone other than us (or root) owns or that anyone may write.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

from op25b_ctl.errors import UnsafeFileError

__all__ = ["UnsafeFileError", "check_owner", "describe_oserror", "make_dirs", "open_regular"]


def describe_oserror(exc: OSError) -> str:
    """`permission denied`, `too many levels of symbolic links`, ... without the path."""
    if exc.errno == errno.EACCES or exc.errno == errno.EPERM:
        return "permission denied"
    return (exc.strerror or str(exc)).lower()


def _kind(mode: int) -> str:
    for test, name in (
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISLNK, "a symlink"),
    ):
        if test(mode):
            return name
    return "not a regular file"


def check_owner(path: Path, st: os.stat_result) -> None:
    """Refuse a file (or directory) that another user owns or that anyone may write."""
    me = os.geteuid()
    if st.st_uid not in (me, 0):
        raise UnsafeFileError(f"{path}: owned by uid {st.st_uid}, not by uid {me} or root")
    if st.st_mode & stat.S_IWOTH and not (stat.S_ISDIR(st.st_mode) and st.st_mode & stat.S_ISVTX):
        raise UnsafeFileError(f"{path}: writable by anyone (mode {stat.S_IMODE(st.st_mode):o})")


def open_regular(
    path: Path, flags: int, *, follow: bool = True, owner: bool = False, mode: int = 0o640
) -> int:
    """os.open for a regular file: never blocks on a FIFO, optionally no symlinks and an
    owner check. Returns the fd; raises UnsafeFileError or OSError (the caller words it)."""
    flags |= os.O_NONBLOCK | os.O_CLOEXEC | (0 if follow else os.O_NOFOLLOW)
    try:
        fd = os.open(path, flags, mode)
    except OSError as exc:
        if exc.errno == errno.ELOOP and not follow:
            raise UnsafeFileError(
                f"{path}: is a symlink; refused (it must be a plain file)"
            ) from None
        raise
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise UnsafeFileError(f"{path}: is {_kind(st.st_mode)}, not a regular file")
        if owner:
            check_owner(path, st)
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd


def read_bounded(path: Path, limit: int, *, follow: bool = True) -> bytes:
    """The bytes of a regular file of at most `limit` bytes (UnsafeFileError otherwise)."""
    fd = open_regular(path, os.O_RDONLY, follow=follow)
    try:
        size = os.fstat(fd).st_size
        if size > limit:
            raise UnsafeFileError(f"{path}: {size} bytes, more than the {limit} allowed")
        chunks: list[bytes] = []
        total = 0
        while True:
            chunk = os.read(fd, min(1 << 20, limit + 1 - total))
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
            if total > limit:  # grew while we read it
                raise UnsafeFileError(f"{path}: more than the {limit} bytes allowed")
        return b"".join(chunks)
    finally:
        os.close(fd)


def make_dirs(path: Path, mode: int = 0o750, parent_mode: int = 0o755) -> None:
    """mkdir -p that never makes a world-writable directory, whatever the umask (000 too).

    Missing parents get `parent_mode`, the last one `mode`; both are set explicitly after
    creation, so umask can only be ignored, never widen them. Existing directories are left
    as they are.
    """
    missing: list[Path] = []
    p = path
    while not p.exists():
        missing.append(p)
        if p.parent == p:
            break
        p = p.parent
    for d in reversed(missing):
        want = mode if d == path else parent_mode
        try:
            os.mkdir(d, want)
        except FileExistsError:
            continue
        os.chmod(d, want)
