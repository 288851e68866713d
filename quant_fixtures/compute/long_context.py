"""Read long sequences in chunks of positions with a KV cache, so memory stays bounded at any length,
and read retrieval probes as a user's model answers them.

A stretch of L tokens read at once needs the activations of all L positions in every layer; read in
chunks of ``chunk_tokens`` with the keys and values of earlier chunks cached, a pass holds one
chunk's activations and the cache (for a model with sliding-window attention, such as
Mistral-7B-v0.1, only the window's keys and values: transformers' ``DynamicCache(config=...)``).
Each chunk's final hidden states go through the same head, log-softmax and hooks as a window of the
perplexity pass (compute/scoring.score_hidden), so FP16 references and the exact comparison with
them work unchanged. Sequences of the same length and prefill may share a pass (``batch_size``):
each row is a sequence of its own, with its own cache row, and LLM.int8 layers pick outlier columns
per sequence (models/int8_per_sequence.py), so a sequence's numbers do not depend on the others up
to float summation order.

What is read is what a user's model reads, whatever the chunk length:

* A sequence's prefill (a whole stretch; a probe's prompt) is one read of the model. A model with
  LLM.int8 layers reads a prefill longer than a chunk at once where memory allows; where it does
  not, in chunks as long as fit (half the prefill, halved while out of memory, down to
  ``chunk_tokens``) with the outlier columns of the whole prefill
  (models/int8_per_sequence.WholeSequenceColumns): the sequence is read again with the columns the
  previous read flagged until every layer's forced and flagged columns agree (usually the second or
  third read; at most :data:`MAX_READS`), so the numbers equal a read of the prefill at once up to
  float summation order. Other models are exact in chunks (tested against the whole forward).
* From ``decode_from`` on (a probe's answer), one position per forward pass, as greedy decoding
  feeds a model its answer token by token: position ``j`` predicts token ``j + 1`` from the cache of
  everything before it. Fed the key's tokens, the argmax at each step is what greedy decoding
  produces while it follows the key, so "every step's argmax is the key's token" is exactly
  "greedy decoding of the answer's length produces the key" (tested against ``model.generate``).
  LLM.int8 layers take their exact per-sequence path in these calls, not decoding's static one
  (models/int8_static.py): a read whose static calls overflowed would be read again whole, prefill
  included (random-weight Mistral-7B overflowed on every probe, H100 2026-12-07), and a probe's few
  answer calls gain little from it.
"""

from __future__ import annotations

import inspect
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from transformers import DynamicCache, PreTrainedModel

from quant_fixtures.compute.memory import BatchLog, MemoryBudget, is_out_of_memory, run_sized
from quant_fixtures.compute.scoring import LogprobHook, WindowScores, head_device, model_device, score_hidden
from quant_fixtures.metrics.perplexity import Window
from quant_fixtures.models.int8_per_sequence import (
    WholeSequenceColumns,
    amplifies_float_noise,
    has_batch_dependent_int8,
    whole_sequence_columns,
)


@dataclass
class ChunkedScores(WindowScores):
    """:class:`WindowScores` and, per window, how many times its prefill was read (more than once only
    for LLM.int8 in chunks) and whether its outlier columns settled within MAX_READS reads."""

    reads: list[int] = field(default_factory=list)
    settled: list[bool] = field(default_factory=list)
    chunked: list[bool] = field(default_factory=list)  # LLM.int8 prefills too big to read at once
    prefill_chunk: list[int] = field(default_factory=list)  # positions per prefill call (the prefill: at once)


def cache_argument(model: PreTrainedModel) -> str:
    """The forward argument that takes the KV cache: ``cache`` from transformers 5.25, where
    ``past_key_values`` is deprecated; ``past_key_values`` before."""
    return "cache" if "cache" in inspect.signature(model.base_model.forward).parameters else "past_key_values"


MAX_READS = 4  # reads of one prefill until its LLM.int8 outlier columns settle (see the module docstring)


