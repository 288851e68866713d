"""Unit tests for the pytest plugin (quant_fixtures.plugin), run as inner pytest sessions via pytester.

Nothing here loads a model: usage errors stop in pytest_configure, collection never builds the
evaluation session, and GPU tests are skipped before their fixtures run on a machine without CUDA.

The inner sessions run in-process (a child process per run costs ~2 s of torch import each).
torch is imported here, before any inner run, because pytester drops modules first imported
inside an in-process run, and importing torch a second time in one process is not safe.
"""

from __future__ import annotations

import importlib.util
import inspect
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import cast

import pytest
import torch

from quant_fixtures.config import load_config
from quant_fixtures.metrics.registry import GATEABLE, REQUIRED_LIMITS
from quant_fixtures.variants import DEFAULT_VARIANTS, VARIANTS

pytest_plugins = ["pytester"]

REPO = Path(__file__).resolve().parents[2]
SHIPPED_CONFIG = REPO / "quant_suite.toml"
RELEASE_GATES = REPO / "tests" / "harm" / "test_release_gates.py"

SEED_MODELS = ["mistral7b", "qwen2.5-0.5b"]
ALL_VARIANTS = ["fp16", "int8", "nf4"]  # the default matrix (registry entries with default=True)
QUANTIZED = ["int8", "nf4"]
PPL_TEST = "test_perplexity_is_measured"


def _parametrized_tests() -> tuple[list[str], list[str]]:
    """The release-gate tests over every variant, and those over (quantized variant, gated metric).

    Read from the module itself (the fixtures each test asks for), so that tests added there later
    need no edit here.
    """
    spec = importlib.util.spec_from_file_location("_release_gates_for_unit_tests", RELEASE_GATES)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    every, gated = [], []
    for name, func in vars(module).items():
        if name.startswith("test_"):
            params = inspect.signature(func).parameters
            if "variant_eval" in params:
                every.append(name)
            if "gated_metric" in params:
                gated.append(name)
    return every, gated


EVERY_VARIANT_TESTS, GATE_TESTS = _parametrized_tests()
REQUIRED_METRICS = [GATEABLE[name].name for name in REQUIRED_LIMITS]  # gated for every quantized pair

SMALL_CONFIG = """
[gates.int8]
max_delta_ppl_pct = 5.0
ungated = ["min_memory_reduction_pct", "max_kl_mean"]

[gates.nf4]
ungated = ["max_delta_ppl_pct", "min_memory_reduction_pct", "max_kl_mean"]

[models.alpha]
path = "/nonexistent/alpha"

[models.beta]
hub_id = "org/beta"
requires_gpu = true
"""


