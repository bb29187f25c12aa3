"""docs/FIDELITY.md and the paper recipes agree: every `key: value` the table states for a setting marked
`same` is what the recipe resolves to."""

import re

import pytest
import yaml

from seal.shared.config import ContinualRunConfig
from seal.shared.config_parser import parse_config
from tests.conftest import REPO

RECIPES = {"Knowledge incorporation": "recipes/knowledge/qwen2.5-7b.yaml",
           "Few-shot ARC": "recipes/arc/llama-3.2-1b.yaml"}


def stated_settings():
    """(recipe, dotted key, value) for every `section.key: value` in the `ours` column of a `same` row."""
    text = (REPO / "docs" / "FIDELITY.md").read_text()
    out = []
    for title, recipe in RECIPES.items():
        section = text.split(f"## {title}", 1)[1].split("\n## ", 1)[0]
        for line in section.splitlines():
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if len(cells) != 5 or not cells[4].startswith("same"):
                continue
            for key, value in re.findall(r"`([a-z_]+\.[a-z_.]+): ([^`]+)`", cells[3]):
                out.append((recipe, key, yaml.safe_load(value)))
    return out


def test_the_table_states_settings_for_both_recipes():
    recipes = {r for r, _, _ in stated_settings()}
    assert recipes == set(RECIPES.values()) and len(stated_settings()) >= 20


@pytest.mark.parametrize("recipe, key, value", stated_settings(), ids=lambda v: str(v)[-40:])
def test_the_recipe_runs_the_value_the_table_states(recipe, key, value):
    node = parse_config(["--config", str(REPO / recipe)], ContinualRunConfig)  # SealConfig + `continual`
    for part in key.split("."):
        node = node[part] if isinstance(node, dict) else getattr(node, part)
    assert node == value, f"{recipe}: {key} is {node!r}, docs/FIDELITY.md says {value!r}"
