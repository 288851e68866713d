"""Scored tokens/s of the perplexity pass, tokens/s of batched generation, and the HF guide's
strided loop on the same model for the speed ratio. Timers see CUDA work finished (synchronized)."""

from __future__ import annotations

import pytest

from quant_fixtures.compute.benchmarking import hf_guide_strided_ppl, synchronized
from quant_fixtures.compute.generation import greedy_generate, prompt_token_ids
from quant_fixtures.compute.scoring import score_windows
from quant_fixtures.metrics.perplexity import nonoverlapping_windows

pytestmark = pytest.mark.benchmark


def _corpus(quant_session, model, loaded, settings):
    ids = quant_session.inputs.corpus_plan(model).ids  # the joined text (benchmarks run the default protocol)
    windows = nonoverlapping_windows(len(ids), settings.ctx, settings.ctx * settings.windows)
    return ids, windows


def test_perplexity_pass(benchmark, bench_model, bench_settings, quant_session):
    model, variant, loaded = bench_model
    ids, windows = _corpus(quant_session, model, loaded, bench_settings)
    batch = min(len(windows), quant_session.settings.perplexity.batch_size)
    run = synchronized(score_windows, loaded.model)
    scores = benchmark.pedantic(
        run, args=(loaded.model, ids, windows, batch), rounds=bench_settings.rounds, warmup_rounds=1
    )
    benchmark.extra_info.update(
        kind="ppl_batched",
        model=model,
        variant=variant,
        tokens=scores.tokens,
        windows=len(windows),
        ctx=bench_settings.ctx,
        batch_size=batch,
    )


@pytest.mark.quant_variants("fp16")
def test_hf_guide_strided_loop(benchmark, bench_model, bench_settings, quant_session):
    """The guide's loop (stride = ctx / 4, one window per forward) over the same tokens."""
    model, variant, loaded = bench_model
    ids, windows = _corpus(quant_session, model, loaded, bench_settings)
    span = ids[: windows[-1].end]
    ctx = bench_settings.ctx
    ppl, tokens = benchmark.pedantic(
        hf_guide_strided_ppl, args=(loaded.model, span, ctx, ctx // 4), rounds=bench_settings.rounds, warmup_rounds=1
    )
    assert ppl > 1.0
    benchmark.extra_info.update(
        kind="ppl_hf_guide", model=model, variant=variant, tokens=tokens, ctx=ctx, stride=ctx // 4
    )


def test_batched_generation(benchmark, bench_model, bench_settings, quant_session):
    model, variant, loaded = bench_model
    prompts = quant_session.inputs.prompts()[: bench_settings.prompts]
    ids = [
        prompt_token_ids(loaded.tokenizer, p.prompt, quant_session.settings.prompts.use_chat_template) for p in prompts
    ]
    new = bench_settings.new_tokens
    run = synchronized(greedy_generate, loaded.model)
    responses = benchmark.pedantic(
        run,
        args=(loaded.model, loaded.tokenizer, ids, [new] * len(ids), len(ids)),
        rounds=bench_settings.rounds,
        warmup_rounds=1,
    )
    # Responses stop at EOS; the decode steps run for the batch's max either way.
    benchmark.extra_info.update(
        kind="generate",
        model=model,
        variant=variant,
        tokens=len(ids) * new,
        generated=sum(len(r) for r in responses),
        prompts=len(ids),
        new_tokens=new,
    )