@pytest.fixture
def suite_dir(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> pytest.Pytester:
    """A pytester directory holding the plugin conftest and a copy of the release-gate tests."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    pytester.makeini("[pytest]\n")  # pin the rootdir here, away from the repo's pyproject.toml
    # A module name of its own: in one process with tests/harm, "test_release_gates" is taken.
    pytester.makepyfile(test_gates_under_test=RELEASE_GATES.read_text(encoding="utf-8"))
    return pytester


def run(pytester: pytest.Pytester, *args: str, config: Path = SHIPPED_CONFIG) -> pytest.RunResult:
    # One "--opt=value" word: as two words, pytest would take the TOML path as a path argument
    # when it picks the rootdir (the plugin's options are unknown then) and root it in the repo.
    return pytester.runpytest_inprocess("-p", "no:cacheprovider", f"--suite-config={config}", *args)


def collected_ids(result: pytest.RunResult) -> list[str]:
    """Node ids from `--collect-only -q` output."""
    return [line.strip() for line in result.outlines if "::" in line]


def node(test: str, model: str, variant: str) -> str:
    return f"test_gates_under_test.py::{test}[{model}-{variant}]"


def gated_metrics(model: str, variant: str, config: Path = SHIPPED_CONFIG) -> list[str]:
    """The metrics a config's gate tests cover for (model, variant): every required one (an opted-out
    one too: its test skips, saying so), and the optional ones it sets."""
    optional = [GATEABLE[limit].name for limit in load_config(config).gates_for(model, variant)]
    return list(dict.fromkeys([*REQUIRED_METRICS, *optional]))


def expected_matrix(models: list[str], config: Path = SHIPPED_CONFIG) -> set[str]:
    ids = {node(t, m, v) for t in EVERY_VARIANT_TESTS for m in models for v in ALL_VARIANTS}
    ids |= {
        node(t, m, f"{v}-{metric}")
        for t in GATE_TESTS
        for m in models
        for v in QUANTIZED
        for metric in gated_metrics(m, v, config)
    }
    return ids


def test_registry_and_config_match_these_expectations() -> None:
    # Guards the constants above against drift in the registry or the shipped TOML.
    assert list(DEFAULT_VARIANTS) == ALL_VARIANTS  # the matrix without --variants
    assert [k for k in DEFAULT_VARIANTS if not VARIANTS[k].is_baseline] == QUANTIZED
    suite = load_config(SHIPPED_CONFIG)
    assert [k for k, m in suite.models.items() if m.requires_gpu] == SEED_MODELS
    assert [k for k in suite.models if k not in SEED_MODELS] == ["smollm2-135m"]
    assert EVERY_VARIANT_TESTS == [PPL_TEST]
    assert GATE_TESTS == ["test_within_limit"]
    assert set(REQUIRED_METRICS) == {"delta_ppl_pct", "kl_mean", "memory_reduction_pct"}


# -- usage errors ---------------------------------------------------------------------------------


def test_unknown_model_is_usage_error(suite_dir: pytest.Pytester) -> None:
    result = run(suite_dir, "--models", "nosuch")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*unknown model nosuch; valid: mistral7b, qwen2.5-0.5b, smollm2-135m*"])


def test_unknown_model_among_valid_ones(suite_dir: pytest.Pytester) -> None:
    result = run(suite_dir, "--models", "mistral7b,nosuch,other")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*unknown model nosuch, other; valid:*smollm2-135m*"])


def test_unknown_variant_is_usage_error(suite_dir: pytest.Pytester) -> None:
    result = run(suite_dir, "--variants", "nosuch")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*unknown variant nosuch; valid: fp16, int8, nf4*"])


def test_empty_selection_is_usage_error(suite_dir: pytest.Pytester) -> None:
    result = run(suite_dir, "--variants", ",")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*unknown variant*valid: fp16, int8, nf4*"])


@pytest.mark.parametrize(
    "args",
    [["--ppl-max-tokens", "-3"], ["--ppl-max-tokens=0"], ["--ppl-max-tokens=lots"]],
    ids=["negative", "zero", "word"],
)
def test_bad_ppl_max_tokens_is_usage_error(suite_dir: pytest.Pytester, args: list[str]) -> None:
    result = run(suite_dir, *args)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--ppl-max-tokens: expected a positive integer or 'all'*"])


@pytest.mark.parametrize("option", ["--ctx", "--ppl-stride", "--batch-size"])
def test_non_positive_int_options_are_usage_errors(suite_dir: pytest.Pytester, option: str) -> None:
    result = run(suite_dir, f"{option}=0")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"*{option}: expected a positive integer, got 0*"])


def test_bad_suite_config_is_usage_error_naming_file(suite_dir: pytest.Pytester) -> None:
    bad = suite_dir.path / "bad_suite.toml"
    bad.write_text('[models.x]\nhub_id = "a"\npath = "/b"\n', encoding="utf-8")
    result = run(suite_dir, config=bad)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"*{bad}*models.x*exactly one*"])


def test_a_model_key_that_would_leave_the_output_directories_is_a_usage_error(suite_dir: pytest.Pytester) -> None:
    bad = suite_dir.path / "escaping_suite.toml"
    bad.write_text(SMALL_CONFIG + '\n[models."../../escaped"]\nhub_id = "org/escaped"\n', encoding="utf-8")
    result = run(suite_dir, config=bad)
    assert result.ret == pytest.ExitCode.USAGE_ERROR  # refused while the config is read, before any model
    result.stderr.fnmatch_lines(
        [f"*{bad}: [[]models.\"../../escaped\"[]]: model key '../../escaped' breaks the key rule*"]
    )


def test_valid_options_collect_fine(suite_dir: pytest.Pytester) -> None:
    result = run(
        suite_dir,
        "--collect-only",
        "-q",
        "--ppl-max-tokens",
        "all",
        "--ctx",
        "512",
        "--models",
        "smollm2-135m",
        "--variants",
        "int8",
    )
    assert result.ret == pytest.ExitCode.OK
    assert set(collected_ids(result)) == (
        {node(t, "smollm2-135m", "int8") for t in EVERY_VARIANT_TESTS}
        | {node(t, "smollm2-135m", f"int8-{m}") for t in GATE_TESTS for m in gated_metrics("smollm2-135m", "int8")}
    )


# -- collection of the shipped matrix ---------------------------------------------------------------


def test_gpu_collection_is_the_seed_matrix(suite_dir: pytest.Pytester) -> None:
    result = run(suite_dir, "-m", "gpu", "--collect-only", "-q")
    assert result.ret == pytest.ExitCode.OK
    ids = collected_ids(result)
    expected = expected_matrix(SEED_MODELS)
    assert (
        len(ids)
        == len(set(ids))
        == sum(
            3 * len(EVERY_VARIANT_TESTS) + len(GATE_TESTS) * sum(len(gated_metrics(m, v)) for v in QUANTIZED)
            for m in SEED_MODELS
        )
    )
    assert set(ids) == expected
    # The baseline variant never appears in the quantized-only tests.
    assert not [i for i in ids if "-fp16]" in i and PPL_TEST not in i]


def test_not_gpu_collection_has_no_seed_models(suite_dir: pytest.Pytester) -> None:
    result = run(suite_dir, "-m", "not gpu", "--collect-only", "-q")
    assert result.ret == pytest.ExitCode.OK
    ids = collected_ids(result)
    assert ids, result.outlines
    assert not [i for i in ids if any(f"[{m}-" in i for m in SEED_MODELS)]
    assert set(ids) == expected_matrix(["smollm2-135m"])


def test_unfiltered_collection_is_the_whole_matrix(suite_dir: pytest.Pytester) -> None:
    result = run(suite_dir, "--collect-only", "-q")
    assert result.ret == pytest.ExitCode.OK
    assert set(collected_ids(result)) == expected_matrix([*SEED_MODELS, "smollm2-135m"])


def test_selection_follows_registry_order(suite_dir: pytest.Pytester) -> None:
    result = run(suite_dir, "--collect-only", "-q", "--models", "qwen2.5-0.5b", "--variants", "nf4,fp16")
    assert result.ret == pytest.ExitCode.OK
    ppl_ids = [i for i in collected_ids(result) if PPL_TEST in i]
    assert ppl_ids == [node(PPL_TEST, "qwen2.5-0.5b", "fp16"), node(PPL_TEST, "qwen2.5-0.5b", "nf4")]


def test_requires_gpu_comes_from_the_config(suite_dir: pytest.Pytester) -> None:
    small = suite_dir.path / "small_suite.toml"
    small.write_text(SMALL_CONFIG, encoding="utf-8")
    gpu = run(suite_dir, "-m", "gpu", "--collect-only", "-q", config=small)
    cpu = run(suite_dir, "-m", "not gpu", "--collect-only", "-q", config=small)
    assert gpu.ret == cpu.ret == pytest.ExitCode.OK
    assert set(collected_ids(gpu)) == expected_matrix(["beta"], small)
    assert set(collected_ids(cpu)) == expected_matrix(["alpha"], small)


# -- running GPU tests without CUDA -----------------------------------------------------------------


def test_gpu_tests_without_cuda_fail_the_run_up_front(suite_dir: pytest.Pytester) -> None:
    """A release check whose GPU went missing must not pass having checked nothing."""
    if torch.cuda.is_available():
        pytest.skip("this check is for machines without CUDA")
    result = run(suite_dir, "-m", "gpu")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    n_gpu = len(expected_matrix(SEED_MODELS))
    [line] = [x for x in result.errlines if "need a GPU" in x]
    assert f"{n_gpu} selected test(s) need a GPU" in line and "--allow-no-gpu" in line and "CPU-only" in line
    assert "passed" not in result.stdout.str() and "skipped" not in result.stdout.str()
    assert not (suite_dir.path / "results").exists() and not (suite_dir.path / "baselines").exists()
    # Listing them is not a run: it still works.
    assert run(suite_dir, "-m", "gpu", "--collect-only", "-q").ret == pytest.ExitCode.OK


def test_gpu_tests_skip_without_cuda_when_allowed(suite_dir: pytest.Pytester) -> None:
    if torch.cuda.is_available():
        pytest.skip("this check is for machines without CUDA")
    junit = suite_dir.path / "junit.xml"
    result = run(suite_dir, "-m", "gpu", "--allow-no-gpu", "-rs", f"--junitxml={junit}")
    assert result.ret == pytest.ExitCode.OK
    n_gpu = len(expected_matrix(SEED_MODELS))
    n_cpu = len(expected_matrix(["smollm2-135m"]))
    outcomes = result.parseoutcomes()
    assert outcomes.get("skipped") == n_gpu and outcomes.get("deselected") == n_cpu
    assert "passed" not in outcomes and "failed" not in outcomes and "error" not in outcomes
    result.stdout.fnmatch_lines(["SKIPPED *needs CUDA*"])

    cases = ET.parse(junit).getroot().iter("testcase")
    reasons = {}
    for case in cases:
        skipped = case.find("skipped")
        assert skipped is not None, ET.tostring(case)
        reasons[f"{case.get('name')}"] = skipped.get("message", "")
    assert len(reasons) == n_gpu
    assert all("needs CUDA" in message for message in reasons.values()), reasons
    # No model was touched: no report or baseline was written.
    assert not (suite_dir.path / "results").exists() and not (suite_dir.path / "baselines").exists()


def test_gpu_tests_without_cuda_fail_under_xdist_too(suite_dir: pytest.Pytester) -> None:
    """xdist workers cannot end the run: they run nothing and the controller fails it, one line."""
    if torch.cuda.is_available():
        pytest.skip("this check is for machines without CUDA")
    result = suite_dir.runpytest_subprocess(
        "-p", "no:cacheprovider", f"--suite-config={SHIPPED_CONFIG}", "-m", "gpu", "-n", "2", "-k", "qwen and nf4"
    )
    assert result.ret == pytest.ExitCode.USAGE_ERROR, result.stdout.str()
    assert len([x for x in result.outlines if "need a GPU" in x]) == 1, result.stdout.str()
    assert "INTERNALERROR" not in result.stdout.str() + result.stderr.str()


@pytest.mark.parametrize("workers", [[], ["-n", "2"]], ids=["serial", "xdist"])
def test_a_snapshot_that_is_not_json_is_refused_before_anything_runs(
    suite_dir: pytest.Pytester, workers: list[str]
) -> None:
    folder = suite_dir.path / "__snapshots__" / "test_gates_under_test"
    folder.mkdir(parents=True)
    broken = folder / "test_x[tiny][cpu@amd].json"
    broken.write_text('{"variants": {"int8": ', encoding="utf-8")
    args = ("-p", "no:cacheprovider", f"--suite-config={SHIPPED_CONFIG}", "-m", "gpu", "--allow-no-gpu", *workers)
    result = suite_dir.runpytest_subprocess(*args) if workers else run(suite_dir, *args[3:])
    assert result.ret == pytest.ExitCode.USAGE_ERROR, result.stdout.str()
    [line] = [x for x in result.errlines + result.outlines if "not readable JSON" in x]
    assert str(broken) in line and "--snapshot-update" in line
    assert "INTERNALERROR" not in result.stdout.str() + result.stderr.str()


# -- up-front checks: every option and output location before anything loads ----------------------


def test_results_dir_that_is_a_file_is_a_usage_error(suite_dir: pytest.Pytester) -> None:
    target = suite_dir.path / "not-a-dir"
    target.write_text("x")
    result = run(suite_dir, "--collect-only", "--results-dir", str(target))
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"ERROR: --results-dir {target}: exists and is not a directory"])
    assert "Traceback" not in result.stderr.str()


def test_baselines_dir_under_a_file_is_a_usage_error(suite_dir: pytest.Pytester) -> None:
    blocker = suite_dir.path / "file"
    blocker.write_text("x")
    result = run(suite_dir, "--collect-only", f"--baselines-dir={blocker / 'sub'}")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"ERROR: --baselines-dir {blocker / 'sub'}: cannot be created: {blocker} is a file"])


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs Linux's /proc")
@pytest.mark.parametrize("option", ["--results-dir", "--cache-dir"])
def test_an_output_dir_the_file_system_refuses_is_a_usage_error(suite_dir: pytest.Pytester, option: str) -> None:
    """/proc takes no new directory, whoever asks; os.access says root may write there (root is
    what CI containers often run as), so only a real attempt finds out before the FP16 pass."""
    result = run(suite_dir, "--collect-only", f"{option}=/proc/quant-fixtures/out")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert result.stderr.lines[0].startswith(f"ERROR: {option} /proc/quant-fixtures/out: cannot be created in /proc (")


def test_the_output_dir_check_leaves_nothing_behind(suite_dir: pytest.Pytester, tmp_path: Path) -> None:
    """The check makes a directory and a file to see that it can, and removes them: a run that
    writes nothing (here --collect-only) leaves no results directory."""
    before = sorted(tmp_path.iterdir())
    result = run(suite_dir, "--collect-only", f"--results-dir={tmp_path / 'new' / 'results'}")
    assert result.ret == pytest.ExitCode.OK
    assert sorted(tmp_path.iterdir()) == before


@pytest.mark.parametrize(
    "args, message",
    [
        (["--categories", " , "], "*--categories: no category given*"),
        (
            ["--ppl-protocol", "llamacpp"],
            "*--ppl-protocol: unknown protocol 'llamacpp'; valid: nonoverlapping, strided, llama.cpp, lm-eval*",
        ),
        (["--ppl-protocol", "strided"], "*--ppl-protocol strided needs --ppl-stride N*"),
        (
            ["--ppl-protocol", "lm-eval", "--ppl-stride", "8"],
            "*--ppl-stride belongs to the strided protocol, not --ppl-protocol lm-eval*",
        ),
        (["--ctx", "1"], "ERROR: --ctx 1: the nonoverlapping protocol needs at least 2 tokens per window*"),
        (
            ["--ctx", "1", "--ppl-protocol", "strided", "--ppl-stride", "1"],
            "*--ctx 1: the strided protocol needs at least 2*",
        ),
        (["--ctx", "3", "--ppl-protocol", "llama.cpp"], "*--ctx 3: the llama.cpp protocol needs at least 4 tokens*"),
    ],
)
def test_options_are_checked_up_front(suite_dir: pytest.Pytester, args: list[str], message: str) -> None:
    result = run(suite_dir, "--collect-only", *args)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([message])


def test_a_probe_length_too_short_for_the_tokenizer_is_refused_before_anything_loads(
    suite_dir: pytest.Pytester,
) -> None:
    """The probes are built up front as the long-context stage builds them: a length shorter than the
    probe's own text is one line now, not a traceback in every test after the FP16 pass."""
    result = run(suite_dir, "-m", "not gpu", "--variants", "fp16,int8", "--probe-lengths", "64")
    assert result.ret == pytest.ExitCode.USAGE_ERROR, result.stdout.str()[-2000:]
    result.stderr.fnmatch_lines(["ERROR: --probe-lengths: model 'smollm2-135m': length 64 is too short*(length >= *)"])
    assert not (suite_dir.path / "results").exists()


