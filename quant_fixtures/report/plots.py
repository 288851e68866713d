"""PNG plots for REPORT.md (matplotlib, Agg backend): KL distribution per variant, KL by category,
footprint versus ΔPPL%, harm by position in a long context."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from quant_fixtures.metrics.position_buckets import is_comparison, is_variant_bucket
from quant_fixtures.metrics.registry import METRICS
from quant_fixtures.names import file_in
from quant_fixtures.report.findings import quantized
from quant_fixtures.report.schema import EvaluationDocument
from quant_fixtures.store.atomic import atomic_path

if TYPE_CHECKING:
    from matplotlib.figure import Figure

Documents = dict[str, EvaluationDocument]  # variant key -> document

LOG_FLOOR = 1e-12


def _use_agg() -> None:
    """Files only, no display: before pyplot is imported."""
    import matplotlib

    matplotlib.use("Agg")


def _per_prompt_kl(doc: EvaluationDocument) -> list[float]:
    kl = doc.kl_divergence
    return [r["kl_mean"] for r in kl.per_prompt if r["kl_mean"] is not None] if kl else []


def kl_distribution(model: str, documents: Documents, path: Path) -> Path | None:
    """Box plot with the points of per-prompt mean KL, one box per quantized variant (log scale)."""
    data = {key: _per_prompt_kl(d) for key, d in quantized(documents).items() if _per_prompt_kl(d)}
    if not data:
        return None
    _use_agg()
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    series = [[max(x, LOG_FLOOR) for x in values] for values in data.values()]  # log axis: no zeros
    ax.boxplot(series, tick_labels=list(data), showfliers=False)
    for i, values in enumerate(series, start=1):
        ax.scatter([i] * len(values), values, s=8, alpha=0.5)
    ax.set_yscale("log")
    ax.set_ylabel("per-prompt mean KL(FP16 || variant), nats")
    ax.set_title(f"{model}: prompt KL distribution ({len(series[0])} prompts)")
    ax.grid(axis="y", alpha=0.3)
    return _save(fig, path)


def kl_by_category(model: str, documents: Documents, path: Path) -> Path | None:
    """Grouped horizontal bars: mean KL per prompt category, one bar per quantized variant."""
    measured = {key: d.kl_divergence.per_category for key, d in quantized(documents).items() if d.kl_divergence}
    if not measured:
        return None
    _use_agg()
    import matplotlib.pyplot as plt

    categories = sorted({c for per in measured.values() for c in per})
    fig, ax = plt.subplots(figsize=(7.0, 0.45 * len(categories) + 1.5))
    height = 0.8 / len(measured)
    for i, (variant_key, per) in enumerate(measured.items()):
        ax.barh(
            [c_i + i * height for c_i in range(len(categories))],
            [(per[c]["kl_mean"] if c in per else None) or 0.0 for c in categories],
            height=height,
            label=variant_key,
        )
    ax.set_yticks([c_i + 0.4 - height / 2 for c_i in range(len(categories))], categories)
    ax.invert_yaxis()
    ax.set_xlabel("mean KL(FP16 || variant), nats")
    ax.set_title(f"{model}: KL by prompt category")
    ax.legend()
    ax.grid(axis="x", alpha=0.3)
    return _save(fig, path)


def footprint_vs_delta_ppl(model: str, documents: Documents, path: Path) -> Path | None:
    """Scatter: weights footprint (GB) against ΔPPL% for every variant, FP16 included."""
    size, cost = METRICS["footprint_gb"], METRICS["delta_ppl_pct"]
    _use_agg()
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.0, 4.0))
    for variant_key, doc in documents.items():
        x, y = size.value(doc), cost.value(doc)
        if x is None or y is None:
            continue  # a variant without the figure has no point to place
        ci = cost.ci(doc)
        if ci:
            # A percentile interval need not contain the point estimate: clip negative arm lengths.
            ax.errorbar([x], [y], yerr=[[max(0.0, y - ci[0])], [max(0.0, ci[1] - y)]], fmt="o", capsize=4)
        else:
            ax.plot([x], [y], "o")
        ax.annotate(variant_key, (x, y), textcoords="offset points", xytext=(6, 6))
    ax.set_xlabel(f"{size.description}, {size.unit}")
    ax.set_ylabel(f"{cost.heading} vs FP16 (95 % CI)")
    ax.set_title(f"{model}: size versus perplexity cost")
    ax.grid(alpha=0.3)
    return _save(fig, path)


def harm_by_position(model: str, documents: Documents, path: Path) -> Path | None:
    """Mean KL(FP16 || variant) per position bucket against the bucket's mean context (log-log), one
    line per quantized variant, with the buckets' 95 % CIs: how harm grows far into the context."""
    measured = {
        key: d.long_context.buckets["buckets"]
        for key, d in quantized(documents).items()
        if d.long_context is not None and is_comparison(d.long_context.buckets)
    }
    if not measured:
        return None
    _use_agg()
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    for variant_key, buckets in measured.items():
        xs, ys, low, high = [], [], [], []
        for b in buckets:
            if not is_variant_bucket(b) or b["kl_mean"] is None:
                continue  # a bucket without a finite KL has no point to place
            y, ci = max(b["kl_mean"], LOG_FLOOR), b["kl_mean_ci95"]
            xs.append(b["mean_context"])
            ys.append(y)
            low.append(max(0.0, y - max(ci[0], LOG_FLOOR)) if ci else 0.0)
            high.append(max(0.0, ci[1] - y) if ci else 0.0)
        ax.errorbar(xs, ys, yerr=[low, high], fmt="o-", capsize=3, label=variant_key)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("tokens of context before the predicted token (bucket mean)")
    ax.set_ylabel("mean KL(FP16 || variant), nats (95 % CI)")
    ax.set_title(f"{model}: harm by position in a long context")
    ax.legend()
    ax.grid(alpha=0.3)
    return _save(fig, path)


def _save(fig: Figure, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=110, format="png")
    finally:
        plt.close(fig)
    return path


def model_plots(model: str, documents: Documents, directory: Path) -> dict[str, Path]:
    """All plots of one model; returns {title: path} of those that had data."""

    def plot_file(kind: str) -> Path:
        return file_in(directory, f"{model}_{kind}.png")

    made = {
        "KL distribution per variant": kl_distribution(model, documents, plot_file("kl_distribution")),
        "KL by category": kl_by_category(model, documents, plot_file("kl_by_category")),
        "Footprint versus ΔPPL%": footprint_vs_delta_ppl(model, documents, plot_file("footprint_vs_delta_ppl")),
        "Harm by position in a long context": harm_by_position(model, documents, plot_file("harm_by_position")),
    }
    return {title: p for title, p in made.items() if p is not None}
