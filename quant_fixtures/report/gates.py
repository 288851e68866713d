"""Release gates: compare a variant's measured metrics with the configured limits."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from quant_fixtures.config import LIMITS


@dataclass(frozen=True)
class GateResult:
    metric: str
    value: float | None
    limit: float
    op: str  # "<=" or ">="
    passed: bool

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def describe(self, model: str, variant: str) -> str:
        """One line: model, variant, metric, value, limit."""
        verdict = "passed" if self.passed else "FAILED"
        value = "missing" if self.value is None else f"{self.value:.4g}"
        return f"{model} {variant}: {self.metric} = {value} (limit {self.op} {self.limit:g}) {verdict}"


def evaluate_gates(limits: dict[str, float], metrics: dict[str, float | None]) -> list[GateResult]:
    """One result per limit; a metric that was not measured (or is not finite) fails its gate."""
    results = []
    for limit_name, limit in sorted(limits.items()):
        spec = LIMITS[limit_name]
        metric, op = spec.metric, spec.op
        value = metrics.get(metric)
        ok = value is not None and math.isfinite(value) and (value <= limit if op == "<=" else value >= limit)
        results.append(GateResult(metric=metric, value=value, limit=limit, op=op, passed=bool(ok)))
    return results