class _RecordedOptions:
    """Stands in for pytest's parser: records the help of every option pytest_addoption registers."""

    def __init__(self) -> None:
        self.help: dict[str, str] = {}

    def getgroup(self, *args: str) -> _RecordedOptions:
        return self

    def addoption(self, name: str, *more: str, **attrs: object) -> None:
        self.help[name] = str(attrs.get("help", ""))


def test_the_ctx_help_says_what_ctx_is_under_every_protocol() -> None:
    """--ctx is another length under each --ppl-protocol: the help names every protocol the code
    has (a new one fails here until it is described), its meaning and its default."""
    from quant_fixtures.inputs.corpus_protocols import LLAMA_CPP_DEFAULT_CTX, PROTOCOLS
    from quant_fixtures.plugin import hooks
    from quant_fixtures.plugin.cli import CONFIG_CTX_PROTOCOLS
    from quant_fixtures.plugin.ctx_option import CTX_MEANINGS, CTX_OWN_DEFAULTS

    options = _RecordedOptions()
    hooks.pytest_addoption(cast(pytest.Parser, options))
    assert list(CTX_MEANINGS) == list(PROTOCOLS)
    assert set(CONFIG_CTX_PROTOCOLS) <= set(PROTOCOLS)
    assert set(CTX_OWN_DEFAULTS) == set(PROTOCOLS) - set(CONFIG_CTX_PROTOCOLS)
    assert CTX_OWN_DEFAULTS["llama.cpp"].startswith(f"{LLAMA_CPP_DEFAULT_CTX},")
    for protocol in PROTOCOLS:
        default = CTX_OWN_DEFAULTS.get(protocol, "[defaults].ctx of the suite config")
        assert f"{protocol}: {CTX_MEANINGS[protocol]} (default: {default})" in options.help["--ctx"]


