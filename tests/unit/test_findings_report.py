"""Findings, the Markdown report, the terminal table and the benchmark summary, on hand-made
documents whose numbers are known."""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

from documents_for_tests import gate_record, typed

from quant_fixtures.report.bench_summary import throughput_summary
from quant_fixtures.report.findings import best_tradeoff, findings, most_affected_categories
from quant_fixtures.report.markdown import write_report
from quant_fixtures.report.schema import BestTradeoff, EvaluationDocument
from quant_fixtures.report.terminal import summary_lines


def _doc(
    variant: str,
    ppl: float,
    footprint: float,
    kl: list[tuple[str, float]] | None = None,
    gates: Sequence[tuple[str, float, float]] = (),
    speed: float = 100.0,
) -> EvaluationDocument:
    per_prompt = (
        []
        if kl is None
        else [
            {
                "id": f"p{i}",
                "category": cat,
                "kl_mean": k,
                "flip": False,
                "fp16_response": "a|b",
                "response": "a\nc",
                "first_divergence": 1,
            }
            for i, (cat, k) in enumerate(kl)
        ]
    )
    kl_section = (
        None
        if kl is None
        else {
            "mean": sum(k for _, k in kl) / len(kl),
            "ci95": [0.0, 1.0],
            "median": 0.0,
            "p99": 0.0,
            "max": 0.0,
            "top1_agreement": 0.9,
            "top1_agreement_ci95": [0.8, 1.0],
            "method": "how",
            "method_settings": "2 prompts",
            "per_prompt": per_prompt,
            "per_category": {c: {"kl_mean": k, "flips": 0} for c, k in kl},
            "worst_prompts": [
                {
                    "id": "p0",
                    "category": kl[0][0],
                    "kl_mean": kl[0][1],
                    "first_divergence": 1,
                    "fp16_response": "a|b",
                    "response": "a\nc",
                }
            ],
        }
    )
    return typed(
        {
            "generated_at": "2026-11-27T00:00:00+00:00",
            "run_id": "r",
            "model": {"key": "m", "source": "src", "note": None},
            "variant": {"key": variant, "method": variant, "compute_dtype": "float32"},
            "environment": {"device": "cpu", "device_name": "x86_64", "packages": {"torch": "2"}},
            "perplexity": {
                "ppl": ppl,
                "fp16_ppl": 10.0,
                "delta_ppl_pct": 100 * (ppl / 10.0 - 1),
                "tokens": 100,
                "windows": 2,
                "ctx": 50,
                "max_tokens": 100,
                "protocol": "p.",
                "delta_ppl_pct_ci95": [0.5, 1.5],
            },
            "memory": {
                "footprint_gb": footprint,
                "reduction_pct": 100 * (1 - footprint / 2.0),
                "compression_ratio": 2.0 / footprint,
                "peak_gb": None,
            },
            "timing": {"ppl_tokens_per_s": speed},
            "kl_divergence": kl_section,
            "flips": None if kl is None else {"flips": 1, "checkable_prompts": 2, "batch_sensitivity": None},
            "corpus_kl": None,
            "noise_floor": {"mean": 1e-9, "max": 2e-9},
            "gates": [gate_record(m, v, lim, "<=", "PASS" if v <= lim else "FAIL") for m, v, lim in gates],
        }
    )


DOCS = {
    "fp16": _doc("fp16", 10.0, 2.0, kl=[("math", 0.0), ("code", 0.0)]),
    "int8": _doc(
        "int8", 10.2, 1.2, kl=[("math", 0.01), ("code", 0.03)], gates=[("delta_ppl_pct", 2.0, 5.0)], speed=50.0
    ),
    "nf4": _doc("nf4", 11.0, 0.7, kl=[("math", 0.2), ("code", 0.1)], gates=[("delta_ppl_pct", 10.0, 5.0)]),
}


def _best(documents: dict[str, EvaluationDocument]) -> BestTradeoff:
    best = best_tradeoff(documents)
    assert best is not None, "no best trade-off"
    return best


def test_best_tradeoff_is_smallest_passing_variant() -> None:
    best = _best(DOCS)
    assert best.variant == "int8" and "PASS every gate" in best.reason
    # Two passing variants: the smaller one wins, whatever the registry order.
    two = {**DOCS, "nf4": _doc("nf4", 10.5, 0.7, kl=[("math", 0.05)], gates=[("delta_ppl_pct", 5.0, 8.0)])}
    assert _best(two).variant == "nf4"
    bigger = {**DOCS, "nf4": _doc("nf4", 10.5, 1.5, kl=[("math", 0.05)], gates=[("delta_ppl_pct", 5.0, 8.0)])}
    assert _best(bigger).variant == "int8"


def test_best_tradeoff_when_nothing_passes_is_least_ppl_loss() -> None:
    failing = {**DOCS, "int8": _doc("int8", 10.5, 1.2, gates=[("delta_ppl_pct", 5.0001, 5.0)])}
    assert _best(failing).variant == "int8"
    assert "no variant PASSes" in _best(failing).reason


def test_most_affected_categories_sorted_by_kl() -> None:
    assert [c["category"] for c in most_affected_categories(DOCS["int8"])] == ["code", "math"]
    assert [c["category"] for c in most_affected_categories(DOCS["nf4"])] == ["math", "code"]


def test_findings_name_failed_gates_and_speed() -> None:
    found = findings(DOCS)
    assert found.failed_gates == ["nf4: delta_ppl_pct = 10 (limit <= 5)"]
    assert found.speed_vs_fp16["int8"] == 0.5
    assert any(s.startswith("nf4 FAILS delta_ppl_pct = 10 (limit <= 5)") for s in found.assessment)
    assert any(s.startswith("int8 passes all its gates") and "+2.00 %" in s for s in found.assessment)


