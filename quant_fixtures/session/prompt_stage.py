"""The prompt stage of a pass: per-prompt KL and flips against the FP16 reference.

The FP16 pass builds (or reuses) the cached reference, measures the noise floor and stores the
prompt summary; a variant's pass scores the variant against that reference, generates its own
responses and, for a batch-dependent variant, measures how much they move with the batch.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace

from quant_fixtures.compute.memory import BatchLog
from quant_fixtures.compute.prompt_scoring import (
    NO_SCORE,
    generate_responses,
    per_prompt_records,
    reference_hidden_states,
    reference_responses,
    response_text,
    score_against_reference,
)
from quant_fixtures.inputs.prompts import Prompt
from quant_fixtures.metrics.prompt_summary import (
    batch_sensitivity,
    flip_summary,
    kl_method_text,
    kl_section,
    kl_settings_text,
)
from quant_fixtures.metrics.reference_head import ReferenceHead
from quant_fixtures.models.loading import LoadedModel
from quant_fixtures.report.schema import Batching, Flips, NoiseFloor, PromptKL
from quant_fixtures.session.context import PassContext
from quant_fixtures.session.model_facts import ModelUnderTest
from quant_fixtures.session.references import References
from quant_fixtures.store.prompt_reference import PromptReference
from quant_fixtures.variants import Variant

log = logging.getLogger("quant_fixtures")
PromptResults = tuple[PromptKL, Flips, NoiseFloor | None]


def _texts(run: PassContext) -> tuple[str, str]:
    """The KL section's method and settings texts."""
    q, prompts = run.shared.settings.prompts, run.shared.prompt_suite.prompts()
    method = kl_method_text(q.top_k, q.use_chat_template, q.max_new_tokens_cap)
    return method, kl_settings_text(len(prompts), q.top_k, q.use_chat_template, q.max_new_tokens_cap)


