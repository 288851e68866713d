"""The prompt stage of an evaluation: per-prompt KL and flips against the FP16 reference.

On the FP16 pass it builds (or reuses) the cached reference, measures the noise floor and writes
the prompt summary; on a variant's pass it scores the variant against that reference, generates
its own responses and, for a batch-dependent variant, measures how much they move with the batch.
``session`` is the EvaluationSession that orchestrates.
"""

from __future__ import annotations

import logging
from dataclasses import asdict
from pathlib import Path
from typing import Any

from quant_fixtures.metrics.prompt_summary import batch_sensitivity, flip_summary, kl_method_text, kl_section, kl_settings_text
from quant_fixtures.compute.prompt_scoring import NO_SCORE, compute_reference, generate_responses, per_prompt_records, score_against_reference
from quant_fixtures.store.records import write_record
from quant_fixtures.store.prompt_reference import PromptReference, ReferenceKey, load_reference, store_reference

log = logging.getLogger("quant_fixtures")
PROMPT_SUMMARY_SCHEMA = 2  # 2: validated like a baseline (key, checksum); the environment recorded


def prompt_summary_path(options: Any, key: ReferenceKey) -> Path:
    """The small committed companion of the cached prompt reference, in the baselines directory."""
    return options.baselines_dir / f"{key.model}-prompts-{key.digest()[:12]}.json"


def prompt_stage(session: Any, model: str, var: Any, loaded: Any, refs: Any) -> tuple[Any, Any, Any]:
    """Per-prompt KL and flips against FP16; on the FP16 pass, build the reference and noise floor."""
    o, prompts = session.options, session.prompts()
    key = session.reference_key(model)
    method = kl_method_text(o.top_k, o.use_chat_template, o.max_new_tokens_cap, key.full_logprobs)
    settings = kl_settings_text(len(prompts), o.top_k, o.use_chat_template, o.max_new_tokens_cap)
    if refs is None:  # FP16: reuse a valid cached reference, else generate it
        reference, reason = load_reference(o.cache_dir, key)
        if reference is None:
            log.warning("generating the FP16 prompt reference of %s: %s", model, reason)
            bar = progress_bar(len(prompts), f"{model} fp16 generation", "prompt")
            with session.in_stage("FP16 prompt reference"):
                reference = compute_reference(loaded.model, loaded.tokenizer, prompts, key, o.gen_batch_size,
                                              o.score_batch_size, bar.update if bar else None)
            close_bar(bar)
            store_reference(o.cache_dir, reference)
        # Noise floor: FP16 against itself, scored with a different batch composition.
        other = 1 if o.score_batch_size > 1 else 4
        with session.in_stage("noise floor"):
            scores = score_against_reference(loaded.model, loaded.tokenizer, reference, other)
        records = per_prompt_records(prompts, reference, scores, reference.response_ids, loaded.tokenizer)
        kl = kl_section(records, o.top_k, method + f" Here: FP16 against itself, batch size {other} "
                        f"instead of {o.score_batch_size} (the noise floor).", settings)
        noise = {k: kl[k] for k in ("mean", "max", "p99", "ci95")}
        _write_prompt_summary(session, key, reference, loaded.tokenizer, noise)
        return kl, flip_summary(records), noise
    reference, batching = refs.prompts, session.batching(var)
    with session.in_stage("prompt scoring"):
        scores = score_against_reference(loaded.model, loaded.tokenizer, reference,
                                         batching["prompt_scoring_per_pass"])
    bar = progress_bar(len(prompts), f"{model} generation", "prompt")
    with session.in_stage("generation"):
        responses = generate_responses(loaded.model, loaded.tokenizer, prompts, reference, o.gen_batch_size,
                                       bar.update if bar else None)
    close_bar(bar)
    records = per_prompt_records(prompts, reference, scores, responses, loaded.tokenizer)
    flips = flip_summary(records)
    if not var.batch_invariant:
        with session.in_stage("generation (other batch composition)"):
            flips["batch_sensitivity"] = _batch_sensitivity(session, loaded, reference, records)
    return kl_section(records, o.top_k, method, settings), flips, refs.noise_floor


def _batch_sensitivity(session: Any, loaded: Any, reference: PromptReference, records: list[dict[str, Any]]) -> dict:
    """Generate again with every batch boundary moved by half a batch (same batch size, other
    neighbours for every prompt, about the same cost) and count what moved."""
    o, prompts = session.options, session.prompts()
    shift = max(1, min(o.gen_batch_size, len(prompts)) // 2)
    again = generate_responses(loaded.model, loaded.tokenizer, prompts, reference, o.gen_batch_size, shift=shift)
    moved = per_prompt_records(prompts, reference, [NO_SCORE] * len(prompts), again, loaded.tokenizer)
    return batch_sensitivity(records, moved, o.gen_batch_size, shift)


def _write_prompt_summary(session: Any, key: ReferenceKey, reference: PromptReference, tokenizer: Any,
                          noise: dict[str, Any]) -> None:
    """The small committed companion of the cached prompt reference: FP16 responses, settings and
    the noise floor; validated like a baseline on every read."""
    responses = {p.id: tokenizer.decode(r, skip_special_tokens=True)
                 for p, r in zip(session.prompts(), reference.response_ids)}
    write_record(prompt_summary_path(session.options, key), PROMPT_SUMMARY_SCHEMA, asdict(key), key.digest(),
                 {"noise_floor": noise, "responses": responses}, environment=session.environment())


def progress_bar(total: int, desc: str, unit: str) -> Any:
    """A tqdm bar on an interactive terminal, nothing otherwise."""
    import sys

    if not sys.stderr.isatty():
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit=unit, leave=False)


def close_bar(bar: Any) -> None:
    if bar is not None:
        bar.close()
