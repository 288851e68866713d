"""Perplexity protocols as window plans, and perplexity from per-window NLL sums.

A window is a slice ``[begin, end)`` of the token sequence; the targets it scores are the tokens at
``first_target .. end-1``, each predicted from the tokens before it inside the window (so
``first_target >= begin + 1``). The model reads ``begin .. end-2`` (the last target is never an
input), with the token at ``begin`` replaced by ``first_input`` when that is set (llama.cpp puts
BOS at the start of every chunk).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Window:
    begin: int
    end: int
    first_target: int
    first_input: int | None = None  # a token id read at ``begin`` instead of the sequence's

    @property
    def length(self) -> int:
        return self.end - self.begin

    @property
    def scored(self) -> int:
        return self.end - self.first_target


def nonoverlapping_windows(n_tokens: int, ctx: int, max_tokens: int | None = None) -> list[Window]:
    """Consecutive windows of exactly ``ctx`` tokens, incomplete tail dropped.

    Each window scores its tokens 2..ctx (ctx - 1 targets). With ``max_tokens`` only the first
    floor(max_tokens / ctx) windows are used.
    """
    if ctx < 2:
        raise ValueError(f"ctx must be at least 2, got {ctx}")
    count = n_tokens // ctx
    if max_tokens is not None:
        count = min(count, max_tokens // ctx)
    if count < 1:
        budget = n_tokens if max_tokens is None else min(n_tokens, max_tokens)
        raise ValueError(f"{budget} tokens make no complete window of ctx={ctx}")
    return [Window(i * ctx, (i + 1) * ctx, i * ctx + 1) for i in range(count)]


def strided_windows(n_tokens: int, ctx: int, stride: int, max_tokens: int | None = None) -> list[Window]:
    """The sliding-window plan of the Hugging Face perplexity guide.

    Windows start every ``stride`` tokens and are ``ctx`` long (the last one may be shorter);
    each scores only the tokens that no earlier window scored. With stride < ctx every token after
    the first is scored exactly once, with up to ctx - 1 tokens of context. With stride == ctx the
    windows do not overlap and, as in the guide's loop, the first token of each window has no
    context and is not scored. ``max_tokens`` truncates the sequence first.
    """
    if ctx < 2:
        raise ValueError(f"ctx must be at least 2, got {ctx}")
    if not 1 <= stride <= ctx:
        raise ValueError(f"stride must be in 1..ctx ({ctx}), got {stride}")
    if max_tokens is not None:
        n_tokens = min(n_tokens, max_tokens)
    if n_tokens < 2:
        raise ValueError(f"{n_tokens} tokens are too few to score")
    windows: list[Window] = []
    prev_end = 0
    for begin in range(0, n_tokens, stride):
        end = min(begin + ctx, n_tokens)
        windows.append(Window(begin, end, max(begin + 1, prev_end)))
        prev_end = end
        if end == n_tokens:
            break
    return windows


def llama_cpp_windows(n_tokens: int, ctx: int, bos_id: int | None, max_tokens: int | None = None) -> list[Window]:
    """``llama-perplexity``'s plan (tools/perplexity/perplexity.cpp, perplexity()): floor(n / ctx)
    consecutive chunks of ``ctx`` tokens; the first token of each chunk is replaced by BOS when the
    model adds one (``bos_id``); only the second half is scored: the logits at chunk positions
    ctx/2 .. ctx-2 predict the tokens at ctx/2 + 1 .. ctx-1 (ctx - 1 - ctx/2 targets a chunk)."""
    if ctx < 4:
        raise ValueError(f"ctx must be at least 4 for llama.cpp's half-chunk scoring, got {ctx}")
    if max_tokens is not None:
        n_tokens = min(n_tokens, max_tokens)
    count = n_tokens // ctx
    if count < 1:
        raise ValueError(f"{n_tokens} tokens make no complete chunk of ctx={ctx}")
    return [Window(i * ctx, (i + 1) * ctx, i * ctx + ctx // 2 + 1, bos_id) for i in range(count)]


def rolling_windows(doc_start: int, n_doc: int, max_len: int) -> list[Window]:
    """lm-evaluation-harness's ``loglikelihood_rolling`` plan for one document (lm_eval/utils.py,
    get_rolling_token_windows with context_len=1, then make_disjoint_window): every token of the
    document is scored once. The sequence holds a prefix token (BOS, else EOS) at ``doc_start`` and
    the document's ``n_doc`` tokens after it. The first window reads the prefix and up to
    ``max_len - 1`` tokens and scores the first min(max_len, n_doc) tokens; each later window scores
    the next max_len tokens (fewer at the end) reading the max_len tokens before its last target."""
    if max_len < 1:
        raise ValueError(f"max_len must be at least 1, got {max_len}")
    first = min(max_len, n_doc)
    tokens0 = doc_start + 1  # sequence position of the document's first token
    windows = [Window(doc_start, tokens0 + first, tokens0)] if n_doc else []
    predicted = first
    while predicted < n_doc:
        size = min(n_doc - predicted, max_len)
        end = predicted + size  # document coordinates
        windows.append(Window(tokens0 + end - max_len - 1, tokens0 + end, tokens0 + end - size))
        predicted = end
    return windows


def perplexity(window_nll: Sequence[float], window_tokens: Sequence[int]) -> float:
    """PPL = exp(sum of token NLLs / number of scored tokens), NLL in nats."""
    total_tokens = sum(window_tokens)
    if total_tokens <= 0:
        raise ValueError("no scored tokens")
    return math.exp(math.fsum(window_nll) / total_tokens)
