"""The run's one release verdict (report/release.py): every gate of every document together, its
line, what it does to the exit code, and its place in the comparison files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from documents_for_tests import gate_record, typed

from quant_fixtures.report.comparison import comparison_document, comparison_path
from quant_fixtures.report.release import fails_the_run, record_in_comparisons, release_lines, release_verdict
from quant_fixtures.report.schema import write_document


def sampled(metric: str, verdict: str, p_within: float, p_beyond: float) -> dict:
    record = gate_record(metric, 1.0, 2.0, "<=", verdict)
    return {**record, "exact": False, "interval": [0.5, 1.5], "p_within": p_within, "p_beyond": p_beyond}


def run(*pairs: tuple[str, str, list[dict]]) -> dict:
    documents: dict = {}
    for model, variant, gates in pairs:
        doc = typed({"model": {"key": model}, "variant": {"key": variant}, "gates": gates})
        documents.setdefault(model, {})[variant] = doc
    return documents


def test_every_gate_within_passes() -> None:
    memory = gate_record("memory_reduction_pct", 40, 30, ">=", "PASS")
    verdict = release_verdict(
        run(
            ("a", "int8", [sampled("kl_mean", "PASS", 0.01, 0.99), memory]),
            ("b", "nf4", [sampled("kl_mean", "PASS", 0.04, 0.96)]),
        )
    )
    assert (verdict.verdict, verdict.gates, verdict.statistical_gates) == ("PASS", 3, 2)
    assert not fails_the_run(verdict, "fail")
    line = release_lines(verdict)[0]
    assert line.startswith(
        "release verdict: PASS (every one of 3 gates (2 sampled) within its limit with 95 % confidence"
    )


def test_holm_over_the_run_decides_fail_and_names_the_gates() -> None:
    # three sampled gates: 0.01 <= 0.05 / 3 is beyond; then 0.02 <= 0.05 / 2 too (Holm's second step)
    verdict = release_verdict(
        run(
            ("a", "int8", [sampled("kl_mean", "FAIL", 0.99, 0.01), sampled("delta_ppl_pct", "UNDECIDED", 0.98, 0.02)]),
            ("a", "nf4", [sampled("kl_mean", "UNDECIDED", 0.5, 0.5)]),
        )
    )  # fmt: skip
    assert verdict.verdict == "FAIL"
    assert verdict.beyond == ["a int8 kl_mean", "a int8 delta_ppl_pct"] and verdict.undecided == ["a nf4 kl_mean"]
    assert fails_the_run(verdict, "pass")
    assert release_lines(verdict) == [
        "release verdict: FAIL (2 of 3 gates (3 sampled) beyond their limits; false FAIL rate of the run at most 5 % "
        "(Holm))",
        "  beyond: a int8 kl_mean",
        "  beyond: a int8 delta_ppl_pct",
        "  undecided: a nf4 kl_mean",
    ]


def test_a_failing_deterministic_gate_fails_the_run_whatever_the_others() -> None:
    verdict = release_verdict(run(("a", "int8", [gate_record("memory_reduction_pct", 20, 30, ">=", "FAIL")])))
    assert verdict.verdict == "FAIL" and verdict.beyond == ["a int8 memory_reduction_pct"]


@pytest.mark.parametrize("policy, fails", [("fail", True), ("warn", False), ("pass", False)])
def test_undecided_follows_the_policy(policy: str, fails: bool) -> None:
    verdict = release_verdict(run(("a", "int8", [sampled("kl_mean", "UNDECIDED", 0.3, 0.7)])))
    assert verdict.verdict == "UNDECIDED" and fails_the_run(verdict, policy) == fails
    assert release_lines(verdict, policy)[0].endswith(
        {"fail": "fails the run", "warn": "warns", "pass": "passes"}[policy]
    )


def test_no_gates_is_no_verdict() -> None:
    verdict = release_verdict(run(("a", "fp16", [])))
    assert verdict.verdict == "NONE" and not fails_the_run(verdict, "fail")
    assert release_lines(verdict) == ["release verdict: NONE (no gates in this run)"]


def test_the_verdict_goes_into_each_comparison_file(tmp_path: Path) -> None:
    documents = run(("a", "int8", [sampled("kl_mean", "PASS", 0.01, 0.99)]))
    write_document(comparison_path(tmp_path, "a"), comparison_document(documents["a"]))
    verdict = release_verdict(documents)
    record_in_comparisons(tmp_path, ["a", "missing-model"], verdict)  # a model without a file is left alone
    stored = json.loads(comparison_path(tmp_path, "a").read_text())["release_verdict"]
    assert stored["verdict"] == "PASS" and stored["alpha"] == 0.05 and stored["statistical_gates"] == 1
