"""Release gates: one test per (model, variant) and metric. The `gpu` marker comes from config."""

from __future__ import annotations

import math

from quant_fixtures.plugin.assertions import assert_gate
from quant_fixtures.plugin.hooks import quantized_only


def test_perplexity_is_measured(variant_eval):
    ppl = variant_eval["perplexity"]
    assert math.isfinite(ppl["ppl"]) and ppl["ppl"] > 1.0, f"implausible perplexity {ppl['ppl']}"
    assert ppl["tokens"] == sum(ppl["window_tokens"]) and len(ppl["window_nll"]) == ppl["windows"]


@quantized_only
def test_delta_perplexity_within_limit(quant_session, variant_eval):
    assert_gate(quant_session, variant_eval, "delta_ppl_pct")


@quantized_only
def test_memory_reduction_within_limit(quant_session, variant_eval):
    assert_gate(quant_session, variant_eval, "memory_reduction_pct")


@quantized_only
def test_mean_kl_within_limit(quant_session, variant_eval):
    assert_gate(quant_session, variant_eval, "kl_mean")
