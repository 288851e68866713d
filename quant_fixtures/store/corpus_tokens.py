"""The perplexity corpus as token ids, cached per tokenizer and text.

Tokenizing the WikiText-2 test split takes seconds per model; the ids depend only on how the
tokenizer turns text into ids (its digest, store/prompt_reference.tokenizer_sha256) and on the text
(its sha256), so both name the file and are checked against its metadata when it is read, with the
tensors' own digest: a stale or damaged file is tokenized again, never reused.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from quant_fixtures.store.atomic import load_tensors, save_tensors


def corpus_tokens_path(cache_dir: Path, tokenizer_sha256: str, text_sha256: str) -> Path:
    return Path(cache_dir) / "corpus-tokens" / f"{tokenizer_sha256[:16]}-{text_sha256[:16]}.safetensors"


def load_corpus_tokens(cache_dir: Path, tokenizer_sha256: str, text_sha256: str) -> tuple[Any | None, str]:
    """(ids, "ok") or (None, why the cached ids cannot be used)."""
    path = corpus_tokens_path(cache_dir, tokenizer_sha256, text_sha256)
    tensors, meta, status = load_tensors(path)
    if tensors is None:
        return None, status
    if meta.get("tokenizer_sha256") != tokenizer_sha256 or meta.get("text_sha256") != text_sha256:
        return None, f"{path}: made for another tokenizer or text"
    if "ids" not in tensors or tensors["ids"].dim() != 1:
        return None, f"{path}: no 1-D ids tensor"
    return tensors["ids"], "ok"


def save_corpus_tokens(cache_dir: Path, tokenizer_sha256: str, text_sha256: str, ids: Any) -> None:
    save_tensors(corpus_tokens_path(cache_dir, tokenizer_sha256, text_sha256), {"ids": ids},
                 {"tokenizer_sha256": tokenizer_sha256, "text_sha256": text_sha256})
