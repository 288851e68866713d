"""Tokens/s and speed ratios from pytest-benchmark's JSON entries (our tests' extra_info)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TypedDict

Rates = dict[str, dict[str, float]]  # kind -> variant key -> tokens/s


class ModelThroughput(TypedDict):
    tokens_per_s: Rates
    ratios: dict[str, dict[str, float] | float]  # "<kind>_vs_fp16": per variant key; "fp16_batched_vs_hf_guide"


def throughput_summary(benchmarks: Sequence[Mapping[str, object]]) -> dict[str, ModelThroughput]:
    """{model: {kind: {variant: tokens/s}}, plus ratios vs FP16 and batched vs HF guide loop}.

    tokens/s = tokens processed per round / mean round time (scored tokens for perplexity passes,
    batch x new tokens for generation). ``benchmarks``: pytest-benchmark's JSON entries, as it
    writes them.
    """
    rates: dict[str, Rates] = {}
    for b in benchmarks:
        info, stats = b.get("extra_info", {}), b.get("stats", {})
        mean = stats.get("mean") if isinstance(stats, dict) else None
        if not isinstance(info, dict) or not info.get("kind") or not mean:
            continue
        rates.setdefault(info["model"], {}).setdefault(info["kind"], {})[info["variant"]] = info["tokens"] / mean
    summary: dict[str, ModelThroughput] = {}
    for model, kinds in rates.items():
        ratios: dict[str, dict[str, float] | float] = {}
        for kind in ("ppl_batched", "generate"):
            fp16 = kinds.get(kind, {}).get("fp16")
            if fp16:
                ratios[f"{kind}_vs_fp16"] = {key: r / fp16 for key, r in kinds[kind].items()}
        guide = kinds.get("ppl_hf_guide", {}).get("fp16")
        batched = kinds.get("ppl_batched", {}).get("fp16")
        if guide and batched:
            ratios["fp16_batched_vs_hf_guide"] = batched / guide
        summary[model] = {"tokens_per_s": kinds, "ratios": ratios}
    return summary