def _calls(n_inputs: int, prefill: int, chunk_tokens: int) -> list[tuple[int, int]]:
    """``[lo, hi)`` input positions of each forward call: chunks of ``chunk_tokens`` over the prefill
    ``[0, prefill)``, then one position per call."""
    starts = [*range(0, prefill, chunk_tokens), *range(prefill, n_inputs)]
    return list(zip(starts, [*starts[1:], n_inputs]))


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
    decode_from: Sequence[int] | None = None,
    whole_first: bool = True,
    batch_size: int = 1,
) -> ChunkedScores:
    """Sum of -log p(target | the tokens before it in the window) per window, in float64, each window
    read as a sequence of its own (see the module docstring): its prefill in chunks of ``chunk_tokens``
    positions with a KV cache, and with ``decode_from`` (one window offset per window, e.g. a probe's
    first answer token) the positions from there on one per forward pass. The same quantities as
    compute/scoring.score_windows, which reads a window at once, up to float summation order. A model
    with LLM.int8 layers first tries each longer prefill in one call (``whole_first``) and reads it in
    chunks with the whole prefill's outlier columns only when that runs out of memory.

    Windows of the same length and prefill run together, at most ``batch_size`` per pass and as many as
    fit (compute/memory.run_sized, longest first, so the first pass measures the largest). Each row is
    a sequence of its own (LLM.int8 layers pick outlier columns per sequence); a chunk shrinks with the
    budget's ``scale`` when one sequence runs out of memory."""
    if chunk_tokens < 1:
        raise ValueError(f"chunk_tokens must be >= 1, got {chunk_tokens}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if decode_from is not None and len(decode_from) != len(windows):
        raise ValueError(f"decode_from has {len(decode_from)} entries for {len(windows)} windows")
    int8 = amplifies_float_noise(model)
    if int8 and has_batch_dependent_int8(model):
        raise ValueError(
            f"{stage}: an LLM.int8 layer of this model picks outlier columns over its whole batch; load it with "
            "quant_fixtures.models.loading (per-sequence int8 layers) to read it in chunks"
        )
    device, out = model_device(model), head_device(model)
    budget = budget or MemoryBudget(str(device))
    nll = [0.0] * len(windows)
    reads = [0] * len(windows)
    settled = [True] * len(windows)
    chunked = [False] * len(windows)
    prefill_chunk = [0] * len(windows)
    hook_time = [0.0]
    # the shortest LLM.int8 prefill that ran out of memory read at once: one as long or longer goes
    # straight to chunks (a failed whole read of 32K positions costs seconds on a 7B model)
    too_long_at_once = [math.inf]
    # the chunk the last such prefill fitted in: the next starts there (None: none read in chunks yet)
    fitted_chunk: list[int | None] = [None]
    cache_arg = cache_argument(model)

    def prefill_of(index: int) -> int:
        n_inputs = windows[index].length - 1
        return n_inputs if decode_from is None else min(max(decode_from[index], 1), n_inputs)

    def run(batch: list[int]) -> None:
        def read(
            batch: list[int],
            calls: list[tuple[int, int]],
            prefill: int,
            columns: WholeSequenceColumns | None,
            scoring: bool,
        ) -> list[float]:
            group = [windows[i] for i in batch]
            tokens = torch.stack([token_ids[w.begin : w.end] for w in group]).to(device)
            input_ids = tokens[:, :-1].clone()  # the last target is never read
            for row, w in enumerate(group):
                if w.first_input is not None:
                    input_ids[row, 0] = w.first_input
            offsets = [w.first_target - w.begin for w in group]
            first = torch.tensor(offsets, device=out)
            cache = {cache_arg: DynamicCache(config=model.config)}
            total = torch.zeros(len(batch), dtype=torch.float64, device=out)
            for lo, hi in calls:
                if not scoring and lo >= prefill:  # a read that only flags columns ends with the prefill
                    break
                with whole_sequence_columns(columns if lo < prefill else None):
                    hidden = model.base_model(input_ids=input_ids[:, lo:hi], use_cache=True, **cache).last_hidden_state
                if not scoring or hi < min(offsets):  # every target it predicts is before the scored ones
                    continue
                # hidden position j (window offset lo + j) predicts the token at offset lo + j + 1
                total += score_hidden(
                    model, batch, hidden, tokens[:, lo + 1 : hi + 1].to(out), lo + 1, first, budget, hook, hook_time
                )
                del hidden
            del cache
            return total.tolist() if scoring else [0.0] * len(batch)

        def scored_read(
            batch: list[int], calls: list[tuple[int, int]], prefill: int, columns: WholeSequenceColumns | None
        ) -> None:
            """A scoring read of ``batch`` into ``nll`` (the hook starts these sequences afresh)."""
            if hook is not None and hasattr(hook, "reset"):
                hook.reset(batch)
            values = read(batch, calls, prefill, columns, True)
            for index, value in zip(batch, values):
                nll[index] = value

        def settle_in_chunks(index: int, chunk: int, prefill: int) -> None:
            """LLM.int8 in more than one prefill call: first a read that only flags columns, then reads that
            force them until they settle."""
            calls = _calls(windows[index].length - 1, prefill, chunk)
            columns = WholeSequenceColumns()
            read([index], calls, prefill, columns, scoring=False)
            reads[index] = 1
            while True:
                columns.next_read()
                scored_read([index], calls, prefill, columns)
                reads[index] += 1
                if columns.agrees():
                    break
                if reads[index] >= MAX_READS:
                    settled[index] = False
                    break
            prefill_chunk[index] = chunk

        def settle_in_chunks_that_fit(index: int, floor: int, prefill: int) -> None:
            """:func:`settle_in_chunks` for a prefill that ran out of memory at once: in half the prefill
            first (or the chunk the last one fitted in), halved while out of memory, down to ``floor``
            (the planned chunk), so a card with room reads few long chunks."""
            size = max(floor, min(fitted_chunk[0] or prefill, -(-prefill // 2)))
            while True:
                out_of_memory = False
                try:
                    settle_in_chunks(index, size, prefill)
                except Exception as exc:  # out of memory: shorter chunks (anything else is raised)
                    if not is_out_of_memory(exc) or size <= floor:
                        raise
                    out_of_memory = True
                if not out_of_memory:
                    break
                budget.release_cached()  # once the exception and the tensors its frames held are gone
                size = max(floor, size // 2)
            if size != fitted_chunk[0] and log is not None:
                log.notes.append(
                    f"{stage}: LLM.int8 prefills of {prefill} positions ran out of memory at once; "
                    f"read in chunks of {size}"
                )
            fitted_chunk[0] = size

        n_inputs, prefill = windows[batch[0]].length - 1, prefill_of(batch[0])
        chunk = max(1, int(chunk_tokens * budget.scale))
        for index in batch:
            reads[index], chunked[index], prefill_chunk[index] = 1, False, min(prefill, chunk)
        if not (int8 and prefill > chunk):
            scored_read(batch, _calls(n_inputs, prefill, chunk), prefill, None)
        else:
            at_once = False
            if whole_first and prefill < too_long_at_once[0]:  # LLM.int8: the prefill at once where memory allows
                try:
                    scored_read(batch, _calls(n_inputs, prefill, prefill), prefill, None)
                    at_once = True
                    for index in batch:
                        prefill_chunk[index] = prefill
                except Exception as exc:  # out of memory: fewer sequences, then chunks (anything else is raised)
                    if not is_out_of_memory(exc) or len(batch) > 1:
                        raise
                    too_long_at_once[0] = prefill
                if not at_once and device.type == "cuda":
                    torch.cuda.empty_cache()
            if not at_once:
                for index in batch:
                    chunked[index] = True
                    if whole_first:  # not at once for want of memory: chunks as long as fit
                        settle_in_chunks_that_fit(index, chunk, prefill)
                    else:
                        settle_in_chunks(index, chunk, prefill)
        if progress is not None:
            progress(len(batch))

    def same_group(a: int, b: int) -> bool:
        return windows[a].length == windows[b].length and prefill_of(a) == prefill_of(b)

    start = time.perf_counter()
    with torch.inference_mode():
        longest_first = sorted(range(len(windows)), key=lambda i: (-windows[i].length, -prefill_of(i), i))
        run_sized(
            longest_first,
            batch_size,
            run,
            budget,
            log if log is not None else BatchLog(),
            stage,
            "sequences",
            same_group,
        )
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    if not all(math.isfinite(v) for v in nll):
        bad = [i for i, v in enumerate(nll) if not math.isfinite(v)]
        raise FloatingPointError(f"{stage}: non-finite NLL in sequences {bad[:10]}: the model produced NaN/inf")
    seconds = time.perf_counter() - start - hook_time[0]
    return ChunkedScores(
        window_nll=nll,
        window_tokens=[w.scored for w in windows],
        seconds=seconds,
        hook_seconds=hook_time[0],
        reads=reads,
        settled=settled,
        chunked=chunked,
        prefill_chunk=prefill_chunk,
    )
