"""The fixed-key JSON records inside the documents' sections, typed: per prompt, per category, the
worst prompts, the corpus comparison's noise floor, confidence buckets and llama.cpp tables, the
comparison file's protocol and findings.

They stay plain JSON objects in the files (the schema reads them back as they are, report/schema.py);
their keys are those the measuring code writes: compute/prompt_scoring.per_prompt_records,
metrics/prompt_summary.kl_section, metrics/corpus_stats.corpus_comparison.
"""

from __future__ import annotations

from typing import Literal, TypedDict


class PromptRecord(TypedDict):
    """One prompt of ``kl_divergence.per_prompt`` (suite order)."""

    id: str
    category: str
    positions: int  # response positions scored
    kl_mean: float | None  # None: no position scored
    kl_max: float | None
    kl_reverse_mean: float | None
    kl_topk_mean: float | None
    top1_agreement: float | None
    nll_fp16_tokens: float
    tail_mass_mean: float | None
    first_divergence: int | None
    exact_match: bool
    fp16_correct: bool | None  # None: the prompt has no checkable answer
    correct: bool | None
    flip: bool | None
    fp16_response: str
    response: str


class CategoryStats(TypedDict):
    """One category of ``kl_divergence.per_category``."""

    prompts: int
    kl_mean: float | None  # None: none of its prompts has a scored position
    kl_ci95: list[float] | None
    top1_agreement: float | None
    flips: int
    exact_match: int


class WorstPrompt(TypedDict):
    """One of ``kl_divergence.worst_prompts`` (responses truncated)."""

    id: str
    category: str
    kl_mean: float
    first_divergence: int | None
    fp16_response: str
    response: str


class TopKBound(TypedDict):
    """``kl_divergence.topk``: the FP16 top-k + tail-bucket lower bound of KL beside the exact KL."""

    mean: float
    ci95: list[float]
    k: int
    rel_gap_vs_exact: float | None


class CorpusNoiseFloor(TypedDict):
    """``corpus_kl.noise_floor``: FP16 against its own reference in another batch composition."""

    positions: int
    mean: float | None  # None: no finite position
    p99: float | None
    max: float | None


class ConfidenceBucket(TypedDict):
    """One of ``corpus_kl.by_confidence``: positions by FP16's probability of its own top token."""

    fp16_top1_prob: list[float]  # [low, high)
    positions: int
    share: float
    kl_mean: float | None
    kl_share: float | None
    same_top1_rate: float | None


class WithUncertainty(TypedDict):
    value: float
    uncertainty: float


class LlamaCppPerplexity(TypedDict):
    ppl_q: WithUncertainty
    ppl_base: WithUncertainty
    cor_ln_ppl: float | None
    ln_ppl_ratio: WithUncertainty
    ppl_ratio: WithUncertainty
    ppl_diff: WithUncertainty


# The percentiles metrics/corpus_stats.PERCENTILES names, with the extremes, as llama.cpp prints them.
PercentileKey = Literal["max", "p99_9", "p99", "p95", "p90", "p75", "p50", "p25", "p10", "p5", "p1", "p0_1", "min"]


class Distribution(TypedDict):
    max: float
    min: float
    p0_1: float
    p1: float
    p5: float
    p10: float
    p25: float
    p50: float
    p75: float
    p90: float
    p95: float
    p99: float
    p99_9: float


class KLDistribution(Distribution):
    mean: WithUncertainty


class DeltaPDistribution(Distribution):
    mean: WithUncertainty
    rms: WithUncertainty


class LlamaCppTables(TypedDict):
    """``corpus_kl.llama_cpp``: llama-perplexity --kl-divergence's three tables, under its names."""

    perplexity: LlamaCppPerplexity
    kld: KLDistribution
    delta_p: DeltaPDistribution
    same_top_p: WithUncertainty


class AffectedCategory(TypedDict):
    """One of ``findings.most_affected_categories``."""

    category: str
    kl_mean: float
    flips: int


class ProtocolSummary(TypedDict):
    """The comparison file's ``perplexity_protocol``."""

    method: str
    ctx: int
    stride: int | None
    tokens: int
    windows: int
    dataset_sha256: str
    protocol: str
