"""The metric registry: every headline number the suite reports, gates and snapshots, declared once.

A :class:`MetricSpec` (metrics/metric_spec.py) says where a metric lives in the evaluation document,
which direction is better, its unit and format, its 95 % CI (if measured), its default snapshot
tolerance and whether it can be gated. Gates (limit names ``max_<name>`` / ``min_<name>``, their
direction and valid range), snapshots, the terminal table, REPORT.md, findings and plots all read
this table, so adding a metric is one entry here plus the code that computes it into the document.
"""

from __future__ import annotations

from quant_fixtures.metrics.metric_spec import OPTIONAL, REQUIRED, MetricSpec, ci_bounds, lookup, number

__all__ = ["OPTIONAL", "REQUIRED", "MetricSpec", "lookup", "number"]


def _ppl_half_width(document: object) -> float | None:
    ci_path, fp16_path = ("perplexity", "delta_ppl_pct_ci95"), ("perplexity", "fp16_ppl")
    ci, fp16 = ci_bounds(lookup(document, ci_path), ci_path), number(lookup(document, fp16_path), fp16_path)
    if not ci or fp16 is None:
        return None
    return fp16 * ((ci[1] - ci[0]) / 2.0) / 100.0  # FP16 PPL is fixed: PPL moves with ΔPPL


def _share(part: object, whole: object) -> float | None:
    """``part / whole`` of two counts in the document; None when either is missing or whole is 0."""
    numerator, denominator = number(part, "share"), number(whole, "share")
    return None if numerator is None or not denominator else numerator / denominator


