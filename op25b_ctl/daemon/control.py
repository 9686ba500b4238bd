"""(I/O) The daemon's command socket: one-shot commands run in a fork of the warm daemon.

A one-shot `op25b-ctl` spends most of its time before any work: starting Python, importing
pydantic and the models, loading the 110,000-prefix policy, building the desired sets
(docs/performance.md). The daemon has all of that in memory. `cli/thin.py` hands a command
line to this socket with the caller's stdin, stdout and stderr (SCM_RIGHTS), working
directory and environment; a forked child of the daemon runs the very same `main(argv)` on
them and reports its exit status. The command does what it would do as its own process:
same code, same state lock, same audit trail, same output. Only the start-up is skipped.

Who may ask: the socket is 0600 in the state directory (0750, root's), and a peer whose
uid differs from the daemon's (SO_PEERCRED) is refused; so is a caller in another network
namespace (it would otherwise act on the daemon's gateway), one running other code than the
daemon loaded (an upgrade before the restart: `codestamp.py`), one naming another policy
directory, or one whose working directory the daemon cannot see (the unit's sandbox hides
/home and /tmp), as the command would not do there what it does in its own process. Refused or unreachable, the
client runs the command itself, so the socket is only ever a short cut.

The child: only the accepting thread survives a fork, so it resets signal handlers, takes
the caller's descriptors as 0/1/2 with fresh Python streams on them (the daemon's may have
been locked by another thread at fork time), closes the daemon's other descriptors (its
lock, its sockets), drops the daemon's log handlers, and leaves with `os._exit`, so none of
the daemon's own clean-up runs twice.
"""

from __future__ import annotations

import contextlib
import gc
import io
import json
import logging
import os
import signal
import socket
import stat
import struct
import sys
import threading
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from op25b_ctl.codestamp import code_stamp
from op25b_ctl.netns import netns_cookie

log = logging.getLogger(__name__)

MAX_REQUEST = 1 << 20


class ControlServer:
    """Accepts commands on `path` and runs each with `run(argv)` in a forked child."""

    def __init__(self, path: Path, run: Callable[[list[str]], int], policy_dir: Path | str) -> None:
        self.path = path
        self.run = run
        self.policy_dir = os.path.realpath(policy_dir)
        self.code = code_stamp()  # the code this daemon loaded: a command must run the same
        self._sock: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._children: set[int] = set()
        self.served = 0
        # called (from this server's thread) when a command's child has ended: the daemon
        # wakes its loop, so its metrics follow what the command changed without waiting
        # for the next interval (`daemon.run` sets it to `Daemon.wake`)
        self.on_done: Callable[[], None] | None = None

    def start(self) -> bool:
        """Listen; False (logged) if the socket cannot be made: commands then run alone."""
        if _answers(self.path):
            log.warning("command socket %s is another daemon's: commands go there", self.path)
            return False
        try:
            with contextlib.suppress(FileNotFoundError):
                if stat.S_ISSOCK(os.lstat(self.path).st_mode):
                    os.unlink(self.path)  # a previous daemon's, left by a crash
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        except OSError as exc:
            log.warning("command socket %s not available (%s): commands run alone", self.path, exc)
            return False
        try:
            old = os.umask(0o177)
            try:
                sock.bind(str(self.path))
            finally:
                os.umask(old)
            os.chmod(self.path, 0o600)
            sock.listen(16)
            sock.settimeout(0.5)  # wakes to reap children and to see a stop
        except OSError as exc:
            sock.close()
            log.warning("command socket %s not available (%s): commands run alone", self.path, exc)
            return False
        self._sock = sock
        self._thread = threading.Thread(target=self._loop, name="op25b-control", daemon=True)
        self._thread.start()
        return True

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self._sock is not None:
            self._sock.close()
            with contextlib.suppress(OSError):
                os.unlink(self.path)
        self._reap()

    def _loop(self) -> None:
        assert self._sock is not None
        while not self._stop.is_set():
            self._reap()
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                if self._stop.is_set():
                    return
                continue
            with conn:
                try:
                    self._serve(conn)
                except (OSError, ValueError) as exc:
                    log.warning("command socket: request refused (%s)", exc)

    def _reap(self) -> None:
        """Only our own children: the daemon's `nft` children belong to subprocess."""
        ended = False
        for pid in list(self._children):
            with contextlib.suppress(ChildProcessError):
                done, _ = os.waitpid(pid, os.WNOHANG)
                if not done:
                    continue
            self._children.discard(pid)
            ended = True
        if ended and self.on_done is not None:
            try:
                self.on_done()
            except Exception:  # a failed wake-up must not stop the socket
                log.exception("command socket: wake-up after a command raised")

    def _serve(self, conn: socket.socket) -> None:
        conn.settimeout(5)
        creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        _, uid, _ = struct.unpack("3i", creds)
        _, fds, _, _ = socket.recv_fds(conn, 1, 3)
        try:
            if uid != os.geteuid():
                conn.sendall(b"no: not the daemon's user\n")
                return
            if len(fds) != 3:
                conn.sendall(b"no: stdin, stdout and stderr expected\n")
                return
            request = _receive(conn)
            if request.get("netns") != netns_cookie():
                conn.sendall(b"no: another network namespace\n")
                return
            if request.get("code") != self.code:
                conn.sendall(b"no: the daemon runs other code (restart it after an upgrade)\n")
                return
            if os.path.realpath(str(request.get("policy"))) != self.policy_dir:
                conn.sendall(b"no: another policy directory\n")
                return
            cwd = str(request.get("cwd"))
            if not os.path.isdir(cwd) or not os.access(cwd, os.X_OK):
                conn.sendall(b"no: the working directory is not visible to the daemon\n")
                return
            argv = [str(a) for a in request["argv"]]
            conn.sendall(b"ok\n")  # before the fork: the child's lines come after it
            # the child's collector must not walk (and so copy) the daemon's heap
            gc.freeze()
            pid = os.fork()
            if pid == 0:  # pragma: no cover - the child ends in os._exit
                _child(conn, fds, request, argv, self.run)
            self._children.add(pid)
            self.served += 1
        finally:
            for fd in fds:
                os.close(fd)


