"""PNG plots for REPORT.md (matplotlib, Agg backend): KL distribution per variant, KL by category,
footprint versus ΔPPL%, harm by position in a long context. A variant has one colour in all of them.

Each plot is drawn by a ``*_figure`` function (None when there is nothing to show) and written by
the function of the plot's own name."""

from __future__ import annotations

import textwrap
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from quant_fixtures.metrics.position_buckets import is_comparison, is_variant_bucket
from quant_fixtures.metrics.registry import METRICS
from quant_fixtures.names import file_in
from quant_fixtures.report.findings import quantized
from quant_fixtures.report.schema import EvaluationDocument
from quant_fixtures.store.atomic import atomic_path

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure
    from matplotlib.transforms import Bbox

Documents = dict[str, EvaluationDocument]  # variant key -> document

LOG_FLOOR = 1e-12
AXIS_LABEL_CHARS = 70  # an axis label wraps at this width: a longer line is cut off by the figure's edge
LABEL_OFFSET_PT = 6.0  # a point's name sits this far right of and above it
Colour = tuple[float, float, float, float]


def _use_agg() -> None:
    """Files only, no display: before pyplot is imported."""
    import matplotlib

    matplotlib.use("Agg")


def variant_colours(variant_keys: Iterable[str]) -> dict[str, Colour]:
    """One colour per variant, by its place among all of a model's variants (FP16 included, also
    in the plots that leave FP16 out), so a variant looks the same in every plot of the model."""
    from matplotlib import colormaps

    keys = list(variant_keys)
    palette = colormaps["tab10" if len(keys) <= 10 else "tab20"]
    return {key: palette(i % palette.N) for i, key in enumerate(keys)}


def _per_prompt_kl(doc: EvaluationDocument) -> list[float]:
    kl = doc.kl_divergence
    return [r["kl_mean"] for r in kl.per_prompt if r["kl_mean"] is not None] if kl else []


def kl_distribution(model: str, documents: Documents, path: Path) -> Path | None:
    return _save(kl_distribution_figure(model, documents), path)


def kl_distribution_figure(model: str, documents: Documents) -> Figure | None:
    """Box plot with the points of per-prompt mean KL, one box per quantized variant (log scale)."""
    data = {key: _per_prompt_kl(d) for key, d in quantized(documents).items() if _per_prompt_kl(d)}
    if not data:
        return None
    _use_agg()
    import matplotlib.pyplot as plt

    colours = variant_colours(documents)
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    series = [[max(x, LOG_FLOOR) for x in values] for values in data.values()]  # log axis: no zeros
    # Black medians: the default orange is a variant's colour in the other plots.
    boxes = ax.boxplot(series, tick_labels=list(data), showfliers=False, medianprops={"color": "black"})
    for i, (key, values) in enumerate(zip(data, series), start=1):
        boxes["boxes"][i - 1].set_color(colours[key])
        ax.scatter([i] * len(values), values, s=8, alpha=0.5, color=colours[key], label=key)
    ax.set_yscale("log")
    ax.set_ylabel("per-prompt mean KL(FP16 || variant), nats")
    ax.set_title(f"{model}: prompt KL distribution ({len(series[0])} prompts)")
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return fig


def kl_by_category(model: str, documents: Documents, path: Path) -> Path | None:
    return _save(kl_by_category_figure(model, documents), path)


def kl_by_category_figure(model: str, documents: Documents) -> Figure | None:
    """Grouped horizontal bars: mean KL per prompt category, one bar per quantized variant."""
    measured = {key: d.kl_divergence.per_category for key, d in quantized(documents).items() if d.kl_divergence}
    if not measured:
        return None
    _use_agg()
    import matplotlib.pyplot as plt

    colours = variant_colours(documents)
    categories = sorted({c for per in measured.values() for c in per})
    fig, ax = plt.subplots(figsize=(7.0, 0.45 * len(categories) + 1.5))
    height = 0.8 / len(measured)
    for i, (variant_key, per) in enumerate(measured.items()):
        ax.barh(
            [c_i + i * height for c_i in range(len(categories))],
            [(per[c]["kl_mean"] if c in per else None) or 0.0 for c in categories],
            height=height,
            label=variant_key,
            color=colours[variant_key],
        )
    ax.set_yticks([c_i + 0.4 - height / 2 for c_i in range(len(categories))], categories)
    ax.invert_yaxis()
    ax.set_xlabel("mean KL(FP16 || variant), nats")
    ax.set_title(f"{model}: KL by prompt category")
    ax.legend()
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    return fig


