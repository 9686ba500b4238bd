"""The thin client and the daemon's command socket, without a kernel: `run` is a stand-in."""

from __future__ import annotations

import os
import socket
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from op25b_ctl.cli import thin
from op25b_ctl.codestamp import code_stamp
from op25b_ctl.daemon.control import ControlServer
from op25b_ctl.policy.loader import DEFAULT_POLICY_DIR
from op25b_ctl.source.state import DEFAULT_STATE_DIR


def test_the_socket_is_found_where_the_command_says() -> None:
    assert thin.DEFAULT_STATE_DIR == DEFAULT_STATE_DIR
    assert str(DEFAULT_POLICY_DIR) == thin.DEFAULT_POLICY_DIR
    assert thin.socket_path(["status"], {}) == f"{DEFAULT_STATE_DIR}/.ctl.sock"
    assert thin.socket_path(["status"], {"OP25B_STATE_DIR": "/s"}) == "/s/.ctl.sock"
    env = {"OP25B_STATE_DIR": "/s"}
    assert thin.socket_path(["status", "--state-dir", "/x"], env) == "/x/.ctl.sock"
    assert thin.socket_path(["status", "--state-dir=/y"], env) == "/y/.ctl.sock"


def test_no_daemon_means_the_command_runs_here(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["status", "--state-dir", str(tmp_path)]
    assert thin.forward(argv) is None
    monkeypatch.setenv(thin.ENV, "require")
    assert thin.forward(argv) == 1
    assert "no daemon took the command" in capsys.readouterr().err


def _stand_in(argv: list[str]) -> int:
    print("ran", " ".join(argv), os.getcwd(), os.environ.get("OP25B_PROBE"))
    print("on stderr", file=sys.stderr)
    if argv[1] == "fail":
        raise RuntimeError("boom")
    return int(argv[1])


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ControlServer]:
    srv = ControlServer(tmp_path / thin.SOCKET_NAME, _stand_in, policy_dir=tmp_path / "policy")
    assert srv.start()
    assert oct((tmp_path / thin.SOCKET_NAME).stat().st_mode & 0o777) == "0o600"
    yield srv
    srv.close()
    assert not (tmp_path / thin.SOCKET_NAME).exists()


def test_a_command_runs_in_the_daemons_fork_on_our_streams(
    server: ControlServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv(thin.ENV, "require")
    monkeypatch.setenv("OP25B_PROBE", "our-environment")
    monkeypatch.chdir(tmp_path)
    state = ["--state-dir", str(tmp_path), "--policy", "policy"]  # relative to the cwd
    assert thin.forward(["audit", "7", *state]) == 7
    out, err = capfd.readouterr()
    assert out == f"ran audit 7 {' '.join(state)} {tmp_path} our-environment\n"
    assert err == "on stderr\n"
    assert thin.forward(["audit", "fail", *state]) == 1  # a crash in the command is its exit 1
    assert "RuntimeError: boom" in capfd.readouterr().err
    assert server.served == 2
    # never forwarded: help, the daemon, the off switch, the fleet
    for argv in (["status", "--help"], ["daemon"], ["teardown", "--yes"], ["pool", "--store=x"]):
        assert thin.forward([*argv, *state]) is None
    # refused by the daemon (so `require` fails, `auto` would run it here): another policy
    assert thin.forward(["audit", "0", "--state-dir", str(tmp_path), "--policy", "/elsewhere"]) == 1
    assert "another policy directory" in capfd.readouterr().err
    assert server.served == 2
    # other code than the daemon loaded (an upgrade before its restart): refused too
    monkeypatch.setattr(thin, "code_stamp", lambda: "another-version")
    assert thin.forward(["audit", "0", *state]) == 1
    assert "the daemon runs other code" in capfd.readouterr().err
    assert server.served == 2


def test_a_forwarded_commands_end_wakes_the_daemon(
    server: ControlServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
) -> None:
    """The command changed overrides or the table: the loop's next pass (and so its metrics)
    must follow now, not an `--interval` later."""
    ended = threading.Event()
    server.on_done = ended.set
    monkeypatch.setenv(thin.ENV, "require")
    state = ["--state-dir", str(tmp_path), "--policy", str(tmp_path / "policy")]
    assert thin.forward(["audit", "0", *state]) == 0
    assert ended.wait(10), "no wake-up after the forwarded command ended"
    ended.clear()
    # refused before any fork: nothing ran, nothing to wake for
    assert thin.forward(["audit", "0", "--state-dir", str(tmp_path), "--policy", "/x"]) == 1
    assert not ended.wait(1.5)  # three of the server's reaping rounds
    capfd.readouterr()


def test_the_code_stamp_follows_the_source_files(tmp_path: Path) -> None:
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "a.py").write_text("x = 1\n")
    (tmp_path / "pkg" / "__pycache__").mkdir()
    before = code_stamp(tmp_path)
    (tmp_path / "pkg" / "__pycache__" / "a.pyc").write_bytes(b"compiled")
    assert code_stamp(tmp_path) == before  # byte code is no source
    (tmp_path / "pkg" / "a.py").write_text("x = 22\n")  # an upgraded file
    assert code_stamp(tmp_path) != before
    assert code_stamp() == code_stamp()  # the package's own: stable while nothing changes


def test_a_live_socket_is_kept_and_a_stale_one_replaced(tmp_path: Path) -> None:
    path = tmp_path / thin.SOCKET_NAME
    first = ControlServer(path, _stand_in, policy_dir=tmp_path)
    assert first.start()
    assert not ControlServer(
        path, _stand_in, policy_dir=tmp_path
    ).start()  # another daemon serves it
    first.close()
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(path))  # a crashed daemon's file: bound, nobody listening
    stale.close()
    assert path.exists()
    second = ControlServer(path, _stand_in, policy_dir=tmp_path)
    assert second.start()
    second.close()


def test_no_socket_where_it_cannot_be_made(tmp_path: Path) -> None:
    srv = ControlServer(tmp_path / "missing-dir" / thin.SOCKET_NAME, _stand_in, policy_dir=tmp_path)
    assert not srv.start()
    srv.close()
