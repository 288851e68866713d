"""Assertion helpers for harm tests: a failed gate fails with one line naming everything."""

from __future__ import annotations

from typing import Any

import pytest


def assert_gate(session: Any, document: dict[str, Any], metric: str) -> None:
    """Fail (or, with --gate-mode report, xfail) when the document's gate on ``metric`` failed."""
    __tracebackhide__ = True
    model, variant = document["model"]["key"], document["variant"]["key"]
    gates = [g for g in document["gates"] if g["metric"] == metric]
    if not gates:
        pytest.skip(f"{model} {variant}: no limit configured for {metric}")
    for gate in gates:
        if gate["passed"]:
            continue
        value = "missing" if gate["value"] is None else f"{gate['value']:.4g}"
        line = f"{model} {variant}: {metric} = {value}, limit {gate['op']} {gate['limit']:g}"
        if session.options.gate_mode == "report":
            pytest.xfail(f"gate failed (report mode): {line}")
        pytest.fail(f"gate failed: {line}", pytrace=False)
