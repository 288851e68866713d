"""Long sequences read in chunks with a KV cache (compute/long_context.py) against the model's own
forward over the whole sequence at once, on the tiny real architectures: Llama, Qwen2 and Mistral
with a 32-token sliding window, so chunks of 48 positions cross the window and the cache must keep
only what the window sees."""

from __future__ import annotations

import pytest
import torch
from integration_support import TINY_ARCHS, load_variant, plain_window_nll

from quant_fixtures.compute.corpus_kl import HiddenRecorder
from quant_fixtures.compute.long_context import score_in_chunks
from quant_fixtures.compute.scoring import score_windows
from quant_fixtures.metrics.perplexity import Window

WINDOWS = [Window(0, 300, 1), Window(300, 600, 301), Window(600, 900, 650)]  # the last scores from offset 50


@pytest.mark.parametrize("arch", TINY_ARCHS)
def test_chunks_with_a_cache_give_the_whole_sequence_forward(arch, tiny_models, digest_cache, wikitext_ids):
    model = load_variant(tiny_models[arch], "fp16", digest_cache, key=f"tiny-{arch}").model
    chunked = score_in_chunks(model, wikitext_ids, WINDOWS, chunk_tokens=48, stage="long context")
    plain = [plain_window_nll(model, wikitext_ids, w) for w in WINDOWS]
    assert chunked.window_tokens == [count for _, count in plain] == [299, 299, 250]
    for got, (expected, _) in zip(chunked.window_nll, plain):
        assert got == pytest.approx(expected, rel=1e-6)


def test_chunk_length_does_not_change_what_is_recorded(tiny_models, digest_cache, wikitext_ids):
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


def test_nf4_in_chunks_matches_its_windows(tiny_models, digest_cache, wikitext_ids):
    """A quantized model too (NF4 dequantizes per block, so chunking does not change its weights)."""
    model = load_variant(tiny_models["llama"], "nf4", digest_cache, key="tiny-llama").model
    chunked = score_in_chunks(model, wikitext_ids, WINDOWS, chunk_tokens=64, stage="long context")
    whole = score_windows(model, wikitext_ids, WINDOWS)
    assert chunked.window_nll == pytest.approx(whole.window_nll, rel=1e-5)


def test_a_bad_chunk_length_is_an_error(tiny_models, digest_cache, wikitext_ids):
    model = load_variant(tiny_models["llama"], "fp16", digest_cache, key="tiny-llama").model
    with pytest.raises(ValueError, match="chunk_tokens must be >= 1, got 0"):
        score_in_chunks(model, wikitext_ids, WINDOWS, chunk_tokens=0, stage="long context")
