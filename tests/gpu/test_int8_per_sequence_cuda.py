"""LLM.int8 with per-sequence outlier columns on CUDA (models/int8_per_sequence.py) against
bitsandbytes' own layer run one sequence at a time: a layer with outliers in some sequences and in
left padding, and a real model's per-sequence KL to FP16 scored in one padded batch."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import torch

if TYPE_CHECKING:
    import bitsandbytes as bnb

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


def _layer(seed: int = 0) -> bnb.nn.Linear8bitLt:
    import bitsandbytes as bnb

    torch.manual_seed(seed)
    layer = bnb.nn.Linear8bitLt(512, 384, bias=True, has_fp16_weights=False, threshold=6.0)
    layer.weight = bnb.nn.Int8Params(
        torch.randn(384, 512, dtype=torch.float16) * 0.05, requires_grad=False, has_fp16_weights=False
    )
    layer.bias = torch.nn.Parameter(torch.randn(384, dtype=torch.float16) * 0.1)
    return layer.cuda().eval()


def _left_padded_inputs(lengths: list[int], seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """[B, max length, 512] float16 inputs, left padded (``mask`` true on real positions), with
    outliers owned by sequences 1 and 3 and one in sequence 2's padding."""
    width = max(lengths)
    g = torch.Generator(device="cuda").manual_seed(seed)
    x = torch.randn(len(lengths), width, 512, device="cuda", dtype=torch.float16, generator=g)
    mask = torch.zeros(len(lengths), width, dtype=torch.bool, device="cuda")
    for i, n in enumerate(lengths):
        mask[i, width - n :] = True
    x[1, 10, 7] = 9.0  # sequence 1 owns column 7
    x[3, -1, 100] = -12.0  # sequence 3 owns column 100
    x[2, 0, 200] = 40.0  # padding of sequence 2: must not count
    return x, mask


def test_layer_in_a_padded_batch_matches_bitsandbytes_alone() -> None:
    from quant_fixtures.models.int8_per_sequence import install_per_sequence_int8, real_tokens

    layer = _layer()
    lengths = [37, 64, 9, 50]
    width = max(lengths)
    x, mask = _left_padded_inputs(lengths, seed=1)
    with torch.inference_mode():
        alone = [layer(x[i : i + 1, width - n :]) for i, n in enumerate(lengths)]
        stock = layer(x)
        install_per_sequence_int8(layer)
        with real_tokens(mask):
            ours = layer(x)
    worst = stock_worst = 0.0
    for i, n in enumerate(lengths):
        scale = alone[i].float().abs().max()
        worst = max(worst, float((ours[i, width - n :] - alone[i][0]).float().abs().max() / scale))
        stock_worst = max(stock_worst, float((stock[i, width - n :] - alone[i][0]).float().abs().max() / scale))
    print(
        f"\n[measured] max |per-sequence batch - bitsandbytes alone| / max|out| = {worst:.2e}; "
        f"stock batch {stock_worst:.2e}"
    )
    assert worst < 2e-3  # float16 sums in another order at most
    assert stock_worst > 10 * worst  # the control: bitsandbytes' own batch moves them


def test_a_batch_of_one_length_matches_one_sequence_alone(tiny_llama: Path) -> None:
    """Log-probs of a batch of equal-length sequences (how the suite batches LLM.int8: perplexity
    windows, and scoring rows of one length) with per-sequence outliers, against bitsandbytes' own
    layer one sequence at a time; one sequence carries an outlier embedding that makes every layer
    decompose, which moves the others under bitsandbytes' own batching (the control)."""
    from transformers import AutoModelForCausalLM

    from quant_fixtures.models.int8_per_sequence import install_per_sequence_int8, real_tokens, remove_per_sequence_int8
    from quant_fixtures.settings import LoadSettings
    from quant_fixtures.variants import VARIANTS

    int8 = AutoModelForCausalLM.from_pretrained(
        tiny_llama, dtype=torch.float16, device_map="cuda:0", **VARIANTS["int8"].load_kwargs(LoadSettings("cuda:0"))
    ).eval()
    assert install_per_sequence_int8(int8) > 0 and VARIANTS["int8"].batch_invariant
    with torch.no_grad():
        int8.model.embed_tokens.weight[7].zero_()
        int8.model.embed_tokens.weight[7, 3] = 40.0
    g = torch.Generator().manual_seed(0)
    rows = [torch.randint(10, 500, (40,), generator=g).tolist() for _ in range(5)]
    rows[2][5] = 7  # one prompt carries the outlier token
    width = max(len(r) for r in rows)
    ids = torch.zeros(len(rows), width, dtype=torch.long)
    mask = torch.zeros(len(rows), width, dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r)], mask[i, : len(r)] = torch.tensor(r), 1
    ids, mask = ids.cuda(), mask.cuda()
    with torch.inference_mode(), real_tokens(mask):
        batched = torch.log_softmax(int8(input_ids=ids, attention_mask=mask).logits.double(), -1)
    remove_per_sequence_int8(int8)
    try:
        with torch.inference_mode():
            alone = [torch.log_softmax(int8(input_ids=torch.tensor([r]).cuda()).logits[0].double(), -1) for r in rows]
            stock = torch.log_softmax(int8(input_ids=ids, attention_mask=mask).logits.double(), -1)
    finally:
        install_per_sequence_int8(int8)
    worst = stock_worst = 0.0
    for i, r in enumerate(rows):
        n = len(r)
        diff = (batched[i, :n] - alone[i]).abs().max()
        worst = max(worst, float(diff))
        stock_worst = max(stock_worst, float((stock[i, :n] - alone[i]).abs().max()))
    print(f"\n[measured] max |log-prob batch - alone| per-sequence {worst:.2e}, stock bitsandbytes {stock_worst:.2e}")
    assert worst < 5e-3
    assert stock_worst > 10 * worst


