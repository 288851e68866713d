"""Unit tests for quant_fixtures.gates: limit directions, boundaries, missing values, one-line verdicts."""

from __future__ import annotations

import math

import pytest

from quant_fixtures.metrics.registry import METRICS
from quant_fixtures.report.gates import GateResult, evaluate_gates
from quant_fixtures.report.schema import to_json_object


def document(metrics: dict[str, float | None]) -> dict:
    """A document holding each metric where the registry says it lives."""
    doc: dict = {}
    for name, value in metrics.items():
        *sections, leaf = METRICS[name].path
        node = doc
        for section in sections:
            node = node.setdefault(section, {})
        node[leaf] = value
    return doc


def only(limits: dict[str, float], metrics: dict[str, float | None]) -> GateResult:
    results = evaluate_gates(limits, document(metrics))
    assert len(results) == 1
    return results[0]


# -- directions and boundaries ----------------------------------------------------------------------


@pytest.mark.parametrize("value, passed", [(4.99, True), (5.0, True), (5.01, False), (-3.0, True), (0.0, True)])
def test_max_limit(value: float, passed: bool) -> None:
    result = only({"max_delta_ppl_pct": 5.0}, {"delta_ppl_pct": value})
    assert result == GateResult(metric="delta_ppl_pct", value=value, limit=5.0, op="<=", passed=passed)


@pytest.mark.parametrize("value, passed", [(44.99, False), (45.0, True), (45.01, True), (99.0, True), (-1.0, False)])
def test_min_limit(value: float, passed: bool) -> None:
    result = only({"min_memory_reduction_pct": 45.0}, {"memory_reduction_pct": value})
    assert result == GateResult(metric="memory_reduction_pct", value=value, limit=45.0, op=">=", passed=passed)


def test_mean_kl_is_a_max_limit() -> None:
    assert only({"max_kl_mean": 0.1}, {"kl_mean": 0.1}).passed
    assert not only({"max_kl_mean": 0.1}, {"kl_mean": 0.1000001}).passed
    assert only({"max_kl_mean": 0.1}, {"kl_mean": 0.05}).op == "<="


def test_integer_values_at_the_boundary() -> None:
    assert only({"max_delta_ppl_pct": 5.0}, {"delta_ppl_pct": 5}).passed
    assert only({"min_memory_reduction_pct": 70.0}, {"memory_reduction_pct": 70}).passed


def test_several_limits_sorted_by_name_each_judged_alone() -> None:
    limits = {"min_memory_reduction_pct": 45.0, "max_delta_ppl_pct": 5.0, "max_kl_mean": 0.2}
    metrics = {"delta_ppl_pct": 7.0, "memory_reduction_pct": 50.0, "kl_mean": 0.1}
    results = evaluate_gates(limits, document(metrics))
    assert [r.metric for r in results] == ["delta_ppl_pct", "kl_mean", "memory_reduction_pct"]
    assert [r.passed for r in results] == [False, True, True]


def test_no_limits_no_results() -> None:
    assert evaluate_gates({}, document({"delta_ppl_pct": 100.0})) == []


def test_passed_is_a_real_bool() -> None:
    results = evaluate_gates(
        {"max_delta_ppl_pct": 5.0, "min_memory_reduction_pct": 45.0},
        document({"delta_ppl_pct": 1.0, "memory_reduction_pct": None}),
    )
    assert [(r.passed, type(r.passed)) for r in results] == [(True, bool), (False, bool)]  # None fails


# -- missing and non-finite values fail -----------------------------------------------------------


@pytest.mark.parametrize("limit_name", ["max_delta_ppl_pct", "min_memory_reduction_pct", "max_kl_mean"])
def test_missing_metric_fails(limit_name: str) -> None:
    result = only({limit_name: 5.0}, {})
    assert result.value is None and not result.passed


def test_explicit_none_fails() -> None:
    assert not only({"max_delta_ppl_pct": 5.0}, {"delta_ppl_pct": None}).passed


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
@pytest.mark.parametrize(
    "limit_name, metric", [("max_delta_ppl_pct", "delta_ppl_pct"), ("min_memory_reduction_pct", "memory_reduction_pct")]
)
def test_non_finite_fails(limit_name: str, metric: str, value: float) -> None:
    result = only({limit_name: 5.0}, {metric: value})
    assert not result.passed


