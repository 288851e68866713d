"""The prompt stage of a pass: per-prompt KL and flips against the FP16 reference.

The FP16 pass builds (or reuses) the cached reference, measures the noise floor and stores the
prompt summary; a variant's pass scores the variant against that reference, generates its own
responses and, for a batch-dependent variant, measures how much they move with the batch.
"""

from __future__ import annotations

import logging
from typing import Any

from quant_fixtures.compute.prompt_scoring import (NO_SCORE, compute_reference, generate_responses, per_prompt_records,
                                                   score_against_reference)
from quant_fixtures.metrics.prompt_summary import (batch_sensitivity, flip_summary, kl_method_text, kl_section,
                                                   kl_settings_text)
from quant_fixtures.models.loading import LoadedModel
from quant_fixtures.report.schema import Batching
from quant_fixtures.session.context import PassContext, close_bar, progress_bar
from quant_fixtures.session.references import References
from quant_fixtures.store.prompt_reference import PromptReference
from quant_fixtures.variants import Variant

log = logging.getLogger("quant_fixtures")
PromptResults = tuple[dict[str, Any], dict[str, Any], dict[str, Any] | None]  # kl, flips, noise floor


def _texts(ctx: PassContext, model: str) -> tuple[str, str]:
    q, prompts = ctx.settings.prompts, ctx.inputs.prompts()
    method = kl_method_text(q.top_k, q.use_chat_template, q.max_new_tokens_cap,
                            ctx.references.prompt_key(model).full_logprobs)
    return method, kl_settings_text(len(prompts), q.top_k, q.use_chat_template, q.max_new_tokens_cap)


def fp16_prompt_stage(ctx: PassContext, model: str, loaded: LoadedModel) -> PromptResults:
    """Reuse a valid cached FP16 reference or generate it; then the noise floor: FP16 against
    itself, scored with another batch composition; stores the prompt summary."""
    q, prompts, store = ctx.settings.prompts, ctx.inputs.prompts(), ctx.references
    method, settings = _texts(ctx, model)
    reference, reason = store.cached_prompt_reference(model)
    if reference is None:
        log.warning("generating the FP16 prompt reference of %s: %s", model, reason)
        bar = progress_bar(len(prompts), f"{model} fp16 generation", "prompt")
        with ctx.stage("FP16 prompt reference"):
            reference = compute_reference(loaded.model, loaded.tokenizer, prompts, store.prompt_key(model),
                                          q.gen_batch_size, q.score_batch_size, bar.update if bar else None)
        close_bar(bar)
        store.save_prompt_reference(reference)
    other = 1 if q.score_batch_size > 1 else 4
    with ctx.stage("noise floor"):
        scores = score_against_reference(loaded.model, loaded.tokenizer, reference, other)
    records = per_prompt_records(prompts, reference, scores, reference.response_ids, loaded.tokenizer)
    kl = kl_section(records, q.top_k, method + f" Here: FP16 against itself, batch size {other} "
                    f"instead of {q.score_batch_size} (the noise floor).", settings)
    noise = {k: kl[k] for k in ("mean", "max", "p99", "ci95")}
    responses = {p.id: loaded.tokenizer.decode(r, skip_special_tokens=True)
                 for p, r in zip(prompts, reference.response_ids)}
    store.save_prompt_summary(model, responses, noise)
    return kl, flip_summary(records), noise


def variant_prompt_stage(ctx: PassContext, model: str, var: Variant, loaded: LoadedModel, refs: References,
                         batching: Batching) -> PromptResults:
    """Score the variant against the FP16 reference, generate its own responses, count flips."""
    q, prompts, reference = ctx.settings.prompts, ctx.inputs.prompts(), refs.prompts
    method, settings = _texts(ctx, model)
    with ctx.stage("prompt scoring"):
        scores = score_against_reference(loaded.model, loaded.tokenizer, reference, batching.prompt_scoring_per_pass)
    bar = progress_bar(len(prompts), f"{model} generation", "prompt")
    with ctx.stage("generation"):
        responses = generate_responses(loaded.model, loaded.tokenizer, prompts, reference, q.gen_batch_size,
                                       bar.update if bar else None)
    close_bar(bar)
    records = per_prompt_records(prompts, reference, scores, responses, loaded.tokenizer)
    flips = flip_summary(records)
    if not var.batch_invariant:
        with ctx.stage("generation (other batch composition)"):
            flips["batch_sensitivity"] = _batch_sensitivity(ctx, loaded, reference, records)
    return kl_section(records, q.top_k, method, settings), flips, refs.noise_floor


def _batch_sensitivity(ctx: PassContext, loaded: LoadedModel, reference: PromptReference,
                       records: list[dict[str, Any]]) -> dict[str, Any]:
    """Generate again with every batch boundary moved by half a batch (same batch size, other
    neighbours for every prompt, about the same cost) and count what moved."""
    batch, prompts = ctx.settings.prompts.gen_batch_size, ctx.inputs.prompts()
    shift = max(1, min(batch, len(prompts)) // 2)
    again = generate_responses(loaded.model, loaded.tokenizer, prompts, reference, batch, shift=shift)
    moved = per_prompt_records(prompts, reference, [NO_SCORE] * len(prompts), again, loaded.tokenizer)
    return batch_sensitivity(records, moved, batch, shift)
