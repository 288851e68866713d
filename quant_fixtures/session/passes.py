"""The two passes over a loaded model. The FP16 pass measures the references and stores them; a
variant's pass measures the variant against references it is given. Both return the
:class:`Measurements` a document is built from."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from quant_fixtures.attention_kernels import prompt_attention
from quant_fixtures.compute.corpus_kl import HiddenRecorder, KLAgainstReference
from quant_fixtures.compute.memory import BatchLog
from quant_fixtures.compute.scoring import LogprobHook, WindowScores, check_output_head, score_windows
from quant_fixtures.inputs.corpus_protocols import CorpusPlan
from quant_fixtures.metrics.corpus_stats import corpus_comparison
from quant_fixtures.metrics.perplexity import Window
from quant_fixtures.metrics.reference_head import ReferenceHead
from quant_fixtures.models.loading import LoadedModel
from quant_fixtures.report.build import Measurements
from quant_fixtures.report.schema import Batching, CorpusKL, LongContext
from quant_fixtures.session.context import PassContext
from quant_fixtures.session.long_context_stage import fp16_long_stage, variant_long_stage
from quant_fixtures.session.model_facts import ModelUnderTest
from quant_fixtures.session.prompt_stage import PromptResults, fp16_prompt_stage, variant_prompt_stage
from quant_fixtures.session.references import References
from quant_fixtures.settings import RunSettings
from quant_fixtures.store.baseline import Baseline
from quant_fixtures.variants import Variant

if TYPE_CHECKING:
    import torch

GB = 1e9
T = TypeVar("T")


def batching_for(variant: Variant, settings: RunSettings) -> Batching:
    """Sequences per forward pass asked for (memory may lower them: see :func:`batching_used`). A
    variant whose kernels depend on the batch (LLM.int8 picks outlier columns over the whole
    batch) is scored one sequence per pass, so its numbers do not depend on the other windows,
    prompts or the batch size; its generation stays batched and how much it moves with the batch
    composition is measured (flips.batch_sensitivity)."""
    alone = not variant.batch_invariant
    return Batching(
        perplexity_windows_per_pass=1 if alone else settings.perplexity.batch_size,
        prompt_scoring_per_pass=1 if alone else settings.prompts.score_batch_size,
        generation_batch=settings.prompts.gen_batch_size,
        batch_invariant=variant.batch_invariant,
    )


def batching_used(run: PassContext, asked: Batching) -> Batching:
    """What ran: the largest batch of each stage, the memory limit and every change memory forced."""
    used, limit = run.batches.used, run.shared.budget.limit()
    return Batching(
        perplexity_windows_per_pass=used.get("perplexity", asked.perplexity_windows_per_pass),
        prompt_scoring_per_pass=used.get(
            "prompt scoring", used.get("reference scoring", asked.prompt_scoring_per_pass)
        ),
        generation_batch=used.get("generation", asked.generation_batch),
        batch_invariant=asked.batch_invariant,
        requested={
            "perplexity": asked.perplexity_windows_per_pass,
            "scoring": asked.prompt_scoring_per_pass,
            "generation": asked.generation_batch,
        },
        memory_limit_gb=limit / GB if limit is not None else None,
        notes=list(run.batches.notes),
        generation_method=run.batches.generation_method,
    )


def _plan(run: PassContext, model: ModelUnderTest) -> CorpusPlan:
    """The corpus token ids and the protocol's windows over them (the same for every variant)."""
    with run.stage("tokenize", "tokenize"):
        return run.shared.plans.plan(model)


def _perplexity(
    run: PassContext, loaded: LoadedModel, corpus: CorpusPlan, hook: LogprobHook, batching: Batching
) -> WindowScores:
    """The perplexity pass over the protocol's windows."""
    ids, plan = corpus.ids, corpus.windows
    if loaded.placement_note:
        run.batches.notes.append(loaded.placement_note)
    with run.stage("perplexity", "perplexity", shown=True, total=len(plan), unit="windows") as advance:
        check_output_head(loaded.model)
        return score_windows(
            loaded.model,
            ids,
            plan,
            batching.perplexity_windows_per_pass,
            hook=hook,
            progress=advance,
            budget=run.shared.budget,
            log=run.batches,
        )


def _measurements(
    run: PassContext,
    model: ModelUnderTest,
    variant: Variant,
    loaded: LoadedModel,
    *,
    scores: WindowScores,
    corpus: CorpusPlan,
    baseline: Baseline,
    batching: Batching,
    corpus_kl: CorpusKL | None,
    prompt_results: PromptResults | None,
    prompt_seconds: float | None,
    long_context: LongContext | None,
) -> Measurements:
    """What the pass measured, with what it was measured on, as a document is built from it."""
    spec, text = model.spec, run.shared.corpus_text.text()
    kl, flips, noise = prompt_results or (None, None, None)
    peak = run.shared.budget.peak_bytes()
    return Measurements(
        model=model.key,
        variant=variant,
        loaded=loaded,
        source=spec.source,
        note="; ".join(n for n in (spec.note, model.resolved.reference_note) if n) or None,
        weights_identity=model.resolved.identity,
        ctx=model.ctx,
        windows=len(corpus.windows),
        scored_bytes=corpus.scored_bytes,
        scored_words=corpus.scored_words,
        documents=corpus.documents,
        text_units=corpus.units,
        scores=scores,
        baseline=baseline,
        peak_gb=peak / GB if peak is not None else None,
        dataset_source=text.source,
        dataset_sha256=text.sha256,
        corpus_kl=corpus_kl,
        kl=kl,
        flips=flips,
        noise_floor=noise,
        prompt_seconds=prompt_seconds,
        batching=batching_used(run, batching),
        environment=run.shared.environment.fingerprint(),
        keys=run.shared.references.keys_of(model, baseline),
        variant_identity=loaded.weights_identity if variant.source else None,
        long_context=long_context,
    )


