"""Long sequences read in chunks with a KV cache (compute/long_context.py) against the model's own
forward over the whole sequence at once, on the tiny real architectures: Llama, Qwen2 and Mistral
with a 32-token sliding window, so chunks of 48 positions cross the window and the cache must keep
only what the window sees."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from integration_support import TINY_ARCHS, build_tiny_model, load_variant, plain_window_nll

from quant_fixtures.compute.corpus_kl import HiddenRecorder
from quant_fixtures.compute.long_context import score_in_chunks
from quant_fixtures.compute.scoring import ScoredChunk, score_windows
from quant_fixtures.metrics.perplexity import Window
from quant_fixtures.session.long_context_stage import TargetRecorder

WINDOWS = [Window(0, 300, 1), Window(300, 600, 301), Window(600, 900, 650)]  # the last scores from offset 50


@pytest.mark.parametrize("arch", TINY_ARCHS)
def test_chunks_with_a_cache_give_the_whole_sequence_forward(
    arch: str, tiny_models: dict[str, Path], digest_cache: Path, wikitext_ids: torch.Tensor
) -> None:
    model = load_variant(tiny_models[arch], "fp16", digest_cache, key=f"tiny-{arch}").model
    chunked = score_in_chunks(model, wikitext_ids, WINDOWS, chunk_tokens=48, stage="long context")
    plain = [plain_window_nll(model, wikitext_ids, w) for w in WINDOWS]
    assert chunked.window_tokens == [count for _, count in plain] == [299, 299, 250]
    for got, (expected, _) in zip(chunked.window_nll, plain):
        assert got == pytest.approx(expected, rel=1e-6)


def test_chunk_length_does_not_change_what_is_recorded(
    tiny_models: dict[str, Path], digest_cache: Path, wikitext_ids: torch.Tensor
) -> None:
    """The hooks see every scored position once, in order, whatever the chunk length: the hidden
    states recorded in chunks of 7 and of 300 are the same rows."""
    model = load_variant(tiny_models["qwen2"], "fp16", digest_cache, key="tiny-qwen2").model
    recorded = []
    for chunk in (7, 300):
        recorder = HiddenRecorder(len(WINDOWS))
        score_in_chunks(model, wikitext_ids, WINDOWS, chunk_tokens=chunk, stage="long context", hook=recorder)
        recorded.append(recorder.hidden_states())
    assert recorded[0].shape == (sum(w.scored for w in WINDOWS), model.config.hidden_size)
    torch.testing.assert_close(recorded[0], recorded[1], rtol=1e-4, atol=1e-4)


def test_nf4_in_chunks_matches_its_windows(
    tiny_models: dict[str, Path], digest_cache: Path, wikitext_ids: torch.Tensor
) -> None:
    """A quantized model too (NF4 dequantizes per block, so chunking does not change its weights)."""
    model = load_variant(tiny_models["llama"], "nf4", digest_cache, key="tiny-llama").model
    chunked = score_in_chunks(model, wikitext_ids, WINDOWS, chunk_tokens=64, stage="long context")
    whole = score_windows(model, wikitext_ids, WINDOWS)
    assert chunked.window_nll == pytest.approx(whole.window_nll, rel=1e-5)


def test_a_bad_chunk_length_is_an_error(
    tiny_models: dict[str, Path], digest_cache: Path, wikitext_ids: torch.Tensor
) -> None:
    model = load_variant(tiny_models["llama"], "fp16", digest_cache, key="tiny-llama").model
    with pytest.raises(ValueError, match="chunk_tokens must be >= 1, got 0"):
        score_in_chunks(model, wikitext_ids, WINDOWS, chunk_tokens=0, stage="long context")


# -- LLM.int8 read as a user's model reads it (compute/long_context.py) ----------------------------


@pytest.fixture(scope="module")
def int8_with_outliers(
    tmp_path_factory: pytest.TempPathFactory, smollm2_tokenizer: Any, digest_cache: Path
) -> dict[str, Any]:
    """Per architecture, the tiny model with planted outlier features, loaded in LLM.int8."""
    root = tmp_path_factory.mktemp("tiny-outliers")
    return {
        arch: load_variant(
            build_tiny_model(arch, smollm2_tokenizer, root / arch, outliers=True),
            "int8",
            digest_cache,
            key=f"tiny-outliers-{arch}",
        ).model
        for arch in TINY_ARCHS
    }


LONG = [Window(0, 400, 1), Window(400, 800, 401)]


@pytest.mark.parametrize("arch", TINY_ARCHS)
def test_int8_in_chunks_equals_the_whole_read(
    arch: str, int8_with_outliers: dict[str, Any], wikitext_ids: torch.Tensor, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Chunks of 48 give what one read of each 400-token sequence gives, because every chunk uses
    the outlier columns of the whole sequence; columns chosen per chunk (the control) do not."""
    model = int8_with_outliers[arch]
    whole = score_in_chunks(model, wikitext_ids, LONG, chunk_tokens=1000, stage="long context")
    chunked = score_in_chunks(model, wikitext_ids, LONG, chunk_tokens=48, stage="long context", whole_first=False)
    assert whole.reads == [1, 1] and chunked.settled == [True, True] and min(chunked.reads) >= 2
    assert chunked.window_nll == pytest.approx(whole.window_nll, rel=1e-6)  # measured: within 1e-7
    monkeypatch.setattr("quant_fixtures.compute.long_context.amplifies_float_noise", lambda model: False)
    per_chunk = score_in_chunks(model, wikitext_ids, LONG, chunk_tokens=48, stage="long context", whole_first=False)
    # measured: 3e-5 to 1.6e-4, several hundred times the float noise above
    assert max(abs(a / b - 1) for a, b in zip(per_chunk.window_nll, whole.window_nll)) > 2e-5


