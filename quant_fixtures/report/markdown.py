"""results/REPORT.md: the run's tables, confidence intervals, findings and plots, for people."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from quant_fixtures.metrics.decision import JointVerdict
from quant_fixtures.metrics.registry import METRICS, TABLE_METRICS, MetricSpec, lookup
from quant_fixtures.report.attribution_report import attribution_section
from quant_fixtures.report.corpus_markdown import corpus_section
from quant_fixtures.report.findings import baseline_of, findings, quantized
from quant_fixtures.report.gates import verdict as gate_verdict
from quant_fixtures.report.long_context_markdown import long_context_section
from quant_fixtures.report.plots import model_plots
from quant_fixtures.report.release import release_lines
from quant_fixtures.report.schema import EvaluationDocument, now_utc
from quant_fixtures.report.terminal import settings_line
from quant_fixtures.store.atomic import write_text_atomic

Documents = dict[str, EvaluationDocument]  # variant key -> document


def _f(value: float | None, spec: str = ".4f") -> str:
    return "–" if value is None else format(value, spec)


def _ci(pair: Sequence[float] | None, spec: str) -> str:
    return "" if not pair else f" [{format(pair[0], spec)}, {format(pair[1], spec)}]"


def _metric_cell(spec: MetricSpec, doc: EvaluationDocument, fp16: EvaluationDocument | None) -> str:
    value = spec.value(doc)
    if value is None:
        return "–"
    cell = format(value, spec.fmt) + _ci(spec.ci(doc), spec.fmt)
    if spec.count_of:
        cell += f"/{lookup(doc, spec.count_of)}"
    reference = spec.value(fp16) if spec.vs_fp16 and fp16 is not None else None
    return cell + (f" ({value / reference:.2f}× FP16)" if reference else "")


def _variants_table(documents: Documents) -> list[str]:
    fp16 = baseline_of(documents)
    headings = [m.heading + (" [95 % CI]" if m.ci_path else "") for m in TABLE_METRICS]
    rows = ["| variant | " + " | ".join(headings) + " | gates |", "|---" * (len(headings) + 2) + "|"]
    for variant_key, d in documents.items():
        verdict = "–" if not d.gates else f"**{gate_verdict(d)}**"
        rows.append(
            f"| {variant_key} | " + " | ".join(_metric_cell(m, d, fp16) for m in TABLE_METRICS) + f" | {verdict} |"
        )
    return rows


def _units_table(documents: Documents) -> list[str]:
    """lm-eval's three figures for every protocol, so models with different tokenizers compare."""
    first = next(iter(documents.values())).perplexity
    rows = [
        f"Tokenizer-independent ({first.scored_words} words, {first.scored_bytes} bytes of scored text; "
        f"{first.text_units}):",
        "",
        "| variant | PPL (tokens) | word perplexity | byte perplexity | bits per byte | Δ bits per byte |",
        "|---|---|---|---|---|---|",
    ]
    for variant_key, d in documents.items():
        p = d.perplexity
        delta = "–" if p.bits_per_byte_delta is None else f"{p.bits_per_byte_delta:+.5f}"
        rows.append(
            f"| {variant_key} | {p.ppl:.4f} | {_f(p.word_perplexity)} | {_f(p.byte_perplexity, '.5f')} | "
            f"{_f(p.bits_per_byte, '.5f')} | {delta} |"
        )
    return rows


