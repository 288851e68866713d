"""The suite end to end: the pytest plugin and the release-gate tests, run by a pytest run of their own
(integration_support.run_suite).

Each run is a pytest session of its own (in this process) in a pytester directory holding a suite
TOML whose only model is a tiny random Llama (``path = ...``) and a copy of
tests/harm/test_release_gates.py. Budgets are tiny: 4 perplexity windows of 64 tokens and a prompt
stage of 8 prompts x 4 new tokens. The first full run's baselines are shared (copied where a test
changes them) so that later runs only evaluate what they are about.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import bitsandbytes  # noqa: F401  # imported before pytester snapshots sys.modules: a second import fails
import pytest
import torch
from integration_support import (
    CTX,
    FAILING_GATES,
    LONG_ARGS,
    MAX_TOKENS,
    METHODS,
    PASSING_GATES,
    VARIANT_KEYS,
    copy_baselines,
    load_variant,
    make_project,
    plain_window_nll,
    ppl_baselines,
    report,
    report_files,
    run_suite,
    snapshot,
)

from quant_fixtures.inputs.retrieval_probe import build_probes
from quant_fixtures.inputs.wikitext import WIKITEXT_SHA256
from quant_fixtures.metrics.perplexity import nonoverlapping_windows
from quant_fixtures.report.schema import SCHEMA_VERSION
from quant_fixtures.session.long_plan import PROBE_SEED

pytest_plugins = ["pytester"]

DOCUMENT_KEYS = {"schema_version", "model", "variant", "environment", "perplexity", "memory", "timing", "gates"}
PERPLEXITY_KEYS = {
    "ppl",
    "fp16_ppl",
    "delta_ppl_pct",
    "tokens",
    "windows",
    "ctx",
    "method",
    "dataset_sha256",
    "window_nll",
}
MEMORY_KEYS = {"footprint_gb", "fp16_footprint_gb", "reduction_pct", "compression_ratio", "peak_gb"}


def _rel(a: float, b: float) -> float:
    return abs(a - b) / abs(b)


@pytest.fixture(scope="module")
def e2e(tiny_models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    root = tmp_path_factory.mktemp("e2e")
    return SimpleNamespace(
        model_dir=tiny_models["llama"],
        cache=root / "C",
        baselines=root / "B",
        results=root / "R",
        datasets=root / "datasets-cache",
        full=None,
    )


@pytest.fixture(autouse=True)
def _environment(monkeypatch: pytest.MonkeyPatch, e2e: SimpleNamespace) -> None:
    # pytester gives every run a fresh HOME; share the datasets cache so the vendored parquet is
    # prepared once, and keep the Hub out of it.
    monkeypatch.setenv("HF_DATASETS_CACHE", str(e2e.datasets))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture
def full_run(pytester: pytest.Pytester, e2e: SimpleNamespace) -> SimpleNamespace:
    """The full run (fp16, int8, nf4) with passing gates; run once per module, by the first test
    that needs it. Its results and baselines directories are shared, read-only, with later tests."""
    if e2e.full is None:
        make_project(pytester, e2e, PASSING_GATES)
        result = run_suite(pytester, e2e, e2e.results, e2e.baselines)
        outcomes = {k: v for k, v in result.parseoutcomes().items() if k not in ("warnings", "warning")}
        e2e.full = SimpleNamespace(ret=result.ret, outcomes=outcomes, lines=result.outlines, stderr=result.errlines)
    full: SimpleNamespace = e2e.full
    return full


def test_full_run_passes_and_writes_reports(full_run: SimpleNamespace, e2e: SimpleNamespace) -> None:
    assert full_run.ret == 0, "\n".join(full_run.lines[-60:] + full_run.stderr[-30:])
    # 3 perplexity tests, 2 quantized variants x 3 gates.
    assert full_run.outcomes == {"passed": 9}, full_run.outcomes
    summary = full_run.lines.index(next(x for x in full_run.lines if "quantization harm" in x))
    table = "\n".join(full_run.lines[summary:])
    assert all(re.search(rf"^{v} +\d", table, re.M) for v in VARIANT_KEYS), table

    docs = {v: report(e2e.results, v) for v in VARIANT_KEYS}
    fp16 = docs["fp16"]
    for variant, doc in docs.items():
        assert DOCUMENT_KEYS <= set(doc), f"{variant}: missing {DOCUMENT_KEYS - set(doc)}"
        assert doc["schema_version"] == SCHEMA_VERSION
        assert doc["model"]["key"] == "tiny" and doc["model"]["source"] == str(e2e.model_dir)
        assert doc["model"]["weights_identity"].startswith("sha256-blocks:")
        assert doc["variant"]["key"] == variant and doc["variant"]["method"] == METHODS[variant]
        assert doc["variant"]["compute_dtype"] == "float32" and doc["variant"]["weight_dtype"] == "float16"
        assert doc["environment"]["device"] == "cpu" and doc["environment"]["packages"]["torch"]

        ppl = doc["perplexity"]
        assert PERPLEXITY_KEYS <= set(ppl), f"{variant}: missing {PERPLEXITY_KEYS - set(ppl)}"
        assert (ppl["ctx"], ppl["windows"], ppl["tokens"], ppl["method"]) == (CTX, 4, 4 * (CTX - 1), "nonoverlapping")
        assert ppl["dataset_sha256"] == WIKITEXT_SHA256 and len(ppl["window_nll"]) == 4
        assert _rel(ppl["ppl"], math.exp(math.fsum(ppl["window_nll"]) / ppl["tokens"])) < 1e-12
        assert ppl["fp16_ppl"] == fp16["perplexity"]["ppl"]
        assert ppl["delta_ppl_pct"] == pytest.approx(100 * (ppl["ppl"] / ppl["fp16_ppl"] - 1), abs=1e-9)

        memory = doc["memory"]
        assert MEMORY_KEYS <= set(memory), f"{variant}: missing {MEMORY_KEYS - set(memory)}"
        assert memory["fp16_footprint_gb"] == fp16["memory"]["footprint_gb"]
        assert memory["reduction_pct"] == pytest.approx(
            100 * (1 - memory["footprint_gb"] / memory["fp16_footprint_gb"]), abs=1e-9
        )
        assert memory["compression_ratio"] == pytest.approx(memory["fp16_footprint_gb"] / memory["footprint_gb"])
        assert memory["peak_gb"] is None  # CPU: no allocator statistics
        assert {"load_s", "ppl_s", "ppl_tokens_per_s"} <= set(doc["timing"])

    assert fp16["variant"]["quantization_config"] is None and fp16["gates"] == []
    assert docs["int8"]["variant"]["quantization_config"]["load_in_8bit"] is True
    assert docs["nf4"]["variant"]["quantization_config"]["bnb_4bit_quant_type"] == "nf4"
    assert fp16["perplexity"]["delta_ppl_pct"] == 0.0
    footprints = [docs[v]["memory"]["footprint_gb"] for v in VARIANT_KEYS]
    assert footprints[0] > footprints[1] > footprints[2]
    for variant in ("int8", "nf4"):
        gates = {g["metric"]: g for g in docs[variant]["gates"]}
        assert set(gates) == {"delta_ppl_pct", "memory_reduction_pct", "kl_mean"}
        assert all(g["verdict"] == "PASS" for g in gates.values()), gates
        # the run decides 4 sampled gates (ΔPPL and KL of int8 and nf4; memory is exact): FAIL at 0.05 / 4
        assert docs[variant]["gate_family"] == 4 and gates["kl_mean"]["alpha_beyond"] == 0.05 / 4
        assert gates["delta_ppl_pct"]["limit"] == PASSING_GATES[variant]["max_delta_ppl_pct"]
        assert gates["delta_ppl_pct"]["value"] == docs[variant]["perplexity"]["delta_ppl_pct"]
        kl = docs[variant]["kl_divergence"]
        assert math.isfinite(kl["mean"]) and kl["mean"] >= 0 and gates["kl_mean"]["value"] == kl["mean"]

    comparison = json.loads((e2e.results / "tiny_quantization_comparison.json").read_text())
    assert list(comparison["variants"]) == list(VARIANT_KEYS) and comparison["failed_gates"] == []
    assert comparison["release_verdict"]["verdict"] == "PASS" and comparison["release_verdict"]["gates"] == 6
    assert any(line.startswith("release verdict: PASS (every one of 6 gates (4 sampled)") for line in full_run.lines)
    assert comparison["fp16_ppl"] == fp16["perplexity"]["ppl"]
    assert comparison["perplexity_protocol"]["ctx"] == CTX
    for variant in VARIANT_KEYS:
        assert comparison["variants"][variant]["ppl"] == docs[variant]["perplexity"]["ppl"]

    (baseline_file,) = ppl_baselines(e2e.baselines)
    assert re.fullmatch(r"tiny-[0-9a-f]{12}\.json", baseline_file.name)
    baseline = json.loads(baseline_file.read_text())
    assert baseline["ppl"] == fp16["perplexity"]["ppl"]
    assert baseline["window_nll"] == fp16["perplexity"]["window_nll"]
    assert {
        k: baseline["key"][k] for k in ("model", "ctx", "max_tokens", "method", "compute_dtype", "device_type")
    } == {
        "model": "tiny",
        "ctx": CTX,
        "max_tokens": MAX_TOKENS,
        "method": "nonoverlapping",
        "compute_dtype": "float32",
        "device_type": "cpu",
    }
    assert baseline["key"]["weights_identity"] == fp16["model"]["weights_identity"]


def test_reported_fp16_perplexity_matches_plain_computation(
    full_run: SimpleNamespace, e2e: SimpleNamespace, digest_cache: Path, wikitext_ids: torch.Tensor
) -> None:
    """The run's FP16 numbers, recomputed here from scratch, window by window."""
    fp16 = report(e2e.results, "fp16")["perplexity"]
    loaded = load_variant(e2e.model_dir, "fp16", digest_cache, key="tiny")
    plan = nonoverlapping_windows(len(wikitext_ids), CTX, MAX_TOKENS)
    plain = [plain_window_nll(loaded.model, wikitext_ids, w) for w in plan]
    assert fp16["window_tokens"] == [count for _, count in plain]
    for i, (reported, (reference, _)) in enumerate(zip(fp16["window_nll"], plain)):
        assert _rel(reported, reference) < 1e-6, f"window {i}: reported {reported!r}, plain {reference!r}"


