"""score_windows / perplexity against independent plain computations, on real forwards.

The tiny models check the window arithmetic (offsets, masks, batching, chunking of the output head)
to float32 precision; the Hugging Face guide's strided loop runs on the real SmolLM2.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from integration_support import load_variant, plain_window_nll

import quant_fixtures.compute.scoring as evaluation
from quant_fixtures.compute.scoring import ScoredChunk, score_windows
from quant_fixtures.metrics.perplexity import nonoverlapping_windows, perplexity, strided_windows

VOCAB = 49152
PAIRS = [("llama", "fp16"), ("mistral", "fp16"), ("qwen2", "fp16"), ("llama", "nf4"), ("qwen2", "int8")]
# Batching and chunking change how the same arithmetic is grouped; LLM.int8 picks its fp16 outlier
# columns from the whole batch, so for int8 a batch is legitimately not the sum of its windows.
BATCH_SAFE = [p for p in PAIRS if p[1] != "int8"]
# Chunking only regroups the output head's positions: an untied and a tied head suffice.
CHUNK_PAIRS = [("llama", "fp16"), ("qwen2", "fp16")]


def _plans(n_tokens: int) -> dict:
    return {
        # 7 windows of 64: batches of 3 leave a remainder batch of 1.
        "nonoverlapping": nonoverlapping_windows(n_tokens, 64, 7 * 64),
        # Windows every 24 tokens scoring only new tokens (first_target differs inside a batch), the
        # last one shorter (a batch of its own).
        "strided": strided_windows(n_tokens, 64, 24, max_tokens=300),
    }


def _pair_id(pair: tuple[str, str]) -> str:
    return f"{pair[0]}-{pair[1]}"


@pytest.fixture(scope="module", params=PAIRS, ids=_pair_id)
def pair(
    request: pytest.FixtureRequest, tiny_models: dict[str, Path], digest_cache: Path
) -> Iterator[tuple[tuple[str, str], Any]]:
    arch, variant = request.param
    loaded = load_variant(tiny_models[arch], variant, digest_cache, key=f"tiny-{arch}")
    yield request.param, loaded.model
    loaded.model = None


def _rel(a: float, b: float) -> float:
    return abs(a - b) / abs(b)


@pytest.mark.parametrize("plan_name", ["nonoverlapping", "strided"])
def test_score_windows_matches_plain_forward(
    pair: tuple[tuple[str, str], Any], wikitext_ids: torch.Tensor, plan_name: str
) -> None:
    (arch, variant), model = pair
    plan = _plans(len(wikitext_ids))[plan_name]
    if plan_name == "strided":
        assert len({w.first_target - w.begin for w in plan}) > 1 and len({w.length for w in plan}) == 2
    scores = score_windows(model, wikitext_ids, plan, batch_size=1)
    plain = [plain_window_nll(model, wikitext_ids, w) for w in plan]
    assert scores.window_tokens == [count for _, count in plain] == [w.scored for w in plan]
    for i, (ours, (reference, _)) in enumerate(zip(scores.window_nll, plain)):
        assert _rel(ours, reference) < 1e-6, f"{arch} {variant} window {i}: {ours!r} vs plain {reference!r}"
    reference_ppl = math.exp(sum(nll for nll, _ in plain) / sum(count for _, count in plain))
    assert _rel(perplexity(scores.window_nll, scores.window_tokens), reference_ppl) < 1e-6
    assert scores.ppl == perplexity(scores.window_nll, scores.window_tokens)
    # A random model over a 49,152-token vocabulary is close to uniform but not uniform.
    assert 0.2 * VOCAB < reference_ppl < 5 * VOCAB


@pytest.mark.parametrize("pair", BATCH_SAFE, indirect=True, ids=_pair_id)
@pytest.mark.parametrize("plan_name", ["nonoverlapping", "strided"])
def test_batched_equals_one_at_a_time(
    pair: tuple[tuple[str, str], Any], wikitext_ids: torch.Tensor, plan_name: str
) -> None:
    (arch, variant), model = pair
    plan = _plans(len(wikitext_ids))[plan_name]
    single = score_windows(model, wikitext_ids, plan, batch_size=1)
    batched = score_windows(model, wikitext_ids, plan, batch_size=3)
    assert batched.window_tokens == single.window_tokens
    for i, (a, b) in enumerate(zip(batched.window_nll, single.window_nll)):
        assert _rel(a, b) < 1e-7, f"{arch} {variant} window {i}: batched {a!r} vs single {b!r}"


@pytest.mark.parametrize("pair", CHUNK_PAIRS, indirect=True, ids=_pair_id)
@pytest.mark.parametrize("batch_size", [1, 3])
def test_tiny_logprob_chunks_give_the_same_sums(
    pair: tuple[tuple[str, str], Any], wikitext_ids: torch.Tensor, monkeypatch: pytest.MonkeyPatch, batch_size: int
) -> None:
    (arch, variant), model = pair
    plan = _plans(len(wikitext_ids))["strided"]
    whole = score_windows(model, wikitext_ids, plan, batch_size=batch_size)
    seen: list[int] = []

    def hook(chunk: ScoredChunk) -> None:
        seen.append(chunk.targets.shape[1])

    # 3 positions per chunk for a single window, 1 for a batch of 3: many chunks per window.
    monkeypatch.setattr(evaluation, "LOGPROB_ELEMENTS_PER_CHUNK", VOCAB * 3)
    chunked = score_windows(model, wikitext_ids, plan, batch_size=batch_size, hook=hook)
    assert len(seen) >= whole.tokens // 3 and max(seen) <= 3
    if batch_size == 3:
        assert seen.count(1) > len(seen) // 2
    assert chunked.window_tokens == whole.window_tokens
    # The head's matmul over fewer rows may round differently in float32; nothing else changes.
    for i, (a, b) in enumerate(zip(chunked.window_nll, whole.window_nll)):
        assert _rel(a, b) < 1e-7, f"{arch} {variant} window {i}: chunked {a!r} vs whole {b!r}"
    assert _rel(chunked.ppl, whole.ppl) < 1e-7


# --- the Hugging Face perplexity guide's strided loop, on the real SmolLM2 ------------------------------


def hf_guide_strided(model: Any, ids: torch.Tensor, max_length: int, stride: int) -> dict:
    """The guide's loop (https://huggingface.co/docs/transformers/perplexity), written out plainly.

    Besides the guide's own weighting (mean loss x (valid labels - batch size)), accumulates the
    exact sum of token NLLs: mean loss x the number of labels the shifted loss really scores.
    """
    encodings = ids.unsqueeze(0)
    seq_len = encodings.size(1)
    literal_sum, literal_tokens, exact_sum, exact_tokens = 0.0, 0, 0.0, 0
    per_window = []
    prev_end_loc = 0
    for begin_loc in range(0, seq_len, stride):
        end_loc = min(begin_loc + max_length, seq_len)
        trg_len = end_loc - prev_end_loc  # may be different from stride on last loop
        input_ids = encodings[:, begin_loc:end_loc]
        target_ids = input_ids.clone()
        target_ids[:, :-trg_len] = -100
        with torch.no_grad():
            neg_log_likelihood = model(input_ids, labels=target_ids).loss.item()
        num_valid_tokens = int((target_ids != -100).sum().item())
        batch_size = target_ids.size(0)
        num_loss_tokens = num_valid_tokens - batch_size
        literal_sum += neg_log_likelihood * num_loss_tokens
        literal_tokens += num_loss_tokens
        scored = int((target_ids[:, 1:] != -100).sum().item())  # labels shift left by one inside the model
        exact_sum += neg_log_likelihood * scored
        exact_tokens += scored
        per_window.append((neg_log_likelihood, num_loss_tokens, scored))
        prev_end_loc = end_loc
        if end_loc == seq_len:
            break
    return {
        "literal_ppl": math.exp(literal_sum / literal_tokens),
        "exact_ppl": math.exp(exact_sum / exact_tokens),
        "exact_tokens": exact_tokens,
        "windows": per_window,
    }


def test_strided_windows_match_hf_guide_on_smollm2(smollm2_fp16: Any, wikitext_ids: torch.Tensor) -> None:
    # The first window, a full later one and a shorter last one (trg_len 232 < stride).
    ids = wikitext_ids[:1000]
    ctx, stride = 512, 256
    plan = strided_windows(len(ids), ctx, stride)
    assert [(w.begin, w.end) for w in plan] == [(0, 512), (256, 768), (512, 1000)]
    scores = score_windows(smollm2_fp16.model, ids, plan, batch_size=1)
    guide = hf_guide_strided(smollm2_fp16.model, ids, ctx, stride)

    # Same windows, same scored tokens: every token after the first, once.
    assert len(guide["windows"]) == len(plan)
    assert scores.window_tokens == [scored for _, _, scored in guide["windows"]]
    assert scores.tokens == guide["exact_tokens"] == len(ids) - 1
    for i, (ours, (mean, _, scored)) in enumerate(zip(scores.window_nll, guide["windows"])):
        assert _rel(ours, mean * scored) < 1e-6, f"window {i}: {ours!r} vs guide {mean * scored!r}"
    assert _rel(scores.ppl, guide["exact_ppl"]) < 1e-6
    assert 5 < scores.ppl < 100, f"implausible SmolLM2 WikiText-2 perplexity {scores.ppl}"

    # The guide's weighting counts one token too few in every window after the first. Applying that
    # same weighting to our per-window sums reproduces the guide's number exactly ...
    literal_from_ours = math.exp(
        sum(
            nll / count * loss_tokens
            for nll, count, (_, loss_tokens, _) in zip(scores.window_nll, scores.window_tokens, guide["windows"])
        )
        / sum(loss_tokens for _, loss_tokens, _ in guide["windows"])
    )
    assert _rel(literal_from_ours, guide["literal_ppl"]) < 1e-6
    # ... and the weighting itself moves the perplexity only slightly: 2.5e-4 relative on these 1000
    # tokens (1.9e-4 on the first 1500), as each later window's mean loss is weighted one token short.
    assert 0 < _rel(scores.ppl, guide["literal_ppl"]) < 5e-4


def test_hook_time_is_not_the_models(
    tiny_models: dict[str, Path], digest_cache: Path, wikitext_ids: torch.Tensor
) -> None:
    """tok/s compares variants with FP16: the exact comparison a variant's hook does is timed apart."""
    import time as clock

    model = load_variant(tiny_models["llama"], "fp16", digest_cache, key="tiny-llama").model
    plan = nonoverlapping_windows(len(wikitext_ids), 64, 2 * 64)
    bare = score_windows(model, wikitext_ids, plan, batch_size=1)
    slow = score_windows(model, wikitext_ids, plan, batch_size=1, hook=lambda chunk: clock.sleep(0.25))
    assert slow.hook_seconds >= 0.5 and bare.hook_seconds == 0.0
    assert slow.seconds < 0.5  # the 0.5 s of sleeps are not in the model's time (two tiny windows)