def test_static_path_in_a_padded_batch_matches_bitsandbytes_alone() -> None:
    """The static-shape path (models/int8_static.py) that CUDA graphs capture: each sequence of a
    padded batch against bitsandbytes' own layer on the sequence alone, with the overflow guard clear."""
    from quant_fixtures.models.int8_per_sequence import install_per_sequence_int8, real_tokens
    from quant_fixtures.models.int8_static import OverflowGuard, static_outlier_columns

    layer = _layer()
    lengths = [37, 64, 9, 50]
    width = max(lengths)
    x, mask = _left_padded_inputs(lengths, seed=2)
    x[0, 40, 9] = 8.0  # sequence 0 owns column 9 too
    guard = OverflowGuard("cuda")
    with torch.inference_mode():
        alone = [layer(x[i : i + 1, width - n :]) for i, n in enumerate(lengths)]
        install_per_sequence_int8(layer)
        with real_tokens(mask), static_outlier_columns(guard):
            ours = layer(x)
    assert not guard.overflowed()
    worst = 0.0
    for i, n in enumerate(lengths):
        scale = alone[i].float().abs().max()
        worst = max(worst, float((ours[i, width - n :] - alone[i][0]).float().abs().max() / scale))
    print(f"\n[measured] static path: max |batch - bitsandbytes alone| / max|out| = {worst:.2e}")
    assert worst < 2e-3  # float16 sums in another order at most


def test_int8_decoding_is_captured_and_gives_the_exact_paths_tokens(tiny_llama: Path) -> None:
    """An LLM.int8 model decodes as a CUDA graph on the static path, with the tokens of the exact
    (dynamic, eager) per-sequence path up to float summation order: a row may leave the exact path's
    tokens only at a step where the exact path's two best logits are within float16 noise of each
    other (measured on an H100: 1 of 160 tokens, a near tie of this random model). A layer with
    outliers in every step keeps the guard busy."""
    from transformers import AutoModelForCausalLM

    from quant_fixtures.compute.decoding import can_capture, static_greedy
    from quant_fixtures.models import int8_static
    from quant_fixtures.models.int8_per_sequence import install_per_sequence_int8
    from quant_fixtures.settings import LoadSettings
    from quant_fixtures.variants import VARIANTS

    int8 = AutoModelForCausalLM.from_pretrained(
        tiny_llama, dtype=torch.float16, device_map="cuda:0", **VARIANTS["int8"].load_kwargs(LoadSettings("cuda:0"))
    ).eval()
    install_per_sequence_int8(int8)
    with torch.no_grad():
        int8.model.embed_tokens.weight[7, 3] = 40.0  # an outlier column wherever token 7 is read
    g = torch.Generator().manual_seed(3)
    ids = torch.randint(10, 500, (4, 24), generator=g)
    ids[1, 5] = 7
    mask = torch.ones_like(ids)
    mask[0, :6] = 0  # left padding
    ids, mask = ids.cuda(), mask.cuda()
    assert can_capture(int8)
    captured, how = static_greedy(int8, ids, mask, 40, set(), use_graph=True)
    saved = int8_static.STATIC_DEVICE_TYPES
    int8_static.STATIC_DEVICE_TYPES = frozenset()
    logits: list[torch.Tensor] = []  # the exact path's logits of each step: [B, vocab]
    hook = int8.lm_head.register_forward_hook(
        lambda _m, _a, out: logits.append(out.float().reshape(out.shape[0], -1, out.shape[-1])[:, -1])
    )
    try:
        exact, exact_how = static_greedy(int8, ids, mask, 40, set(), use_graph=False)
    finally:
        int8_static.STATIC_DEVICE_TYPES = saved
        hook.remove()
    print(f"\n[measured] int8 decoding: {how}; exact path: {exact_how}")
    assert how == "cuda graph"
    assert exact_how == "eager"
    agree = float((captured == exact).float().mean())
    steps = torch.stack(logits, 1)  # [B, steps, vocab]
    assert steps.shape[:2] == exact.shape
    worst = 0.0
    for row in range(exact.shape[0]):
        differ = (captured[row] != exact[row]).nonzero()
        if differ.numel():  # where the row first leaves the exact path, its token must tie with the exact one
            step = int(differ[0, 0])
            at = steps[row, step]
            gap = float(at[exact[row, step]] - at[captured[row, step]]) / float(at.abs().max())
            worst = max(worst, gap)
    print(f"[measured] tokens equal to the exact path's: {agree:.3f}; first departure within {worst:.1e} of max|logit|")
    assert agree > 0.9
    assert worst < 5e-3