def footprint_vs_delta_ppl(model: str, documents: Documents, path: Path) -> Path | None:
    return _save(footprint_figure(model, documents), path)


def footprint_figure(model: str, documents: Documents) -> Figure:
    """Scatter: weights footprint (GB) against ΔPPL% for every variant, FP16 included."""
    size, cost = METRICS["footprint_gb"], METRICS["delta_ppl_pct"]
    _use_agg()
    import matplotlib.pyplot as plt

    colours = variant_colours(documents)
    fig, ax = plt.subplots(figsize=(6.0, 4.0))
    points = []
    for variant_key, doc in documents.items():
        x, y = size.value(doc), cost.value(doc)
        if x is None or y is None:
            continue  # a variant without the figure has no point to place
        ci = cost.ci(doc)
        if ci:
            # A percentile interval need not contain the point estimate: clip negative arm lengths.
            arms = [[max(0.0, y - ci[0])], [max(0.0, ci[1] - y)]]
            ax.errorbar([x], [y], yerr=arms, fmt="o", capsize=4, color=colours[variant_key], label=variant_key)
        else:
            ax.plot([x], [y], "o", color=colours[variant_key], label=variant_key)
        points.append((variant_key, x, y))
    ax.set_xlabel(textwrap.fill(f"{size.description}, {size.unit}", AXIS_LABEL_CHARS))
    ax.set_ylabel(f"{cost.heading} vs FP16 (95 % CI)")
    ax.set_title(f"{model}: size versus perplexity cost")
    ax.grid(alpha=0.3)
    fig.tight_layout()  # first: the names are placed where the points end up
    _name_points(ax, points)
    return fig


def _name_points(ax: Axes, points: list[tuple[str, float, float]]) -> None:
    """Write each point's name beside it. A name that would overlap one already written moves a line
    down, then up, then two lines down, ... until it is clear: variants with nearly the same size
    and cost (int8 and gguf_q8_0) stay readable, and the same data always give the same picture."""
    taken: list[Bbox] = []
    for name, x, y in points:
        label = ax.annotate(name, (x, y), textcoords="offset points", xytext=(LABEL_OFFSET_PT, LABEL_OFFSET_PT))
        box = label.get_window_extent()  # measured as the figure draws it
        line = box.height * 72.0 / ax.figure.dpi + 2.0  # the name's height in points, plus a gap
        for k in range(1, 2 * len(points) + 1):
            if not any(box.overlaps(other) for other in taken):
                break
            step = (k + 1) // 2 * (-1 if k % 2 else 1)  # -1, +1, -2, +2, ... lines
            label.xyann = (LABEL_OFFSET_PT, LABEL_OFFSET_PT + step * line)
            box = label.get_window_extent()
        taken.append(box)


def harm_by_position(model: str, documents: Documents, path: Path) -> Path | None:
    return _save(harm_by_position_figure(model, documents), path)


def harm_by_position_figure(model: str, documents: Documents) -> Figure | None:
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

    colours = variant_colours(documents)
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
        ax.errorbar(xs, ys, yerr=[low, high], fmt="o-", capsize=3, label=variant_key, color=colours[variant_key])
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("tokens of context before the predicted token (bucket mean)")
    ax.set_ylabel("mean KL(FP16 || variant), nats (95 % CI)")
    ax.set_title(f"{model}: harm by position in a long context")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def _save(fig: Figure | None, path: Path) -> Path | None:
    """The figure as a PNG at ``path`` (None: no plot, no file). The saved area grows to whatever
    was drawn, so a name beside a point at the edge is not cut off."""
    if fig is None:
        return None
    import matplotlib.pyplot as plt

    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=110, format="png", bbox_inches="tight")
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
