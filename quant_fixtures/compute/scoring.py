"""Run a causal LM over perplexity windows in batches and collect per-window NLL sums.

The model's decoder runs once per batch of equal-length windows; the output head and the
log-softmax then run over chunks of positions so the float32 log-probabilities of a whole batch
(batch x ctx x vocab) never exist at once, which is what lets 150k-vocabulary models fit.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from quant_fixtures.compute.memory import BatchLog, MemoryBudget, comparison_slice_elements, run_batches, run_sized
from quant_fixtures.metrics.perplexity import Window, perplexity

if TYPE_CHECKING:
    from transformers import PreTrainedModel

# Upper bound on float32 log-prob elements materialised at once (2**28 floats = 1 GiB).
LOGPROB_ELEMENTS_PER_CHUNK = 2**28


@dataclass
class ScoredChunk:
    """One chunk of positions of a batch of windows, as a :data:`LogprobHook` sees it."""

    windows: Sequence[int]  # window indices of the batch's rows
    targets: torch.Tensor  # [B, T] the next tokens
    logits: torch.Tensor  # [B, T, V] the head's output, in the model's dtype
    logp: torch.Tensor  # [B, T, V] float32 log-softmax of the logits
    mask: torch.Tensor  # [B, T] bool: positions the window scores
    hidden: torch.Tensor  # [B, T, H] final (post-norm) hidden states the logits came from
    slice_elements: int | None = None  # elements per slice of vocabulary-wide work the memory allows


# Called with every chunk of positions, in order; used by the corpus references and corpus KL.
LogprobHook = Callable[[ScoredChunk], None]


@dataclass
class WindowScores:
    window_nll: list[float]
    window_tokens: list[int]
    seconds: float  # the model's pass, without the hook's time (so speeds compare across variants)
    hook_seconds: float = 0.0  # what the hook took (corpus references, exact comparison)

    @property
    def tokens(self) -> int:
        return sum(self.window_tokens)

    @property
    def ppl(self) -> float:
        return perplexity(self.window_nll, self.window_tokens)


def model_device(model: torch.nn.Module) -> torch.device:
    """Where inputs go: the first parameter's device (the embeddings, when a model is spread)."""
    return next(model.parameters()).device


def head_weight(model: PreTrainedModel) -> torch.Tensor:
    """The output head's weight [V, H] (its rows are the vocabulary)."""
    weight: torch.Tensor = model.get_output_embeddings().weight  # transformers returns the head untyped
    return weight


def embedding_weight(model: PreTrainedModel) -> torch.Tensor:
    """The input embeddings' weight [V, H] (its dtype and element size are the model's)."""
    weight = model.get_input_embeddings().weight
    if not isinstance(weight, torch.Tensor):
        raise TypeError(f"{type(model).__name__}: the input embeddings' weight is not a tensor")
    return weight


def head_device(model: PreTrainedModel) -> torch.device:
    """Where logits come out: the output head's device (the last GPU, when a model is spread)."""
    return head_weight(model).device


def output_logits(model: PreTrainedModel, hidden: torch.Tensor) -> torch.Tensor:
    """Logits from final hidden states, as the model's own forward computes them."""
    logits: torch.Tensor = model.get_output_embeddings()(hidden)
    softcap = getattr(model.config, "final_logit_softcapping", None)
    if softcap:
        logits = torch.tanh(logits / softcap) * softcap
    return logits


def check_output_head(model: PreTrainedModel, vocab_probe: int = 8) -> None:
    """Fail loudly if decoder + head does not reproduce the model's forward (exotic heads)."""
    device = model_device(model)
    ids = torch.arange(1, vocab_probe + 1, device=device).unsqueeze(0)
    logits: list[torch.Tensor] = []

    def run(_: list[int]) -> None:
        full = model(input_ids=ids, use_cache=False).logits.float()
        hidden = model.base_model(input_ids=ids, use_cache=False).last_hidden_state
        logits[:] = [full, output_logits(model, hidden).float().to(full.device)]

    with torch.inference_mode():
        run_batches([[0]], run, MemoryBudget(str(device)), BatchLog(), "output head check", "probe")
    full, ours = logits
    if not torch.allclose(full, ours, rtol=1e-3, atol=1e-3):
        raise RuntimeError(
            f"{type(model).__name__}: logits from decoder + output head differ from the model's "
            f"forward (max abs diff {(full - ours).abs().max().item():.3g}); this architecture "
            "needs its own head in quant_fixtures/compute/scoring.py (output_logits)"
        )


