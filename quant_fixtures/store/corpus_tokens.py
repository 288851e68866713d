"""The perplexity corpus as token ids, cached per tokenizer, text and kind of tokenization.

Tokenizing the WikiText-2 test split takes seconds per model; the ids depend only on how the
tokenizer turns text into ids (its digest, store/prompt_reference.tokenizer_sha256), on the text
(its sha256) and on how it is cut (``kind``: the joined text with character offsets, or the
lm-eval documents), so all three name the file and are checked against its metadata when it is
read, with the tensors' own digest: a stale or damaged file is tokenized again, never reused.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from quant_fixtures.store.atomic import load_tensors, save_tensors

if TYPE_CHECKING:
    import torch


def corpus_tokens_path(cache_dir: Path, tokenizer_sha256: str, text_sha256: str, kind: str) -> Path:
    return Path(cache_dir) / "corpus-tokens" / f"{tokenizer_sha256[:16]}-{text_sha256[:16]}-{kind}.safetensors"


def load_corpus_tokens(
    cache_dir: Path, tokenizer_sha256: str, text_sha256: str, kind: str, names: tuple[str, ...]
) -> tuple[dict[str, torch.Tensor] | None, str]:
    """(the 1-D tensors ``names``, "ok") or (None, why the cached file cannot be used)."""
    path = corpus_tokens_path(cache_dir, tokenizer_sha256, text_sha256, kind)
    tensors, meta, status = load_tensors(path)
    if tensors is None:
        return None, status
    if (meta.get("tokenizer_sha256"), meta.get("text_sha256"), meta.get("kind")) != (
        tokenizer_sha256,
        text_sha256,
        kind,
    ):
        return None, f"{path}: made for another tokenizer, text or kind"
    if set(tensors) != set(names) or any(t.dim() != 1 for t in tensors.values()):
        return None, f"{path}: expected the 1-D tensors {', '.join(names)}"
    return tensors, "ok"


def save_corpus_tokens(
    cache_dir: Path, tokenizer_sha256: str, text_sha256: str, kind: str, tensors: dict[str, torch.Tensor]
) -> None:
    save_tensors(
        corpus_tokens_path(cache_dir, tokenizer_sha256, text_sha256, kind),
        tensors,
        {"tokenizer_sha256": tokenizer_sha256, "text_sha256": text_sha256, "kind": kind},
    )