def _answers(path: Path) -> bool:
    """Whether something listens on `path` now (a live daemon, not a crashed one's file)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        try:
            probe.connect(str(path))
        except OSError:
            return False
    return True


def _receive(conn: socket.socket) -> dict[str, Any]:
    head = _exactly(conn, 4)
    (size,) = struct.unpack("!I", head)
    if size > MAX_REQUEST:
        raise ValueError(f"request of {size} bytes")
    data = json.loads(_exactly(conn, size))
    if not isinstance(data, dict) or not isinstance(data.get("argv"), list):
        raise ValueError("not a command request")
    return data


def _exactly(conn: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = conn.recv(n - len(buf))
        if not chunk:
            raise ValueError("request cut short")
        buf += chunk
    return buf


def _child(
    conn: socket.socket,
    fds: Sequence[int],
    request: dict[str, Any],
    argv: list[str],
    run: Callable[[list[str]], int],
) -> None:  # pragma: no cover - runs in the forked child
    code = 1
    try:
        gc.disable()  # a short life: the daemon's pages stay shared, not copied on write
        conn.sendall(f"pid {os.getpid()}\n".encode())  # the client forwards Ctrl-C to it
        for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGCHLD, signal.SIGPIPE):
            signal.signal(sig, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.set_wakeup_fd(-1)  # the daemon loop's waker: closed below, its number reused
        for target, fd in enumerate(fds):
            os.dup2(fd, target)
        keep = conn.fileno()
        os.closerange(3, keep)
        os.closerange(keep + 1, 1 << 16)
        sys.stdin = io.TextIOWrapper(io.FileIO(0, "r", closefd=False))
        sys.stdout = io.TextIOWrapper(io.FileIO(1, "w", closefd=False), line_buffering=True)
        sys.stderr = io.TextIOWrapper(io.FileIO(2, "w", closefd=False), line_buffering=True)
        logging.root.handlers.clear()  # the daemon's journal handler is not this command's
        os.chdir(str(request.get("cwd") or "/"))
        env = request.get("env")
        if isinstance(env, dict):
            os.environ.clear()
            os.environ.update({str(k): str(v) for k, v in env.items()})
        code = run(argv)
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        if exc.code is not None and not isinstance(exc.code, int):
            print(exc.code, file=sys.stderr)
    except KeyboardInterrupt:
        code = 130
    except BaseException:
        traceback.print_exc()
        code = 1
    finally:
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        with contextlib.suppress(Exception):
            conn.sendall(f"exit {code}\n".encode())
        os._exit(code & 0xFF)