def test_int8_reads_a_prefill_at_once_and_in_chunks_only_when_that_runs_out_of_memory(
    int8_with_outliers: dict[str, Any], wikitext_ids: torch.Tensor
) -> None:
    """A prefill longer than a chunk is read at once; where that runs out of memory (here: a forward of
    more than 60 positions raises it), in chunks as long as fit (not shorter than the planned 48)
    with the whole prefill's columns: the same numbers. A prefill as long as one that ran out of
    memory is not tried at once again."""
    model = int8_with_outliers["llama"]
    at_once = score_in_chunks(model, wikitext_ids, LONG, chunk_tokens=48, stage="long context")
    assert at_once.reads == [1, 1] and at_once.chunked == [False, False]
    tried: list[int] = []  # positions of each call that ran out of memory

    def no_room(module: torch.nn.Module, args: tuple[object, ...], kwargs: dict[str, Any]) -> None:
        if kwargs["input_ids"].shape[1] > 60:
            tried.append(kwargs["input_ids"].shape[1])
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    handle = model.base_model.register_forward_pre_hook(no_room, with_kwargs=True)
    try:
        fallback = score_in_chunks(model, wikitext_ids, LONG, chunk_tokens=48, stage="long context")
    finally:
        handle.remove()
    assert fallback.chunked == [True, True] and min(fallback.reads) >= 2 and all(fallback.settled)
    # the whole prefill, then chunks of half of it, halved while out of memory; the second sequence,
    # as long as the first, went straight to the chunk that fitted
    assert tried == [399, 200, 100] and fallback.prefill_chunk == [50, 50]
    assert at_once.prefill_chunk == [399, 399]
    assert fallback.window_nll == pytest.approx(at_once.window_nll, rel=1e-6)


def test_a_read_that_only_flags_columns_stops_at_the_answer(
    int8_with_outliers: dict[str, Any], wikitext_ids: torch.Tensor
) -> None:
    """LLM.int8 in chunks: the first read of a probe only flags its prefill's outlier columns, so it
    reads no answer position; each scoring read reads every answer position once."""
    model = int8_with_outliers["llama"]
    one_position = [0]

    def count(module: torch.nn.Module, args: tuple[object, ...], kwargs: dict[str, Any]) -> None:
        one_position[0] += int(kwargs["input_ids"].shape[1] == 1)

    handle = model.base_model.register_forward_pre_hook(count, with_kwargs=True)
    try:
        scores = score_in_chunks(
            model, wikitext_ids, LONG[:1], 48, "long context", decode_from=[300], whole_first=False
        )
    finally:
        handle.remove()
    assert scores.chunked == [True] and scores.reads[0] >= 2
    assert one_position[0] == (scores.reads[0] - 1) * (399 - 300)


class ArgmaxRecorder:
    """Hook: the argmax at each scored position, window after window."""

    def __init__(self) -> None:
        self.argmax: list[int] = []

    def reset(self, batch: Sequence[int]) -> None:
        self.argmax = []

    def __call__(self, chunk: ScoredChunk) -> None:
        for row in range(len(chunk.windows)):
            self.argmax += chunk.logp[row].argmax(-1)[chunk.mask[row]].tolist()


