"""The policy format as documented: docs/examples/ holds one example of every policy file and
is one valid policy; every `# NAME.yaml` snippet in docs/policy.md validates in its place;
README names every policy file (issue 17, item 5)."""

from __future__ import annotations

import re
import shutil
from datetime import UTC, datetime
from pathlib import Path

import pytest
from pydantic import BaseModel

from op25b_ctl.errors import PolicyError
from op25b_ctl.plan.desired import from_policy
from op25b_ctl.policy.loader import FILES, load_policy
from op25b_ctl.policy.model import Exemption, FleetGateway, Gateway, Pool, Relay, Stage
from tests.policytools import REPO

EXAMPLES = REPO / "docs" / "examples"
POLICY_DOC = REPO / "docs" / "policy.md"
AFTER = datetime(2011, 1, 30, tzinfo=UTC)  # every dated stage of the example is done
_SNIPPET = re.compile(r"```yaml\n(# ([a-z]+\.yaml)\n.*?)```", re.S)


def test_one_example_per_policy_file() -> None:
    assert sorted(p.name for p in EXAMPLES.glob("*.yaml")) == sorted(FILES)


def test_the_examples_are_one_valid_policy() -> None:
    policy = load_policy(EXAMPLES)
    assert policy.gateways and any(s.groups for s in policy.stages)
    assert policy.gateway.subscriber_interfaces and policy.exemptions
    # every gateway's own view plans: its pools, its group's stages, its exemptions
    modes = {}
    for gw in policy.gateways:
        mine = policy.for_gateway(gw.name)
        modes[gw.name] = {n: d.mode for n, d in from_policy(mine, AFTER, ()).decisions.items()}
    assert modes["bras-tokyo-1"] == {"flets-east-dyn-1": "enforce", "flets-east-dyn-2": "monitor"}
    assert modes["bras-osaka-1"]["flets-west-dyn-1"] == "enforce"


def snippets() -> list[tuple[str, str]]:
    return [(m.group(2), m.group(1)) for m in _SNIPPET.finditer(POLICY_DOC.read_text())]


def test_policy_md_shows_every_file() -> None:
    assert sorted({name for name, _ in snippets()}) == sorted(FILES)


@pytest.mark.parametrize("name,text", snippets(), ids=[n for n, _ in snippets()])
def test_every_policy_md_snippet_validates(tmp_path: Path, name: str, text: str) -> None:
    d = tmp_path / "policy"
    shutil.copytree(EXAMPLES, d)
    (d / name).write_text(text)
    load_policy(d)  # PolicyError (file:line) if the page shows something the model refuses


def test_readme_lists_every_policy_file_and_links_the_format() -> None:
    readme = (REPO / "README.md").read_text()
    section = readme.split("### Policy files", 1)[1].split("```", 1)[0]
    for name in FILES:
        assert f"`{name}`" in section, name
    assert "docs/policy.md" in section


def test_a_group_stage_still_needs_pools_or_tags(tmp_path: Path) -> None:
    """docs/policy.md and docs/rollout.md: `groups:` says where, `pools:`/`tags:` what."""
    d = tmp_path / "policy"
    shutil.copytree(EXAMPLES, d)
    text = (d / "rollout.yaml").read_text()
    cut = "    tags: [flets-west]\n    mode: enforce\n    groups: [west]\n"
    assert cut in text
    (d / "rollout.yaml").write_text(text.replace(cut, "    mode: enforce\n    groups: [west]\n"))
    with pytest.raises(PolicyError, match=r"rollout\.yaml:\d+: stages\[2\]: stage selects no"):
        load_policy(d)


def _documented_keys(file: str) -> set[str]:
    """The first column of the key table under `## FILE` in docs/policy.md."""
    section = POLICY_DOC.read_text().split(f"\n## {file}\n", 1)[1].split("\n## ", 1)[0]
    keys = re.findall(r"^\| `([a-z0-9_\[\].]+)` \|", section, re.M)
    return {k.rsplit(".", 1)[-1] for k in keys}


@pytest.mark.parametrize(
    ("file", "model"),
    [
        ("gateway.yaml", Gateway),
        ("pools.yaml", Pool),
        ("relays.yaml", Relay),
        ("rollout.yaml", Stage),
        ("exemptions.yaml", Exemption),
        ("gateways.yaml", FleetGateway),
    ],
)
def test_policy_md_documents_every_key_the_model_accepts(file: str, model: type[BaseModel]) -> None:
    """A key the loader accepts but docs/policy.md leaves out is one a new user cannot find
    (offenders:, discovery:, subscriber_prefix_v6 were missing)."""
    missing = set(model.model_fields) - _documented_keys(file)
    assert not missing, f"docs/policy.md, {file}: undocumented keys {sorted(missing)}"
