"""The end-of-session harm table, one block per model, variants side by side; the columns are the
registry's table metrics."""

from __future__ import annotations

from quant_fixtures.metrics.position_buckets import is_comparison
from quant_fixtures.metrics.registry import TABLE_METRICS, MetricSpec
from quant_fixtures.metrics.retrieval import is_variant_summary
from quant_fixtures.report.findings import noise_floor_warnings
from quant_fixtures.report.gates import verdict
from quant_fixtures.report.schema import EvaluationDocument


def settings_line(doc: EvaluationDocument) -> str:
    """How the numbers were taken: device, compute dtype, budgets."""
    p, kl = doc.perplexity, doc.kl_divergence
    budget = "whole test split" if p.max_tokens is None else f"first {p.max_tokens} tokens"
    prompts = "prompt KL skipped" if kl is None else kl.method_settings
    return (
        f"device {doc.environment['device']}, compute {doc.variant.compute_dtype}, "
        f"WikiText-2 budget: {budget}; {prompts}"
    )


def _cell(doc: EvaluationDocument, spec: MetricSpec) -> str:
    value = spec.value(doc)
    if value is None:
        return f"{'-':>{spec.width}}"
    sign = "+" if spec.fmt.startswith("+") else ""  # a format spec puts the sign before the width
    return f"{value:>{sign}{spec.width}{spec.fmt.removeprefix('+')}}"


def summary_lines(documents: dict[str, dict[str, EvaluationDocument]]) -> list[str]:
    """Lines of the harm table for {model: {variant: evaluation document}}."""
    lines: list[str] = []
    for model, by_variant in documents.items():
        width = max(8, *(len(key) for key in by_variant))
        header = f"{'variant':<{width}} " + " ".join(f"{m.label:>{m.width}}" for m in TABLE_METRICS) + "  gates"
        first = next(iter(by_variant.values()))
        p, note = first.perplexity, first.model.note
        units = f", {p.fp16_bits_per_byte:.4f} bits/byte" if p.fp16_bits_per_byte is not None else ""
        lines += [
            "",
            settings_line(first),
            *([f"NOTE: {note}"] if note else []),
            f"{model}  (FP16 PPL {p.fp16_ppl:.4f}{units}; {p.method} protocol, {p.tokens} tokens in "
            f"{p.windows} windows of {p.ctx})",
            header,
        ]
        for variant_key, doc in by_variant.items():
            lines.append(
                f"{variant_key:<{width}} " + " ".join(_cell(doc, m) for m in TABLE_METRICS) + f"  {verdict(doc)}"
            )
        lines += [f"{key}: {w}" for key, doc in by_variant.items() for w in noise_floor_warnings(doc)]
        lines += [line for key, doc in by_variant.items() for line in long_context_line(key, doc)]
    return lines


def long_context_line(variant_key: str, doc: EvaluationDocument) -> list[str]:
    """One line per quantized variant with a long-context section: its deepest bucket, the growth of
    KL over position and the retrieval flips."""
    long = doc.long_context
    if long is None or long.deepest is None or not is_comparison(long.buckets):
        return []
    deep, growth, probes = long.deepest, long.buckets["growth"], long.retrieval
    slope = growth["kl_slope_per_doubling"]
    kl = deep["kl_mean"]
    flips = f"{probes['flips']}/{probes['probes']}" if is_variant_summary(probes) else "-"
    return [
        f"{variant_key} long context ({long.stretches} x {long.length} tokens): at {deep['lo']}-{deep['hi']} tokens "
        f"of context dPPL {deep['delta_ppl_pct']:+.2f} %, KL {'-' if kl is None else f'{kl:.4f}'}; KL "
        f"{'-' if slope is None else f'{slope:+.4f}'} nats per doubling; retrieval probes flipped {flips}"
    ]