def _gates_table(documents: Documents) -> list[str]:
    """Each gate: value, the interval its verdict uses, p-values, the sample and what would decide it."""
    rows = [
        "| variant | metric | value | interval | limit | p within / beyond | sample | verdict |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for key, d in documents.items():
        for g in d.gates:
            unit = METRICS[g.metric].unit if g.metric in METRICS else ""
            interval = "exact" if g.exact else _ci(g.interval, ".4g").strip() or "–"
            p = "–" if g.exact or g.p_within is None else f"{g.p_within:.3g} / {g.p_beyond:.3g}"
            sample = "–" if g.units is None else f"{g.units} {g.unit}"
            verdict = g.verdict if g.passed else f"**{g.verdict}**"
            need = g.need()
            rows.append(
                f"| {key} | {g.metric} | {_f(g.value, '.4g')} | {interval} | {g.op} {g.limit:g}"
                f"{' ' + unit if unit else ''} | {p} | {sample} | {verdict}{': ' + _escape(need) if need else ''} |"
            )
    return rows if len(rows) > 2 else ["No gates configured."]


def _escape(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ⏎ ")


def model_section(model: str, documents: Documents, plots: dict[str, Path]) -> list[str]:
    first = next(iter(documents.values()))
    p = first.perplexity
    found = findings(documents)
    note = first.model.note
    lines = [
        f"## {model}",
        "",
        *([f"> **Note: {note}**", ""] if note else []),
        f"Source: `{first.model.source}`. {settings_line(first)}.",
        "",
        f"Perplexity: {p.protocol} {p.windows} windows, {p.tokens} scored tokens.",
        "",
        *_variants_table(documents),
        "",
        *_units_table(documents),
        "",
        "### Assessment",
        "",
    ]
    lines += [f"- {s}" for s in found.assessment] or ["- Only the FP16 baseline was evaluated."]
    best = found.best_tradeoff
    if best:
        lines += [
            "",
            f"**Best size/quality trade-off: {best.variant}** ({best.reason}): "
            f"{best.footprint_gb:.3f} GB, {best.reduction_pct:.1f} % smaller, "
            f"ΔPPL {best.delta_ppl_pct:+.2f} %, mean KL {_f(best.kl_mean)}.",
        ]
    lines += ["", "### Gates", "", *_gates_table(documents)]
    categories = found.most_affected_categories
    if any(categories.values()):
        lines += ["", "### Most affected categories", ""]
        for variant_key, d in quantized(documents).items():
            kl = d.kl_divergence
            if kl:
                lines.append(
                    f"- {variant_key}: macro-average KL over categories {kl.macro_kl_mean:.4f} "
                    f"(95 % CI {kl.macro_kl_ci95[0]:.4f}-{kl.macro_kl_ci95[1]:.4f}; every category weighted "
                    "equally)"
                )
        for variant_key, cats in categories.items():
            lines.append(
                f"- {variant_key}: "
                + "; ".join(f"{c['category']} (KL {c['kl_mean']:.4f}, {c['flips']} flips)" for c in cats)
            )
    worst = found.worst_prompts
    if any(worst.values()):
        lines += [
            "",
            "### Worst prompts",
            "",
            "| variant | prompt | category | KL | first divergence | FP16 response | variant response |",
            "|---|---|---|---|---|---|---|",
        ]
        for variant_key, prompts in worst.items():
            for w in prompts:
                lines.append(
                    f"| {variant_key} | {w['id']} | {w['category']} | {w['kl_mean']:.4f} | "
                    f"{_f(w['first_divergence'], 'd')} | {_escape(w['fp16_response'])} | "
                    f"{_escape(w['response'])} |"
                )
    corpus = corpus_section(documents)
    if corpus:
        lines += ["", *corpus]
    long = long_context_section(documents)
    if long:
        lines += ["", *long]
    noise = first.noise_floor
    if noise:
        lines += [
            "",
            f"Noise floor (FP16 against itself, other batch composition): mean KL {noise.mean:.3g}, "
            f"max {noise.max:.3g} nats.",
        ]
    for variant_key, d in documents.items():
        moved = d.flips.batch_sensitivity if d.flips else None
        if moved:
            lines += [
                "",
                f"Batch sensitivity of {variant_key} (its kernels depend on the batch, so it is scored one "
                f"sequence per pass; generation stays batched): generated again in batches of "
                f"{moved.batch_size} with every boundary moved by {moved.shift}, {moved.responses_changed} "
                f"of {moved.prompts} responses and {moved.verdicts_changed} answer verdicts changed "
                f"(flips {moved.flips} vs {moved.flips_other_batch}).",
            ]
    if first.kl_divergence:
        lines += ["", f"How KL is computed: {first.kl_divergence.method}"]
    for title, path in plots.items():
        lines += ["", f"### {title}", "", f"![{title}]({path.name})"]
    return lines + [""]


def write_report(results_dir: Path, documents: dict[str, Documents], verdict: JointVerdict | None = None) -> Path:
    """Write REPORT.md and its PNGs next to the JSON reports (atomically); returns the path.
    ``verdict``: the run's release verdict (report/release.py), at the top."""
    results_dir = Path(results_dir)
    lines = ["# Quantization harm report", ""]
    any_doc = next(iter(next(iter(documents.values())).values()))
    env = any_doc.environment
    versions = env["packages"]
    packages = ", ".join(f"{k} {v}" for k, v in versions.items() if v) if isinstance(versions, dict) else "–"
    # Now, not a document's time: the documents may come from earlier runs (the FP16 pass's, a merge's).
    lines += [f"Generated {now_utc()} on {env['device']} ({env['device_name']}); {packages}.", ""]
    if verdict is not None:
        first, *rest = release_lines(verdict)
        lines += [f"**{first}**", "", *[f"- {line.strip()}" for line in rest], "", f"_{verdict.method}._", ""]
    for model, docs in documents.items():
        lines += model_section(model, docs, model_plots(model, docs, results_dir))
        for key, document in docs.items():  # made after a failed gate (plugin/auto_attribution.py)
            lines += attribution_section(results_dir, model, key, document.run_id)
    path = results_dir / "REPORT.md"
    write_text_atomic(path, "\n".join(lines))
    return path
