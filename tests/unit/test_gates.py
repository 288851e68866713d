"""Release gates (report/gates.py on metrics/gate_evidence.py and metrics/decision.py): every
gateable metric has the evidence of how it was sampled, verdicts computed from the document's own
units match an independent computation (scipy), deterministic gates are exact at their boundary, a
missing metric fails, and the one-line format."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from quant_fixtures.metrics.gate_evidence import EVIDENCE
from quant_fixtures.metrics.registry import GATEABLE, METRICS
from quant_fixtures.report.gates import FAIL, PASS, UNDECIDED, GateResult, evaluate_gates, verdict
from quant_fixtures.report.schema import to_json_object


def only(limits: dict[str, float], document: dict, alpha_beyond: float = 0.05) -> GateResult:
    results = evaluate_gates(limits, document, 0.05, alpha_beyond)
    assert len(results) == 1
    return results[0]


def memory(reduction: float, footprint: float = 1.0) -> dict:
    return {"memory": {"reduction_pct": reduction, "footprint_gb": footprint}}


def windows(fp16: list[float], variant: list[float], tokens: list[int], ctx: int = 512) -> dict:
    delta = 100 * math.expm1((sum(variant) - sum(fp16)) / sum(tokens))
    return {
        "perplexity": {
            "window_nll": variant,
            "fp16_window_nll": fp16,
            "window_tokens": tokens,
            "ctx": ctx,
            "fp16_ppl": math.exp(sum(fp16) / sum(tokens)),
            "ppl": math.exp(sum(variant) / sum(tokens)),
            "delta_ppl_pct": delta,
            "scored_bytes": 4 * sum(tokens),
            "bits_per_byte_delta": (sum(variant) - sum(fp16)) / (4 * sum(tokens) * math.log(2)),
        }
    }


def prompts(kl: list[float | None]) -> dict:
    finite = [v for v in kl if v is not None and math.isfinite(v)]
    return {
        "kl_divergence": {
            "mean": float(np.mean(finite)),
            "per_prompt": [{"kl_mean": v, "top1_agreement": 0.9} for v in kl],
            "top1_agreement": 0.9,
            "p99": float(np.percentile(finite, 99)),
        }
    }


def flips(flipped: int, checkable: int) -> dict:
    return {"flips": {"flips": flipped, "checkable_prompts": checkable}}


# -- every gateable metric says how it was sampled ---------------------------------------------------


def test_every_gateable_metric_has_evidence() -> None:
    assert {spec.name for spec in GATEABLE.values()} == set(EVIDENCE)
    assert {m.name for m in METRICS.values() if m.gate and not m.sampled} == {"footprint_gb", "memory_reduction_pct"}


# -- deterministic gates: exact, at their boundary ------------------------------------------------------


@pytest.mark.parametrize("value, verdict_", [(44.99, FAIL), (45.0, PASS), (45.01, PASS), (-1.0, FAIL)])
def test_memory_is_exact_at_its_boundary(value: float, verdict_: str) -> None:
    result = only({"min_memory_reduction_pct": 45.0}, memory(value))
    assert (result.verdict, result.value, result.op, result.exact) == (verdict_, value, ">=", True)
    assert result.interval == [value, value] and result.more_units is None


def test_footprint_is_a_maximum() -> None:
    assert only({"max_footprint_gb": 1.0}, memory(50.0, 1.0)).verdict == PASS
    assert only({"max_footprint_gb": 1.0}, memory(50.0, 1.0000001)).verdict == FAIL


def test_a_missing_metric_fails_its_gate() -> None:
    result = only({"max_delta_ppl_pct": 5.0}, {})
    assert result.verdict == FAIL and result.value is None and result.exact
    assert result.describe("m", "nf4") == "m nf4: delta_ppl_pct = missing (limit <= 5) FAIL"


# -- ΔPPL over windows: the ratio estimator's t interval, checked with scipy ----------------------------


def test_delta_ppl_decision_matches_an_independent_t_test() -> None:
    rng = np.random.default_rng(3)
    tokens = [511] * 12
    fp16 = list(rng.uniform(1400, 1500, 12))
    variant = [f + 511 * rng.normal(0.03, 0.01) for f in fp16]  # about +3 % perplexity
    doc = windows(fp16, variant, tokens)
    result = only({"max_delta_ppl_pct": 5.0}, doc)
    # independent: per-window mean log-ratios, equal token counts, so the ratio estimator is their mean
    r = (np.array(variant) - np.array(fp16)) / 511
    se = r.std(ddof=1) / math.sqrt(r.size)
    t = (r.mean() - math.log1p(0.05)) / se
    assert result.p_within == pytest.approx(stats.t.cdf(t, 11), rel=1e-9)
    assert result.p_beyond == pytest.approx(stats.t.sf(t, 11), rel=1e-9)
    upper = 100 * math.expm1(r.mean() + stats.t.ppf(0.95, 11) * se)
    assert result.interval is not None and result.interval[1] == pytest.approx(upper, rel=1e-9)
    assert result.value == doc["perplexity"]["delta_ppl_pct"]  # the reported number, to the last bit
    assert result.verdict == PASS and (result.units, result.unit) == (12, "windows")


def test_perplexity_and_bits_per_byte_gates_decide_as_delta_ppl_does() -> None:
    """PPL = PPL_fp16 exp(r) and Δ bits per byte = r T / (B ln 2) are increasing in r: the same test."""
    rng = np.random.default_rng(4)
    fp16 = list(rng.uniform(1400, 1500, 8))
    variant = [f + 511 * rng.normal(0.05, 0.02) for f in fp16]
    doc = windows(fp16, variant, [511] * 8)
    r = math.log1p(6.0 / 100)
    delta = only({"max_delta_ppl_pct": 6.0}, doc)
    ppl = only({"max_ppl": doc["perplexity"]["fp16_ppl"] * math.exp(r)}, doc)
    bpb = only({"max_bits_per_byte_delta": r / (4 * math.log(2))}, doc)
    for other in (ppl, bpb):
        assert other.verdict == delta.verdict and other.p_within == pytest.approx(delta.p_within, rel=1e-9)


def test_one_window_cannot_decide() -> None:
    result = only({"max_delta_ppl_pct": 5.0}, windows([1400.0], [1410.0], [511]))
    assert result.verdict == UNDECIDED and result.interval is None and result.more_units is None
    assert "at least 2" in result.method


# -- prompt KL over prompts ----------------------------------------------------------------------------


def test_kl_mean_over_prompts_ignores_unscored_prompts_and_says_what_would_decide() -> None:
    kl = [0.08, 0.12, 0.09, 0.11, None, 0.10, math.nan, 0.07]
    result = only({"max_kl_mean": 0.1}, prompts(kl))
    finite = np.array([0.08, 0.12, 0.09, 0.11, 0.10, 0.07])
    t = (finite.mean() - 0.1) / (finite.std(ddof=1) / math.sqrt(finite.size))
    assert result.units == 6 and result.p_within == pytest.approx(stats.t.cdf(t, 5), rel=1e-9)
    assert (
        result.verdict == UNDECIDED
        and result.more_units is not None
        and result.more_units > 0
        and "more prompts" in result.need()
    )


def test_a_clear_kl_excess_fails_and_the_family_level_can_hold_it_back() -> None:
    kl = list(np.random.default_rng(5).gamma(4.0, 0.03, 40))  # mean about 0.12
    alone = only({"max_kl_mean": 0.1}, prompts(kl))
    assert alone.verdict == FAIL and alone.p_beyond is not None and alone.p_beyond <= 0.05
    held = only({"max_kl_mean": 0.1}, prompts(kl), alpha_beyond=alone.p_beyond / 2)
    # the failing-side bound at the family level
    assert held.verdict == UNDECIDED and held.interval is not None and held.interval[0] <= 0.1


def test_a_p99_over_96_prompts_cannot_pass_but_can_fail() -> None:
    """The distribution-free test: 0 of n units above the limit bounds the share above it below 1 %
    only from n = 299 (0.99^n <= 0.05); 96 prompts can show a p99 beyond its limit, never within."""
    kl = list(np.linspace(0.01, 0.5, 96))
    within = only({"max_kl_p99": 10.0}, prompts(kl))
    assert (
        within.verdict == UNDECIDED
        and within.interval is not None
        and within.interval[1] == math.inf
        and within.more_units == 299 - 96
    )
    assert within.value == pytest.approx(np.percentile(kl, 99))
    beyond = only({"max_kl_p99": 0.3}, prompts(kl))  # 38 of 96 above: far more than 1 %
    assert beyond.verdict == FAIL and beyond.p_beyond == pytest.approx(stats.binom.sf(37, 96, 0.01), rel=1e-9)


def test_the_p99_verdict_changes_where_its_interval_says_and_holds_its_error_rate() -> None:
    from quant_fixtures.metrics.gate_evidence import QuantileEvidence, decide_quantile

    rng = np.random.default_rng(11)
    values = rng.exponential(1.0, 600)
    interval = decide_quantile(QuantileEvidence(values, 0.99, "prompts"), 1.0, "lower", 0.05, 0.01).interval
    assert interval is not None
    lower, upper = interval
    for limit in np.linspace(2.0, 8.0, 61):
        d = decide_quantile(QuantileEvidence(values, 0.99, "prompts"), float(limit), "lower", 0.05, 0.01)
        assert d.verdict == (PASS if limit > upper else FAIL if limit < lower else UNDECIDED), limit
    # least favourable truth: the limit is the true p99 (log 100 for Exp(1)); PASS at most 5 % of the time
    truth = math.log(100.0)
    passes = sum(
        decide_quantile(QuantileEvidence(rng.exponential(1.0, 600), 0.99, "p"), truth, "lower", 0.05, 0.05).verdict
        == PASS
        for _ in range(2000)
    )
    assert passes / 2000 <= 0.05 + 3 * math.sqrt(0.05 * 0.95 / 2000)


# -- flip rates: exact binomial ------------------------------------------------------------------------


def test_zero_flips_in_29_prompts_bounds_the_rate_below_a_tenth_and_28_do_not() -> None:
    assert only({"max_flip_rate": 0.1}, flips(0, 29)).verdict == PASS
    short = only({"max_flip_rate": 0.1}, flips(0, 28))
    assert short.verdict == UNDECIDED and short.more_units == 1
    assert short.interval is not None and short.interval[1] == pytest.approx(1 - 0.05 ** (1 / 28), rel=1e-9)


def test_no_checkable_prompt_leaves_the_flip_gate_undecided_saying_why() -> None:
    # The plugin refuses such a run up front (session/preflight.check_flip_gates); a document
    # decided elsewhere still must not pass, and its line says what was missing.
    result = only({"max_flip_rate": 0.1}, flips(0, 0))
    assert result.verdict == UNDECIDED
    assert result.describe("m", "nf4") == (
        "m nf4: flip_rate = missing (limit <= 0.1) UNDECIDED (no prompts with a checkable answer: no verdict)"
    )


def test_many_flips_fail() -> None:
    result = only({"max_flip_rate": 0.1}, flips(12, 40))
    assert result.verdict == FAIL and result.p_beyond == pytest.approx(stats.binom.sf(11, 40, 0.1), rel=1e-9)


# -- the run's lines ----------------------------------------------------------------------------------


def test_lines_name_the_verdict_the_interval_and_what_would_decide() -> None:
    undecided = only({"max_flip_rate": 0.1}, flips(0, 6))
    line = undecided.describe("smollm2-135m", "int8")
    assert "\n" not in line
    assert line.startswith("smollm2-135m int8: flip_rate = 0 [0, 0.393] (limit <= 0.1) UNDECIDED")
    assert line.endswith("(about 23 more prompts with a checkable answer would decide it at the effect measured)")
    passed = only({"min_memory_reduction_pct": 30.0}, memory(36.1234))
    assert passed.describe("qwen2.5-0.5b", "nf4") == "qwen2.5-0.5b nf4: memory_reduction_pct = 36.12 (limit >= 30) PASS"


def test_document_verdict_lists_failed_and_undecided_metrics() -> None:
    class Doc:
        gates = evaluate_gates({"max_flip_rate": 0.1, "min_memory_reduction_pct": 45.0}, {**flips(0, 6), **memory(40)})

    assert verdict(Doc()) == "FAIL memory_reduction_pct UNDECIDED flip_rate"


def test_json_record_keys() -> None:
    record = to_json_object(only({"max_flip_rate": 0.1}, flips(0, 29)))
    assert isinstance(record, dict)
    assert list(record) == [
        "metric", "value", "limit", "op", "verdict", "interval", "p_within", "p_beyond", "alpha", "alpha_beyond",
        "units", "unit", "more_units", "exact", "method",
    ]  # fmt: skip


def test_unknown_limit_name_is_rejected() -> None:
    with pytest.raises(KeyError):
        evaluate_gates({"max_bogus": 1.0}, {})


def test_optional_gates_from_the_registry_read_from_a_real_document(tmp_path: Path) -> None:
    """max_kl_p99, min_top1_agreement and max_flip_rate: configured like any limit, decided on the
    units the document holds (flip_rate: flips of checkable prompts)."""
    from documents_for_tests import golden_document

    from quant_fixtures.config import load_config
    from quant_fixtures.report.schema import EvaluationDocument, from_json_object

    path = tmp_path / "suite.toml"
    path.write_text(
        '[models.tiny]\nhub_id = "org/tiny"\n[models.tiny.gates.nf4]\nmax_kl_p99 = 0.2\n'
        "min_top1_agreement = 0.95\nmax_flip_rate = 0.25\n"
    )
    limits = load_config(path).gates_for("tiny", "nf4")
    doc = from_json_object(EvaluationDocument, golden_document("nf4_evaluation"))
    assert doc.flips is not None and doc.kl_divergence is not None
    assert (doc.flips.flips, doc.flips.checkable_prompts) == (2, 4)
    results = {r.metric: r for r in evaluate_gates(limits, doc)}
    assert results["flip_rate"].value == 0.5 and results["flip_rate"].unit == "prompts with a checkable answer"
    assert results["top1_agreement"].value == doc.kl_divergence.top1_agreement and results["top1_agreement"].op == ">="
    assert results["kl_p99"].value == doc.kl_divergence.p99