# Registry order is the order of table columns and snapshot keys.
METRICS: dict[str, MetricSpec] = {
    m.name: m
    for m in (
        MetricSpec(
            "ppl",
            ("perplexity", "ppl"),
            "lower",
            "PPL",
            ".4f",
            width=10,
            half_width=_ppl_half_width,
            tolerance={"rel": 1e-3},
            gate=OPTIONAL,
            limit_low=1.0,
            description="WikiText-2 perplexity of the variant",
        ),
        MetricSpec(
            "delta_ppl_pct",
            ("perplexity", "delta_ppl_pct"),
            "lower",
            "dPPL%",
            "+.2f",
            unit="%",
            ci_path=("perplexity", "delta_ppl_pct_ci95"),
            tolerance={"abs": 0.1},
            gate=REQUIRED,
            title="ΔPPL %",
            description="perplexity change against FP16, in percent",
        ),
        MetricSpec(
            "kl_mean",
            ("kl_divergence", "mean"),
            "lower",
            "KL mean",
            ".4f",
            unit="nats",
            width=9,
            ci_path=("kl_divergence", "ci95"),
            tolerance={"rel": 0.02, "abs": 5e-4},
            gate=REQUIRED,
            limit_low_inclusive=False,
            title="mean KL",
            description="mean over prompts of per-prompt KL(FP16 || variant)",
        ),
        MetricSpec(
            "kl_p99",
            ("kl_divergence", "p99"),
            "lower",
            "KL p99",
            ".4f",
            unit="nats",
            width=9,
            ci_path=("kl_divergence", "p99_ci95"),
            tolerance={"rel": 0.05, "abs": 1e-3},
            in_table=False,
            gate=OPTIONAL,
            limit_low_inclusive=False,
            title="KL p99",
            description="99th percentile over prompts of per-prompt KL",
        ),
        MetricSpec(
            "top1_agreement",
            ("kl_divergence", "top1_agreement"),
            "higher",
            "top1",
            ".3f",
            width=6,
            ci_path=("kl_divergence", "top1_agreement_ci95"),
            tolerance={"abs": 0.01},
            gate=OPTIONAL,
            limit_low_inclusive=False,
            limit_high=1.0,
            limit_high_inclusive=True,
            title="top-1 agree",
            description="share of response positions where the variant's argmax is FP16's",
        ),
        MetricSpec(
            "corpus_kl_mean",
            ("corpus_kl", "mean"),
            "lower",
            "corpus KL",
            ".4f",
            unit="nats",
            width=9,
            ci_path=("corpus_kl", "ci95"),
            in_table=False,
            gate=OPTIONAL,
            limit_low_inclusive=False,
            title="corpus KL",
            description="mean KL(FP16 || variant) over every scored WikiText-2 position (exact)",
        ),
        MetricSpec(
            "corpus_kl_p99",
            ("corpus_kl", "p99"),
            "lower",
            "corpus KL p99",
            ".4f",
            unit="nats",
            in_table=False,
            # not gateable: a percentile pooled over positions that cluster by window has no interval
            # here, so no verdict with a known error rate (gate kl_p99 or corpus_kl_mean instead)
            description="99th percentile over WikiText-2 positions of KL(FP16 || variant)",
        ),
        MetricSpec(
            "corpus_top1_agreement",
            ("corpus_kl", "same_top1_rate"),
            "higher",
            "corpus top1",
            ".4f",
            ci_path=("corpus_kl", "same_top1_rate_ci95"),
            in_table=False,
            gate=OPTIONAL,
            limit_low_inclusive=False,
            limit_high=1.0,
            limit_high_inclusive=True,
            description="share of WikiText-2 positions where the variant's argmax is FP16's (llama.cpp's 'same top p')",
        ),
        MetricSpec(
            "bits_per_byte_delta",
            ("perplexity", "bits_per_byte_delta"),
            "lower",
            "dbpb",
            "+.5f",
            unit="bits",
            in_table=False,
            gate=OPTIONAL,
            description="bits per byte of the scored text, variant minus FP16 (tokenizer-independent)",
        ),
        MetricSpec(
            "long_delta_ppl_pct",
            ("long_context", "deepest", "delta_ppl_pct"),
            "lower",
            "long dPPL%",
            "+.2f",
            unit="%",
            ci_path=("long_context", "deepest", "delta_ppl_pct_ci95"),
            tolerance={"abs": 0.1},
            in_table=False,
            gate=OPTIONAL,
            title="long-context ΔPPL %",
            description="perplexity change against FP16 at the deepest position bucket of the long WikiText-2 "
            "stretches (e.g. 8K-32K tokens of context), in percent",
        ),
        MetricSpec(
            "long_kl_mean",
            ("long_context", "deepest", "kl_mean"),
            "lower",
            "long KL",
            ".4f",
            unit="nats",
            ci_path=("long_context", "deepest", "kl_mean_ci95"),
            tolerance={"rel": 0.02, "abs": 5e-4},
            in_table=False,
            gate=OPTIONAL,
            limit_low_inclusive=False,
            title="long-context KL",
            description="mean KL(FP16 || variant) over the positions of the deepest position bucket (exact)",
        ),
        MetricSpec(
            "long_kl_growth",
            ("long_context", "buckets", "growth", "kl_slope_per_doubling"),
            "lower",
            "KL growth",
            "+.4f",
            unit="nats per doubling",
            tolerance={"abs": 5e-5},  # CI's int8 grows -0.0010 per doubling: a 10 % change must fail
            in_table=False,
            gate=OPTIONAL,
            description="least-squares slope of the position buckets' mean KL against log2 of their mean context: "
            "how much the harm grows per doubling of the context",
        ),
        MetricSpec(
            "retrieval_flips",
            ("long_context", "retrieval", "flips"),
            "lower",
            "probe flips",
            "d",
            tolerance={"abs": 0},
            in_table=False,
            is_count=True,
            count_of=("long_context", "retrieval", "probes"),
            description="retrieval probes whose verdict (key retrieved or not) differs from FP16's",
        ),
        MetricSpec(
            "retrieval_flip_rate",
            ("long_context", "retrieval", "flip_rate"),
            "lower",
            "probe flip rate",
            ".3f",
            in_table=False,
            gate=OPTIONAL,
            limit_high=1.0,
            limit_high_inclusive=True,
            description="retrieval probes whose verdict flipped / probes (keys at several depths and lengths)",
        ),
        MetricSpec(
            "flips",
            ("flips", "flips"),
            "lower",
            "flips",
            "d",
            width=5,
            tolerance={"abs": 0},
            is_count=True,
            count_of=("flips", "checkable_prompts"),
            description="checkable answers whose verdict differs from FP16's",
        ),
        MetricSpec(
            "flip_rate",
            ("flips",),
            "lower",
            "flip rate",
            ".3f",
            width=9,
            in_table=False,
            derive=lambda doc: _share(lookup(doc, ("flips", "flips")), lookup(doc, ("flips", "checkable_prompts"))),
            gate=OPTIONAL,
            limit_high=1.0,
            limit_high_inclusive=True,
            description="flipped answers / prompts with a checkable answer",
        ),
        MetricSpec(
            "footprint_gb",
            ("memory", "footprint_gb"),
            "lower",
            "size GB",
            ".3f",
            unit="GB",
            tolerance={"rel": 1e-4},
            gate=OPTIONAL,
            sampled=False,
            limit_low_inclusive=False,
            title="footprint GB",
            description="parameters and buffers as loaded, counted one way for every method (models/footprint.py; "
            "for 16-bit and bitsandbytes models model.get_memory_footprint())",
        ),
        MetricSpec(
            "memory_reduction_pct",
            ("memory", "reduction_pct"),
            "higher",
            "reduct%",
            ".1f",
            unit="%",
            tolerance={"abs": 0.05},
            gate=REQUIRED,
            sampled=False,
            limit_low_inclusive=False,
            limit_high=100.0,
            title="reduction %",
            description="footprint reduction against FP16, in percent",
        ),
        MetricSpec(
            "compression_ratio",
            ("memory", "compression_ratio"),
            "higher",
            "ratio",
            ".2f",
            width=6,
            description="FP16 footprint / variant footprint",
        ),
        MetricSpec(
            "tokens_per_s",
            ("timing", "ppl_tokens_per_s"),
            "higher",
            "tok/s",
            ".0f",
            vs_fp16=True,
            description="scored tokens per second of the perplexity pass, the comparison hooks excluded "
            "(timing, never gated)",
        ),
    )
}

# Limit names people wrote before the names were derived from the registry; read as the new name.
LIMIT_ALIASES = {"max_mean_kl": "max_kl_mean"}
# Snapshot-tolerance names of earlier versions.
TOLERANCE_ALIASES = {"reduction_pct": "memory_reduction_pct"}

GATEABLE: dict[str, MetricSpec] = {m.limit_name: m for m in METRICS.values() if m.gate}
REQUIRED_LIMITS: tuple[str, ...] = tuple(name for name, m in GATEABLE.items() if m.gate == REQUIRED)
SNAPSHOT_METRICS: tuple[str, ...] = tuple(name for name, m in METRICS.items() if m.tolerance is not None)
TABLE_METRICS: tuple[MetricSpec, ...] = tuple(m for m in METRICS.values() if m.in_table)


def limit_spec(limit_name: str) -> MetricSpec | None:
    """The metric a limit name bounds (aliases included), or None for an unknown name."""
    return GATEABLE.get(LIMIT_ALIASES.get(limit_name, limit_name))
