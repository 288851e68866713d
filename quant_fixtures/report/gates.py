"""Release gates: a variant's registered metrics against the configured limits, each decided PASS,
FAIL or UNDECIDED with a known error rate (metrics/decision.py, on the evidence
metrics/gate_evidence.py reads from the document), and the one way a gate is written out
(terminal, REPORT.md, findings, the comparison file and failing tests)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

from quant_fixtures.metrics.decision import ALPHA, Decision, GateOutcome
from quant_fixtures.metrics.gate_evidence import EVIDENCE, decide_gate
from quant_fixtures.metrics.registry import GATEABLE

PASS, FAIL, UNDECIDED = "PASS", "FAIL", "UNDECIDED"


@dataclass(frozen=True)
class GateResult:
    """One gate's decision. ``interval`` holds the two one-sided bounds the verdict uses (the
    passing side at ``1 - alpha``, the failing side at ``1 - alpha_beyond``): it crosses the limit
    exactly when the verdict is UNDECIDED. ``p_within`` is the p-value of "beyond the limit" (PASS
    when <= alpha), ``p_beyond`` of "within" (FAIL when <= alpha_beyond). ``more_units``: for an
    UNDECIDED gate, how many more ``unit`` (prompts, windows, probes, blocks) would decide it at the
    effect measured."""

    metric: str
    value: float | None
    limit: float
    op: str  # "<=" or ">=" (from the metric's direction in the registry)
    verdict: str  # PASS, FAIL or UNDECIDED
    interval: list[float] | None
    p_within: float | None
    p_beyond: float | None
    alpha: float
    alpha_beyond: float
    units: int | None
    unit: str | None
    more_units: int | None
    exact: bool  # deterministic (memory) or missing: no sampling error
    method: str

    @property
    def passed(self) -> bool:
        return self.verdict == PASS

    @property
    def failed(self) -> bool:
        return self.verdict == FAIL

    def line(self) -> str:
        """'<metric> = <value> [<low>, <high>] (limit <op> <limit>)', numbers to 4 significant digits."""
        value = "missing" if self.value is None else f"{self.value:.4g}"
        interval = f" [{self.interval[0]:.4g}, {self.interval[1]:.4g}]" if self.interval and not self.exact else ""
        return f"{self.metric} = {value}{interval} (limit {self.op} {self.limit:g})"

    def need(self) -> str:
        """For an UNDECIDED gate, what would decide it."""
        if self.verdict != UNDECIDED:
            return ""
        if self.more_units is not None:
            return f"about {self.more_units} more {self.unit} would decide it at the effect measured"
        return self.method

    def describe(self, *who: str) -> str:
        """'<who>: <line> <verdict> (what would decide it)', e.g.
        'mistral7b int8: delta_ppl_pct = 7.25 [6.1, 8.4] (limit <= 5) FAIL'."""
        need = self.need()
        return f"{' '.join(who)}: {self.line()} {self.verdict}" + (f" ({need})" if need else "")

    def outcome(self, *who: str) -> GateOutcome:
        return GateOutcome(" ".join((*who, self.metric)), self.verdict, self.p_within, self.p_beyond, self.exact)


class Gated(Protocol):
    """A document with its gates (report/schema.EvaluationDocument; the schema imports this module)."""

    gates: list[GateResult]


def evaluate_gates(
    limits: dict[str, float], document: object, alpha: float = ALPHA, alpha_beyond: float = ALPHA
) -> list[GateResult]:
    """One decision per configured limit, in limit-name order. ``alpha``: the level of PASS (one
    gate's false PASS rate); ``alpha_beyond``: the level of FAIL (alpha over the run's number of
    sampled gates, so the run's false FAIL rate is alpha). A metric that was not measured fails its
    gate (a gate must not vanish with its section). ``document`` is the evaluation document."""
    results = []
    for limit_name, limit in sorted(limits.items()):
        spec = GATEABLE[limit_name]
        evidence = EVIDENCE[spec.name](document)
        if evidence is None:  # not measured: FAIL, with nothing sampled to weigh
            d = Decision(FAIL, None, None, None, 0.0, None, None, None, "missing: the metric was not measured")
        else:
            d = decide_gate(evidence, limit, spec.better, alpha, alpha_beyond)
        reported = spec.value(document)  # the number the report shows (the decision's, to the last bits)
        results.append(
            GateResult(
                metric=spec.name,
                value=reported if reported is not None else d.value,
                limit=limit,
                op=spec.op,
                verdict=d.verdict,
                interval=d.interval,
                p_within=d.p_within,
                p_beyond=d.p_beyond,
                alpha=alpha,
                alpha_beyond=alpha_beyond,
                units=d.units,
                unit=d.unit,
                more_units=d.more_units,
                exact=not spec.sampled or evidence is None,
                method=d.method,
            )
        )
    return results


def failed_gate_lines(documents: Mapping[str, Gated]) -> list[str]:
    """'<variant>: <gate line>' for every failed gate of {variant key: document}."""
    return [f"{key}: {g.line()}" for key, d in documents.items() for g in d.gates if g.failed]


def failed_metrics(document: Gated) -> list[str]:
    return [g.metric for g in document.gates if g.failed]


def undecided_metrics(document: Gated) -> list[str]:
    return [g.metric for g in document.gates if g.verdict == UNDECIDED]


def verdict(document: Gated) -> str:
    """'-' (no gates), 'PASS', 'FAIL m1,m2' (and ' UNDECIDED m3' when some are), or 'UNDECIDED m3'."""
    if not document.gates:
        return "-"
    failed, undecided = failed_metrics(document), undecided_metrics(document)
    parts = [f"FAIL {','.join(failed)}"] if failed else []
    parts += [f"UNDECIDED {','.join(undecided)}"] if undecided else []
    return " ".join(parts) or PASS