@pytest.mark.parametrize("protocol", ["nonoverlapping", "strided", "llama.cpp", "lm-eval"])
def test_ctx_defaults_to_the_config_where_the_help_says(suite_dir: pytest.Pytester, protocol: str) -> None:
    from quant_fixtures.plugin.cli import CONFIG_CTX_PROTOCOLS

    stride = ["--ppl-stride=64"] if protocol == "strided" else []
    result = run(suite_dir, "--collect-only", f"--ppl-protocol={protocol}", *stride)
    assert result.ret == pytest.ExitCode.OK
    ctx = load_config(SHIPPED_CONFIG).defaults.ctx if protocol in CONFIG_CTX_PROTOCOLS else "the protocol default"
    result.stdout.fnmatch_lines([f"quant-fixtures: device *; perplexity protocol {protocol}; *; ctx {ctx}; *"])


def test_a_missing_limit_is_a_usage_error_not_a_skip(suite_dir: pytest.Pytester) -> None:
    partial = suite_dir.path / "partial.toml"
    partial.write_text(SMALL_CONFIG.replace('ungated = ["min_memory_reduction_pct", "max_kl_mean"]', ""))
    result = run(suite_dir, "--collect-only", "--models", "alpha", config=partial)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        [
            f"ERROR: {partial}: no limit max_kl_mean, min_memory_reduction_pct for model "
            "'alpha' variant 'int8'*[gates.int8]*[models.alpha.gates.int8]*ungated*"
        ]
    )
    # Selecting only what is fully gated is fine.
    assert run(suite_dir, "--collect-only", "--models", "alpha", "--variants", "fp16,nf4", config=partial).ret == 0


