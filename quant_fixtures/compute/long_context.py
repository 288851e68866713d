"""Score long sequences in chunks of positions with a KV cache, so memory stays bounded at any length.

A stretch of L tokens read at once needs the activations of all L positions in every layer; read in
chunks of ``chunk_tokens`` with the keys and values of earlier chunks cached, a pass holds one
chunk's activations and the cache (for a model with sliding-window attention, such as
Mistral-7B-v0.1, only the window's keys and values: transformers' ``DynamicCache(config=...)``).
Each chunk's final hidden states go through the same head, log-softmax and hooks as a window of the
perplexity pass (compute/scoring.score_hidden), so FP16 references and the exact comparison with
them work unchanged. One sequence per pass: LLM.int8 picks outlier columns over the rows a matmul
sees, so the numbers of a sequence never depend on another; the chunk length is fixed by the
settings (never by free memory) for the same reason.
"""

from __future__ import annotations

import inspect
import math
import time
from collections.abc import Callable, Sequence

import torch
from transformers import DynamicCache, PreTrainedModel

from quant_fixtures.compute.memory import BatchLog, MemoryBudget, run_batches
from quant_fixtures.compute.scoring import LogprobHook, WindowScores, head_device, model_device, score_hidden
from quant_fixtures.metrics.perplexity import Window


def cache_argument(model: PreTrainedModel) -> str:
    """The forward argument that takes the KV cache: ``cache`` from transformers 5.25, where
    ``past_key_values`` is deprecated; ``past_key_values`` before."""
    return "cache" if "cache" in inspect.signature(model.base_model.forward).parameters else "past_key_values"


def score_in_chunks(
    model: PreTrainedModel,
    token_ids: torch.Tensor,
    windows: Sequence[Window],
    chunk_tokens: int,
    stage: str,
    hook: LogprobHook | None = None,
    progress: Callable[[int], None] | None = None,
    budget: MemoryBudget | None = None,
    log: BatchLog | None = None,
) -> WindowScores:
    """Sum of -log p(target | the tokens before it in the window) per window, in float64, each window
    read alone in chunks of ``chunk_tokens`` positions with a KV cache (see the module docstring).
    Numerically the same quantities as compute/scoring.score_windows, which reads a window at once."""
    if chunk_tokens < 1:
        raise ValueError(f"chunk_tokens must be >= 1, got {chunk_tokens}")
    device, out = model_device(model), head_device(model)
    budget = budget or MemoryBudget(str(device))
    nll = [0.0] * len(windows)
    hook_time = [0.0]

    def run(batch: list[int]) -> None:
        (index,) = batch
        if hook is not None and hasattr(hook, "reset"):
            hook.reset(batch)
        w = windows[index]
        tokens = token_ids[w.begin : w.end].to(device)
        input_ids = tokens[:-1].clone()  # the last target is never read
        if w.first_input is not None:
            input_ids[0] = w.first_input
        first = torch.tensor([w.first_target - w.begin], device=out)
        cache = {cache_argument(model): DynamicCache(config=model.config)}
        total = torch.zeros(1, dtype=torch.float64, device=out)
        for lo in range(0, input_ids.shape[0], chunk_tokens):
            hi = min(input_ids.shape[0], lo + chunk_tokens)
            if hi < w.first_target - w.begin:  # every target this chunk predicts is before the scored ones
                model.base_model(input_ids=input_ids[lo:hi].unsqueeze(0), use_cache=True, **cache)
                continue
            hidden = model.base_model(
                input_ids=input_ids[lo:hi].unsqueeze(0), use_cache=True, **cache
            ).last_hidden_state
            # hidden position j (window offset lo + j) predicts the token at offset lo + j + 1
            total += score_hidden(
                model,
                batch,
                hidden,
                tokens[lo + 1 : hi + 1].unsqueeze(0).to(out),
                lo + 1,
                first,
                budget,
                hook,
                hook_time,
            )
            del hidden
        del cache
        nll[index] = float(total.item())
        if progress is not None:
            progress(1)

    start = time.perf_counter()
    with torch.inference_mode():
        run_batches(
            [[i] for i in range(len(windows))], run, budget, log if log is not None else BatchLog(), stage, "sequences"
        )
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    if not all(math.isfinite(v) for v in nll):
        bad = [i for i, v in enumerate(nll) if not math.isfinite(v)]
        raise FloatingPointError(f"{stage}: non-finite NLL in sequences {bad[:10]}: the model produced NaN/inf")
    seconds = time.perf_counter() - start - hook_time[0]
    return WindowScores(
        window_nll=nll, window_tokens=[w.scored for w in windows], seconds=seconds, hook_seconds=hook_time[0]
    )
