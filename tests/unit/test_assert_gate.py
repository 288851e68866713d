"""What a gate's verdict does to its test (plugin/assertions.assert_gate): FAIL fails, UNDECIDED
fails, warns or passes as the policy says, report mode xfails instead of failing, and only an
explicit opt-out skips."""

from __future__ import annotations

from typing import Any

import pytest
from documents_for_tests import gate_record, typed

from quant_fixtures.plugin.assertions import UndecidedGateWarning, assert_gate
from quant_fixtures.report.schema import EvaluationDocument


def document(verdict: str, ungated: dict[str, Any] | None = None) -> EvaluationDocument:
    gates = [gate_record("kl_mean", 0.2, 0.1, "<=", verdict)] if verdict else []
    return typed({"gates": gates, "ungated": ungated or {}})


def test_pass_passes_under_every_policy() -> None:
    for policy in ("fail", "warn", "pass"):
        assert_gate(document("PASS"), "kl_mean", "enforce", policy)


def test_fail_fails_with_one_line() -> None:
    with pytest.raises(pytest.fail.Exception, match=r"^gate FAIL: tiny int8: kl_mean = 0.2 \(limit <= 0.1\) FAIL$"):
        assert_gate(document("FAIL"), "kl_mean", "enforce", "pass")


def test_undecided_follows_the_policy() -> None:
    with pytest.raises(pytest.fail.Exception, match=r"gate UNDECIDED \(undecided = 'fail'\): .* UNDECIDED"):
        assert_gate(document("UNDECIDED"), "kl_mean", "enforce", "fail")
    with pytest.warns(UndecidedGateWarning, match="gate UNDECIDED: tiny int8: kl_mean"):
        assert_gate(document("UNDECIDED"), "kl_mean", "enforce", "warn")
    assert_gate(document("UNDECIDED"), "kl_mean", "enforce", "pass")


def test_report_mode_xfails_fail_and_undecided() -> None:
    with pytest.raises(pytest.xfail.Exception, match=r"gate FAIL \(report mode\)"):
        assert_gate(document("FAIL"), "kl_mean", "report", "fail")
    with pytest.raises(pytest.xfail.Exception, match=r"gate UNDECIDED \(report mode\)"):
        assert_gate(document("UNDECIDED"), "kl_mean", "report", "warn")


def test_only_an_explicit_opt_out_skips() -> None:
    with pytest.raises(pytest.skip.Exception, match="not gated: opted out"):
        assert_gate(document("", {"kl_mean": "opted out"}), "kl_mean")
    with pytest.raises(pytest.fail.Exception, match="no limit configured for top1_agreement and no explicit opt-out"):
        assert_gate(document(""), "top1_agreement")