def test_a_prompt_file_with_its_own_categories(suite_dir: pytest.Pytester) -> None:
    prompts = suite_dir.path / "mine.jsonl"
    prompts.write_text(
        '{"id": "a", "category": "customer_support", "prompt": "Where is my parcel?"}\n'
        '{"id": "b", "category": "billing", "prompt": "Why was I charged twice?"}\n'
    )
    ok = run(suite_dir, "--collect-only", "--prompts", "mine.jsonl", "--categories", "billing")
    assert ok.ret == pytest.ExitCode.OK
    bad = run(suite_dir, "--collect-only", "--prompts", "mine.jsonl", "--categories", "code_generation")
    assert bad.ret == pytest.ExitCode.USAGE_ERROR
    bad.stderr.fnmatch_lines(["*unknown category filter*'code_generation'*its categories: customer_support, billing"])


def test_options_work_with_a_space_from_any_directory(tmp_path: Path) -> None:
    """The plugin is a pytest11 entry point: `--results-dir /tmp/x` (two words) is an option
    value, not a test path, wherever pytest runs."""
    import subprocess
    import sys

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            str(RELEASE_GATES),
            "--collect-only",
            "-q",
            "-p",
            "no:cacheprovider",
            "--models",
            "smollm2-135m",
            "--variants",
            "int8",
            "--results-dir",
            str(tmp_path / "x"),
            "--baselines-dir",
            "b",
            "--suite-config",
            str(SHIPPED_CONFIG),
        ],
        cwd=elsewhere,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "unrecognized arguments" not in proc.stderr
    assert "test_perplexity_is_measured[smollm2-135m-int8]" in proc.stdout


