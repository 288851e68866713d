"""Helpers for the throughput benchmarks: a CUDA-synchronising wrapper and the Hugging Face
perplexity guide's strided loop (the baseline our batched pass is compared with)."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING, ParamSpec, TypeVar

import torch

from quant_fixtures.compute.scoring import model_device

if TYPE_CHECKING:
    from transformers import PreTrainedModel

P = ParamSpec("P")
R = TypeVar("R")


def synchronized(fn: Callable[P, R], model: torch.nn.Module) -> Callable[P, R]:
    """``fn`` followed by a CUDA synchronise, so a benchmark's timer sees finished GPU work."""
    device = model_device(model)

    def run(*args: P.args, **kwargs: P.kwargs) -> R:
        result = fn(*args, **kwargs)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return result

    return run


def hf_guide_strided_ppl(
    model: PreTrainedModel, token_ids: torch.Tensor, max_length: int, stride: int
) -> tuple[float, int]:
    """The loop of the Hugging Face perplexity guide, one window at a time with ``labels=``.

    Weighting follows exact token counts (each window's mean loss times the targets it scores),
    so the result equals the strided plan of ``metrics.perplexity.strided_windows``.
    Returns (perplexity, scored tokens).
    """
    device = model_device(model)
    seq_len = token_ids.shape[0]
    nll_sum, n_tokens, prev_end = 0.0, 0, 0
    with torch.inference_mode():
        for begin in range(0, seq_len, stride):
            end = min(begin + max_length, seq_len)
            target_len = end - prev_end
            input_ids = token_ids[begin:end].unsqueeze(0).to(device)
            labels = input_ids.clone()
            labels[:, :-target_len] = -100
            scored = int((labels[:, 1:] != -100).sum())
            loss = model(input_ids=input_ids, labels=labels, use_cache=False).loss
            nll_sum += float(loss) * scored
            n_tokens += scored
            prev_end = end
            if end == seq_len:
                break
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return math.exp(nll_sum / n_tokens), n_tokens
