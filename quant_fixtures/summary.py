"""The end-of-session harm table, one block per model, variants side by side."""

from __future__ import annotations

from typing import Any


def _fmt(value: Any, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def summary_lines(session: Any) -> list[str]:
    o = session.options
    budget = "whole test split" if o.ppl_max_tokens is None else f"first {o.ppl_max_tokens} tokens"
    lines = [f"device {o.device}, compute {o.compute_dtype}, ctx {o.ctx}, WikiText-2 budget: {budget}; "
             f"reports in {o.results_dir}"]
    header = f"{'variant':<8} {'PPL':>9} {'dPPL%':>8} {'size GB':>8} {'reduct%':>8} {'ratio':>6} {'tok/s':>8}  gates"
    for model, variants in session.evaluations.items():
        first = next(iter(variants.values()))["perplexity"]
        lines += ["", f"{model}  (FP16 PPL {first['fp16_ppl']:.4f}, {first['tokens']} tokens in "
                      f"{first['windows']} windows of {first['ctx']})", header]
        for variant, doc in variants.items():
            p, m, t = doc["perplexity"], doc["memory"], doc["timing"]
            failed = [g["metric"] for g in doc["gates"] if not g["passed"]]
            verdict = "-" if not doc["gates"] else ("PASS" if not failed else "FAIL " + ",".join(failed))
            lines.append(f"{variant:<8} {p['ppl']:>9.4f} {p['delta_ppl_pct']:>+8.2f} {m['footprint_gb']:>8.3f} "
                         f"{m['reduction_pct']:>8.1f} {m['compression_ratio']:>6.2f} "
                         f"{_fmt(t['ppl_tokens_per_s'], '>8.0f')}  {verdict}")
    return lines
