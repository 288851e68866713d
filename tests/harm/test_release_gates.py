"""Release gates: one test per (model, quantized variant) and gated metric; the metrics come from
the registry and the limits from the suite config. The `gpu` marker comes from config."""

from __future__ import annotations

import math

from quant_fixtures.plugin.assertions import assert_gate


def test_perplexity_is_measured(variant_eval) -> None:
    ppl = variant_eval.perplexity
    assert math.isfinite(ppl.ppl) and ppl.ppl > 1.0, f"implausible perplexity {ppl.ppl}"
    assert ppl.tokens == sum(ppl.window_tokens) and len(ppl.window_nll) == ppl.windows


def test_within_limit(gated_metric, quant_session) -> None:
    gates = quant_session.settings.gates
    assert_gate(gated_metric.document, gated_metric.metric.name, gates.mode, gates.undecided)
