"""REPORT.md's corpus section: the exact token-level comparison over WikiText-2, with llama.cpp's
``--kl-divergence`` tables under llama.cpp's names, so the two can be put side by side."""

from __future__ import annotations

from collections.abc import Callable

from quant_fixtures.report.schema import CorpusKL, EvaluationDocument
from quant_fixtures.report.sections import LlamaCppTables, PercentileKey, WithUncertainty

Documents = dict[str, EvaluationDocument]  # variant key -> document
# (row label as llama-perplexity prints it, key of the distribution)
PERCENT_ROWS: list[tuple[str, PercentileKey]] = [
    ("Maximum", "max"),
    ("99.9%", "p99_9"),
    ("99.0%", "p99"),
    ("95.0%", "p95"),
    ("90.0%", "p90"),
    ("75.0%", "p75"),
    ("Median", "p50"),
    ("25.0%", "p25"),
    ("10.0%", "p10"),
    (" 5.0%", "p5"),
    (" 1.0%", "p1"),
    (" 0.1%", "p0_1"),
    ("Minimum", "min"),
]


def _pm(pair: WithUncertainty, spec: str, scale: float = 1.0, unit: str = "") -> str:
    return f"{scale * pair['value']:{spec}} ± {scale * pair['uncertainty']:{spec}}{unit}"


def _llama_rows(corpora: dict[str, CorpusKL]) -> list[tuple[str, list[str]]]:
    t = [c.llama_cpp for c in corpora.values()]
    rows: list[tuple[str, list[str]]] = []

    def row(label: str, cell: Callable[[LlamaCppTables], str]) -> None:
        rows.append((label, [cell(x) for x in t]))

    def kld(key: PercentileKey) -> Callable[[LlamaCppTables], str]:
        return lambda x: f"{x['kld'][key]:.6f}"

    def delta_p(key: PercentileKey) -> Callable[[LlamaCppTables], str]:
        return lambda x: f"{100 * x['delta_p'][key]:.3f} %"

    row("Mean PPL(Q)", lambda x: _pm(x["perplexity"]["ppl_q"], ".6f"))
    row("Mean PPL(base)", lambda x: _pm(x["perplexity"]["ppl_base"], ".6f"))
    row(
        "Cor(ln(PPL(Q)), ln(PPL(base)))",
        lambda x: "–" if x["perplexity"]["cor_ln_ppl"] is None else f"{100 * x['perplexity']['cor_ln_ppl']:.2f} %",
    )
    row("Mean ln(PPL(Q)/PPL(base))", lambda x: _pm(x["perplexity"]["ln_ppl_ratio"], ".6f"))
    row("Mean PPL(Q)/PPL(base)", lambda x: _pm(x["perplexity"]["ppl_ratio"], ".6f"))
    row("Mean PPL(Q)-PPL(base)", lambda x: _pm(x["perplexity"]["ppl_diff"], ".6f"))
    row("Mean KLD", lambda x: _pm(x["kld"]["mean"], ".6f"))
    for label, key in PERCENT_ROWS:
        if key != "p75" and key != "p25":  # llama.cpp prints these two for Δp only; they are in the JSON
            row(f"{label.strip()} KLD", kld(key))
    row("Mean Δp", lambda x: _pm(x["delta_p"]["mean"], ".3f", 100.0, " %"))
    for label, key in PERCENT_ROWS:
        row(f"{label.strip()} Δp", delta_p(key))
    row("RMS Δp", lambda x: _pm(x["delta_p"]["rms"], ".3f", 100.0, " %"))
    row("Same top p", lambda x: _pm(x["same_top_p"], ".3f", 100.0, " %"))
    return rows


def corpus_section(documents: Documents) -> list[str]:
    corpora = {key: d.corpus_kl for key, d in documents.items() if d.corpus_kl is not None}
    if not corpora:
        return []
    variant_keys = list(corpora)
    lines = [
        "### Token-level comparison over WikiText-2 (exact, full vocabulary)",
        "",
        "| variant | tokens | KL(P‖Q) mean | median | p99 | p99.9 | max | KL(Q‖P) mean | same top-1 | "
        "top-5 agreement |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for key, c in corpora.items():
        top5 = c.topk_agreement[4] if len(c.topk_agreement) >= 5 else None
        lines.append(
            f"| {key} | {c.tokens} | {c.mean:.4g} | {c.median:.4g} | {c.p99:.4g} | {c.p99_9:.4g} | "
            f"{c.max:.4g} | {c.reverse['mean']:.4g} | {100 * c.same_top1_rate:.2f} % | "
            f"{'–' if top5 is None else f'{100 * top5:.2f} %'} |"
        )
    floors = [
        f"{key}: mean {c.noise_floor['mean']:.3g}, p99 {c.noise_floor['p99']:.3g} nats over "
        f"{c.noise_floor['positions']} positions"
        for key, c in corpora.items()
        if c.noise_floor and c.noise_floor.get("mean") is not None
    ]
    if floors:
        lines += [
            "",
            "Noise floor beside these (FP16 against its own reference, first windows scored in another "
            "batch composition): " + floors[0].split(": ", 1)[1] + ".",
        ]
    lines += [
        "",
        "As `llama-perplexity --kl-divergence` prints them (same names and uncertainty formulas; "
        "P = base = FP16, Q = the variant; over the positions above):",
        "",
        "| statistic | " + " | ".join(variant_keys) + " |",
        "|---" * (len(variant_keys) + 1) + "|",
    ]
    lines += [f"| {label} | " + " | ".join(cells) + " |" for label, cells in _llama_rows(corpora)]
    lines += [
        "",
        "Where quantization hurts, by FP16's probability of its own top token (share of positions, "
        "mean KL, share of all KL):",
        "",
        "| FP16 top-1 probability | " + " | ".join(variant_keys) + " |",
        "|---" * (len(variant_keys) + 1) + "|",
    ]
    first = next(iter(corpora.values()))
    for i, bucket in enumerate(first.by_confidence):
        lo, hi = bucket["fp16_top1_prob"]
        cells = []
        for c in corpora.values():
            b = c.by_confidence[i]
            kl = "–" if b["kl_mean"] is None else f"{b['kl_mean']:.4g}"
            share = "–" if b["kl_share"] is None else f"{100 * b['kl_share']:.1f} %"
            cells.append(f"{100 * b['share']:.1f} % / {kl} / {share}")
        lines.append(f"| [{lo:g}, {hi:g}{']' if hi >= 1 else ')'} | " + " | ".join(cells) + " |")
    lines += ["", "Top-K agreement (mean share of FP16's top-K tokens among the variant's top-K), K = 1..10:", ""]
    lines += [f"- {key}: " + ", ".join(f"{100 * a:.1f}" for a in c.topk_agreement) + " %" for key, c in corpora.items()]
    return lines + ["", f"How: {first.method}"]