def fp16_prompt_stage(run: PassContext, model: ModelUnderTest, loaded: LoadedModel) -> PromptResults:
    """Reuse a valid cached FP16 reference or generate it; then the noise floor: FP16 against
    itself, scored with another batch composition; stores the prompt summary."""
    q, prompts, store = run.shared.settings.prompts, run.shared.prompt_suite.prompts(), run.shared.references
    method, settings = _texts(run)
    reference, reason = store.cached_prompt_reference(model)
    if reference is None:
        log.warning("generating the FP16 prompt reference of %s: %s", model.key, reason)
        key, n = store.prompt_key(model), len(prompts)
        with run.stage(
            "FP16 prompt reference (generation)", "generation", shown=True, total=n, unit="prompts"
        ) as advance:
            prompt_ids, responses = reference_responses(
                loaded.model, loaded.tokenizer, prompts, key, q.gen_batch_size, advance, run.shared.budget, run.batches
            )
        with run.stage("FP16 prompt reference (scoring)", "scoring", shown=True, total=n, unit="prompts") as advance:
            reference = reference_hidden_states(
                loaded.model,
                loaded.tokenizer,
                prompts,
                key,
                prompt_ids,
                responses,
                q.score_batch_size,
                run.shared.budget,
                run.batches,
                advance,
            )
        with run.stage("FP16 prompt reference (store)", "references", shown=True):
            store.save_prompt_reference(reference)
    # The noise floor scores FP16 again in other batches: a quarter of the reference's batch (other
    # shapes and neighbours for every prompt, at a quarter of one-per-pass's forward passes), or
    # batches of four when the reference ran one prompt per pass (memory permitting).
    used = run.batches.used.get("reference scoring", q.score_batch_size)
    other = max(1, used // 4) if used > 1 else 4
    # FP16 against itself: its own head, no second copy on the device.
    with run.stage("noise floor", "scoring", shown=True, total=len(prompts), unit="prompts") as advance:
        scores = score_against_reference(
            loaded.model,
            loaded.tokenizer,
            replace(reference, head=ReferenceHead.live(loaded.model)),
            other,
            run.shared.budget,
            run.batches,
            "noise floor",
            advance,
        )
    with run.stage("statistics", "statistics"):
        records = per_prompt_records(prompts, reference, scores, reference.response_ids, loaded.tokenizer)
        kl = kl_section(
            records,
            q.top_k,
            method + f" Here: FP16 against itself, batch size {other} instead of {used} (the noise floor).",
            settings,
        )
        noise = NoiseFloor(mean=kl.mean, max=kl.max, p99=kl.p99, ci95=kl.ci95)
        responses_text = {p.id: response_text(loaded.tokenizer, r) for p, r in zip(prompts, reference.response_ids)}
        flips = flip_summary(records)
    with run.stage("prompt summary (store)", "references"):
        store.save_prompt_summary(model, responses_text, noise)
    return kl, flips, noise


def variant_prompt_stage(
    run: PassContext,
    model: ModelUnderTest,
    variant: Variant,
    loaded: LoadedModel,
    refs: References,
    batching: Batching,
) -> PromptResults:
    """Score the variant against the FP16 reference, generate its own responses, count flips."""
    q, prompts, reference = run.shared.settings.prompts, run.shared.prompt_suite.prompts(), refs.prompts
    if reference is None:
        raise RuntimeError(f"{model.key} {variant.key}: the FP16 prompt reference was not loaded (prompts skipped?)")
    method, settings = _texts(run)
    with run.stage("prompt scoring", "scoring", shown=True, total=len(prompts), unit="prompts") as advance:
        scores = score_against_reference(
            loaded.model,
            loaded.tokenizer,
            reference,
            batching.prompt_scoring_per_pass,
            run.shared.budget,
            run.batches,
            progress=advance,
        )
    with run.stage("generation", "generation", shown=True, total=len(prompts), unit="prompts") as advance:
        responses = generate_responses(
            loaded.model,
            loaded.tokenizer,
            prompts,
            reference,
            q.gen_batch_size,
            advance,
            budget=run.shared.budget,
            log=run.batches,
        )
    with run.stage("statistics", "statistics"):
        records = per_prompt_records(prompts, reference, scores, responses, loaded.tokenizer)
        flips = flip_summary(records)
    # Generation can move with the batch even when scoring does not: LLM.int8 turns the float noise
    # of other padding into other tokens now and then (models/int8_per_sequence.amplifies_float_noise).
    if not variant.batch_invariant or loaded.per_sequence_int8_layers:
        chosen = _rerun(records)
        with run.stage(
            "generation (other batch composition)", "generation", shown=True, total=len(chosen), unit="prompts"
        ) as advance:
            again = _generate_again(run, loaded, reference, chosen, advance)
            moved = per_prompt_records(
                again.prompts, again.reference, [NO_SCORE] * len(chosen), again.responses, loaded.tokenizer
            )
            before = [records[i] for i in chosen]
            flips.batch_sensitivity = batch_sensitivity(
                before, moved, again.batch, again.shift, _which(chosen, records)
            )
    with run.stage("statistics", "statistics"):
        kl = kl_section(records, q.top_k, method, settings)
    return kl, flips, refs.noise_floor


def _rerun(records: Sequence[Mapping[str, object]]) -> list[int]:
    """The prompts generated again: those with a checkable answer (every prompt if none has one)."""
    return [i for i, r in enumerate(records) if r["flip"] is not None] or list(range(len(records)))


def _which(chosen: list[int], records: Sequence[object]) -> str:
    """Which prompts :func:`_rerun` chose, for the batch sensitivity's method text."""
    return (
        f"the {len(chosen)} prompts with a checkable answer"
        if len(chosen) < len(records)
        else f"all {len(chosen)} prompts"
    )


@dataclass
class _GeneratedAgain:
    prompts: list[Prompt]  # the chosen prompts
    reference: PromptReference  # their FP16 reference
    responses: list[list[int]]  # the variant's responses, generated again
    batch: int
    shift: int


def _generate_again(
    run: PassContext,
    loaded: LoadedModel,
    reference: PromptReference,
    chosen: list[int],
    advance: Callable[[int], None],
) -> _GeneratedAgain:
    """Generate the ``chosen`` prompts (:func:`_rerun`) again, without the others and with every
    batch boundary moved by half a batch: other neighbours for each, at a fraction of a second full
    generation (the long free-text prompts are not rerun); their verdicts, the thing flips count,
    are what the batch sensitivity compares."""
    batch, prompts = (
        run.batches.used.get("generation", run.shared.settings.prompts.gen_batch_size),
        run.shared.prompt_suite.prompts(),
    )
    subset = reference.subset(chosen)
    picked = [prompts[i] for i in chosen]
    shift = max(1, min(batch, len(chosen)) // 2)
    again = generate_responses(
        loaded.model,
        loaded.tokenizer,
        picked,
        subset,
        batch,
        advance,
        shift=shift,
        budget=run.shared.budget,
        log=BatchLog(),
    )
    return _GeneratedAgain(picked, subset, again, batch, shift)
