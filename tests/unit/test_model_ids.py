"""Unit tests for quant_fixtures.model_ids: what a `--model` value becomes (a new model entry, or the
configured entry of the same source), its key, and every error, without pytest or a model."""

from __future__ import annotations

from pathlib import Path

import pytest

from quant_fixtures.config import DEFAULT_CONFIG_PATH, ConfigError, ModelSpec, SuiteConfig, load_config
from quant_fixtures.model_ids import GivenModel, add_given_models, derive_key, source_of
from quant_fixtures.names import KEY_RULE
from quant_fixtures.variants import DEFAULT_VARIANTS

SHIPPED = load_config(DEFAULT_CONFIG_PATH)


def checkpoint(directory: Path) -> Path:
    directory.mkdir(parents=True)
    (directory / "config.json").write_text("{}")
    return directory


def given(values: list[str], base_dir: Path, suite: SuiteConfig = SHIPPED) -> tuple[SuiteConfig, list[GivenModel]]:
    return add_given_models(suite, values, base_dir)


def error(values: list[str], base_dir: Path, suite: SuiteConfig = SHIPPED) -> str:
    with pytest.raises(ConfigError) as info:
        add_given_models(suite, values, base_dir)
    return str(info.value)


@pytest.mark.parametrize(
    "name, key",
    [
        ("Qwen2.5-0.5B", "qwen2.5-0.5b"),
        ("Mistral-7B-v0.1", "mistral-7b-v0.1"),
        ("My_Model", "my_model"),
        ("tiny llama (copy)", "tiny-llama-copy"),
        ("--odd--", "odd"),
        ("___", ""),
    ],
)
def test_the_key_is_the_lower_case_name(name: str, key: str) -> None:
    assert derive_key(name) == key


@pytest.mark.parametrize(
    "value, fields",
    [
        ("Qwen/Qwen2.5-0.5B", {"hub_id": "Qwen/Qwen2.5-0.5B", "revision": None}),
        ("org/name@3f1c9a0", {"hub_id": "org/name", "revision": "3f1c9a0"}),
        ("org/name@refs/pr/1", {"hub_id": "org/name", "revision": "refs/pr/1"}),
    ],
)
def test_hub_ids(tmp_path: Path, value: str, fields: dict) -> None:
    assert source_of(value, value, tmp_path) == fields


@pytest.mark.parametrize(
    "value", ["gpt2", "org/na--me", "org/name.", "-org/name", "org/na me", "org/name@", "org/" + "n" * 96]
)
def test_what_is_not_a_hub_id_is_an_error(tmp_path: Path, value: str) -> None:
    assert error([value], tmp_path) == (
        f"--model {value}: expected a Hugging Face Hub id (org/name, optionally "
        "@revision) or a directory holding a Hugging Face checkpoint"
    )


def test_a_directory_wins_over_a_hub_id_of_the_same_spelling(tmp_path: Path) -> None:
    checkpoint(tmp_path / "org" / "name")
    assert source_of("org/name", "org/name", tmp_path) == {"path": str((tmp_path / "org" / "name").resolve())}


@pytest.mark.parametrize(
    "value, message",
    [
        ("./missing", "no such directory {base}/missing"),
        ("a/b/c", "no such directory {base}/a/b/c"),
        ("empty", "{base}/empty is not a Hugging Face checkpoint directory (no config.json)"),
        ("", "no model given; expected a Hugging Face Hub id (org/name) or a directory"),
    ],
)
def test_directory_errors(tmp_path: Path, value: str, message: str) -> None:
    (tmp_path / "empty").mkdir()
    assert error([value], tmp_path) == f"--model {value}: " + message.format(base=tmp_path)


def test_a_hub_id_becomes_a_new_entry_with_the_default_variants_and_gates(tmp_path: Path) -> None:
    suite, (model,) = given(["Org/My-Model@v2"], tmp_path)
    assert (model.key, model.configured) == ("my-model", False)
    assert suite.models["my-model"] == ModelSpec(key="my-model", hub_id="Org/My-Model", revision="v2")
    assert list(SHIPPED.models) == list(suite.models)[:-1]  # the configured ones untouched
    assert suite.default_variant_keys("my-model") == list(DEFAULT_VARIANTS)
    for variant in ("int8", "nf4"):
        assert suite.gates_for("my-model", variant) == SHIPPED.gates[variant]
        assert suite.missing_limits("my-model", variant) == []
    assert model.describe(suite) == (
        f"--model Org/My-Model@v2: model 'my-model' from Org/My-Model@v2; default variants fp16,int8,nf4, "
        f"limits from [gates] of {DEFAULT_CONFIG_PATH}"
    )


def test_a_directory_becomes_a_path_entry_keyed_by_its_name(tmp_path: Path) -> None:
    directory = checkpoint(tmp_path / "checkpoints" / "Tiny-Llama")
    suite, (model,) = given(["checkpoints/Tiny-Llama"], tmp_path)
    assert model.key == "tiny-llama" and suite.models["tiny-llama"].path == str(directory.resolve())


