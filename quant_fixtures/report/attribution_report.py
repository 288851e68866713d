"""What `python -m quant_fixtures.attribute` writes: a JSON document, a ranked Markdown table and a
bar chart of the per-layer harm (compute/attribution.py)."""

from __future__ import annotations

import json
from pathlib import Path

from quant_fixtures.compute.attribution import Attribution, MeanKL, Recommendation
from quant_fixtures.json_types import JsonObject, JsonValue
from quant_fixtures.names import toml_key
from quant_fixtures.own_variants import keeps_modules
from quant_fixtures.report.plots import _save, _use_agg
from quant_fixtures.variants import VARIANTS

METHOD = (
    "each decoder layer swapped in place between the 16-bit and the quantized model; KL(FP16 || configuration) "
    "exact over the whole vocabulary against the FP16 pass's final hidden states and head, in float64, mean over "
    "the scored positions of the windows; 95 % CIs with blocks of 128 consecutive positions of one window as the "
    "units (metrics/blocks.py)"
)


def _kl(value: MeanKL) -> JsonObject:
    return {"mean": value.mean, "ci95": list(value.ci) if value.ci else None}


def attribution_document(
    model: str, variant: str, windows: int, ctx: int, attribution: Attribution, advice: Recommendation | None
) -> JsonObject:
    return {
        "model": model,
        "variant": variant,
        "budget": {"windows": windows, "ctx": ctx, "scored_positions": attribution.positions},
        "method": METHOD,
        "whole": _kl(attribution.whole),
        "additivity": attribution.additivity(),
        "layers": [
            {"layer": h.layer, "quantized_alone": _kl(h.quantized_alone), "restored_alone": _kl(h.restored_alone)}
            for h in attribution.layers
        ],
        "ranked": [h.layer for h in attribution.ranked()],
        "recommendation": None if advice is None else _recommendation(advice),
    }


def _recommendation(advice: Recommendation) -> JsonObject:
    keep: list[JsonValue] = list(advice.keep)
    modules: list[JsonValue] = list(advice.modules)
    return {
        "limit": advice.limit,
        "keep_layers": keep,
        "llm_int8_skip_modules": modules,
        "predicted_kl": advice.predicted,
        "measured": _kl(advice.measured),
        "within": advice.within,
        "footprint_budget_bytes": advice.footprint_budget,
        "delta_ppl_limit_pct": advice.delta_ppl_limit,
        "measured_delta_ppl_pct": advice.delta_ppl_pct,
        "footprint_bytes": advice.footprint_bytes,
        "quantized_footprint_bytes": advice.quantized_footprint_bytes,
    }


def variant_key(variant: str, advice: Recommendation) -> str:
    """The key the recommended configuration gets in the suite config: the method's and how many
    layers it keeps."""
    return f"{variant}_keep{len(advice.keep)}"


def variant_entry(model: str, variant: str, advice: Recommendation) -> str:
    """The recommended configuration as a model's own variant of the suite config (TOML, to paste):
    ``variant`` with these modules kept in 16 bits, gated as ``variant`` (config.SuiteConfig.gates_for)."""
    modules = "".join(f"    {json.dumps(m)},\n" for m in advice.modules)
    measured = (
        f"KL {advice.measured.mean:.4g}, ΔPPL {advice.delta_ppl_pct:+.3g} %, {advice.footprint_bytes / 1e6:.1f} MB"
    )
    description = f"{variant} with decoder layers {advice.keep} in 16 bits (attribution: {measured})"
    return (
        f"[models.{toml_key(model)}.variants.{toml_key(variant_key(variant, advice))}]\n"
        f"quantize = {json.dumps(variant)}\n"
        f"keep_16bit = [\n{modules}]\n"
        f"description = {json.dumps(description)}\n"
    )


def _ci(kl: MeanKL) -> str:
    return f"[{kl.ci[0]:.4f}, {kl.ci[1]:.4f}]" if kl.ci else "n/a"


