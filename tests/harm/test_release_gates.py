"""Release gates: one test per (model, quantized variant) and gated metric; the metrics come from
the registry and the limits from the suite config. The `gpu` marker comes from config."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from quant_fixtures.plugin.assertions import assert_gate

if TYPE_CHECKING:
    from quant_fixtures.plugin.fixtures import GatedMetric
    from quant_fixtures.report.schema import EvaluationDocument
    from quant_fixtures.session.orchestrator import EvaluationSession


def test_perplexity_is_measured(variant_eval: EvaluationDocument) -> None:
    ppl = variant_eval.perplexity
    assert math.isfinite(ppl.ppl) and ppl.ppl > 1.0, f"implausible perplexity {ppl.ppl}"
    assert ppl.tokens == sum(ppl.window_tokens) and len(ppl.window_nll) == ppl.windows


def test_within_limit(gated_metric: GatedMetric, quant_session: EvaluationSession) -> None:
    gates = quant_session.settings.gates
    assert_gate(gated_metric.document, gated_metric.metric.name, gates.mode, gates.undecided)
