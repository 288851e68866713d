"""Unit tests for quant_fixtures.names: the key rule, case-only clashes, and that every path built
from a model key or variant name stays inside its directory."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import cast

import pytest

from quant_fixtures.names import KEY_MAX, UnsafeFileName, case_clash, file_in, hub_id_parts, key_problem
from quant_fixtures.report.comparison import comparison_path, evaluation_path
from quant_fixtures.report.reproduction import record_path
from quant_fixtures.store.baseline import BaselineKey, baseline_path
from quant_fixtures.store.long_reference import LongReferenceKey, long_reference_path
from quant_fixtures.store.prompt_reference import ReferenceKey, reference_path
from quant_fixtures.store.prompt_summary import prompt_summary_path

ESCAPING = ["..", "../escaped", "../../escaped", "Org/name", "a/b", "/abs/path", "a\\b"]


@pytest.mark.parametrize("key", ["smollm2-135m", "qwen2.5-0.5b", "My_Model", "a..b", "x" * KEY_MAX])
def test_keys_that_follow_the_rule(key: str) -> None:
    assert key_problem("model", key) is None


@pytest.mark.parametrize("key", [*ESCAPING, "", ".", ".hidden", "-x", "a b", "x" * (KEY_MAX + 1)])
def test_keys_that_break_the_rule(key: str) -> None:
    problem = key_problem("variant", key)
    assert problem is not None and problem.startswith(f"variant key {key!r} breaks the key rule: letters, digits")


def test_a_hub_id_is_told_apart_from_a_path() -> None:
    assert hub_id_parts("Qwen/Qwen2.5-0.5B") == ("Qwen", "Qwen2.5-0.5B")
    assert [hub_id_parts(k) for k in ("../../escaped", "/abs/path", "a/b/c", "plain")] == [None] * 4


def test_case_clash_finds_keys_that_differ_only_in_case() -> None:
    assert case_clash(["fp16", "Qwen", "int8", "qwen"]) == ("Qwen", "qwen")
    assert case_clash(["qwen", "qwen2", "qwen"]) is None  # the same key twice is not a clash


@pytest.mark.parametrize("name", ["", ".", "..", "../x.json", "a/../../x.json", "a/b.json", "/etc/x.json", "a\\b.json"])
def test_file_in_refuses_a_name_that_is_not_one_plain_file_name(tmp_path: Path, name: str) -> None:
    with pytest.raises(UnsafeFileName, match="not a plain file name inside"):
        file_in(tmp_path / "results", name)


def test_file_in_keeps_a_plain_name(tmp_path: Path) -> None:
    assert file_in(tmp_path, "int8_quantized_a..b_evaluation.json") == tmp_path / "int8_quantized_a..b_evaluation.json"
    assert file_in(Path("results"), ".m.lock") == Path("results") / ".m.lock"  # a relative directory too


class _Key:
    """Stands for a store key: the path builders read only ``model`` and ``digest()``."""

    def __init__(self, model: str) -> None:
        self.model = model

    def digest(self) -> str:
        return "d" * 64


PATH_BUILDERS: dict[str, Callable[[Path, str], Path]] = {
    "evaluation (model)": lambda d, key: evaluation_path(d, key, "int8"),
    "evaluation (variant)": lambda d, key: evaluation_path(d, "tiny", key),
    "comparison": comparison_path,
    "reproduction record": lambda d, key: record_path(d, key, "cpu-ctx128"),
    "baseline": lambda d, key: baseline_path(d, cast(BaselineKey, _Key(key))),
    "prompt reference": lambda d, key: reference_path(d, cast(ReferenceKey, _Key(key))),
    "long reference": lambda d, key: long_reference_path(d, cast(LongReferenceKey, _Key(key))),
    "prompt summary": lambda d, key: prompt_summary_path(d, cast(ReferenceKey, _Key(key))),
}


@pytest.mark.parametrize("builder", PATH_BUILDERS)
@pytest.mark.parametrize("key", ["../escaped", "../../escaped", "Org/name", "a/b", "/abs/path", "a\\b"])
def test_every_path_made_from_a_key_stays_inside_its_directory(tmp_path: Path, builder: str, key: str) -> None:
    with pytest.raises(UnsafeFileName):
        PATH_BUILDERS[builder](tmp_path, key)


@pytest.mark.parametrize("builder", PATH_BUILDERS)
def test_a_key_that_follows_the_rule_makes_a_file_of_its_name(tmp_path: Path, builder: str) -> None:
    path = PATH_BUILDERS[builder](tmp_path, "qwen2.5-0.5b")
    assert "qwen2.5-0.5b" in path.name and path.parent in (
        tmp_path,
        tmp_path / "reference",
        tmp_path / "long_reference",
    )
