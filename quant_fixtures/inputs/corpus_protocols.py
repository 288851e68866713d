"""The perplexity protocols, each as the token sequence and window plan it scores, with the bytes
and words of text those scored tokens stand for (so bits per byte and word perplexity compare
models with different tokenizers).

* ``nonoverlapping``: the GPTQ papers' protocol: windows of ctx tokens over the joined split.
* ``strided``: the Hugging Face perplexity guide's sliding windows.
* ``llama.cpp``: ``llama-perplexity``'s chunks of n_ctx (default 512), BOS first, second half scored.
* ``lm-eval``: lm-evaluation-harness's ``wikitext`` task (as of lm-eval 0.4.13): document-level
  WikiText-2, each document detokenized and scored whole with rolling windows of the model's
  maximum length.

For the joined-text protocols a scored token stands for the text from the end of the previous token
to its own end (the tokenizer's character offsets), and a word is counted where it ends. For
``lm-eval`` words and bytes are lm-eval's own per document: ``len(re.split(r"\\s+", page))`` and
the UTF-8 length of the original (not detokenized) page.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from quant_fixtures.metrics.perplexity import (
    Window,
    llama_cpp_windows,
    nonoverlapping_windows,
    rolling_windows,
    strided_windows,
)

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedConfig, PreTrainedTokenizerBase

PROTOCOLS = ("nonoverlapping", "strided", "llama.cpp", "lm-eval")
LLAMA_CPP_DEFAULT_CTX = 512  # llama-perplexity's default n_ctx
LM_EVAL_DEFAULT_MAX_LENGTH = 2048  # HFLM's fallback when neither config nor tokenizer says
# The smallest --ctx each protocol can score with: a window needs a token of context before its
# first target; llama.cpp scores the second half of a chunk whose first token is BOS.
MIN_CTX = {"nonoverlapping": 2, "strided": 2, "llama.cpp": 4, "lm-eval": 1}


@dataclass
class CorpusPlan:
    ids: torch.Tensor  # 1-D int64: the sequence the windows index
    windows: list[Window]
    scored_bytes: int
    scored_words: int
    documents: int | None = None  # lm-eval: documents scored
    units: str = ""  # how bytes and words were counted


def joined_tokens(tokenizer: PreTrainedTokenizerBase, text: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids, character end of each token) of the whole text, default special tokens included."""
    import torch

    if not getattr(tokenizer, "is_fast", False):
        raise ValueError(f"{type(tokenizer).__name__} gives no character offsets; bits per byte needs a fast tokenizer")
    encoded = tokenizer(text, return_offsets_mapping=True, return_attention_mask=False, verbose=False)
    ends = np.maximum.accumulate(np.array([end for _, end in encoded["offset_mapping"]], dtype=np.int64))
    return torch.tensor(encoded["input_ids"], dtype=torch.long), torch.from_numpy(ends)


@functools.lru_cache(maxsize=1)
def _spaces() -> np.ndarray:
    """Every code point str.isspace() accepts (a few dozen), so whitespace is found without a loop
    over the text."""
    return np.array([c for c in range(0x110000) if chr(c).isspace()], dtype=np.uint32)


def _char_prefixes(text: str) -> tuple[np.ndarray, np.ndarray]:
    """UTF-8 bytes and word ends before each character position (length len(text) + 1)."""
    points = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
    sizes = 1 + (points >= 0x80).astype(np.int64) + (points >= 0x800) + (points >= 0x10000)
    space = np.isin(points, _spaces())
    word_end = ~space & np.append(space[1:], True)  # a non-space followed by space or the end
    zero = np.zeros(1, dtype=np.int64)
    return np.concatenate([zero, np.cumsum(sizes)]), np.concatenate([zero, np.cumsum(word_end)])


def scored_text_units(text: str, ends: npt.ArrayLike, windows: Sequence[Window]) -> tuple[int, int]:
    """Bytes and words of the text the windows' scored tokens stand for (``ends``: the character end
    of each token, :func:`joined_tokens`)."""
    byte_prefix, word_prefix = _char_prefixes(text)
    char_end = np.asarray(ends)
    total_bytes = total_words = 0
    for w in windows:
        lo, hi = char_end[w.first_target - 1], char_end[w.end - 1]  # chars (lo, hi] belong to the scored tokens
        total_bytes += int(byte_prefix[hi] - byte_prefix[lo])
        total_words += int(word_prefix[hi] - word_prefix[lo])
    return total_bytes, total_words


