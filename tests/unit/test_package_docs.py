"""What the Debian package tells an operator who has only the installed files: the man page's
ENVIRONMENT names every variable op25b-ctl reads, and the pages the README sends a gateway
operator to (the file formats, the fleet, the new commands) are installed."""

from __future__ import annotations

import re

from tests.policytools import REPO

GEN_DOCS = (REPO / "debian" / "gen-docs").read_text()
SHIPPED = (REPO / "debian" / "op25b-ctl.docs").read_text().split()


def test_the_man_page_names_every_environment_variable_op25b_ctl_reads() -> None:
    read = {
        m
        for path in (REPO / "op25b_ctl").rglob("*.py")
        for m in re.findall(r"\"(OP25B_[A-Z_]+)\"", path.read_text())
    }
    assert {"OP25B_POLICY", "OP25B_CACHE_DIR", "OP25B_DAEMON", "OP25B_GATEWAY"} <= read
    missing = sorted(v for v in read if v not in GEN_DOCS)
    assert not missing, f"debian/gen-docs ENVIRONMENT does not name {missing}"


def test_the_package_ships_the_pages_an_operator_is_sent_to() -> None:
    """docs/policy.md is the format of every policy file (README: "The format of each"), and
    docs/fleet.md the `--store` commands; both were missing from /usr/share/doc/op25b-ctl."""
    for page in ("policy", "rollout", "daemon", "fleet", "discovery", "offenders"):
        assert f"docs/{page}.md" in SHIPPED, page
    assert "gateways.yaml" in GEN_DOCS and "policy.md" in GEN_DOCS
