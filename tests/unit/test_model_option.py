"""`--model org/name` on pytest's command line: which config it activates, what the run selects, the
header line naming the key, and the usage errors. Inner sessions in-process, collection only: no
model loads (see test_plugin.py for why torch is imported first)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch  # noqa: F401  (before any inner run: pytester drops modules first imported inside one)

from quant_fixtures.config import DEFAULT_CONFIG_PATH, load_config
from quant_fixtures.metrics.registry import GATEABLE

pytest_plugins = ["pytester"]

USER_TESTS = "def test_ppl(variant_eval):\n    pass\n\n\ndef test_gate(gated_metric):\n    pass\n"
REQUIRED = ("delta_ppl_pct", "kl_mean", "memory_reduction_pct")
PROJECT_GATES = """
[gates.int8]
max_delta_ppl_pct = 5.0
min_memory_reduction_pct = 40.0
max_kl_mean = 0.1
"""


@pytest.fixture
def project(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> pytest.Pytester:
    """A user's project: one test file, no suite config (the rootdir pinned here)."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    pytester.makeini("[pytest]\n")
    pytester.makepyfile(test_user=USER_TESTS)
    return pytester


def collect(project: pytest.Pytester, *args: str) -> pytest.RunResult:
    return project.runpytest_inprocess("-p", "no:cacheprovider", "--collect-only", *args)


def ids(result: pytest.RunResult) -> set[str]:
    return {line.split("[", 1)[1].rstrip("]>") for line in result.outlines if "<Function " in line}


def shipped_gated(variant: str) -> list[str]:
    """The metrics the shipped config's [gates] table gates for a variant (required and optional)."""
    return [GATEABLE[limit].name for limit in load_config(DEFAULT_CONFIG_PATH).gates.get(variant, {})]


def matrix(
    model: str, variants: tuple[str, ...] = ("fp16", "int8", "nf4"), metrics: tuple[str, ...] | None = None
) -> set[str]:
    """Node ids of a model's tests: ``metrics`` gated per quantized variant (default: the shipped
    config's limits of that variant)."""
    return {f"{model}-{v}" for v in variants} | {
        f"{model}-{v}-{metric}" for v in variants if v != "fp16" for metric in (metrics or shipped_gated(v))
    }


def test_without_a_config_the_shipped_one_serves_and_only_the_given_model_runs(project: pytest.Pytester) -> None:
    result = collect(project, "--model", "Org/My-Model")
    assert result.ret == pytest.ExitCode.OK
    assert ids(result) == matrix("my-model")
    result.stdout.fnmatch_lines(
        [
            f"quant-fixtures: --model Org/My-Model: model 'my-model' from Org/My-Model@main; "
            f"default variants fp16,int8,nf4, limits from [gates] of {DEFAULT_CONFIG_PATH}"
        ]
    )


def test_the_configured_entry_of_a_source_is_selected(project: pytest.Pytester) -> None:
    result = collect(project, "--suite-config=default", "--model", "Qwen/Qwen2.5-0.5B", "-m", "gpu")
    assert result.ret == pytest.ExitCode.OK
    assert ids(result) == matrix("qwen2.5-0.5b")  # its requires_gpu: the gpu marker
    result.stdout.fnmatch_lines(
        [
            f"quant-fixtures: --model Qwen/Qwen2.5-0.5B: model 'qwen2.5-0.5b', the entry "
            f"configured in {DEFAULT_CONFIG_PATH}"
        ]
    )


def test_with_models_and_variants(project: pytest.Pytester) -> None:
    result = collect(
        project,
        "--model",
        "org/name",
        "--model",
        "second=org/name@v2",
        "--models",
        "smollm2-135m",
        "--variants",
        "int8",
    )
    assert result.ret == pytest.ExitCode.OK
    assert ids(result) == matrix("name", ("int8",)) | matrix("second", ("int8",)) | matrix("smollm2-135m", ("int8",))


def test_a_checkpoint_directory(project: pytest.Pytester, tmp_path: Path) -> None:
    checkpoint = tmp_path / "Tiny-Model"
    checkpoint.mkdir()
    (checkpoint / "config.json").write_text("{}")
    result = collect(project, f"--model={checkpoint}")
    assert result.ret == pytest.ExitCode.OK and ids(result) == matrix("tiny-model")
    result.stdout.fnmatch_lines([f"*--model {checkpoint}: model 'tiny-model' from {checkpoint}; *"])
    # A path after a space moves pytest's rootdir before the plugin loads: stopped, naming the '=' form.
    spaced = collect(project, "--model", str(checkpoint))
    assert spaced.ret == pytest.ExitCode.USAGE_ERROR
    spaced.stderr.fnmatch_lines(["ERROR: --model <path>: pytest took the path for a test path*write --model=<path>"])


def test_a_project_config_gives_the_limits_and_may_list_no_model(project: pytest.Pytester) -> None:
    (project.path / "quant_suite.toml").write_text(PROJECT_GATES)
    result = collect(project, "--model", "org/name", "--variants", "fp16,int8")
    assert result.ret == pytest.ExitCode.OK and ids(result) == matrix("name", ("fp16", "int8"), REQUIRED)
    # Its [gates], not the shipped ones: it has none for nf4, so the default matrix misses a limit.
    missing = collect(project, "--model", "org/name")
    assert missing.ret == pytest.ExitCode.USAGE_ERROR
    missing.stderr.fnmatch_lines(
        [
            f"ERROR: {project.path / 'quant_suite.toml'}: no limit max_delta_ppl_pct, "
            "max_kl_mean, min_memory_reduction_pct for model 'name' variant 'nf4'*"
        ]
    )
    alone = collect(project)
    assert alone.ret == pytest.ExitCode.USAGE_ERROR
    alone.stderr.fnmatch_lines(
        ["ERROR: *quant_suite.toml: no [[]models.*[]] tables (add one, or give the model with --model org/name)"]
    )


@pytest.mark.parametrize(
    "args, message",
    [
        (
            ["--model", "gpt2"],
            "--model gpt2: expected a Hugging Face Hub id (org/name, optionally @revision) or a "
            "directory holding a Hugging Face checkpoint",
        ),
        (["--model", "./nowhere"], "--model ./nowhere: no such directory */nowhere"),
        (
            ["--suite-config=default", "--model", "Qwen/Qwen2.5-0.5B@abc"],
            "--model Qwen/Qwen2.5-0.5B@abc: its key 'qwen2.5-0.5b' is already the model from Qwen/Qwen2.5-0.5B@main in "
            "*quant_suite.toml; give this one another key: --model OTHER_KEY=Qwen/Qwen2.5-0.5B@abc",
        ),
        (["--model", "a/m", "--model", "b/m"], "--model a/m and --model b/m both make the model key 'm'; *"),
        (["--model", "org/name", "--models", "nosuch"], "unknown model nosuch; valid: *, name"),
    ],
)
def test_usage_errors_are_one_line(project: pytest.Pytester, args: list[str], message: str) -> None:
    result = collect(project, *args)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    errors = [line for line in result.errlines if line.strip()]
    assert len(errors) == 1, result.errlines
    result.stderr.fnmatch_lines([f"ERROR: {message}"])
