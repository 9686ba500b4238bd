"""Every test gets its own state and cache directories: no test may touch /var/lib/op25b or
the user's ~/.cache."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(autouse=True)
def _state_dir(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path_factory.mktemp("state")
    monkeypatch.setenv("OP25B_STATE_DIR", str(path))
    monkeypatch.setenv("OP25B_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))
    return path
