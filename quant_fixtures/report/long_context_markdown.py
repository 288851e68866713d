"""REPORT.md's long-context section: harm by position bucket per variant, its growth, and the
retrieval probes' flips by length and depth (the numbers of each document's ``long_context``)."""

from __future__ import annotations

from quant_fixtures.metrics.position_buckets import is_comparison, is_variant_bucket
from quant_fixtures.metrics.retrieval import is_variant_summary
from quant_fixtures.report.schema import EvaluationDocument, LongContext

Documents = dict[str, EvaluationDocument]  # variant key -> document


def _f(value: float | None, spec: str) -> str:
    return "–" if value is None else f"{value:{spec}}"


def _ci(pair: list[float] | None, spec: str) -> str:
    return "" if not pair else f" ({pair[0]:{spec}} to {pair[1]:{spec}})"


def _buckets_table(documents: dict[str, LongContext]) -> list[str]:
    lines = [
        "| variant | context tokens | positions | FP16 PPL | PPL | ΔPPL % (95 % CI) | mean KL (95 % CI) | KL p99 "
        "| top-1 |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for variant_key, long in documents.items():
        for b in long.buckets["buckets"]:
            if not is_variant_bucket(b):  # FP16's own buckets: its perplexity only
                lines.append(
                    f"| {variant_key} | {b['lo']}-{b['hi']} | {b['positions']} | {b['fp16_ppl']:.4f} | | | | | |"
                )
                continue
            lines.append(
                f"| {variant_key} | {b['lo']}-{b['hi']} | {b['positions']} | {b['fp16_ppl']:.4f} | {b['ppl']:.4f} | "
                f"{b['delta_ppl_pct']:+.2f}{_ci(b['delta_ppl_pct_ci95'], '+.2f')} | "
                f"{_f(b['kl_mean'], '.4f')}{_ci(b['kl_mean_ci95'], '.4f')} | {_f(b['kl_p99'], '.4f')} | "
                f"{b['same_top1_rate']:.3f} |"
            )
    return lines


def _retrieval_lines(documents: dict[str, LongContext]) -> list[str]:
    lines = [
        "| variant | probes | FP16 retrieved | retrieved | flips (lost / gained) | flips by length | flips by depth |"
    ]
    lines.append("|---|---|---|---|---|---|---|")
    for variant_key, long in documents.items():
        r = long.retrieval
        if not is_variant_summary(r):
            lines.append(f"| {variant_key} | {r['probes']} | {r['fp16_retrieved']} | | | | |")
            continue
        by_length = ", ".join(f"{c['length']}: {c['flips']}/{c['probes']}" for c in r["by_length"])
        by_depth = ", ".join(f"{c['depth']:g}: {c['flips']}/{c['probes']}" for c in r["by_depth"])
        lines.append(
            f"| {variant_key} | {r['probes']} | {r['fp16_retrieved']} | {r['retrieved']} | "
            f"{r['flips']} ({r['lost']} / {r['gained']}) | {by_length} | {by_depth} |"
        )
    return lines


def _unsettled_lines(documents: dict[str, LongContext]) -> list[str]:
    """A warning per variant whose chunked LLM.int8 prefills did not settle (compute/long_context.py)."""
    lines = []
    for variant_key, long in documents.items():
        unsettled = long.prefill_reads["unsettled_sequences"]
        if unsettled:  # their numbers are those of the last read, not of a read at once
            lines.append(
                f"- **{variant_key}: {len(unsettled)} sequence(s) read in chunks whose LLM.int8 outlier columns had "
                f"not settled after {long.prefill_reads['max_reads']} reads** (stretches first, then probes: "
                f"{unsettled}): their numbers are the last read's and may differ from a read at once; more GPU "
                "memory (a read at once) removes this."
            )
    return lines


def long_context_section(documents: Documents) -> list[str]:
    """The section's lines, or none when no document measured long context."""
    measured = {key: d.long_context for key, d in documents.items() if d.long_context is not None}
    if not measured:
        return []
    first = next(iter(measured.values()))
    lines = [
        "### Long context",
        "",
        f"{first.stretches} stretch(es) of {first.length} tokens: {first.text}. {first.method}. Positions are "
        f"bucketed by {first.buckets['position_unit']}.",
        "",
        *_buckets_table(measured),
        "",
    ]
    for variant_key, long in measured.items():
        if is_comparison(long.buckets):
            growth = long.buckets["growth"]
            lines.append(
                f"- {variant_key}: KL grows {_f(growth['kl_slope_per_doubling'], '+.4f')} nats per doubling of "
                f"the context (last bucket / first: {_f(growth['kl_ratio_last_first'], '.2f')}x); ΔPPL moves "
                f"{growth['delta_ppl_pct_change']:+.2f} points from the first bucket to the last."
            )
    lines += _unsettled_lines(measured)
    lines += ["", "Retrieval probes: " + first.probe_protocol.split("\n")[0], "", *_retrieval_lines(measured)]
    return lines
