"""The end-of-session harm table, one block per model, variants side by side."""

from __future__ import annotations

from typing import Any


def _fmt(value: Any, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _verdict(doc: dict[str, Any]) -> str:
    if not doc["gates"]:
        return "-"
    failed = [g["metric"] for g in doc["gates"] if not g["passed"]]
    return "PASS" if not failed else "FAIL " + ",".join(failed)


def settings_line(doc: dict[str, Any]) -> str:
    """How the numbers were taken: device, compute dtype, budgets."""
    p, kl = doc["perplexity"], doc.get("kl_divergence")
    budget = "whole test split" if p["max_tokens"] is None else f"first {p['max_tokens']} tokens"
    prompts = "prompt KL skipped" if kl is None else kl["method_settings"]
    return (f"device {doc['environment']['device']}, compute {doc['variant']['compute_dtype']}, "
            f"WikiText-2 budget: {budget}; {prompts}")


def summary_lines(documents: dict[str, dict[str, dict[str, Any]]]) -> list[str]:
    """Lines of the harm table for {model: {variant: evaluation document}}."""
    lines: list[str] = []
    header = (f"{'variant':<8} {'PPL':>10} {'dPPL%':>8} {'KL mean':>9} {'top1':>6} {'flips':>5} "
              f"{'size GB':>8} {'reduct%':>8} {'ratio':>6} {'tok/s':>8}  gates")
    for model, variants in documents.items():
        first = next(iter(variants.values()))
        p = first["perplexity"]
        note = first["model"].get("note")
        lines += ["", settings_line(first), *([f"NOTE: {note}"] if note else []),
                  f"{model}  (FP16 PPL {p['fp16_ppl']:.4f}, {p['tokens']} tokens in {p['windows']} windows of "
                  f"{p['ctx']})", header]
        for variant, doc in variants.items():
            p, m, t = doc["perplexity"], doc["memory"], doc["timing"]
            kl, flips = doc.get("kl_divergence"), doc.get("flips")
            lines.append(
                f"{variant:<8} {p['ppl']:>10.4f} {p['delta_ppl_pct']:>+8.2f} "
                f"{_fmt(kl and kl['mean'], '>9.4f')} {_fmt(kl and kl['top1_agreement'], '>6.3f')} "
                f"{_fmt(flips and flips['flips'], '>5d')} {m['footprint_gb']:>8.3f} {m['reduction_pct']:>8.1f} "
                f"{m['compression_ratio']:>6.2f} {_fmt(t['ppl_tokens_per_s'], '>8.0f')}  {_verdict(doc)}")
    return lines
