"""Hand-made measurements of one model's three variants, turned into the suite's JSON documents by
the suite's own builders (used by test_document_golden.py)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import TYPE_CHECKING, cast

import numpy as np

from quant_fixtures.compute.scoring import WindowScores
from quant_fixtures.json_types import JsonObject, JsonValue
from quant_fixtures.metrics.corpus_stats import corpus_comparison
from quant_fixtures.metrics.prompt_summary import PromptRecord, batch_sensitivity, flip_summary, kl_section
from quant_fixtures.report.build import Measurements, evaluation_document
from quant_fixtures.report.comparison import comparison_document
from quant_fixtures.report.schema import (
    Batching,
    EvaluationDocument,
    NoiseFloor,
    PromptKL,
    from_json_object,
    to_json_object,
)
from quant_fixtures.report.snapshot import harm_summary
from quant_fixtures.settings import GatePolicy, PerplexityProtocol
from quant_fixtures.store.baseline import Baseline, BaselineKey
from quant_fixtures.variants import VARIANTS

if TYPE_CHECKING:
    from quant_fixtures.models.loading import LoadedModel

ENVIRONMENT: JsonObject = {
    "python": "3.12.0",
    "platform": "Linux-test",
    "device": "cpu",
    "device_type": "cpu",
    "packages": {
        "torch": "2.13.0",
        "transformers": "5.24.0",
        "bitsandbytes": "0.50.2",
        "accelerate": "1.10.0",
        "datasets": "3.0.0",
        "safetensors": "0.5.0",
        "gguf": "0.17.0",
        "pytest": "8.3.0",
    },
    "cpu": {
        "model": "Test CPU",
        "isa": ["avx2", "avx512f"],
        "torch_capability": "AVX512",
        "threads": 2,
        "switches": {},
        "bitsandbytes": {"int8_matmul": "torch._int_mm", "avx512bf16": True},
    },
    "device_name": "Test CPU",
}
NUMERICS: JsonObject = {
    "device_type": "cpu",
    "torch": "2.13.0",
    "transformers": "5.24.0",
    "cpu_capability": "AVX512",
    "cpu_isa": "avx2,avx512f",
    "cpu_switches": "",
}
WINDOW_TOKENS = [511, 511, 511, 511]
FP16_NLL = [1400.25, 1523.5, 1388.125, 1450.75]
GB = 1e9


def _record(
    pid: str,
    category: str,
    kl: float | None,
    top1: float | None,
    fp16_ok: bool | None,
    ok: bool | None,
    exact: bool,
    response: str = "the answer is 4",
) -> PromptRecord:
    scored = kl is not None
    return {
        "id": pid,
        "category": category,
        "positions": 6 if scored else 0,
        "kl_mean": kl,
        "kl_max": 3 * kl if kl is not None else None,
        "kl_reverse_mean": 1.1 * kl if kl is not None else None,
        "kl_topk_mean": 0.9 * kl if kl is not None else None,
        "top1_agreement": top1,
        "nll_fp16_tokens": 2.5,
        "tail_mass_mean": 0.015 if scored else None,
        "first_divergence": None if exact else 2,
        "exact_match": exact,
        "fp16_correct": fp16_ok,
        "correct": ok,
        "flip": None if fp16_ok is None else fp16_ok != ok,
        "fp16_response": "the answer is 4",
        "response": response if not exact else "the answer is 4",
    }


def _records(scale: float) -> list[PromptRecord]:
    return [
        _record("math-1", "math", 0.010 * scale, 1.0, True, True, True),
        _record(
            "math-2", "math", 0.050 * scale, 0.8333333333333334, True, scale < 2, scale < 2, response="the answer is 5"
        ),
        _record("code-1", "code", 0.020 * scale, 0.6666666666666666, None, None, False, response="def f(): pass"),
        _record("code-2", "code", 0.035 * scale, 1.0, False, scale > 1, True),
        _record("fact-1", "facts", 0.005 * scale, 1.0, True, True, True),
        _record("fact-2", "facts", None, None, None, None, True),
    ]


def _corpus_positions(scale: float) -> dict[str, np.ndarray]:
    """A fixed, deterministic set of per-position comparisons (no randomness: golden files)."""
    n = sum(WINDOW_TOKENS)
    i = np.arange(n, dtype=np.float64)
    kl = scale * 0.01 * (1.0 + np.sin(i) ** 2) * (1.0 + (i % 97 == 0) * 20.0)
    same = (i % 13) != 0
    overlap = np.minimum(np.arange(1, 11)[None, :], (np.arange(1, 11)[None, :] - (i[:, None] % 3 == 0)))
    return {
        "kl_pq": kl,
        "kl_qp": 1.05 * kl,
        "p_top1": (i % 100) / 100.0 + 0.005,
        "same_top1": same,
        "topk_overlap": overlap.astype(np.int16),
        "logp_target": -2.0 - 0.5 * np.cos(i),
        "logq_target": -2.0 - 0.5 * np.cos(i) - scale * 0.01 * np.sin(3 * i),
    }


def _kl(records: list[PromptRecord], text: str) -> PromptKL:
    return kl_section(records, 256, f"KL method ({text}).", "6 prompts, max_new_tokens <= 16, top-256, chat template")


def _measurements(
    variant_key: str, nll: list[float], footprint: int, records: list[PromptRecord] | None, baseline: Baseline
) -> Measurements:
    variant = VARIANTS[variant_key]
    qconfig = None if variant.is_baseline else {"quant_method": "bitsandbytes", f"load_in_{variant_key}": True}
    loaded = SimpleNamespace(
        footprint_bytes=footprint,
        quantization_config=qconfig,
        weight_dtype="float16",
        compute_dtype="float32",
        quant_state_bytes=0 if variant.is_baseline else 1_250_000,
        load_seconds=1.5,
        footprint_method="parameters and buffers as held",
    )
    kl = flips = corpus = None
    if records is not None:
        kl = _kl(records, "FP16 against itself" if variant.is_baseline else variant_key)
        flips = flip_summary(records)
    if variant_key == "int8":
        assert records is not None and flips is not None
        again: list[PromptRecord] = [{**r, "response": "moved", "correct": r["correct"]} for r in records]
        flips.batch_sensitivity = batch_sensitivity(records, again, 48, 24)
    if not variant.is_baseline:
        noise_kl = np.full(511, 2e-7)
        noise_kl[::100] = 5e-7
        corpus = corpus_comparison(_corpus_positions(2.0 if variant_key == "nf4" else 1.0), WINDOW_TOKENS, noise_kl)
    noise = {"mean": 1e-7, "max": 4e-7, "p99": 3.5e-7, "ci95": [5e-8, 1.5e-7]}
    return Measurements(
        model="tiny",
        variant=variant,
        loaded=cast("LoadedModel", loaded),  # a stand-in with the fields the builders read
        source="org/tiny@main",
        note="random weights",
        weights_identity="sha256:abc",
        ctx=512,
        windows=len(nll),
        scored_bytes=8190,
        scored_words=1500,
        documents=None,
        text_units="bytes and words of the scored text (test)",
        scores=WindowScores(window_nll=nll, window_tokens=list(WINDOW_TOKENS), seconds=2.0),
        baseline=baseline,
        peak_gb=None,
        dataset_source="vendored",
        dataset_sha256="696cca6b",
        corpus_kl=corpus,
        kl=kl,
        flips=flips,
        noise_floor=from_json_object(NoiseFloor, noise, "noise_floor"),
        prompt_seconds=3.0,
        batching=Batching(
            perplexity_windows_per_pass=1 if variant_key == "int8" else 2,
            prompt_scoring_per_pass=1 if variant_key == "int8" else 16,
            generation_batch=48,
            batch_invariant=variant_key != "int8",
            requested={
                "perplexity": 1 if variant_key == "int8" else 8,
                "scoring": 1 if variant_key == "int8" else 16,
                "generation": 48,
            },
            memory_limit_gb=15.0,
            notes=[]
            if variant_key == "int8"
            else ["perplexity: 2 windows per pass, not 8: one needs 0.50 GiB and 1.20 GiB is free"],
            generation_method="eager" if variant_key == "int8" else "cuda graph",
        ),
        environment=ENVIRONMENT,
        keys={"baseline_sha256": "b" * 64, "reference_sha256": "r" * 64},
    )


def golden_evaluations(int8_nll_scale: float = 1.01) -> dict[str, EvaluationDocument]:
    """The three evaluation documents (objects); ``int8_nll_scale`` sets INT8's window NLLs against FP16's."""
    key = BaselineKey(
        model="tiny",
        weights_identity="sha256:abc",
        tokenizer_sha256="t" * 64,
        dataset_sha256="696cca6b",
        method="nonoverlapping",
        ctx=512,
        stride=None,
        max_tokens=2048,
        weight_dtype="float16",
        compute_dtype="float32",
        device_type="cpu",
        metrics_version=3,
        environment=NUMERICS,
    )
    from quant_fixtures.metrics.perplexity import perplexity

    baseline = Baseline(
        key=key,
        ppl=perplexity(FP16_NLL, WINDOW_TOKENS),
        window_nll=FP16_NLL,
        window_tokens=list(WINDOW_TOKENS),
        footprint_bytes=270_000_000,
    )
    protocol = PerplexityProtocol(ctx=512, max_tokens=2048, stride=None, batch_size=2)
    limits = {
        "int8": {"max_delta_ppl_pct": 5.0, "min_memory_reduction_pct": 30.0},
        "nf4": {"max_delta_ppl_pct": 2.0, "min_memory_reduction_pct": 50.0, "max_kl_mean": 0.05},
    }
    ungated = {"int8": {"kl_mean": "opted out with ungated in quant_suite.toml"}}
    cases = {
        "fp16": _measurements("fp16", FP16_NLL, 270_000_000, _records(0.0), baseline),
        "int8": _measurements("int8", [n * int8_nll_scale for n in FP16_NLL], 162_000_000, _records(1.0), baseline),
        "nf4": _measurements("nf4", [n * 1.04 for n in FP16_NLL], 108_000_000, _records(2.5), baseline),
    }
    return {
        key: evaluation_document(m, protocol, GatePolicy(), "golden-run", limits.get(key, {}), ungated.get(key))
        for key, m in cases.items()
    }


def golden_documents() -> dict[str, JsonObject]:
    from quant_fixtures.config import DEFAULT_SNAPSHOT_TOLERANCES

    docs = golden_evaluations()
    built = {
        "fp16_evaluation": docs["fp16"],
        "int8_evaluation": docs["int8"],
        "nf4_evaluation": docs["nf4"],
        "comparison": comparison_document(docs),
        "harm_summary": harm_summary(docs, DEFAULT_SNAPSHOT_TOLERANCES),
    }
    return {name: _json_object(to_json_object(doc)) for name, doc in built.items()}


def _json_object(value: JsonValue) -> JsonObject:
    assert isinstance(value, dict)
    return value
