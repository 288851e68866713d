"""Quantization checks of this project's model, run by the quant-fixtures pytest plugin.

    pytest                          # the models in quant_suite.toml, as fp16, int8 and nf4
    pytest --model org/name         # another model by Hub id instead (a directory: --model=./checkpoint)
    pytest --variants fp16,int8     # fewer variants

The plugin parametrizes the fixtures below over the run's (model, variant) pairs and evaluates each
pair once per session, whichever tests ask for it. Nothing here names a model: the config and the
command line choose them.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import pytest

from quant_fixtures.plugin.assertions import assert_gate

if TYPE_CHECKING:
    from quant_fixtures.plugin.fixtures import GatedMetric
    from quant_fixtures.report.schema import EvaluationDocument
    from quant_fixtures.session.orchestrator import EvaluationSession


def test_perplexity_is_measured(variant_eval: EvaluationDocument) -> None:
    """Every (model, variant), FP16 included: a finite WikiText-2 perplexity over whole windows."""
    ppl = variant_eval.perplexity
    assert math.isfinite(ppl.ppl) and ppl.ppl > 1.0
    assert ppl.windows >= 1 and ppl.tokens == sum(ppl.window_tokens)


def test_within_limit(gated_metric: GatedMetric, quant_session: EvaluationSession) -> None:
    """The release gates: one test per (model, quantized variant, gated metric), with the limits of
    quant_suite.toml. A FAIL fails; an UNDECIDED gate fails, warns or passes as [gates] undecided
    says; in --gate-mode report both are an xfail instead of a failure."""
    gates = quant_session.settings.gates
    assert_gate(gated_metric.document, gated_metric.metric.name, gates.mode, gates.undecided)


def test_quantized_weights_are_smaller(quantized_eval: EvaluationDocument) -> None:
    """Every quantized variant (FP16 left out by the fixture) holds fewer bytes than FP16."""
    memory = quantized_eval.memory
    assert memory.footprint_gb < memory.fp16_footprint_gb, (
        f"{quantized_eval.variant.key}: {memory.footprint_gb:.4f} GB, FP16 {memory.fp16_footprint_gb:.4f} GB"
    )


@pytest.mark.quant_variants("int8")
def test_int8_keeps_every_prompt_near_fp16(
    quantized_eval: EvaluationDocument, quant_session: EvaluationSession
) -> None:
    """A check of this project's own, for int8 only (the marker): no single prompt's KL from FP16
    above ten times the configured mean limit. It reads the limit from the run's config."""
    kl = quantized_eval.kl_divergence
    if kl is None:
        pytest.skip("--skip-prompts: no prompt KL measured")
    model, variant = quantized_eval.model.key, quantized_eval.variant.key
    limit = quant_session.suite.gates_for(model, variant)["max_kl_mean"]
    assert kl.max <= 10 * limit, f"{model} {variant}: worst prompt KL {kl.max:.4f} nats, limit 10 x {limit}"


def test_eight_bits_stay_closer_to_fp16_than_four(model_documents: dict[str, EvaluationDocument]) -> None:
    """Across one model's variants: int8's mean prompt KL from FP16 is below nf4's."""
    if not {"int8", "nf4"} <= set(model_documents):
        pytest.skip("needs int8 and nf4 in the run")
    int8, nf4 = model_documents["int8"].kl_divergence, model_documents["nf4"].kl_divergence
    if int8 is None or nf4 is None:
        pytest.skip("--skip-prompts: no prompt KL measured")
    assert int8.mean < nf4.mean, f"int8 KL {int8.mean:.4f} >= nf4 KL {nf4.mean:.4f}"