def attribution_markdown(model: str, variant: str, attribution: Attribution, advice: Recommendation | None) -> str:
    """The ranked table (every layer, largest harm alone first) and the recommendation."""
    whole, additivity = attribution.whole, attribution.additivity()
    adds_up = f"; the layers' KLs alone sum to {additivity:.2f}x of it" if additivity is not None else ""
    lines = [
        f"# Per-layer harm: {model} {variant}",
        "",
        f"Whole variant: KL {whole.mean:.5f} {_ci(whole)} over {attribution.positions} positions{adds_up}.",
        "",
        f"Method: {METHOD}.",
        "",
        "| rank | layer | KL, only this layer quantized | 95 % CI | KL, only this layer in 16 bits | 95 % CI |",
        "|---|---|---|---|---|---|",
    ]
    for rank, harm in enumerate(attribution.ranked(), start=1):
        alone, restored = harm.quantized_alone, harm.restored_alone
        lines.append(
            f"| {rank} | {harm.layer} | {alone.mean:.5f} | {_ci(alone)} | {restored.mean:.5f} | {_ci(restored)} |"
        )
    if advice is not None:
        if advice.limit is not None:
            verdict = "within" if advice.within else "still beyond (every layer kept)"
            ppl = f" and ΔPPL <= {advice.delta_ppl_limit:g} %" if advice.delta_ppl_limit is not None else ""
            title, verdict = f"KL <= {advice.limit:.5f}{ppl}", f"{verdict} the limit" + ("s" if ppl else "")
        else:
            title, verdict = f"a footprint of {(advice.footprint_budget or 0) / 1e6:.1f} MB", "the best the budget buys"
        lines += [
            "",
            f"## Keep in 16 bits for {title}",
            "",
            ("No layer needs to stay in 16 bits" if not advice.keep else f"Layers {advice.keep}")
            + f": predicted KL {advice.predicted:.5f}, measured {advice.measured.mean:.5f} "
            f"{_ci(advice.measured)}, {verdict}; ΔPPL {advice.delta_ppl_pct:+.2f} % against the 16-bit "
            f"model over the same windows; footprint {advice.footprint_bytes / 1e6:.1f} MB (the variant as loaded: "
            f"{advice.quantized_footprint_bytes / 1e6:.1f} MB). As a BitsAndBytesConfig:",
            "",
            "```python",
            f"BitsAndBytesConfig(..., llm_int8_skip_modules={advice.modules!r})",
            "```",
        ]
        if advice.keep and keeps_modules(VARIANTS[variant]):
            lines += [
                "",
                "As a variant of the suite config (paste it into quant_suite.toml, then run the whole suite on it "
                f"with `pytest --models {model} --variants {variant_key(variant, advice)}`; it is gated as {variant}):",
                "",
                "```toml",
                variant_entry(model, variant, advice).rstrip("\n"),
                "```",
            ]
    return "\n".join(lines) + "\n"


def attribution_chart(model: str, variant: str, attribution: Attribution, path: Path) -> Path | None:
    """Bars per layer: KL with only that layer quantized, with its 95 % CI."""
    _use_agg()
    import matplotlib.pyplot as plt

    means = [h.quantized_alone.mean for h in attribution.layers]
    cis = [h.quantized_alone.ci or (m, m) for h, m in zip(attribution.layers, means)]
    errors = [[m - lo for m, (lo, _) in zip(means, cis)], [hi - m for m, (_, hi) in zip(means, cis)]]
    fig, ax = plt.subplots(figsize=(max(6.0, 0.25 * len(means) + 2), 3.5))
    ax.bar([h.layer for h in attribution.layers], means, yerr=errors, capsize=2)
    ax.set_xlabel("decoder layer")
    ax.set_ylabel("KL(FP16 || only this layer quantized), nats")
    ax.set_title(f"{model} {variant}: harm per layer")
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return _save(fig, path)


def attribution_section(results_dir: Path, model: str, variant: str, run_id: str) -> list[str]:
    """REPORT.md's lines for the attribution a run made of ``variant`` after a failed gate (the
    command's Markdown, its headings a level below the model's, and its chart); none when there is
    none of that run (a command's own, or an earlier run's, belongs to other numbers)."""
    stem = results_dir / f"attribution_{model}_{variant}"
    try:
        document = json.loads(stem.with_suffix(".json").read_text(encoding="utf-8"))
        markdown = stem.with_suffix(".md").read_text(encoding="utf-8")
    except (OSError, ValueError):
        return []
    if not isinstance(document, dict) or document.get("run_id") != run_id:
        return []
    lines = [f"##{line}" if line.startswith("#") else line for line in markdown.splitlines()]
    if stem.with_suffix(".png").exists():
        lines += ["", f"![per-layer harm of {model} {variant}]({stem.name}.png)"]
    return [*lines, ""]
