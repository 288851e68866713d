"""examples/own_project and docs/OWN_PROJECT.md ("Checks in your own project") kept true: the
example's config parses, its tests collect against the plugin's fixtures (in-process, nothing
loads), the document shows the example's files as they are, and its fixtures table lists the plugin's fixtures with
their scopes. The example's run end to end is tests/integration/test_own_project.py."""

from __future__ import annotations

import ast
import re
import shutil
from pathlib import Path

import pytest
import torch  # noqa: F401  (before any inner run: pytester drops modules first imported inside one)

from quant_fixtures.config import load_config

pytest_plugins = ["pytester"]

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "own_project"
FIXTURES = REPO / "quant_fixtures" / "plugin" / "fixtures.py"


def readme_section() -> str:
    """docs/OWN_PROJECT.md, which README's "Checks in your own project" points to."""
    assert "(docs/OWN_PROJECT.md)" in (REPO / "README.md").read_text(encoding="utf-8")
    return (REPO / "docs" / "OWN_PROJECT.md").read_text(encoding="utf-8")


def blocks(text: str, language: str) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```$", text, re.M | re.S)


def test_the_example_config_is_valid() -> None:
    suite = load_config(EXAMPLE / "quant_suite.toml")
    assert list(suite.models) == ["smollm2-135m-instruct"]
    assert suite.models["smollm2-135m-instruct"].hub_id == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert suite.gates_for("smollm2-135m-instruct", "int8")["max_kl_mean"] == 0.05
    assert suite.gates_for("smollm2-135m-instruct", "nf4")["max_flip_rate"] == 0.25


def test_the_readme_shows_the_example_as_it_is() -> None:
    section = readme_section()
    assert blocks(section, "toml") == [(EXAMPLE / "quant_suite.toml").read_text(encoding="utf-8")]
    example_tests = (EXAMPLE / "test_my_model.py").read_text(encoding="utf-8")
    assert blocks(section, "python") and all(block in example_tests for block in blocks(section, "python"))


def _plugin_fixtures() -> dict[str, str]:
    """{name: scope} of every @pytest.fixture in plugin/fixtures.py, read from its source."""
    found: dict[str, str] = {}
    for node in ast.parse(FIXTURES.read_text(encoding="utf-8")).body:
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        for decorator in node.decorator_list:
            call = decorator if isinstance(decorator, ast.Call) else None
            target = call.func if call else decorator
            if isinstance(target, ast.Attribute) and target.attr == "fixture":
                scope = next(
                    (ast.literal_eval(k.value) for k in (call.keywords if call else []) if k.arg == "scope"), "function"
                )
                found[node.name] = scope
    return found


def test_the_fixtures_table_is_the_plugins_fixtures() -> None:
    rows = re.findall(r"^\| `(\w+)` \| (\w+) \|", readme_section(), re.M)
    assert dict(rows) == _plugin_fixtures() and len(rows) == len(dict(rows))


def test_the_example_collects_for_a_model_given_on_the_command_line(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    for name in ("quant_suite.toml", "test_my_model.py"):
        shutil.copy(EXAMPLE / name, pytester.path / name)
    pytester.makeini("[pytest]\n")
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider", "--collect-only", "-q", "--model", "org/name")
    assert result.ret == pytest.ExitCode.OK
    ids = {line.split("::", 1)[1] for line in result.outlines if line.startswith("test_my_model.py::")}
    gates = [f"int8-{m}" for m in ("delta_ppl_pct", "kl_mean", "memory_reduction_pct")] + [
        f"nf4-{m}" for m in ("delta_ppl_pct", "kl_mean", "flip_rate", "memory_reduction_pct")
    ]
    assert ids == (
        {f"test_perplexity_is_measured[name-{v}]" for v in ("fp16", "int8", "nf4")}
        | {f"test_within_limit[name-{g}]" for g in gates}
        | {f"test_quantized_weights_are_smaller[name-{v}]" for v in ("int8", "nf4")}
        | {"test_int8_keeps_every_prompt_near_fp16[name-int8]", "test_eight_bits_stay_closer_to_fp16_than_four[name]"}
    )
