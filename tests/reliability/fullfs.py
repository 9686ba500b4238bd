"""Run a command with its state directory on a full filesystem: a real ENOSPC.

    unshare --mount --propagation private python fullfs.py MODE STATE_DIR -- COMMAND...

Must run in a private mount namespace that the caller made (`unshare --mount`): a small
tmpfs is mounted there, STATE_DIR's files are copied onto it and it is bind-mounted over
STATE_DIR, then the tmpfs is filled (MODE `space`: a file of zeros until ENOSPC; `inodes`:
empty files until no inode is left; `cache`: like `space`, with $OP25B_CACHE_DIR on the
full tmpfs too; `audit`: only audit.jsonl on the full tmpfs, so the disk is full only for
the record after the commit). COMMAND runs with its output passed through; then whatever it left in the
state directory is copied back over STATE_DIR (so the caller can compare it byte for byte
with what was there) and the exit status is COMMAND's. A temp file left on the tmpfs
(a dot file that is not a state file: half-written) makes the exit status 99. The host's mounts are never touched: everything
mounted here ends with the namespace.
"""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import sys
from pathlib import Path

LEFT_BEHIND = 99
# dot files that are state, not temp files (state.py's list)
DOT_FILES = {".lock", ".live.json", ".tick.json", ".rule-digests.json", ".ctl.sock"}


def _mount(*args: str) -> None:
    subprocess.run(["mount", *args], check=True)


def _fill_space(root: Path) -> None:
    block = b"\0" * (64 << 10)
    with (root / "filler").open("wb", buffering=0) as fh:
        try:
            while True:
                fh.write(block)
        except OSError as exc:
            if exc.errno != errno.ENOSPC:
                raise
    with (root / "filler-tail").open("wb", buffering=0) as fh:  # the last partial block
        try:
            while True:
                fh.write(b"\0" * 512)
        except OSError as exc:
            if exc.errno != errno.ENOSPC:
                raise


def _fill_inodes(root: Path) -> None:
    (root / "inodes").mkdir()
    n = 0
    while True:
        try:
            (root / "inodes" / str(n)).touch()
        except OSError as exc:
            if exc.errno != errno.ENOSPC:
                raise
            return
        n += 1


def _names(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def main(argv: list[str]) -> int:
    mode, state = argv[0], Path(argv[1])
    assert argv[2] == "--" and mode in ("space", "inodes", "cache", "audit"), argv
    command = argv[3:]
    mnt = state.parent / f".fullfs-{os.getpid()}"
    mnt.mkdir(mode=0o755)
    try:
        if mode == "audit":
            return _audit_only(mnt, state, command)
        options = "size=4m,nr_inodes=64,mode=0755" if mode == "inodes" else "size=1m,mode=0755"
        _mount("-t", "tmpfs", "-o", options, "tmpfs", str(mnt))
        shutil.copytree(state, mnt / "state", symlinks=True)
        _mount("--bind", str(mnt / "state"), str(state))
        env = dict(os.environ)
        if mode == "cache":
            (mnt / "cache").mkdir(mode=0o700)
            env["OP25B_CACHE_DIR"] = str(mnt / "cache")
        before = _names(mnt)
        (_fill_inodes if mode == "inodes" else _fill_space)(mnt)
        fillers = _names(mnt) - before
        code = subprocess.run(command, env=env, check=False).returncode
        left = sorted(
            n
            for n in _names(mnt) - before - fillers
            if Path(n).name.startswith(".") and Path(n).name not in DOT_FILES
        )
        subprocess.run(["umount", str(state)], check=True)
        # what the command left, back where the caller looks
        for entry in list(state.iterdir()):
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
        shutil.copytree(mnt / "state", state, symlinks=True, dirs_exist_ok=True)
        if left:
            print(f"fullfs: left on the full filesystem: {', '.join(left)}", file=sys.stderr)
            return LEFT_BEHIND
        return code
    finally:
        subprocess.run(["umount", "-R", str(mnt)], check=False, capture_output=True)
        mnt.rmdir()


def _audit_only(mnt: Path, state: Path, command: list[str]) -> int:
    """Only audit.jsonl on the full tmpfs (bind-mounted over the state directory's): every
    check before the commit passes, the audit line after it meets ENOSPC. The caller makes
    the log a whole number of pages long, so no slack in its last page takes the line."""
    _mount("-t", "tmpfs", "-o", "size=1m,mode=0755", "tmpfs", str(mnt))
    log = state / "audit.jsonl"
    shutil.copy2(log, mnt / "audit.jsonl")
    _mount("--bind", str(mnt / "audit.jsonl"), str(log))
    _fill_space(mnt)
    code = subprocess.run(command, check=False).returncode
    subprocess.run(["umount", str(log)], check=True)
    shutil.copy2(mnt / "audit.jsonl", log)
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
