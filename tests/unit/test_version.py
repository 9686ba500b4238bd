"""One version: op25b_ctl.__version__ is what the package metadata, --version, the metrics'
op25b_build_info and the Debian changelog carry."""

from __future__ import annotations

import importlib.metadata
import re
import tomllib

import pytest

from op25b_ctl import __version__
from op25b_ctl.cli.main import main
from tests.policytools import REPO


def test_version_has_one_source() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert "version" not in project["project"] and "version" in project["project"]["dynamic"]
    attr = project["tool"]["setuptools"]["dynamic"]["version"]["attr"]
    assert attr == "op25b_ctl.__version__"
    assert importlib.metadata.version("op25b-ctl") == __version__
    head = (REPO / "debian" / "changelog").read_text().splitlines()[0]
    m = re.match(r"op25b-ctl \(([^)]+)\)", head)
    assert m and re.fullmatch(rf"{re.escape(__version__)}([-+].*)?", m.group(1)), head


def test_cli_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out.strip() == f"op25b-ctl {__version__}"