def _prompts(run: PassContext, stage: Callable[..., PromptResults], *args: Any) -> PromptResults:
    """A prompt stage (scoring, noise floor, generation) with the suite's prompt attention kernels:
    its padded batches meet a new shape at nearly every call (attention_kernels.py)."""
    with prompt_attention(run.shared.settings.load.device):
        return stage(*args)


def _timed(measure: Callable[[], T]) -> tuple[T, float]:
    start = time.perf_counter()
    result = measure()
    return result, time.perf_counter() - start


NOISE_WINDOWS = 8  # windows of the corpus noise floor: enough positions for its mean and p99, 6 % of a full pass


def noise_windows(corpus: CorpusPlan) -> list[Window]:
    """The corpus noise floor's windows: the first 8, or a quarter of a short pass."""
    return corpus.windows[: min(NOISE_WINDOWS, -(-len(corpus.windows) // 4))]


def _corpus_noise(
    run: PassContext,
    loaded: LoadedModel,
    corpus: CorpusPlan,
    reference: dict[str, torch.Tensor],
    batching: Batching,
    advance: Callable[[int], None],
) -> torch.Tensor:
    """Per-position KL of FP16 against its own stored reference over :func:`noise_windows`, scored in
    another batch composition (one window per pass if the pass batched, else two): the KL that
    batching alone produces, beside every corpus KL figure."""
    import torch

    used = run.batches.used.get("perplexity", batching.perplexity_windows_per_pass)
    other = 1 if used > 1 else 2
    windows = noise_windows(corpus)
    positions = sum(w.scored for w in windows)
    subset = {**reference, "hidden": reference["hidden"][:positions]}
    hook = KLAgainstReference(subset, [w.scored for w in windows], ReferenceHead.live(loaded.model))
    score_windows(
        loaded.model, corpus.ids, windows, other, hook=hook, progress=advance, budget=run.shared.budget, log=BatchLog()
    )
    return torch.from_numpy(hook.positions()["kl_pq"]).to(torch.float64)


def fp16_pass(run: PassContext, model: ModelUnderTest, variant: Variant, loaded: LoadedModel) -> Measurements:
    """Measure FP16 and store what variants are compared with: the baseline, the corpus top-k
    log-probs and (unless prompts are skipped) the prompt reference with its noise floor."""
    batching = batching_for(variant, run.shared.settings)
    corpus = _plan(run, model)
    recorder = HiddenRecorder(len(corpus.windows))
    scores = _perplexity(run, loaded, corpus, recorder, batching)
    baseline = Baseline(
        key=run.shared.references.baseline_key(model),
        ppl=scores.ppl,
        window_nll=scores.window_nll,
        window_tokens=scores.window_tokens,
        footprint_bytes=loaded.footprint_bytes,
    )
    reference = recorder.tensors(loaded.model)
    with run.stage(
        "corpus noise floor", "perplexity", shown=True, total=len(noise_windows(corpus)), unit="windows"
    ) as advance:
        reference["noise_kl"] = _corpus_noise(run, loaded, corpus, reference, batching, advance)
    with run.stage("FP16 perplexity references (store)", "references", shown=True):
        run.shared.references.save_perplexity(baseline, reference)
    prompts, seconds = (
        (None, None)
        if run.shared.settings.prompts.skip
        else _timed(lambda: _prompts(run, fp16_prompt_stage, run, model, loaded))
    )
    long = (
        None
        if run.shared.settings.long_context.skip
        else fp16_long_stage(run, model, loaded, batching.perplexity_windows_per_pass)
    )
    return _measurements(
        run,
        model,
        variant,
        loaded,
        scores=scores,
        corpus=corpus,
        baseline=baseline,
        batching=batching,
        corpus_kl=None,
        prompt_results=prompts,
        prompt_seconds=seconds,
        long_context=long,
    )


def variant_pass(
    run: PassContext, model: ModelUnderTest, variant: Variant, loaded: LoadedModel, refs: References
) -> Measurements:
    """Measure a quantized variant against the stored FP16 references ``refs``."""
    batching = batching_for(variant, run.shared.settings)
    hook = KLAgainstReference(refs.corpus, refs.baseline.window_tokens)
    corpus = _plan(run, model)
    scores = _perplexity(run, loaded, corpus, hook, batching)
    if refs.baseline.window_tokens != scores.window_tokens:
        raise RuntimeError(f"{model.key} {variant.key}: perplexity windows differ from the FP16 baseline's")
    with run.stage("statistics", "statistics"):
        corpus_kl = corpus_comparison(hook.positions(), scores.window_tokens, refs.corpus["noise_kl"].numpy())
    prompts, seconds = (
        (None, None)
        if run.shared.settings.prompts.skip
        else _timed(lambda: _prompts(run, variant_prompt_stage, run, model, variant, loaded, refs, batching))
    )
    long = (
        None
        if refs.long is None
        else variant_long_stage(run, model, loaded, refs.long, batching.perplexity_windows_per_pass)
    )
    return _measurements(
        run,
        model,
        variant,
        loaded,
        scores=scores,
        corpus=corpus,
        baseline=refs.baseline,
        batching=batching,
        corpus_kl=corpus_kl,
        prompt_results=prompts,
        prompt_seconds=seconds,
        long_context=long,
    )
