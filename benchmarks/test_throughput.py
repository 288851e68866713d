"""Scored tokens/s of the perplexity pass, tokens/s of batched generation, and the HF guide's
strided loop on the same model for the speed ratio. Timers see CUDA work finished (synchronized).

Timings are recorded, never asserted; what is asserted is that the timed work really ran and gave
sane output (every window scored, finite perplexities, responses within their limits), and that
pytest-benchmark recorded a timing per round."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import pytest
import torch

from quant_fixtures.compute.benchmarking import hf_guide_strided_ppl, synchronized
from quant_fixtures.compute.generation import greedy_generate, prompt_token_ids
from quant_fixtures.compute.scoring import score_windows
from quant_fixtures.metrics.perplexity import Window, nonoverlapping_windows, strided_windows
from quant_fixtures.settings import BenchSettings

if TYPE_CHECKING:
    from pytest_benchmark.fixture import BenchmarkFixture

    from quant_fixtures.models.loading import LoadedModel
    from quant_fixtures.session.orchestrator import EvaluationSession
    from quant_fixtures.settings import BenchSettings

pytestmark = pytest.mark.benchmark


def _corpus(quant_session: EvaluationSession, model: str, settings: BenchSettings) -> tuple[torch.Tensor, list[Window]]:
    ids = quant_session.plans.plan(
        quant_session.models.under_test(model)
    ).ids  # the joined text (benchmarks run the default protocol)
    windows = nonoverlapping_windows(len(ids), settings.ctx, settings.ctx * settings.windows)
    return ids, windows


def _check_recorded(benchmark: BenchmarkFixture, rounds: int) -> None:
    """pytest-benchmark kept one timing per round (it records none when disabled, e.g. under xdist)."""
    if benchmark.disabled:
        return
    assert benchmark.stats is not None, "pytest-benchmark recorded no statistics"
    timings = benchmark.stats.stats.data
    assert len(timings) == rounds and all(t > 0 for t in timings), timings


def test_perplexity_pass(
    benchmark: BenchmarkFixture,
    bench_model: tuple[str, str, LoadedModel],
    bench_settings: BenchSettings,
    quant_session: EvaluationSession,
) -> None:
    model, variant_key, loaded = bench_model
    ids, windows = _corpus(quant_session, model, bench_settings)
    batch = min(len(windows), quant_session.settings.perplexity.batch_size)
    run = synchronized(score_windows, loaded.model)
    scores = benchmark.pedantic(
        run, args=(loaded.model, ids, windows, batch), rounds=bench_settings.rounds, warmup_rounds=1
    )
    # Every window was scored, each of its targets once, with a finite loss.
    assert scores.window_tokens == [w.scored for w in windows]
    assert len(scores.window_nll) == len(windows)
    assert all(math.isfinite(nll) and nll > 0 for nll in scores.window_nll), scores.window_nll
    assert math.isfinite(scores.ppl) and scores.ppl > 1.0
    _check_recorded(benchmark, bench_settings.rounds)
    benchmark.extra_info.update(
        kind="ppl_batched",
        model=model,
        variant=variant_key,
        tokens=scores.tokens,
        windows=len(windows),
        ctx=bench_settings.ctx,
        batch_size=batch,
    )


@pytest.mark.quant_variants("fp16")
def test_hf_guide_strided_loop(
    benchmark: BenchmarkFixture,
    bench_model: tuple[str, str, LoadedModel],
    bench_settings: BenchSettings,
    quant_session: EvaluationSession,
) -> None:
    """The guide's loop (stride = ctx / 4, one window per forward) over the same tokens."""
    model, variant_key, loaded = bench_model
    ids, windows = _corpus(quant_session, model, bench_settings)
    span = ids[: windows[-1].end]
    ctx = bench_settings.ctx
    ppl, tokens = benchmark.pedantic(
        hf_guide_strided_ppl, args=(loaded.model, span, ctx, ctx // 4), rounds=bench_settings.rounds, warmup_rounds=1
    )
    # The loop scored what the guide's strided plan scores: every token after the first, once.
    assert tokens == sum(w.scored for w in strided_windows(len(span), ctx, ctx // 4)) == len(span) - 1
    assert math.isfinite(ppl) and ppl > 1.0
    _check_recorded(benchmark, bench_settings.rounds)
    benchmark.extra_info.update(
        kind="ppl_hf_guide", model=model, variant=variant_key, tokens=tokens, ctx=ctx, stride=ctx // 4
    )


def test_batched_generation(
    benchmark: BenchmarkFixture,
    bench_model: tuple[str, str, LoadedModel],
    bench_settings: BenchSettings,
    quant_session: EvaluationSession,
) -> None:
    model, variant_key, loaded = bench_model
    prompts = quant_session.prompt_suite.prompts()[: bench_settings.prompts]
    ids = [
        prompt_token_ids(loaded.tokenizer, p.prompt, quant_session.settings.prompts.use_chat_template) for p in prompts
    ]
    assert ids and all(ids), "no prompt, or a prompt without tokens"
    new = bench_settings.new_tokens
    run = synchronized(greedy_generate, loaded.model)
    responses = benchmark.pedantic(
        run,
        args=(loaded.model, loaded.tokenizer, ids, [new] * len(ids), len(ids)),
        rounds=bench_settings.rounds,
        warmup_rounds=1,
    )
    # One response per prompt, each within its limit, with token ids of the model's vocabulary;
    # and the model generated something (responses stop at EOS, so some may be short or empty).
    vocab = _vocabulary_size(loaded)
    assert len(responses) == len(ids)
    assert all(len(r) <= new for r in responses), [len(r) for r in responses]
    assert all(0 <= t < vocab for r in responses for t in r)
    assert sum(len(r) for r in responses) > 0, "no prompt got a single generated token"
    _check_recorded(benchmark, bench_settings.rounds)
    # The decode steps run for the batch's max either way.
    benchmark.extra_info.update(
        kind="generate",
        model=model,
        variant=variant_key,
        tokens=len(ids) * new,
        generated=sum(len(r) for r in responses),
        prompts=len(ids),
        new_tokens=new,
    )


def _vocabulary_size(loaded: LoadedModel) -> int:
    return int(loaded.model.get_output_embeddings().weight.shape[0])
