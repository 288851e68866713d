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
        # Only an explicit opt-out skips; a limit that is simply missing fails (a typo must not
        # silently remove a release gate).
        reason = (document.get("ungated") or {}).get(metric)
        if reason:
            pytest.skip(f"{model} {variant}: {metric} not gated: {reason}")
        pytest.fail(f"{model} {variant}: no limit configured for {metric} and no explicit opt-out", pytrace=False)
    for gate in gates:
        if gate["passed"]:
            continue
        value = "missing" if gate["value"] is None else f"{gate['value']:.4g}"
        line = f"{model} {variant}: {metric} = {value}, limit {gate['op']} {gate['limit']:g}"
        if session.options.gate_mode == "report":
            pytest.xfail(f"gate failed (report mode): {line}")
        pytest.fail(f"gate failed: {line}", pytrace=False)
