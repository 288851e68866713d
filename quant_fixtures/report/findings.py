"""Number-backed findings for one model: worst prompts, most affected categories, the best
size/quality trade-off, failed gates and an overall assessment stated from numbers and limits."""

from __future__ import annotations

from typing import Any

from quant_fixtures.variants import BASELINE_VARIANT

TOP_CATEGORIES = 3


def _quantized(documents: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {v: d for v, d in documents.items() if v != BASELINE_VARIANT}


def failed_gates(documents: dict[str, dict[str, Any]]) -> list[str]:
    return [f"{v}: {g['metric']} = {_num(g['value'])} (limit {g['op']} {g['limit']:g})"
            for v, d in documents.items() for g in d["gates"] if not g["passed"]]


def _num(value: Any) -> str:
    return "missing" if value is None else f"{value:.4g}"


def most_affected_categories(doc: dict[str, Any], top: int = TOP_CATEGORIES) -> list[dict[str, Any]]:
    kl = doc.get("kl_divergence")
    if not kl:
        return []
    scored = [(c, s) for c, s in kl["per_category"].items() if s["kl_mean"] is not None]
    ranked = sorted(scored, key=lambda kv: kv[1]["kl_mean"], reverse=True)[:top]
    return [{"category": c, "kl_mean": s["kl_mean"], "flips": s["flips"]} for c, s in ranked]


def best_tradeoff(documents: dict[str, dict[str, Any]]) -> dict[str, Any] | None:
    """The smallest quantized variant that passes every gate; else the one with the least ΔPPL."""
    quantized = _quantized(documents)
    if not quantized:
        return None
    passing = {v: d for v, d in quantized.items() if all(g["passed"] for g in d["gates"])}
    if passing:
        variant = min(passing, key=lambda v: passing[v]["memory"]["footprint_gb"])
        why = "smallest footprint among the variants that pass every gate"
    else:
        variant = min(quantized, key=lambda v: quantized[v]["perplexity"]["delta_ppl_pct"])
        why = "no variant passes every gate; this one loses the least perplexity"
    d = quantized[variant]
    return {"variant": variant, "reason": why, "footprint_gb": d["memory"]["footprint_gb"],
            "reduction_pct": d["memory"]["reduction_pct"], "delta_ppl_pct": d["perplexity"]["delta_ppl_pct"],
            "kl_mean": (d.get("kl_divergence") or {}).get("mean")}


def assessment(documents: dict[str, dict[str, Any]]) -> list[str]:
    """One sentence per quantized variant, each stating its numbers against its limits."""
    sentences = []
    fp16 = documents.get(BASELINE_VARIANT)
    for variant, d in _quantized(documents).items():
        p, m = d["perplexity"], d["memory"]
        ci = p.get("delta_ppl_pct_ci95")
        ci_text = f" (95 % CI {ci[0]:+.2f} to {ci[1]:+.2f})" if ci else ""
        parts = [f"perplexity {p['ppl']:.3f} vs FP16 {p['fp16_ppl']:.3f}, {p['delta_ppl_pct']:+.2f} %{ci_text}",
                 f"{m['footprint_gb']:.3f} GB ({m['reduction_pct']:.1f} % smaller, {m['compression_ratio']:.2f}x)"]
        kl = d.get("kl_divergence")
        if kl:
            parts.append(f"mean prompt KL {kl['mean']:.4f} nats (CI {kl['ci95'][0]:.4f}-{kl['ci95'][1]:.4f}), "
                         f"top-1 agreement {100 * kl['top1_agreement']:.1f} %")
        flips = d.get("flips")
        if flips and flips["checkable_prompts"]:
            parts.append(f"{flips['flips']} of {flips['checkable_prompts']} checkable answers flipped")
        speed = _speed_ratio(d, fp16)
        if speed is not None:
            parts.append(f"perplexity pass at {speed:.2f}x FP16 speed")
        failed = [g for g in d["gates"] if not g["passed"]]
        verdict = ("passes all its gates" if not failed else
                   "FAILS " + "; ".join(f"{g['metric']} {_num(g['value'])} vs limit {g['op']} {g['limit']:g}"
                                        for g in failed))
        sentences.append(f"{variant} {verdict}: " + "; ".join(parts) + ".")
    return sentences


def _speed_ratio(doc: dict[str, Any], fp16: dict[str, Any] | None) -> float | None:
    if fp16 is None:
        return None
    a, b = doc["timing"].get("ppl_tokens_per_s"), fp16["timing"].get("ppl_tokens_per_s")
    return a / b if a and b else None


def findings(documents: dict[str, dict[str, Any]]) -> dict[str, Any]:
    fp16 = documents.get(BASELINE_VARIANT)
    return {
        "worst_prompts": {v: (d.get("kl_divergence") or {}).get("worst_prompts", [])
                          for v, d in _quantized(documents).items()},
        "most_affected_categories": {v: most_affected_categories(d) for v, d in _quantized(documents).items()},
        "best_tradeoff": best_tradeoff(documents),
        "speed_vs_fp16": {v: _speed_ratio(d, fp16) for v, d in _quantized(documents).items()},
        "failed_gates": failed_gates(documents),
        "assessment": assessment(documents),
    }