def test_sigterm_ends_the_run_as_an_interrupt(pytester: pytest.Pytester) -> None:
    """A cancelled CI job (SIGTERM) is reported like Ctrl-C (exit 2), so every writer's cleanup runs."""
    pytester.makeini("[pytest]\n")
    pytester.makepyfile(
        test_term="""
        import os, signal

        def test_cancelled():
            os.kill(os.getpid(), signal.SIGTERM)

        def test_never_reached():
            pass
    """
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", f"--suite-config={SHIPPED_CONFIG}")
    assert result.ret == pytest.ExitCode.INTERRUPTED
    result.stdout.fnmatch_lines(["*KeyboardInterrupt*"])
    assert "test_never_reached PASSED" not in result.stdout.str()


def test_the_plugin_stays_out_of_other_projects(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    """Installed as an entry point, the plugin loads in every pytest run of the environment: with no
    suite configuration (none given, none in the rootdir) it does nothing; `--suite-config default`
    turns it on with the configuration shipped in the package."""
    pytester.makeini("[pytest]\n")
    pytester.makepyfile(test_other="def test_unrelated():\n    assert True\n")
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider")
    assert result.ret == pytest.ExitCode.OK
    assert "quant-fixtures:" not in result.stdout.str() and "quantization harm" not in result.stdout.str()
    pytester.makepyfile(test_gate="def test_uses_the_suite(variant_eval):\n    pass\n")
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider", "test_gate.py")
    assert result.ret != pytest.ExitCode.OK
    result.stdout.fnmatch_lines(
        [
            "*no suite configuration: pass --suite-config PATH (or --suite-config default for "
            "the one shipped with quant_fixtures) or put quant_suite.toml in the rootdir*"
        ]
    )
    shipped = pytester.runpytest_inprocess(
        "-p", "no:cacheprovider", "--suite-config=default", "test_gate.py", "--collect-only", "-q", "-m", "not gpu"
    )
    assert shipped.ret == pytest.ExitCode.OK
    assert "test_gate.py::test_uses_the_suite[smollm2-135m-fp16]" in shipped.stdout.str()


def test_a_path_option_that_moves_the_rootdir_restarts_the_run_joined(
    pytester: pytest.Pytester, tmp_path: Path
) -> None:
    """pytest decides the rootdir before plugins load: `--results-dir /x` (space) makes /x the
    rootdir. A command-line run starts again with `--results-dir=/x` and uses the right rootdir."""
    pytester.makeini("[pytest]\n")
    pytester.makepyfile(
        test_where="def test_rootdir(pytestconfig):\n"
        "    print('ROOTDIR', pytestconfig.rootpath, pytestconfig.getoption('--results-dir'))\n"
    )
    results = tmp_path / "results-elsewhere"
    results.mkdir()
    spaced = pytester.runpytest_subprocess(
        "-p", "no:cacheprovider", "-s", "--suite-config=default", "--results-dir", str(results)
    )
    assert spaced.ret == pytest.ExitCode.OK, spaced.stderr.str()
    spaced.stdout.fnmatch_lines([f"*ROOTDIR {pytester.path} {results}", "*1 passed*"])


def test_joined_path_options() -> None:
    from quant_fixtures.plugin.rootdir import joined_path_options

    assert joined_path_options(["-q", "--results-dir", "/x", "--cache-dir=/c", "--prompts", "p.jsonl", "t.py"]) == [
        "-q",
        "--results-dir=/x",
        "--cache-dir=/c",
        "--prompts=p.jsonl",
        "t.py",
    ]
    assert joined_path_options(["--baselines-dir"]) == ["--baselines-dir"]  # no value: left for pytest to refuse


def test_a_path_option_that_moves_the_rootdir_is_a_usage_error(pytester: pytest.Pytester, tmp_path: Path) -> None:
    """In a run pytest cannot restart (in-process here), `--suite-config /x/suite.toml` (space)
    stops naming the option and the `=` form, and `=` works."""
    pytester.makeini("[pytest]\n")
    pytester.makepyfile(test_other="def test_unrelated():\n    assert True\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    config = elsewhere / "suite.toml"
    config.write_text(SHIPPED_CONFIG.read_text(encoding="utf-8"))
    spaced = pytester.runpytest_inprocess("-p", "no:cacheprovider", "--suite-config", str(config))
    assert spaced.ret == pytest.ExitCode.USAGE_ERROR
    spaced.stderr.fnmatch_lines(
        [
            "ERROR: --suite-config <path>: pytest took the path for a test path and chose the "
            f"rootdir * instead of {pytester.path} *write --suite-config=<path>"
        ]
    )
    joined = pytester.runpytest_inprocess("-p", "no:cacheprovider", f"--suite-config={config}")
    assert joined.ret == pytest.ExitCode.OK
    # With a test path beside it the rootdir stays where it was: nothing to stop.
    beside = pytester.runpytest_inprocess("-p", "no:cacheprovider", "--suite-config", str(config), "test_other.py")
    assert beside.ret == pytest.ExitCode.OK
    # A path that does not exist yet does not move the rootdir: the space form is fine there.
    fine = pytester.runpytest_inprocess(
        "-p", "no:cacheprovider", f"--suite-config={config}", "--results-dir", str(tmp_path / "new-results")
    )
    assert fine.ret == pytest.ExitCode.OK
