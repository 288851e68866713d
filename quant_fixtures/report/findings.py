"""Number-backed findings for one model: worst prompts, most affected categories, the best
size/quality trade-off, failed gates and an overall assessment stated from numbers and limits."""

from __future__ import annotations

from quant_fixtures.report.gates import FAIL, PASS, UNDECIDED, failed_gate_lines
from quant_fixtures.report.schema import BestTradeoff, EvaluationDocument, Findings
from quant_fixtures.report.sections import AffectedCategory

TOP_CATEGORIES = 3
Documents = dict[str, EvaluationDocument]  # variant key -> document


def quantized(documents: Documents) -> Documents:
    from quant_fixtures.variants import VARIANTS

    return {key: d for key, d in documents.items() if not (key in VARIANTS and VARIANTS[key].is_baseline)}


def baseline_of(documents: Documents) -> EvaluationDocument | None:
    from quant_fixtures.variants import BASELINE_VARIANT

    return documents.get(BASELINE_VARIANT)


def most_affected_categories(doc: EvaluationDocument, top: int = TOP_CATEGORIES) -> list[AffectedCategory]:
    kl = doc.kl_divergence
    if not kl:
        return []
    scored = [(c, mean, s["flips"]) for c, s in kl.per_category.items() if (mean := s["kl_mean"]) is not None]
    ranked = sorted(scored, key=lambda row: row[1], reverse=True)[:top]
    return [{"category": c, "kl_mean": mean, "flips": flips} for c, mean, flips in ranked]


def best_tradeoff(documents: Documents) -> BestTradeoff | None:
    """The smallest quantized variant that passes every gate; else the one with the least ΔPPL."""
    candidates = quantized(documents)
    if not candidates:
        return None
    passing = {key: d for key, d in candidates.items() if all(g.passed for g in d.gates)}
    if passing:
        variant_key = min(passing, key=lambda key: passing[key].memory.footprint_gb)
        why = "smallest footprint among the variants that PASS every gate"
    else:
        variant_key = min(candidates, key=lambda key: candidates[key].perplexity.delta_ppl_pct)
        why = "no variant PASSes every gate; this one loses the least perplexity"
    d = candidates[variant_key]
    return BestTradeoff(
        variant=variant_key,
        reason=why,
        footprint_gb=d.memory.footprint_gb,
        reduction_pct=d.memory.reduction_pct,
        delta_ppl_pct=d.perplexity.delta_ppl_pct,
        kl_mean=d.kl_divergence.mean if d.kl_divergence else None,
    )


def assessment(documents: Documents) -> list[str]:
    """One sentence per quantized variant, each stating its numbers against its limits."""
    sentences = []
    fp16 = baseline_of(documents)
    for variant_key, d in quantized(documents).items():
        p, m = d.perplexity, d.memory
        ci = p.delta_ppl_pct_ci95
        ci_text = f" (95 % CI {ci[0]:+.2f} to {ci[1]:+.2f})" if ci else ""
        parts = [
            f"perplexity {p.ppl:.3f} vs FP16 {p.fp16_ppl:.3f}, {p.delta_ppl_pct:+.2f} %{ci_text}",
            f"{m.footprint_gb:.3f} GB ({m.reduction_pct:.1f} % smaller, {m.compression_ratio:.2f}x)",
        ]
        kl = d.kl_divergence
        if kl:
            parts.append(
                f"mean prompt KL {kl.mean:.4f} nats (CI {kl.ci95[0]:.4f}-{kl.ci95[1]:.4f}), "
                f"top-1 agreement {100 * kl.top1_agreement:.1f} %"
            )
        flips = d.flips
        if flips and flips.checkable_prompts:
            parts.append(
                f"{flips.flips} of {flips.checkable_prompts} checkable answers flipped "
                f"({flips.correct_to_wrong} right to wrong, {flips.wrong_to_correct} wrong to right, "
                f"McNemar exact p = {flips.mcnemar_p:.3g})"
            )
        speed = speed_ratio(d, fp16)
        if speed is not None:
            parts.append(f"perplexity pass at {speed:.2f}x FP16 speed")
        failed, undecided = [g for g in d.gates if g.failed], [g for g in d.gates if g.verdict == UNDECIDED]
        verdicts = ["FAILS " + "; ".join(g.line() for g in failed)] if failed else []
        verdicts += ["is UNDECIDED on " + "; ".join(g.line() for g in undecided)] if undecided else []
        verdict = " and ".join(verdicts) or ("passes all its gates" if d.gates else "has no gates")
        sentences.append(f"{variant_key} {verdict}: " + "; ".join(parts) + ".")
        sentences += [f"{variant_key}: {line}" for line in verdict_lines(d) + noise_floor_warnings(d)]
    return sentences


def verdict_lines(doc: EvaluationDocument) -> list[str]:
    """What each sampled gate's verdict says: within or beyond its limit with the stated confidence,
    or undecided and what would decide it."""
    lines = []
    for g in doc.gates:
        if g.exact or g.interval is None:
            continue
        low, high = g.interval
        bounds = f"{low:.4g} to {high:.4g} ({g.units} {g.unit})"
        if g.verdict == PASS:
            lines.append(f"{g.metric} is within {g.op} {g.limit:g} with {100 * (1 - g.alpha):g} % confidence: {bounds}")
        elif g.verdict == FAIL:
            lines.append(f"{g.metric} is beyond {g.op} {g.limit:g} with the run's confidence: {bounds}")
        else:
            lines.append(f"{g.metric} is UNDECIDED against {g.op} {g.limit:g}: {bounds} crosses it; {g.need()}")
    return lines


NOISE_MULTIPLE = 10.0  # a KL limit must sit this far above FP16's own noise to mean anything


def noise_floor_warnings(doc: EvaluationDocument) -> list[str]:
    """A KL limit below 10x its noise floor (FP16 against itself in another batch composition: the
    KL that batching alone produces; the prompt floor for prompt KL, the corpus floor for corpus KL)
    cannot tell quantization from noise."""
    noise, corpus = doc.noise_floor, doc.corpus_kl.noise_floor if doc.corpus_kl else None
    floors: dict[str, float] = {}
    if noise is not None:
        floors.update(kl_mean=noise.mean, kl_p99=noise.p99)
    if corpus and (mean := corpus.get("mean")) is not None and (p99 := corpus.get("p99")) is not None:
        floors.update(corpus_kl_mean=mean, corpus_kl_p99=p99)
    return [
        f"WARNING: limit {g.metric} {g.op} {g.limit:g} is below {NOISE_MULTIPLE:g}x the noise floor "
        f"({floors[g.metric]:.3g} nats): the gate cannot tell quantization from batch noise; raise the limit"
        for g in doc.gates
        if g.metric in floors and g.limit < NOISE_MULTIPLE * floors[g.metric]
    ]


def speed_ratio(doc: EvaluationDocument, fp16: EvaluationDocument | None) -> float | None:
    if fp16 is None:
        return None
    a, b = doc.timing.ppl_tokens_per_s, fp16.timing.ppl_tokens_per_s
    return a / b if a and b else None


def findings(documents: Documents) -> Findings:
    fp16 = baseline_of(documents)
    variants = quantized(documents)
    return Findings(
        worst_prompts={key: d.kl_divergence.worst_prompts if d.kl_divergence else [] for key, d in variants.items()},
        most_affected_categories={key: most_affected_categories(d) for key, d in variants.items()},
        best_tradeoff=best_tradeoff(documents),
        speed_vs_fp16={key: speed_ratio(d, fp16) for key, d in variants.items()},
        failed_gates=failed_gate_lines(documents),
        assessment=assessment(documents),
    )
