"""Every TOML block in README.md and docs/*.md is a configuration the suite accepts, as a user
would use it: validated when pytest starts, with every quantized variant it configures fully gated.
A block that is a whole file (it has its own [gates]) must work alone, as a user's quant_suite.toml;
every block must work added to the shipped quant_suite.toml (the block's tables win)."""

from __future__ import annotations

import re
import tomllib
from collections.abc import Callable
from pathlib import Path

import pytest

from quant_fixtures.config import DEFAULT_CONFIG_PATH, SuiteConfig, config_from_table

REPO = Path(__file__).resolve().parents[2]
DOCUMENTS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
FOUND = [
    (doc.stem, block)
    for doc in DOCUMENTS
    for block in re.findall(r"```toml\n(.*?)```", doc.read_text(encoding="utf-8"), flags=re.S)
]
BLOCKS = [block for _, block in FOUND]
IDS = [
    f"{stem}-block{i}-" + re.sub(r"\W+", "-", b.splitlines()[0].split("#")[0].strip("[] "))
    for i, (stem, b) in enumerate(FOUND)
]


def merged(base: dict, block: dict) -> dict:
    out = dict(base)
    for key, value in block.items():
        out[key] = merged(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def assert_gated(suite: SuiteConfig, models: list[str], variants_of: Callable[[SuiteConfig, str], list[str]]) -> None:
    for model in models:
        for variant in variants_of(suite, model):
            if not suite.variant(model, variant).is_baseline:
                assert suite.missing_limits_message(model, variant) is None


def test_the_readme_has_toml_examples() -> None:
    assert any(stem == "README" for stem, _ in FOUND)
    assert len(BLOCKS) >= 3


@pytest.mark.parametrize("block", BLOCKS, ids=IDS)
def test_every_readme_toml_block_works_added_to_the_shipped_configuration(block: str) -> None:
    table = tomllib.loads(block)
    shipped = tomllib.loads(DEFAULT_CONFIG_PATH.read_text(encoding="utf-8"))
    suite = config_from_table(merged(shipped, table), Path("documented block + shipped quant_suite.toml"))
    assert_gated(suite, list(table.get("models", {})), SuiteConfig.variant_keys)


@pytest.mark.parametrize(
    "block",
    [b for b in BLOCKS if "gates" in tomllib.loads(b)],
    ids=[i for i, b in zip(IDS, BLOCKS) if "gates" in tomllib.loads(b)],
)
def test_a_whole_file_block_works_alone(block: str) -> None:
    table = tomllib.loads(block)
    suite = config_from_table(table, Path("documented block"))
    assert_gated(suite, list(table.get("models", {})), SuiteConfig.default_variant_keys)
