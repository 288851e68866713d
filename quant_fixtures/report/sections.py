"""The fixed-key JSON records inside the documents' sections, typed, in one place for the report
layer. The records the measuring code builds are defined where it builds them and re-exported here
(metrics/prompt_summary.py: per prompt, per category, the worst prompts, the top-k bound;
metrics/corpus_stats.py: the corpus noise floor, confidence buckets and llama.cpp's tables); the
comparison file's protocol and findings are the report's own.

They stay plain JSON objects in the files (the schema reads them back as they are, report/schema.py).
"""

from __future__ import annotations

from typing import Literal, TypedDict

from quant_fixtures.metrics.corpus_stats import (
    ConfidenceBucket,
    CorpusNoiseFloor,
    DeltaPDistribution,
    KLDistribution,
    LlamaCppPerplexity,
    LlamaCppTables,
    WindowSums,
    WithUncertainty,
)
from quant_fixtures.metrics.prompt_summary import CategoryStats, PromptRecord, TopKBound, WorstPrompt

__all__ = [
    "AffectedCategory",
    "CategoryStats",
    "ConfidenceBucket",
    "CorpusNoiseFloor",
    "DeltaPDistribution",
    "KLDistribution",
    "LlamaCppPerplexity",
    "LlamaCppTables",
    "PercentileKey",
    "PrefillReads",
    "PromptRecord",
    "ProtocolSummary",
    "TopKBound",
    "WindowSums",
    "WithUncertainty",
    "WorstPrompt",
]

# The keys of a llama.cpp distribution row (metrics/corpus_stats.Percentiles plus max and min).
PercentileKey = Literal["max", "p99_9", "p99", "p95", "p90", "p75", "p50", "p25", "p10", "p5", "p1", "p0_1", "min"]


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


class PrefillReads(TypedDict):
    """How the prefills were read: LLM.int8 ones longer than a chunk at once where memory allowed, else
    in chunks, again until their outlier columns were those of the whole prefill (compute/long_context.py)."""

    sequences_per_pass: int  # the most sequences (of one length and prefill) that shared a pass
    max_reads: int
    chunked_sequences: list[int]  # LLM.int8 sequences (stretches, then probes) too big to read at once
    chunked_prefill_chunks: list[int]  # for each of those, the positions per prefill call that fitted
    unsettled_sequences: list[int]  # of those, the ones whose columns had not settled