def test_summary_table_has_every_variant_and_verdict() -> None:
    text = "\n".join(summary_lines({"m": DOCS}))
    assert "int8" in text and "PASS" in text and "FAIL delta_ppl_pct" in text and "+10.00" in text


def test_report_written_with_tables_and_plots(tmp_path: Path) -> None:
    from dataclasses import replace

    from quant_fixtures.report.schema import BatchSensitivity

    moved = BatchSensitivity(
        batch_size=32,
        shift=16,
        prompts=2,
        responses_changed=1,
        verdicts_changed=1,
        flips=1,
        flips_other_batch=2,
        method="m",
    )
    flips = DOCS["int8"].flips
    assert flips is not None
    docs = {**DOCS, "int8": replace(DOCS["int8"], flips=replace(flips, batch_sensitivity=moved))}
    path = write_report(tmp_path, {"m": docs})
    text = path.read_text()
    assert (
        "Batch sensitivity of int8 (its kernels depend on the batch, so it is scored one sequence per pass; "
        "generation stays batched): generated again in batches of 32 with every boundary moved by 16, 1 of 2 "
        "responses and 1 "
        "answer verdicts changed (flips 1 vs 2)."
    ) in text
    for needle in (
        "# Quantization harm report",
        "## m",
        "Best size/quality trade-off: int8",
        "**FAIL**",
        "| nf4 | delta_ppl_pct | 10 | exact | <= 5 % | – | – | **FAIL** |",
        "Most affected categories",
        "a\\|b",
        "a ⏎ c",
        "![KL by category](m_kl_by_category.png)",
    ):
        assert needle in text, needle
    for png in ("m_kl_distribution.png", "m_kl_by_category.png", "m_footprint_vs_delta_ppl.png"):
        assert (tmp_path / png).read_bytes()[:4] == b"\x89PNG"
    assert not list(tmp_path.glob(".*tmp*"))


def test_report_says_when_it_was_generated_not_when_a_variant_ran(tmp_path: Path) -> None:
    """Every document here ran at 2026-11-27T00:00; REPORT.md written now says now."""
    before = datetime.now(UTC).replace(microsecond=0)
    text = write_report(tmp_path, {"m": DOCS}).read_text()
    after = datetime.now(UTC)
    (stamp,) = re.findall(r"^Generated (\S+) on ", text, re.M)
    assert before <= datetime.fromisoformat(stamp) <= after


def test_throughput_summary_rates_and_ratios() -> None:
    bench: list[dict[str, object]] = [
        {
            "extra_info": {"kind": "ppl_batched", "model": "m", "variant": "fp16", "tokens": 1000},
            "stats": {"mean": 2.0},
        },
        {
            "extra_info": {"kind": "ppl_batched", "model": "m", "variant": "int8", "tokens": 1000},
            "stats": {"mean": 4.0},
        },
        {
            "extra_info": {"kind": "ppl_hf_guide", "model": "m", "variant": "fp16", "tokens": 1000},
            "stats": {"mean": 8.0},
        },
        {"extra_info": {}, "stats": {"mean": 1.0}},
    ]
    s = throughput_summary(bench)["m"]
    assert s["tokens_per_s"]["ppl_batched"] == {"fp16": 500.0, "int8": 250.0}
    per_variant = s["ratios"]["ppl_batched_vs_fp16"]
    assert isinstance(per_variant, dict) and per_variant["int8"] == 0.5
    assert s["ratios"]["fp16_batched_vs_hf_guide"] == 4.0


def _sampled(verdict: str, interval: list[float], more: int | None = None) -> dict:
    record = gate_record("delta_ppl_pct", 1.0, 1.2, "<=", verdict)
    return {**record, "interval": interval, "exact": False, "units": 12, "unit": "windows", "more_units": more}


def test_each_sampled_gate_says_what_its_verdict_means() -> None:
    from quant_fixtures.report.findings import verdict_lines

    def lines(gate: dict) -> list[str]:
        return verdict_lines(typed({"gates": [gate]}))

    assert lines(_sampled("PASS", [0.5, 1.1])) == [
        "delta_ppl_pct is within <= 1.2 with 95 % confidence: 0.5 to 1.1 (12 windows)"
    ]
    assert lines(_sampled("UNDECIDED", [0.5, 1.5], 30)) == [
        "delta_ppl_pct is UNDECIDED against <= 1.2: 0.5 to 1.5 (12 windows) crosses it; about 30 more windows "
        "would decide it at the effect measured"
    ]
    assert lines(_sampled("FAIL", [1.3, 1.5])) == [
        "delta_ppl_pct is beyond <= 1.2 with the run's confidence: 1.3 to 1.5 (12 windows)"
    ]
    assert lines(gate_record("memory_reduction_pct", 40.0, 30.0, ">=", "PASS")) == []  # exact: nothing to read


def test_kl_limits_below_ten_times_the_noise_floor_are_called_out() -> None:
    from quant_fixtures.report.findings import noise_floor_warnings

    # the noise floor's mean is 1e-9 nats: a limit of 5e-9 is below 10x, 1e-8 is not
    low = _doc("int8", 10.1, 1.2, kl=[("math", 1e-9)], gates=[("kl_mean", 1e-9, 5e-9)])
    fine = _doc("int8", 10.1, 1.2, kl=[("math", 1e-9)], gates=[("kl_mean", 1e-9, 1e-8)])
    warnings = noise_floor_warnings(low)
    assert len(warnings) == 1 and "kl_mean <= 5e-09 is below 10x the noise floor (1e-09 nats)" in warnings[0]
    assert noise_floor_warnings(fine) == []
    assert any("WARNING" in line for line in summary_lines({"m": {"int8": low}}))