def test_unknown_limit_name_is_rejected() -> None:
    with pytest.raises(KeyError):
        evaluate_gates({"max_bogus": 1.0}, {})


# -- describe and to_dict -------------------------------------------------------------------------


def test_describe_failed_line() -> None:
    result = only({"max_delta_ppl_pct": 5.0}, {"delta_ppl_pct": 7.25})
    line = result.describe("mistral7b", "int8")
    assert "\n" not in line
    for part in ("mistral7b", "int8", "delta_ppl_pct", "7.25", "<= 5", "FAILED"):
        assert part in line, (part, line)
    assert line == "mistral7b int8: delta_ppl_pct = 7.25 (limit <= 5) FAILED"


def test_describe_passed_line() -> None:
    result = only({"min_memory_reduction_pct": 30.0}, {"memory_reduction_pct": 36.1234})
    line = result.describe("qwen2.5-0.5b", "nf4")
    assert line == "qwen2.5-0.5b nf4: memory_reduction_pct = 36.12 (limit >= 30) passed"


def test_describe_missing_and_nan() -> None:
    missing = only({"max_delta_ppl_pct": 20.0}, {}).describe("m", "nf4")
    assert "delta_ppl_pct = missing" in missing and "FAILED" in missing and "20" in missing
    nan = only({"max_delta_ppl_pct": 20.0}, {"delta_ppl_pct": math.nan}).describe("m", "nf4")
    assert "delta_ppl_pct = nan" in nan and "FAILED" in nan


def test_to_dict_has_report_keys() -> None:
    result = only({"max_delta_ppl_pct": 5.0}, {"delta_ppl_pct": 1.0})
    assert to_json_object(result) == {"metric": "delta_ppl_pct", "value": 1.0, "limit": 5.0, "op": "<=", "passed": True}


def test_gate_on_upper_uses_the_ci_bound_on_the_failing_side() -> None:
    doc = {
        "perplexity": {"delta_ppl_pct": 4.0, "delta_ppl_pct_ci95": [3.0, 6.0]},
        "kl_divergence": {"top1_agreement": 0.95, "top1_agreement_ci95": [0.90, 0.97]},
    }
    assert evaluate_gates({"max_delta_ppl_pct": 5.0}, doc)[0].passed
    upper = evaluate_gates({"max_delta_ppl_pct": 5.0}, doc, "upper")[0]
    assert upper.value == 6.0 and not upper.passed
    assert METRICS["top1_agreement"].gate_value(doc, "upper") == 0.90  # a minimum: the CI's lower bound


def test_optional_gates_from_the_registry_read_from_a_real_document(tmp_path) -> None:
    """max_kl_p99, min_top1_agreement and max_flip_rate: configured like any limit, judged on the
    numbers the document holds (flip_rate is derived: flips / checkable prompts)."""
    import json
    from pathlib import Path

    from quant_fixtures.config import load_config
    from quant_fixtures.report.schema import EvaluationDocument, from_json_object

    path = tmp_path / "suite.toml"
    path.write_text(
        '[models.tiny]\nhub_id = "org/tiny"\n[models.tiny.gates.nf4]\nmax_kl_p99 = 0.2\n'
        "min_top1_agreement = 0.95\nmax_flip_rate = 0.25\n"
    )
    limits = load_config(path).gates_for("tiny", "nf4")
    golden = Path(__file__).parent / "golden" / "nf4_evaluation.json"
    doc = from_json_object(EvaluationDocument, json.loads(golden.read_text()))
    assert (doc.flips.flips, doc.flips.checkable_prompts) == (2, 4)
    results = {r.metric: r for r in evaluate_gates(limits, doc)}
    assert results["flip_rate"].value == 0.5 and not results["flip_rate"].passed
    assert results["top1_agreement"].value == doc.kl_divergence.top1_agreement and results["top1_agreement"].op == ">="
    assert results["kl_p99"].value == doc.kl_divergence.p99 and results["kl_p99"].passed == (
        doc.kl_divergence.p99 <= 0.2
    )
    assert METRICS["flip_rate"].value({"flips": None}) is None  # no prompt stage: nothing to judge, the gate fails