@pytest.mark.parametrize("arch", TINY_ARCHS)
@pytest.mark.parametrize("chunk", [500, 48])
def test_a_probe_answer_read_token_by_token_is_what_generate_decodes(
    arch: str, chunk: int, int8_with_outliers: dict[str, Any], wikitext_ids: torch.Tensor
) -> None:
    """A probe's answer is read as greedy decoding reads it: the prompt's prefill (whole, or in chunks
    with the prompt's own outlier columns), then one token per forward pass. Fed generate's own
    greedy continuation, every step's argmax is that continuation's next token, so a probe whose
    answer is what generate produces is retrieved, and one whose answer differs is not."""
    model = int8_with_outliers[arch]
    prompt = wikitext_ids[1000:1300]
    with torch.inference_mode():
        generated = model.generate(
            prompt.unsqueeze(0),
            attention_mask=torch.ones(1, prompt.numel(), dtype=torch.long),
            max_new_tokens=6,
            do_sample=False,
            min_new_tokens=6,
        )[0, prompt.numel() :]
    ids = torch.cat([prompt, generated])
    window = Window(0, ids.numel(), prompt.numel())
    recorder = ArgmaxRecorder()
    score_in_chunks(model, ids, [window], chunk, "long context", recorder, decode_from=[prompt.numel()])
    assert recorder.argmax == generated.tolist()


# -- several sequences per pass -------------------------------------------------------------------

SAME_LENGTH = [Window(0, 400, 1), Window(400, 800, 401), Window(1200, 1300, 1201), Window(800, 1200, 801)]


@pytest.mark.parametrize("variant", ["fp16", "int8"])
def test_sequences_read_together_give_what_each_gives_alone(
    variant: str,
    tiny_models: dict[str, Path],
    digest_cache: Path,
    int8_with_outliers: dict[str, Any],
    wikitext_ids: torch.Tensor,
) -> None:
    """Windows of one length and prefill share a pass (three of 400 tokens; the one of 100 alone), and
    each row reads what the window read alone reads: the same sums, the same recorded positions, the
    same argmax at every answer position read one per call."""
    from quant_fixtures.compute.memory import BatchLog

    if variant == "fp16":
        model = load_variant(tiny_models["qwen2"], "fp16", digest_cache, key="tiny-qwen2").model
    else:
        model = int8_with_outliers["mistral"]
    decode_from = [350, 350, 60, 350]
    results = []
    for batch_size in (1, 8):
        log, hidden, answers = BatchLog(), HiddenRecorder(len(SAME_LENGTH)), TargetRecorder(len(SAME_LENGTH))
        scores = score_in_chunks(
            model, wikitext_ids, SAME_LENGTH, 48, "long context", hidden, log=log, batch_size=batch_size
        )
        score_in_chunks(
            model,
            wikitext_ids,
            SAME_LENGTH,
            48,
            "long context",
            answers,
            decode_from=decode_from,
            batch_size=batch_size,
        )
        results.append((scores, hidden.hidden_states(), answers, log.used["long context"]))
    (alone, alone_hidden, alone_answers, alone_used), (together, together_hidden, together_answers, used) = results
    assert alone_used == 1 and used == 3
    assert together.window_nll == pytest.approx(alone.window_nll, rel=1e-6)
    assert together.reads == alone.reads == [1, 1, 1, 1]
    torch.testing.assert_close(together_hidden, alone_hidden, rtol=1e-4, atol=1e-4)
    hits = [h.tolist() for h in together_answers.window_hits()]
    assert [len(h) for h in hits] == [399, 399, 99, 399] and hits == [h.tolist() for h in alone_answers.window_hits()]
    np.testing.assert_allclose(together_answers.all_logp(), alone_answers.all_logp(), rtol=1e-5, atol=1e-6)


def test_a_pass_that_runs_out_of_memory_reads_fewer_sequences_then_shorter_chunks(
    tiny_models: dict[str, Path], digest_cache: Path, wikitext_ids: torch.Tensor
) -> None:
    """Out of memory with several sequences halves how many share a pass; with one, the chunk length
    (the budget's scale); the numbers stay those of the unconstrained read and the log says what
    changed."""
    from quant_fixtures.compute.memory import BatchLog, MemoryBudget

    model = load_variant(tiny_models["llama"], "fp16", digest_cache, key="tiny-llama").model
    free = score_in_chunks(model, wikitext_ids, SAME_LENGTH[:3], 64, "long context", batch_size=4)

    def no_room(module: torch.nn.Module, args: tuple[object, ...], kwargs: dict[str, Any]) -> None:
        rows, positions = kwargs["input_ids"].shape
        if rows > 1 or positions > 32:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    log, budget = BatchLog(), MemoryBudget("cpu")
    handle = model.base_model.register_forward_pre_hook(no_room, with_kwargs=True)
    try:
        tight = score_in_chunks(
            model, wikitext_ids, SAME_LENGTH[:3], 64, "long context", budget=budget, log=log, batch_size=4
        )
    finally:
        handle.remove()
    assert budget.scale == 0.5 and log.used["long context"] == 1, log.notes
    assert any("out of memory at 2 sequences per pass" in note for note in log.notes), log.notes
    assert any("retried with chunks at 0.5" in note for note in log.notes)
    assert tight.window_nll == pytest.approx(free.window_nll, rel=1e-6)
