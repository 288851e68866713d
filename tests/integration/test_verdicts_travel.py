"""Verdicts that travel: every input validated, every stored file whole, a number independent of its
neighbours. Each test provokes one finding of the release review end to end (a pytest run of its own on
the tiny random Llama, tiny budgets) and checks the one-line message and that nothing was left
half-written.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from integration_support import PASSING_GATES, copy_baselines, make_project, report, run_suite, suite_args

from quant_fixtures.models.sources import ModelUnavailableError, weight_files
from quant_fixtures.store.records import read_record

pytest_plugins = ["pytester"]

SNAPSHOT_TESTS = Path(__file__).resolve().parents[1] / "harm" / "test_snapshots.py"
PROJECT_SNAPSHOT_TESTS = "test_project_snapshots.py"  # a name no module of this process has (PROJECT_TESTS)


@pytest.fixture(scope="module")
def e2e(tiny_models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    root = tmp_path_factory.mktemp("travel")
    return SimpleNamespace(
        model_dir=tiny_models["llama"],
        cache=root / "C",
        baselines=root / "B",
        results=root / "R",
        root=root,
        warm=False,
    )


@pytest.fixture(autouse=True)
def _environment(monkeypatch: pytest.MonkeyPatch, e2e: SimpleNamespace) -> None:
    monkeypatch.setenv("HF_DATASETS_CACHE", str(e2e.root / "datasets-cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture
def warm(pytester: pytest.Pytester, e2e: SimpleNamespace) -> SimpleNamespace:
    """FP16 references of the tiny model for the default tiny settings, computed once per module."""
    if not e2e.warm:
        make_project(pytester, e2e, PASSING_GATES)
        result = run_suite(pytester, e2e, e2e.results, e2e.baselines, "--variants", "fp16")
        assert result.ret == 0, result.stdout.str()[-3000:]
        e2e.warm = True
    make_project(pytester, e2e, PASSING_GATES)
    return e2e


def no_temporaries(*directories: Path) -> list[Path]:
    """Leftover temporary files (every writer's temporaries end in .tmp)."""
    return [p for d in directories if d.exists() for p in d.rglob("*.tmp")]


def test_a_changed_tokenizer_gets_its_own_fp16_baseline(
    pytester: pytest.Pytester, warm: SimpleNamespace, tmp_path: Path
) -> None:
    model = tmp_path / "tiny-copy"
    shutil.copytree(warm.model_dir, model)
    e2e = SimpleNamespace(**{**vars(warm), "model_dir": model})
    make_project(pytester, e2e, PASSING_GATES)
    baselines, results = tmp_path / "B", tmp_path / "R"
    first = run_suite(pytester, e2e, results, baselines, "--variants", "int8")
    assert first.ret == 0, first.stdout.str()[-3000:]
    before = report(results, "int8")["perplexity"]
    # Same weights, other tokenization: the normalizer now lowercases everything.
    tokenizer = json.loads((model / "tokenizer.json").read_text())
    tokenizer["normalizer"] = {"type": "Lowercase"}
    (model / "tokenizer.json").write_text(json.dumps(tokenizer))
    second = run_suite(pytester, e2e, results, baselines, "--variants", "int8")
    assert second.ret == 0, second.stdout.str()[-3000:]
    after = report(results, "int8")["perplexity"]
    fp16 = report(results, "fp16")["perplexity"]
    # The FP16 pass ran again for the new tokenizer: the variant is compared with it, not the old one.
    assert fp16["ppl"] != before["fp16_ppl"] and after["fp16_ppl"] == fp16["ppl"]
    keys = [
        json.loads(p.read_text())["key"]["tokenizer_sha256"]
        for p in baselines.glob("tiny-*.json")
        if "-prompts-" not in p.name
    ]
    assert len(set(keys)) == 2


def test_a_corrupt_prompt_summary_is_rebuilt_not_used(
    pytester: pytest.Pytester, warm: SimpleNamespace, tmp_path: Path
) -> None:
    baselines = copy_baselines(warm, tmp_path / "B")
    (summary,) = baselines.glob("tiny-prompts-*.json")
    summary.write_text('{"schema_version": 2, "noise_floor": null')  # truncated
    result = run_suite(pytester, warm, tmp_path / "R", baselines, "--variants", "int8")
    assert result.ret == 0, result.stdout.str()[-3000:]
    assert (tmp_path / "R" / "fp16_quantized_tiny_evaluation.json").exists()  # the FP16 pass ran again
    document = json.loads(summary.read_text())
    assert read_record(summary, document["schema_version"], document["key"], ("noise_floor",), "summary")[1] == "ok"
    assert report(tmp_path / "R", "int8")["noise_floor"]["mean"] is not None
    assert f"StaleStoreWarning: {summary}: recomputed, not used: unreadable FP16 prompt summary" in result.stdout.str()


def test_damaged_cache_files_are_recomputed_and_each_says_why(
    pytester: pytest.Pytester, warm: SimpleNamespace, tmp_path: Path
) -> None:
    """The tokenized corpus, the FP16 corpus hidden states and the FP16 prompt reference, each with
    its last bytes changed (every such file of the module's cache: other tests add their own
    settings'): each one the run needs is computed again, and the run names it and what was wrong."""
    cache = shutil.copytree(warm.cache, tmp_path / "C")
    folders = ("corpus-tokens", "corpus_reference", "reference")
    for path in [p for folder in folders for p in (cache / folder).glob("*.safetensors")]:
        data = bytearray(path.read_bytes())
        data[-4:] = bytes(255 - b for b in data[-4:])
        path.write_bytes(bytes(data))
    with_cache = SimpleNamespace(**{**vars(warm), "cache": cache})
    result = run_suite(pytester, with_cache, tmp_path / "R", copy_baselines(warm, tmp_path / "B"), "--variants", "int8")
    assert result.ret == 0, result.stdout.str()[-3000:]
    said = re.findall(
        r"StaleStoreWarning: (\S+): recomputed, not used: content digest mismatch \(corrupt\)$",
        result.stdout.str(),
        re.M,
    )
    assert sorted(Path(p).parent.name for p in said) == sorted(folders), result.stdout.str()[-3000:]


def test_top_k_larger_than_the_vocabulary_is_a_usage_error(
    pytester: pytest.Pytester, warm: SimpleNamespace, tmp_path: Path
) -> None:
    result = run_suite(pytester, warm, tmp_path / "R", warm.baselines, "--variants", "int8", "--top-k", "100000")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["ERROR: --top-k 100000 is larger than the vocabulary of tiny (49152 tokens)"])
    assert not (tmp_path / "R").exists()


