"""Tokens/s and speed ratios from pytest-benchmark's JSON entries (our tests' extra_info)."""

from __future__ import annotations

from typing import Any


def throughput_summary(benchmarks: list[dict[str, Any]]) -> dict[str, Any]:
    """{model: {kind: {variant: tokens/s}}, plus ratios vs FP16 and batched vs HF guide loop}.

    tokens/s = tokens processed per round / mean round time (scored tokens for perplexity passes,
    batch x new tokens for generation).
    """
    rates: dict[str, dict[str, dict[str, float]]] = {}
    for b in benchmarks:
        info, mean = b.get("extra_info", {}), b.get("stats", {}).get("mean")
        if not info.get("kind") or not mean:
            continue
        rates.setdefault(info["model"], {}).setdefault(info["kind"], {})[info["variant"]] = info["tokens"] / mean
    summary: dict[str, Any] = {}
    for model, kinds in rates.items():
        ratios: dict[str, Any] = {}
        for kind in ("ppl_batched", "generate"):
            fp16 = kinds.get(kind, {}).get("fp16")
            if fp16:
                ratios[f"{kind}_vs_fp16"] = {v: r / fp16 for v, r in kinds[kind].items()}
        guide = kinds.get("ppl_hf_guide", {}).get("fp16")
        batched = kinds.get("ppl_batched", {}).get("fp16")
        if guide and batched:
            ratios["fp16_batched_vs_hf_guide"] = batched / guide
        summary[model] = {"tokens_per_s": kinds, "ratios": ratios}
    return summary