@pytest.mark.parametrize(
    "value, key",
    [
        ("Qwen/Qwen2.5-0.5B", "qwen2.5-0.5b"),
        ("qwen/qwen2.5-0.5b@main", "qwen2.5-0.5b"),  # Hub ids are case-insensitive; no revision means main
        ("mistralai/Mistral-7B-v0.1", "mistral7b"),  # found by its source, whatever its key
        ("smollm2-135m", "smollm2-135m"),  # a configured key
    ],
)
def test_a_configured_source_or_key_selects_that_entry(tmp_path: Path, value: str, key: str) -> None:
    suite, (model,) = given([value], tmp_path)
    assert (model.key, model.configured) == (key, True)
    assert suite.models == SHIPPED.models  # its own gates and requires_gpu, nothing added
    assert model.describe(suite) == f"--model {value}: model {key!r}, the entry configured in {DEFAULT_CONFIG_PATH}"


def test_a_configured_directory_is_selected(tmp_path: Path) -> None:
    directory = checkpoint(tmp_path / "weights")
    config = tmp_path / "suite.toml"
    config.write_text(
        f"[gates.int8]\nmax_delta_ppl_pct = 5.0\nmin_memory_reduction_pct = 40.0\nmax_kl_mean = 0.1\n\n"
        f'[models.mine]\npath = "{directory}"\n'
    )
    suite = load_config(config)
    assert given([str(directory)], tmp_path, suite)[1][0].key == "mine"
    assert given(["./weights"], tmp_path, suite)[1][0].key == "mine"


def test_key_equals_names_the_key(tmp_path: Path) -> None:
    suite, (model,) = given(["qwen-main=Qwen/Qwen2.5-0.5B@abc123"], tmp_path)
    assert (model.key, model.configured, model.spec.revision) == ("qwen-main", False, "abc123")
    # a configured key of the same source is that entry
    assert given(["qwen2.5-0.5b=Qwen/Qwen2.5-0.5B"], tmp_path)[1][0].configured


def test_a_key_taken_by_another_source_is_an_error(tmp_path: Path) -> None:
    assert error(["Qwen/Qwen2.5-0.5B@abc123"], tmp_path) == (
        f"--model Qwen/Qwen2.5-0.5B@abc123: its key 'qwen2.5-0.5b' is already the model from Qwen/Qwen2.5-0.5B@main "
        f"in {DEFAULT_CONFIG_PATH}; give this one another key: --model OTHER_KEY=Qwen/Qwen2.5-0.5B@abc123"
    )
    assert "its key 'mistral7b' is already the model" in error(["mistral7b=org/other"], tmp_path)


def test_two_values_of_one_key(tmp_path: Path) -> None:
    assert error(["a/model", "b/model"], tmp_path) == (
        "--model a/model and --model b/model both make the model key 'model'; give one another key: "
        "--model OTHER_KEY=b/model"
    )
    suite, models = given(["a/model", "a/model", "x=a/model"], tmp_path)  # the same one twice counts once
    assert [m.key for m in models] == ["model", "x"]


def test_two_sources_under_one_named_key_are_told_to_rename_the_source_not_the_value(tmp_path: Path) -> None:
    # the advice is a --model value that works: OTHER_KEY= and the source, not OTHER_KEY=x=org/b
    assert error(["x=org/a", "x=org/b"], tmp_path) == (
        "--model x=org/a and --model x=org/b both make the model key 'x'; give one another key: --model OTHER_KEY=org/b"
    )
    suite, (first, second) = given(["x=org/a", "y=org/b"], tmp_path)  # the advice taken, it runs
    assert (first.key, second.key, second.spec.hub_id) == ("x", "y", "org/b")


def test_keys_that_differ_only_in_case_are_refused(tmp_path: Path) -> None:
    assert error(["Tiny=org/a", "tiny=org/b"], tmp_path) == (
        "--model Tiny=org/a and --model tiny=org/b make the model keys 'Tiny' and 'tiny', which differ only in "
        "case (one report file on a case-insensitive file system); give one another key: --model OTHER_KEY=org/b"
    )
    assert error(["SmolLM2-135M=org/other"], tmp_path) == (
        f"--model SmolLM2-135M=org/other: its key 'SmolLM2-135M' differs only in case from the model "
        f"'smollm2-135m' in {DEFAULT_CONFIG_PATH} (one report file on a case-insensitive file system); give it "
        "another key: --model OTHER_KEY=org/other"
    )


def test_a_named_key_follows_the_key_rule(tmp_path: Path) -> None:
    long_key = "k" * 101
    assert error([f"{long_key}=org/a"], tmp_path) == (
        f"--model {long_key}=org/a: model key {long_key!r} breaks the key rule: {KEY_RULE} (it names report, "
        "baseline and cache files); name it yourself: --model KEY=org/a"
    )


def test_no_key_can_be_made(tmp_path: Path) -> None:
    checkpoint(tmp_path / "___")
    assert error(["___"], tmp_path) == "--model ___: no model key can be made from it; name one: --model KEY=___"