@pytest.mark.parametrize(
    "args, message",
    [
        (("--ctx", "64", "--ppl-max-tokens", "32"), "ERROR: --ppl-max-tokens 32 is less than one window of --ctx 64*"),
        (
            ("--ctx", "4096", "--ppl-max-tokens", "256"),
            "ERROR: --ppl-max-tokens 256 is less than one window of 512 tokens (--ctx 4096, capped at tiny's maximum)*",
        ),
        (("--ctx", "64", "--ppl-stride", "128"), "ERROR: --ppl-stride 128 is larger than the window of --ctx 64*"),
    ],
)
def test_budgets_are_checked_against_the_models_window(
    pytester: pytest.Pytester, warm: SimpleNamespace, tmp_path: Path, args: tuple[str, ...], message: str
) -> None:
    result = run_suite(pytester, warm, tmp_path / "R", warm.baselines, "--variants", "int8", *args)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([message])
    assert not (tmp_path / "R").exists()


def test_ctx_above_the_models_maximum_is_capped_not_an_error(
    pytester: pytest.Pytester, warm: SimpleNamespace, tmp_path: Path
) -> None:
    result = run_suite(
        pytester,
        warm,
        tmp_path / "R",
        tmp_path / "B",
        "--variants",
        "fp16",
        "--skip-prompts",
        "--ctx",
        "4096",
        "--ppl-max-tokens",
        "1024",
    )
    assert result.ret == 0, result.stdout.str()[-3000:]
    ppl = report(tmp_path / "R", "fp16")["perplexity"]
    assert (ppl["ctx"], ppl["windows"]) == (512, 2)


def test_int8_numbers_do_not_depend_on_batch_sizes(
    pytester: pytest.Pytester, warm: SimpleNamespace, tmp_path: Path
) -> None:
    """LLM.int8 picks outlier columns per sequence (models/int8_per_sequence.py), so the suite batches
    int8 like every other variant and its perplexity and each prompt's KL stay what they are at
    batch size 1."""
    one = run_suite(pytester, warm, tmp_path / "R1", warm.baselines, "--variants", "int8")
    two = run_suite(
        pytester,
        warm,
        tmp_path / "R2",
        warm.baselines,
        "--variants",
        "int8",
        "--batch-size",
        "3",
        "--gen-batch-size",
        "5",
    )
    assert one.ret == two.ret == 0, two.stdout.str()[-3000:]
    a, b = report(tmp_path / "R1", "int8"), report(tmp_path / "R2", "int8")
    assert a["batching"]["batch_invariant"] is True and b["perplexity"]["batch_size"] == 3
    assert a["perplexity"]["batch_size"] == 1
    assert a["perplexity"]["window_nll"] == b["perplexity"]["window_nll"]
    assert [r["kl_mean"] for r in a["kl_divergence"]["per_prompt"]] == [
        r["kl_mean"] for r in b["kl_divergence"]["per_prompt"]
    ]
    # Its greedy generation still meets other padding in other batches: how much that moves it is measured.
    sensitivity = b["flips"]["batch_sensitivity"]
    assert (sensitivity["batch_size"], sensitivity["shift"], sensitivity["prompts"]) == (5, 2, 8)
    assert "batch_sensitivity" not in report(warm.results, "fp16")["flips"]  # FP16 is batch-invariant