def adds_bos(tokenizer: PreTrainedTokenizerBase) -> int | None:
    """The BOS id when the tokenizer puts BOS first by default (llama.cpp then puts it first in
    every chunk), else None."""
    bos = getattr(tokenizer, "bos_token_id", None)
    if bos is None:
        return None
    ids = tokenizer("a", return_attention_mask=False)["input_ids"]
    return bos if ids[:1] == [bos] else None


def joined_plan(
    protocol: str,
    ids: torch.Tensor,
    ends: npt.ArrayLike,
    text: str,
    ctx: int,
    stride: int | None,
    max_tokens: int | None,
    bos_id: int | None,
) -> CorpusPlan:
    n = int(ids.numel())
    if protocol == "nonoverlapping":
        windows = nonoverlapping_windows(n, ctx, max_tokens)
    elif protocol == "strided":
        windows = strided_windows(n, ctx, stride or ctx, max_tokens)
    elif protocol == "llama.cpp":
        windows = llama_cpp_windows(n, ctx, bos_id, max_tokens)
    else:
        raise ValueError(f"{protocol!r} is not a joined-text protocol; valid: nonoverlapping, strided, llama.cpp")
    scored_bytes, scored_words = scored_text_units(text, ends, windows)
    return CorpusPlan(
        ids,
        windows,
        scored_bytes,
        scored_words,
        units="bytes (UTF-8) and words (whitespace-separated, counted where they end) of the text "
        "from the end of the token before each scored token to the scored token's end",
    )


# --- lm-eval's wikitext task ------------------------------------------------------------------------


def lm_eval_word_count(page: str) -> int:
    """lm-eval's word count of a document: the pieces of re.split on runs of whitespace."""
    return len(re.split(r"\s+", page))


def prefix_token(tokenizer: PreTrainedTokenizerBase) -> int:
    """lm-eval HFLM's prefix for rolling windows: BOS when the tokenizer has one, else EOS."""
    for name in ("bos_token_id", "eos_token_id"):
        token = getattr(tokenizer, name, None)
        if token is not None:
            return int(token)
    raise ValueError(f"{type(tokenizer).__name__} has neither a BOS nor an EOS token to start rolling windows with")


def document_tokens(tokenizer: PreTrainedTokenizerBase, detokenized: Sequence[str]) -> list[list[int]]:
    """Each detokenized page's ids with the tokenizer's default special tokens, as lm-eval 0.4.13's
    HFLM.tok_encode encodes a rolling request (models/huggingface.py; up to 0.4.9.1 it added none).
    A tokenizer that puts BOS first therefore gives the first window BOS, BOS: the prefix and the
    document's own, which is scored like any other token, as lm-eval scores it."""
    return [list(tokenizer(text, return_attention_mask=False, verbose=False)["input_ids"]) for text in detokenized]


def documents_plan(
    doc_ids: Sequence[Sequence[int]], pages: Sequence[str], prefix: int, max_len: int, max_tokens: int | None
) -> CorpusPlan:
    """The documents one after the other in one sequence, each after lm-eval's prefix token, scored
    with :func:`rolling_windows`. ``max_tokens``: whole documents from the start while their tokens
    fit."""
    import torch

    pieces: list[list[int]] = []
    windows: list[Window] = []
    position = total = scored_bytes = scored_words = 0
    for page, doc in zip(pages, doc_ids):
        if max_tokens is not None and total + len(doc) > max_tokens:
            break
        pieces.append([prefix] + list(doc))
        windows += rolling_windows(position, len(doc), max_len)
        position += len(doc) + 1
        total += len(doc)
        scored_bytes += len(page.encode("utf-8"))
        scored_words += lm_eval_word_count(page)
    if not windows:
        raise ValueError(
            f"no whole WikiText-2 document fits --ppl-max-tokens {max_tokens}: the first has {len(doc_ids[0])} tokens"
        )
    ids = torch.tensor([t for piece in pieces for t in piece], dtype=torch.long)
    return CorpusPlan(
        ids,
        windows,
        scored_bytes,
        scored_words,
        documents=len(pieces),
        units="lm-eval's: per document, UTF-8 bytes of the original page and len(re.split(r'\\s+', page)) words",
    )


def lm_eval_max_length(model_config: PreTrainedConfig, tokenizer: PreTrainedTokenizerBase) -> int:
    """HFLM's default max_length: the model config's n_positions, max_position_embeddings or n_ctx,
    else the tokenizer's model_max_length when it is a real limit, else 2048."""
    for name in ("n_positions", "max_position_embeddings", "n_ctx"):
        value = getattr(model_config, name, None)
        if value:
            return int(value)
    limit = getattr(tokenizer, "model_max_length", None)
    if limit and limit < 10**9:  # transformers' "no limit" is ~1e30
        return int(limit)
    return LM_EVAL_DEFAULT_MAX_LENGTH