def _synced_clock(device: torch.device) -> float:
    """perf_counter once the device's queued work is done (a hook's GPU time is then its own)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


def score_hidden(
    model: PreTrainedModel,
    batch: Sequence[int],
    states: torch.Tensor,
    targets: torch.Tensor,
    offset: int,
    first: torch.Tensor,
    budget: MemoryBudget,
    hook: LogprobHook | None,
    hook_time: list[float],
) -> torch.Tensor:
    """NLL sums [B] (float64) of ``targets`` [B, P] predicted by the final hidden ``states`` [B, P, H];
    target ``j`` sits at window offset ``offset + j`` and counts where that offset is at least the
    row's ``first`` scored offset. The head and log-softmax run over chunks of positions sized by
    ``budget``; the hook sees every chunk (its time is added to ``hook_time[0]``)."""
    out, vocab = head_device(model), head_weight(model).shape[0]
    elements = budget.chunk_elements(LOGPROB_ELEMENTS_PER_CHUNK, vocab)
    comparison = comparison_slice_elements(budget, vocab)
    positions = targets.shape[1]
    chunk = max(1, elements // (len(batch) * vocab))
    sums = torch.zeros(len(batch), dtype=torch.float64, device=out)
    for lo in range(0, positions, chunk):
        hi = min(positions, lo + chunk)
        chunk_states = states[:, lo:hi]
        logits = output_logits(model, chunk_states)
        logp = torch.log_softmax(logits.float(), -1)
        chunk_targets = targets[:, lo:hi]
        token_nll = -logp.gather(-1, chunk_targets.unsqueeze(-1)).squeeze(-1).double()
        target_pos = torch.arange(offset + lo, offset + hi, device=out)
        mask = target_pos.unsqueeze(0) >= first.unsqueeze(1)
        sums += (token_nll * mask).sum(-1)
        if hook is not None:
            hook_start = _synced_clock(out)
            hook(ScoredChunk(batch, chunk_targets, logits, logp, mask, chunk_states, comparison))
            hook_time[0] += _synced_clock(out) - hook_start
        del logits, logp, token_nll
    return sums


def score_windows(
    model: PreTrainedModel,
    token_ids: torch.Tensor,
    windows: Sequence[Window],
    batch_size: int = 1,
    hook: LogprobHook | None = None,
    progress: Callable[[int], None] | None = None,
    budget: MemoryBudget | None = None,
    log: BatchLog | None = None,
) -> WindowScores:
    """Sum of -log p(target | preceding tokens in the window) per window, in float64.

    Windows of equal length run together, at most ``batch_size`` per pass and as many as fit in
    ``budget`` (see compute/memory.py). Log-softmax runs in float32 on the head's output over
    chunks of positions; sums accumulate in float64. A hook with a ``reset(windows)`` method is
    told when a batch is run again after running out of memory.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    device, out = model_device(model), head_device(model)
    budget = budget or MemoryBudget(str(device))
    nll = [0.0] * len(windows)
    counts = [w.scored for w in windows]

    def run(batch: list[int]) -> None:
        if hook is not None and hasattr(hook, "reset"):
            hook.reset(batch)
        group = [windows[i] for i in batch]
        tokens = torch.stack([token_ids[w.begin : w.end] for w in group]).to(device)
        input_ids = tokens[:, :-1].clone()  # the last target is never read
        for row, w in enumerate(group):
            if w.first_input is not None:
                input_ids[row, 0] = w.first_input
        hidden = model.base_model(input_ids=input_ids, use_cache=False).last_hidden_state
        # All windows in a batch share length; scored offsets may differ (strided plans).
        offset = min(w.first_target - w.begin for w in group)
        first = torch.tensor([w.first_target - w.begin for w in group], device=out)
        sums = score_hidden(
            model, batch, hidden[:, offset - 1 :], tokens[:, offset:].to(out), offset, first, budget, hook, hook_time
        )
        for i, value in zip(batch, sums.tolist()):
            nll[i] = value
        if progress is not None:
            progress(len(batch))

    log = log if log is not None else BatchLog()
    hook_time = [0.0]
    start = time.perf_counter()
    with torch.inference_mode():
        run_sized(
            list(range(len(windows))),
            batch_size,
            run,
            budget,
            log,
            "perplexity",
            "windows",
            same_group=lambda a, b: windows[a].length == windows[b].length,
        )
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - start - hook_time[0]
    if not all(math.isfinite(v) for v in nll):
        bad = [i for i, v in enumerate(nll) if not math.isfinite(v)]
        raise FloatingPointError(
            f"non-finite NLL in windows {bad[:10]} (of {len(windows)}): the model produced NaN/inf"
        )
    return WindowScores(window_nll=nll, window_tokens=counts, seconds=seconds, hook_seconds=hook_time[0])