def test_two_runs_into_one_results_directory_compare_every_variant(
    pytester: pytest.Pytester, warm: SimpleNamespace, tmp_path: Path
) -> None:
    """Sequential, then concurrent: every variant ends up in the comparison and REPORT.md, every
    file is whole, and the shared caches are intact."""
    results, baselines = tmp_path / "R", tmp_path / "B"
    assert run_suite(pytester, warm, results, baselines, "--variants", "int8").ret == 0
    assert run_suite(pytester, warm, results, baselines, "--variants", "nf4").ret == 0
    comparison = json.loads((results / "tiny_quantization_comparison.json").read_text())
    assert list(comparison["variants"]) == ["fp16", "int8", "nf4"]
    assert all(f"| {v} |" in (results / "REPORT.md").read_text() for v in ("fp16", "int8", "nf4"))

    together = tmp_path / "together"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "pytest",
                *suite_args(pytester, warm, together / "R", together / "B", "--variants", v),
            ],
            cwd=pytester.path,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for v in ("int8", "nf4")
    ]
    outputs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], "\n".join(o[-2000:] for o in outputs)
    for path in [*(together / "R").glob("*.json"), *(together / "B").glob("*.json")]:
        json.loads(path.read_text())  # every file whole
    comparison = json.loads((together / "R" / "tiny_quantization_comparison.json").read_text())
    assert set(comparison["variants"]) == {"fp16", "int8", "nf4"}
    assert not no_temporaries(together, warm.cache)


