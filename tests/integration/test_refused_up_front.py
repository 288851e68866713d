"""Bad inputs are refused in one line before any model loads, with exit code 4 (issue 33, item 5): a
directory as --suite-config, a config.json transformers cannot read, a model folder without weights
the suite may load, --dataset-source hub without the Hub. Each used to fail late: an INTERNALERROR,
a traceback, the same error once per test with exit 1 (a failed gate's code), minutes of retries.
(Output directories the file system refuses: tests/unit/test_plugin.py.)

No weights are needed: every run stops before the first model loads, so a model folder here is a
config.json and empty weight files.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from integration_support import (
    CTX,
    HARM_TESTS,
    LONG_ARGS,
    MAX_TOKENS,
    PASSING_GATES,
    PROJECT_TESTS,
    PROMPT_ARGS,
    TINY_DIMS,
    suite_toml,
)

pytest_plugins = ["pytester"]

GOOD_CONFIG = json.dumps({"model_type": "llama", **TINY_DIMS})
MINE_TABLES = """
[models.tiny.variants.mine]
path = {path}

[models.tiny.gates.mine]
ungated = ["max_delta_ppl_pct", "min_memory_reduction_pct", "max_kl_mean"]
"""
GLOBAL_INT8_GATES = "\n[gates.int8]\n" + "\n".join(f"{k} = {v}" for k, v in PASSING_GATES["int8"].items())


@pytest.fixture
def project(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> pytest.Pytester:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    pytester.makeini("[pytest]\n")
    shutil.copy(HARM_TESTS, pytester.path / PROJECT_TESTS)
    return pytester


def model_folder(root: Path, name: str, *weights: str, config: str = GOOD_CONFIG) -> Path:
    folder = root / name
    folder.mkdir()
    (folder / "config.json").write_text(config)
    for weight in weights:
        (folder / weight).write_bytes(b"")
    return folder


def write_suite(project: pytest.Pytester, model: Path, extra: str = "") -> Path:
    suite = project.path / "suite.toml"
    suite.write_text(suite_toml(model, {"int8": PASSING_GATES["int8"]}) + extra)
    return suite


def run(project: pytest.Pytester, *args: str, subprocess: bool = False) -> pytest.RunResult:
    """A small run of the suite (as the end-to-end tests run it) with these arguments besides."""
    out = project.path / "out"
    every = [
        PROJECT_TESTS,
        "-p",
        "no:cacheprovider",
        "--variants",
        "fp16,int8",
        "--ctx",
        str(CTX),
        "--ppl-max-tokens",
        str(MAX_TOKENS),
        f"--results-dir={out / 'results'}",
        f"--baselines-dir={out / 'baselines'}",
        f"--cache-dir={out / 'cache'}",
        *PROMPT_ARGS,
        *LONG_ARGS,
        *args,
    ]
    if subprocess:
        return project.runpytest_subprocess(*every, timeout=180)
    return project.runpytest_inprocess(*every)


def refusal(project: pytest.Pytester, result: pytest.RunResult) -> str:
    """The one line of a run refused up front (exit 4; no traceback; nothing ran, nothing written)."""
    output = result.stdout.str() + result.stderr.str()
    assert result.ret == pytest.ExitCode.USAGE_ERROR, output[-3000:]
    assert "Traceback" not in output and "INTERNALERROR" not in output, output[-3000:]
    assert not (project.path / "out").exists()
    errors = [line for line in result.stderr.lines if line.startswith("ERROR")]
    assert len(errors) == 1, errors
    return errors[0].removeprefix("ERROR: ")


@pytest.mark.parametrize("holds_a_suite", [False, True], ids=["empty", "holding-quant_suite.toml"])
def test_a_directory_as_suite_config(project: pytest.Pytester, holds_a_suite: bool) -> None:
    folder = project.path / "configs"
    folder.mkdir()
    hint = ""
    if holds_a_suite:
        (folder / "quant_suite.toml").write_text("")
        hint = " (it holds quant_suite.toml: give that)"
    line = refusal(project, run(project, f"--suite-config={folder}"))
    assert line == f"--suite-config {folder}: {folder} is a directory, not a suite TOML file{hint}"


@pytest.mark.parametrize("route", ["toml", "--model"])
@pytest.mark.parametrize(
    "config, problem",
    [
        ('{"model_type": "llama",\n', "is not valid JSON: Expecting property name enclosed in double quotes: line 2"),
        ('["llama"]', "is not a JSON object (a model's config is one)"),
        ('{"model_type": "nosuch"}', "transformers cannot read"),
    ],
    ids=["not-json", "not-an-object", "unknown-model-type"],
)
def test_a_config_json_that_cannot_be_read(project: pytest.Pytester, route: str, config: str, problem: str) -> None:
    folder = model_folder(project.path, "tiny", "model.safetensors", config=config)
    args = (f"--suite-config={write_suite(project, folder)}",) if route == "toml" else ("--model=./tiny",)
    line = refusal(project, run(project, *args))
    config_json = folder / "config.json"
    if problem.startswith("transformers"):
        assert line.startswith(f"model 'tiny': {problem} {config_json}: ") and "`nosuch`" in line
    else:
        assert line.startswith(f"model 'tiny': {config_json} {problem}")


def test_a_model_folder_without_weights(project: pytest.Pytester) -> None:
    folder = model_folder(project.path, "tiny")
    expected = (
        f"model 'tiny': {folder} holds no weight files (*.safetensors): give the directory the checkpoint's "
        "weights are in"
    )
    assert refusal(project, run(project, f"--suite-config={write_suite(project, folder)}")) == expected
    assert refusal(project, run(project, "--model=./tiny")) == expected


def test_a_model_folder_without_a_tokenizer(project: pytest.Pytester) -> None:
    """The prompts are checked against the model's positions as its tokenizer reads them: a folder
    without one is refused in one line, not an INTERNALERROR."""
    folder = model_folder(project.path, "tiny", "model.safetensors")
    line = refusal(project, run(project, f"--suite-config={write_suite(project, folder)}"))
    assert line.startswith("model 'tiny': its tokenizer cannot be loaded: ")


def test_a_toml_path_that_holds_no_model(project: pytest.Pytester) -> None:
    missing = project.path / "not-downloaded"
    assert refusal(project, run(project, f"--suite-config={write_suite(project, missing)}")) == (
        f"model 'tiny': {missing} is not a Hugging Face model directory (no config.json)"
    )


PICKLES_REFUSED = (
    "holds only pickle weights (pytorch_model.bin); loading a pickle can run arbitrary code, so they are refused"
)


def test_pickle_weights_of_a_toml_entry_name_its_allow_pickle(project: pytest.Pytester) -> None:
    folder = model_folder(project.path, "tiny", "pytorch_model.bin")
    suite = write_suite(project, folder)
    assert refusal(project, run(project, f"--suite-config={suite}")) == (
        f"model 'tiny': {folder} {PICKLES_REFUSED}; set allow_pickle = true in [models.tiny] of {suite} "
        "(only for a source you trust), or convert them to safetensors"
    )


def test_pickle_weights_of_a_variant_name_the_variants_allow_pickle(project: pytest.Pytester) -> None:
    base = model_folder(project.path, "tiny", "model.safetensors")
    mine = model_folder(project.path, "mine", "pytorch_model.bin")
    suite = write_suite(project, base, MINE_TABLES.format(path=json.dumps(str(mine))))
    assert refusal(project, run(project, f"--suite-config={suite}", "--variants", "fp16,mine")) == (
        f"model 'tiny' variant 'mine': {mine} {PICKLES_REFUSED}; set allow_pickle = true in "
        f"[models.tiny.variants.mine] of {suite} (only for a source you trust), or convert them to safetensors"
    )


@pytest.mark.parametrize("own_suite", [False, True], ids=["shipped-suite", "project-suite"])
def test_pickle_weights_given_by_model_say_what_model_cannot_do(project: pytest.Pytester, own_suite: bool) -> None:
    """--model has no allow_pickle: the remedy is safetensors, or a TOML entry of that path that opts
    in (which --model then selects); not the shipped config, which lives in the package."""
    folder = model_folder(project.path, "pkl", "pytorch_model.bin")
    args = ["--model=./pkl"]
    where = "a suite TOML of your own (--suite-config=FILE)"
    if own_suite:
        other = model_folder(project.path, "other", "model.safetensors")
        where = str(write_suite(project, other, GLOBAL_INT8_GATES))  # the gates a --model model gets
        args.append(f"--suite-config={where}")
    assert refusal(project, run(project, *args)) == (
        f"model 'pkl': {folder} {PICKLES_REFUSED}; --model cannot allow them: convert them to safetensors, "
        f'or (only for a source you trust) add [models.pkl] with path = "{folder}" and allow_pickle = true '
        f"to {where}"
    )


def test_hub_dataset_without_a_reachable_hub_fails_at_once(
    project: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Not minutes of `datasets` retries: one short request finds the Hub unreachable (here an
    endpoint that refuses connections)."""
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    monkeypatch.setenv("HF_HOME", str(project.path / "hf-home"))
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    model_folder(project.path, "tiny", "model.safetensors")
    line = refusal(project, run(project, "--model=./tiny", "--dataset-source", "hub", subprocess=True))
    assert line.startswith("--dataset-source hub: the Hub (http://127.0.0.1:9) cannot be reached (")
    assert line.endswith(
        "use --dataset-source vendored (the same text, sha256-checked), or set HF_HUB_OFFLINE=1 to read "
        "the copy in the datasets cache"
    )


def test_hub_dataset_offline_without_a_cached_copy(project: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    home = project.path / "hf-home"
    monkeypatch.setenv("HF_HOME", str(home))
    model_folder(project.path, "tiny", "model.safetensors")
    line = refusal(project, run(project, "--model=./tiny", "--dataset-source", "hub", subprocess=True))
    assert line.startswith("--dataset-source hub: WikiText-2 could not be loaded from the Hub: ")
    assert line.endswith(
        f"offline mode (HF_HUB_OFFLINE) reads only the datasets cache ({home / 'datasets'}), which holds no "
        "usable copy: use --dataset-source vendored (the same text, sha256-checked)"
    )
