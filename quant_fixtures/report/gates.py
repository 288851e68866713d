"""Release gates: a variant's registered metrics against the configured limits, and the one way a
gate is written out (terminal, REPORT.md, findings, the comparison file and failing tests)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

from quant_fixtures.metrics.registry import GATEABLE


@dataclass(frozen=True)
class GateResult:
    metric: str
    value: float | None
    limit: float
    op: str  # "<=" or ">=" (from the metric's direction in the registry)
    passed: bool

    def line(self) -> str:
        """'<metric> = <value> (limit <op> <limit>)', the value formatted to 4 significant digits."""
        value = "missing" if self.value is None else f"{self.value:.4g}"
        return f"{self.metric} = {value} (limit {self.op} {self.limit:g})"

    def describe(self, *who: str) -> str:
        """'<who>: <line> passed|FAILED', e.g. 'mistral7b int8: delta_ppl_pct = 7.25 (limit <= 5) FAILED'."""
        return f"{' '.join(who)}: {self.line()} {'passed' if self.passed else 'FAILED'}"


class Gated(Protocol):
    """A document with its gates (report/schema.EvaluationDocument; the schema imports this module)."""

    gates: list[GateResult]


def evaluate_gates(limits: dict[str, float], document: object, gate_on: str = "point") -> list[GateResult]:
    """One result per configured limit, in limit-name order; a metric that was not measured (or
    is not finite) fails its gate. ``document`` is the evaluation document (its gates unset)."""
    results = []
    for limit_name, limit in sorted(limits.items()):
        spec = GATEABLE[limit_name]
        value = spec.gate_value(document, gate_on)
        results.append(
            GateResult(metric=spec.name, value=value, limit=limit, op=spec.op, passed=spec.passes(value, limit))
        )
    return results


def failed_gate_lines(documents: Mapping[str, Gated]) -> list[str]:
    """'<variant>: <gate line>' for every failed gate of {variant key: document}."""
    return [f"{key}: {g.line()}" for key, d in documents.items() for g in d.gates if not g.passed]


def failed_metrics(document: Gated) -> list[str]:
    return [g.metric for g in document.gates if not g.passed]


def verdict(document: Gated) -> str:
    """'-' (no gates), 'PASS', or 'FAIL m1,m2'."""
    if not document.gates:
        return "-"
    failed = failed_metrics(document)
    return "PASS" if not failed else "FAIL " + ",".join(failed)