def test_jobs_of_a_matrix_merge_into_one_comparison(
    pytester: pytest.Pytester, warm: SimpleNamespace, tmp_path: Path
) -> None:
    """Real runs in separate directories, as the jobs of a matrix per variant would make them (each
    with its own copy of the committed baselines), merged by the command into one comparison."""
    jobs = {}
    for variant in ("fp16", "int8", "nf4"):
        job = tmp_path / variant
        shutil.copytree(warm.baselines, job / "B")
        assert run_suite(pytester, warm, job / "R", job / "B", "--variants", variant).ret == 0
        jobs[variant] = job / "R"
    merged = tmp_path / "merged"
    done = subprocess.run(
        [sys.executable, "-m", "quant_fixtures.report.merge", "--into", str(merged), *map(str, jobs.values())],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    comparison = json.loads((merged / "tiny_quantization_comparison.json").read_text())
    assert list(comparison["variants"]) == ["fp16", "int8", "nf4"]
    for variant, job in jobs.items():
        assert comparison["variants"][variant]["ppl"] == report(job, variant)["perplexity"]["ppl"]
        assert comparison["variants"][variant]["kl_mean"] == report(job, variant)["kl_divergence"]["mean"]
    assert all(f"| {v} |" in (merged / "REPORT.md").read_text() for v in ("fp16", "int8", "nf4"))
    assert "merged 3 documents" in done.stdout


CONFTEST_INTERRUPT_REPORT = """
import quant_fixtures.report.markdown as markdown_report
from quant_fixtures.store.atomic import atomic_path


def interrupted_write(path, text):
    with atomic_path(path) as tmp:
        tmp.write_text(text[: len(text) // 2])
        raise KeyboardInterrupt("simulated Ctrl-C while REPORT.md is written")


markdown_report.write_text_atomic = interrupted_write
"""


def test_an_interrupt_while_the_report_is_written_leaves_no_half_file(
    pytester: pytest.Pytester, warm: SimpleNamespace, tmp_path: Path
) -> None:
    results = tmp_path / "R"
    results.mkdir()
    (results / "REPORT.md").write_text("the previous report\n")
    pytester.makeconftest(CONFTEST_INTERRUPT_REPORT)
    result = run_suite(pytester, warm, results, warm.baselines, "--variants", "int8")
    assert result.ret == pytest.ExitCode.INTERRUPTED, result.stdout.str()[-3000:]
    assert "interrupted while writing REPORT.md: not written" in result.stdout.str()
    assert (results / "REPORT.md").read_text() == "the previous report\n"
    assert not no_temporaries(results)
    json.loads((results / "int8_quantized_tiny_evaluation.json").read_text())  # finished before: whole


CONFTEST_OUT_OF_MEMORY = """
import torch
import quant_fixtures.session.passes as session

real_score_windows = session.score_windows


def score_windows(model, *args, **kwargs):
    if getattr(model, "is_loaded_in_8bit", False):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB (simulated)")
    return real_score_windows(model, *args, **kwargs)


session.score_windows = score_windows
"""


def test_out_of_memory_fails_that_variant_and_the_others_run(
    pytester: pytest.Pytester, warm: SimpleNamespace, tmp_path: Path
) -> None:
    pytester.makeconftest(CONFTEST_OUT_OF_MEMORY)
    results = tmp_path / "R"
    result = run_suite(pytester, warm, results, warm.baselines, "--variants", "int8,nf4")
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.assert_outcomes(passed=4, errors=4)  # int8's four tests error in the fixture's setup, nf4's pass
    result.stdout.fnmatch_lines(
        [
            "*ERROR at setup of test_perplexity_is_measured[[]tiny-int8[]]*",
            "tiny int8: out of memory in stage perplexity: needed 20.00 GiB more",
            "*Captured * setup*",
        ],
        consecutive=True,
    )  # one line, then what was captured
    assert "Traceback" not in result.stdout.str() and "session.py" not in result.stdout.str()
    assert report(results, "nf4")["gates"] and not (results / "int8_quantized_tiny_evaluation.json").exists()


def test_snapshots_of_other_settings_survive_an_update(
    pytester: pytest.Pytester, warm: SimpleNamespace, tmp_path: Path
) -> None:
    shutil.copy(SNAPSHOT_TESTS, pytester.path / PROJECT_SNAPSHOT_TESTS)
    snapshots = pytester.path / "__snapshots__" / Path(PROJECT_SNAPSHOT_TESTS).stem

    def run(*extra: str) -> pytest.RunResult:
        return run_suite(pytester, warm, tmp_path / "R", warm.baselines, *extra, tests=PROJECT_SNAPSHOT_TESTS)

    missing = run()
    assert missing.ret == pytest.ExitCode.TESTS_FAILED
    missing.stdout.fnmatch_lines(
        [
            "no snapshot test_harm_summary_matches_snapshot*-fp16+int8+nf4@* for these settings on any "
            "hardware kind yet: record it with `pytest *test_project_snapshots.py* --snapshot-update` and "
            "commit tests/harm/__snapshots__/"
        ]
    )
    assert run("--snapshot-update").ret == 0
    assert run("--variants", "fp16,int8", "--snapshot-update").ret == 0
    names = sorted(p.name for p in snapshots.iterdir())
    assert len(names) == 2 and [n for n in names if "-fp16+int8@" in n] and [n for n in names if "-fp16+int8+nf4@" in n]
    assert run().ret == 0  # and the all-variants snapshot, kept, still matches


def test_pickle_weights_need_an_explicit_opt_in(tmp_path: Path) -> None:
    (tmp_path / "pytorch_model.bin").write_bytes(b"\x80\x04pickle")
    with pytest.raises(ModelUnavailableError, match="allow_pickle = true"):
        weight_files(tmp_path, where="model 'm'")
    assert weight_files(tmp_path, allow_pickle=True) == [tmp_path / "pytorch_model.bin"]
    (tmp_path / "model.safetensors").write_bytes(b"")
    assert weight_files(tmp_path) == [tmp_path / "model.safetensors"]  # the pickle is never read


@pytest.mark.parametrize(
    "option, env, message",
    [
        (("--max-gpu-memory", "15 GiBs"), None, "ERROR: --max-gpu-memory: '15 GiBs' is not a memory size*"),
        ((), "lots", "ERROR: $QUANT_MAX_GPU_MEMORY: 'lots' is not a memory size*"),
        (("--max-gpu-memory=100MB",), None, "ERROR: --max-gpu-memory: '100MB' is 0.0931 GiB; below 0.25 GiB*"),
    ],
)
def test_an_unreadable_memory_cap_is_a_usage_error_not_no_cap(
    pytester: pytest.Pytester,
    warm: SimpleNamespace,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    option: tuple[str, ...],
    env: str | None,
    message: str,
) -> None:
    if env is not None:
        monkeypatch.setenv("QUANT_MAX_GPU_MEMORY", env)
    result = run_suite(pytester, warm, tmp_path / "R", warm.baselines, "--variants", "int8", *option)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([message])
    assert not (tmp_path / "R").exists()