def test_second_run_reuses_the_stored_baseline(
    pytester: pytest.Pytester, full_run: SimpleNamespace, e2e: SimpleNamespace
) -> None:
    make_project(pytester, e2e, PASSING_GATES)
    before = snapshot(e2e.baselines)
    results = pytester.path / "R"
    result = run_suite(pytester, e2e, results, e2e.baselines, "--variants", "int8")
    assert result.ret == 0, result.stdout.str()[-4000:]
    result.assert_outcomes(passed=4)
    # The FP16 pass did not run: no fp16 report here, the stored baseline untouched.
    files = report_files(results)
    assert "int8_quantized_tiny_evaluation.json" in files and "tiny_quantization_comparison.json" in files
    assert "fp16_quantized_tiny_evaluation.json" not in files, files
    assert snapshot(e2e.baselines) == before
    int8, first = report(results, "int8"), report(e2e.results, "int8")
    assert int8["perplexity"]["fp16_ppl"] == report(e2e.results, "fp16")["perplexity"]["ppl"]
    assert int8["memory"]["fp16_footprint_gb"] == first["memory"]["fp16_footprint_gb"]
    assert _rel(int8["perplexity"]["ppl"], first["perplexity"]["ppl"]) < 1e-9


def test_changing_ctx_makes_a_new_baseline(
    pytester: pytest.Pytester, full_run: SimpleNamespace, e2e: SimpleNamespace
) -> None:
    make_project(pytester, e2e, PASSING_GATES)
    baselines = copy_baselines(e2e, pytester.path / "B")
    before = snapshot(baselines)
    results = pytester.path / "R"
    (old,) = ppl_baselines(baselines)
    result = run_suite(pytester, e2e, results, baselines, "--variants", "int8", "--ctx", "32")
    assert result.ret == 0, result.stdout.str()[-4000:]
    result.assert_outcomes(passed=4)
    after = snapshot(baselines)
    (new,) = set(after) - set(before)
    assert after[old.name] == before[old.name]  # the ctx-64 baseline is kept as it was
    assert json.loads((baselines / new).read_text())["key"]["ctx"] == 32
    # The baseline was computed in this run: its FP16 report is here, for ctx 32.
    fp16 = report(results, "fp16")["perplexity"]
    assert (fp16["ctx"], fp16["windows"]) == (32, MAX_TOKENS // 32)
    assert report(results, "int8")["perplexity"]["fp16_ppl"] == fp16["ppl"]


def _tamper_ppl(baselines: Path) -> None:
    (path,) = ppl_baselines(baselines)
    document = json.loads(path.read_text())
    document["ppl"] *= 0.5  # an edit that keeps the old checksum
    path.write_text(json.dumps(document))


@pytest.mark.parametrize(
    "case, extra, reason",
    [
        ("missing", ("--ctx", "32"), "no stored baseline for these settings"),
        ("edited", (), "checksum mismatch"),
    ],
)
def test_frozen_baselines_refuse_to_recompute(
    pytester: pytest.Pytester,
    full_run: SimpleNamespace,
    e2e: SimpleNamespace,
    case: str,
    extra: tuple[str, ...],
    reason: str,
) -> None:
    make_project(pytester, e2e, PASSING_GATES)
    baselines = copy_baselines(e2e, pytester.path / "B")
    if case == "edited":
        _tamper_ppl(baselines)
    before = snapshot(baselines)
    results = pytester.path / "R"
    result = run_suite(pytester, e2e, results, baselines, "--variants", "int8", "--frozen-baselines", *extra)
    # A usage error found before any model loads: one line, no test ran, exit 4.
    assert result.ret == pytest.ExitCode.USAGE_ERROR, result.stdout.str()[-4000:]
    assert "passed" not in result.stdout.str() and "Traceback" not in result.stderr.str()
    result.stderr.fnmatch_lines([f"ERROR: --frozen-baselines: tiny: *{reason}*"])
    assert snapshot(baselines) == before
    assert not results.exists() or not [f for f in report_files(results) if f.endswith("_evaluation.json")]


def _gate_line(result: pytest.RunResult, prefix: str) -> re.Match:
    pattern = re.compile(
        prefix + r"tiny int8: memory_reduction_pct = (?P<value>\S+) \(limit (?P<op>>=) (?P<limit>\S+)\) FAIL$"
    )
    matches = [m for m in (pattern.search(line) for line in result.outlines) if m]
    assert matches, result.stdout.str()[-4000:]
    return matches[0]


def test_failed_gate_fails_the_run_with_one_line(
    pytester: pytest.Pytester, full_run: SimpleNamespace, e2e: SimpleNamespace
) -> None:
    make_project(pytester, e2e, FAILING_GATES)
    baselines = copy_baselines(e2e, pytester.path / "B")
    results = pytester.path / "R"
    result = run_suite(pytester, e2e, results, baselines, "--variants", "int8")
    assert result.ret == 1
    result.assert_outcomes(passed=3, failed=1)
    result.stdout.fnmatch_lines(
        ["FAILED test_project_release_gates.py::test_within_limit[[]tiny-int8-memory_reduction_pct[]]*"]
    )
    match = _gate_line(result, r"gate FAIL: ")
    int8 = report(results, "int8")
    assert float(match["value"]) == float(f"{int8['memory']['reduction_pct']:.4g}")
    assert float(match["limit"]) == 99.0
    # The failure's whole report is that one line: no traceback.
    start = next(
        i
        for i, line in enumerate(result.outlines)
        if "test_within_limit[tiny-int8-memory_reduction_pct]" in line and line.startswith("_")
    )
    body = [line for line in result.outlines[start + 1 :] if line.strip()]
    assert body[0].startswith("gate FAIL: tiny int8: memory_reduction_pct = ") and re.match(r"[=_-]{3,}", body[1])
    (gate,) = [g for g in int8["gates"] if g["metric"] == "memory_reduction_pct"]
    assert gate["verdict"] == "FAIL" and gate["exact"] and gate["limit"] == 99.0
    result.stdout.fnmatch_lines(["release verdict: FAIL (1 of 3 gates (2 sampled) beyond their limits*"])
    assert "  beyond: tiny int8 memory_reduction_pct" in result.outlines
    comparison = json.loads((results / "tiny_quantization_comparison.json").read_text())
    assert comparison["failed_gates"] == [f"int8: memory_reduction_pct = {gate['value']:.4g} (limit >= 99)"]
    assert comparison["findings"]["failed_gates"] == comparison["failed_gates"]  # one format


def test_report_mode_records_the_failed_gate_as_xfail(
    pytester: pytest.Pytester, full_run: SimpleNamespace, e2e: SimpleNamespace
) -> None:
    make_project(pytester, e2e, FAILING_GATES)
    baselines = copy_baselines(e2e, pytester.path / "B")
    result = run_suite(pytester, e2e, pytester.path / "R", baselines, "--variants", "int8", "--gate-mode", "report")
    assert result.ret == 0, result.stdout.str()[-4000:]
    result.assert_outcomes(passed=3, xfailed=1)
    _gate_line(result, r"gate FAIL \(report mode\): ")


def test_a_failed_kl_gate_attributes_the_harm_to_layers_within_the_budget(
    pytester: pytest.Pytester, full_run: SimpleNamespace, e2e: SimpleNamespace
) -> None:
    """nf4's KL gate at a limit no quantized model meets: with --attribute-budget 0 a line names the
    command; within the budget the run writes the attribution of this run and REPORT.md shows it."""
    gates = {"nf4": {**PASSING_GATES["nf4"], "max_kl_mean": 1e-9}}
    make_project(pytester, e2e, gates)
    baselines = copy_baselines(e2e, pytester.path / "B")
    results = pytester.path / "R"
    args = ("--variants", "nf4", "--gate-mode", "report")
    result = run_suite(pytester, e2e, results, baselines, *args, "--attribute-budget", "0")
    assert result.ret == 0, result.stdout.str()[-4000:]
    result.stdout.fnmatch_lines(
        [
            "per-layer harm of tiny nf4 (kl_mean beyond): not run, --attribute-budget 0: "
            "python -m quant_fixtures.attribute --model tiny --variant nf4 "
            f"--suite-config {pytester.path / 'suite.toml'}"
        ]
    )
    assert not list(results.glob("attribution_*"))
    result = run_suite(pytester, e2e, results, baselines, *args)
    assert result.ret == 0, result.stdout.str()[-4000:]
    result.stdout.fnmatch_lines(
        ["per-layer harm of tiny nf4 (kl_mean beyond): layers [[]*[]] first; */attribution_tiny_nf4.md"]
    )
    document = json.loads((results / "attribution_tiny_nf4.json").read_text())
    assert document["run_id"] == report(results, "nf4")["run_id"] and document["recommendation"]["limit"] == 1e-9
    assert sorted(document["ranked"]) == [0, 1] and document["budget"] == {
        "windows": 4,
        "ctx": 256,
        "scored_positions": 1020,
    }
    text = (results / "REPORT.md").read_text()
    assert "### Per-layer harm: tiny nf4" in text and "![per-layer harm of tiny nf4](attribution_tiny_nf4.png)" in text


# -- stage progress under pytest's output capture (plugin/progress.py) -----------------------------

PROGRESS = "quant-fixtures: tiny"
# The stages each evaluation shows, with their counts: 4 windows of perplexity, the 8 prompts.
SHOWN_STAGES = {
    "fp16": [
        ("load", ""),
        ("perplexity", "4/4 windows"),
        ("corpus noise floor", "1/1 window"),
        ("FP16 prompt reference (generation)", "8/8 prompts"),
        ("FP16 prompt reference (scoring)", "8/8 prompts"),
        ("noise floor", "8/8 prompts"),
    ],
    "int8": [
        ("FP16 references", ""),
        ("load", ""),
        ("perplexity", "4/4 windows"),
        ("prompt scoring", "8/8 prompts"),
        ("generation", "8/8 prompts"),
    ],
}


def _assert_stages_shown(lines: list[str], variant: str) -> None:
    """Each stage: a line when it starts, then one when it ends with its count and seconds."""
    shown = [line for line in lines if line.startswith(f"{PROGRESS} {variant} ")]
    for stage, count in SHOWN_STAGES[variant] + [("evaluation", "")]:
        head = f"{PROGRESS} {variant} {stage}"
        starts = [
            i
            for i, line in enumerate(shown)
            if line.startswith(f"{head} ...") or (line.startswith(f"{head}: ") and line.endswith(" ..."))
        ]
        end = re.compile(rf"{re.escape(head)}: {re.escape(count or 'done')} in \d+\.\d s$")
        ends = [i for i, line in enumerate(shown) if end.match(line)]
        assert len(starts) == 1 and len(ends) == 1 and starts[0] < ends[0], (stage, shown)


def test_stage_progress_shows_under_output_capture(full_run: SimpleNamespace) -> None:
    """The default capture, stdout not a terminal (a CI log): one line as each long stage starts and
    one as it ends, on lines of their own, and none per batch."""
    for variant in SHOWN_STAGES:
        _assert_stages_shown(full_run.lines, variant)
    progress = [line for line in full_run.lines if PROGRESS in line]
    assert all(line.startswith(PROGRESS) for line in progress), progress  # never inside a line of results
    assert not [line for line in progress if re.search(r"\d+/\d+ \w+, ", line)], progress  # no per-batch lines


def test_stage_progress_shows_with_q(
    pytester: pytest.Pytester, full_run: SimpleNamespace, e2e: SimpleNamespace
) -> None:
    make_project(pytester, e2e, PASSING_GATES)
    result = run_suite(pytester, e2e, pytester.path / "R", e2e.baselines, "-q", "--variants", "int8")
    assert result.ret == 0, result.stdout.str()[-4000:]
    _assert_stages_shown(result.outlines, "int8")
    assert not [line for line in result.outlines if line.startswith(f"{PROGRESS} fp16 ")]  # its references were stored


def _plain_positions(model: Any, ids: torch.Tensor) -> torch.Tensor:
    """log-softmax in float64 of the model's own forward over the whole sequence at once."""
    with torch.inference_mode():
        return torch.log_softmax(model(input_ids=ids.unsqueeze(0)).logits[0].double(), -1)


def test_long_context_matches_plain_computation(
    full_run: SimpleNamespace,
    e2e: SimpleNamespace,
    digest_cache: Path,
    wikitext_ids: torch.Tensor,
    smollm2_tokenizer: Any,
) -> None:
    """The long-context section, recomputed here from scratch: the stretch read at once (the suite
    reads it in chunks with a KV cache), buckets by tokens of context, KL(FP16 || NF4) summed by
    hand, and each probe's verdict from the argmax at its answer positions."""
    docs = {v: report(e2e.results, v)["long_context"] for v in ("fp16", "nf4")}
    length = LONG_ARGS[LONG_ARGS.index("--long-ctx") + 1]
    assert docs["nf4"]["length"] == int(length) and docs["nf4"]["stretches"] == 1
    ids = wikitext_ids[: int(length)].clone()
    bos = smollm2_tokenizer.bos_token_id
    if smollm2_tokenizer("a")["input_ids"][:1] == [bos]:
        ids[0] = bos
    fp16_model = load_variant(e2e.model_dir, "fp16", digest_cache, key="tiny").model
    nf4_model = load_variant(e2e.model_dir, "nf4", digest_cache, key="tiny").model
    logp, logq = _plain_positions(fp16_model, ids)[:-1], _plain_positions(nf4_model, ids)[:-1]
    targets = ids[1:]
    context = torch.arange(1, len(ids))  # the target at offset j has j tokens before it
    kl = (logp.exp() * (logp - logq)).sum(-1)
    fp16_buckets, nf4_buckets = docs["fp16"]["buckets"]["buckets"], docs["nf4"]["buckets"]["buckets"]
    assert [(b["lo"], b["hi"]) for b in nf4_buckets] == [(0, 64), (64, int(length))]
    for fp16_bucket, bucket in zip(fp16_buckets, nf4_buckets):
        inside = (context >= bucket["lo"]) & (context < bucket["hi"])
        p_nll = -logp[inside].gather(-1, targets[inside].unsqueeze(-1)).mean().item()
        q_nll = -logq[inside].gather(-1, targets[inside].unsqueeze(-1)).mean().item()
        assert bucket["positions"] == int(inside.sum())
        assert _rel(fp16_bucket["fp16_ppl"], math.exp(p_nll)) < 1e-5
        assert _rel(bucket["ppl"], math.exp(q_nll)) < 1e-4
        assert bucket["delta_ppl_pct"] == pytest.approx(100 * (math.exp(q_nll - p_nll) - 1), abs=1e-3)
        assert bucket["kl_mean"] == pytest.approx(kl[inside].mean().item(), rel=1e-3, abs=1e-7)
    assert docs["nf4"]["deepest"] == nf4_buckets[-1]

    depths = [float(d) for d in LONG_ARGS[LONG_ARGS.index("--probe-depths") + 1].split(",")]
    probe_length = int(LONG_ARGS[LONG_ARGS.index("--probe-lengths") + 1])
    probes = build_probes(smollm2_tokenizer, [probe_length], depths, 1, PROBE_SEED)
    verdicts: dict[str, list[bool]] = {"fp16": [], "nf4": []}  # variant -> each probe retrieved
    for probe in probes:
        probe_ids = torch.tensor(probe.ids)
        answer = probe_ids[probe.answer_start :]
        for name, model in (("fp16", fp16_model), ("nf4", nf4_model)):
            predicted = _plain_positions(model, probe_ids)[probe.answer_start - 1 : -1].argmax(-1)
            verdicts[name].append(bool((predicted == answer).all()))
    retrieval = docs["nf4"]["retrieval"]
    assert retrieval["probes"] == len(probes) == 2
    assert retrieval["fp16_retrieved"] == sum(verdicts["fp16"]) == docs["fp16"]["retrieval"]["fp16_retrieved"]
    assert retrieval["retrieved"] == sum(verdicts["nf4"])
    assert retrieval["flips"] == sum(a != b for a, b in zip(verdicts["fp16"], verdicts["nf4"]))

    # What a reader sees: the terminal line, REPORT.md's section and the plot.
    deepest = nf4_buckets[-1]
    line = next(x for x in full_run.lines if x.startswith("nf4 long context"))
    assert f"(1 x {length} tokens): at {deepest['lo']}-{deepest['hi']} tokens" in line
    assert f"dPPL {deepest['delta_ppl_pct']:+.2f} %" in line and f"flipped {retrieval['flips']}/2" in line
    markdown = (e2e.results / "REPORT.md").read_text()
    assert "### Long context" in markdown and f"| nf4 | {deepest['lo']}-{deepest['hi']} |" in markdown
    assert (e2e.results / "tiny_harm_by_position.png").stat().st_size > 0
