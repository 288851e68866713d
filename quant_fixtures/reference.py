"""The FP16 prompt reference: greedy responses and top-k log-probabilities at every response position.

Stored as safetensors in the cache directory (outside git), keyed by a hash of everything that
shapes it; the file's metadata carries the key and a digest of the tensors, both checked on load,
so a stale or corrupt cache is never used.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from .hashing import settings_digest, tensors_digest

REFERENCE_FORMAT = 1


@dataclass(frozen=True)
class ReferenceKey:
    model: str
    weights_identity: str
    tokenizer_sha256: str
    prompts_sha256: str
    categories: tuple[str, ...] | None
    use_chat_template: bool
    max_new_tokens_cap: int | None
    top_k: int
    full_logprobs: bool  # also keep the whole FP16 distribution, for exact KL (small models)
    weight_dtype: str
    compute_dtype: str
    device_type: str
    metrics_version: int

    def digest(self) -> str:
        return settings_digest(self)


@dataclass
class PromptReference:
    """Per prompt (in suite order): prompt ids, FP16 response ids, top-k log-probs [R, k] and ids."""

    key: ReferenceKey
    prompt_ids: list[list[int]]
    response_ids: list[list[int]]
    topk_logp: list[torch.Tensor]
    topk_idx: list[torch.Tensor]
    full_logp: list[torch.Tensor] | None = None  # [R, V] float32 per prompt when key.full_logprobs

    def to_tensors(self) -> dict[str, torch.Tensor]:
        def flat(rows: list[list[int]]) -> torch.Tensor:
            return torch.tensor([t for r in rows for t in r], dtype=torch.int64)

        def lengths(rows: list[list[int]]) -> torch.Tensor:
            return torch.tensor([len(r) for r in rows], dtype=torch.int64)

        k = self.key.top_k
        full = {"full_logp": torch.cat(self.full_logp)} if self.full_logp else {}
        return {**full,
            "prompt_ids": flat(self.prompt_ids), "prompt_lengths": lengths(self.prompt_ids),
            "response_ids": flat(self.response_ids), "response_lengths": lengths(self.response_ids),
            "topk_logp": torch.cat(self.topk_logp) if self.topk_logp else torch.zeros(0, k),
            "topk_idx": torch.cat(self.topk_idx) if self.topk_idx else torch.zeros(0, k, dtype=torch.int64),
        }


def reference_path(cache_dir: Path, key: ReferenceKey) -> Path:
    return Path(cache_dir) / "reference" / f"{key.model}-{key.digest()[:16]}.safetensors"


def store_reference(cache_dir: Path, reference: PromptReference) -> Path:
    from safetensors.torch import save_file

    tensors = {k: v.contiguous() for k, v in reference.to_tensors().items()}
    meta = {"format": str(REFERENCE_FORMAT), "key": json.dumps(asdict(reference.key), sort_keys=True),
            "tensors_sha256": tensors_digest(tensors)}
    path = reference_path(cache_dir, reference.key)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    save_file(tensors, str(tmp), metadata=meta)
    os.replace(tmp, path)
    return path


def _split(flat: torch.Tensor, lengths: torch.Tensor) -> list[torch.Tensor]:
    return list(torch.split(flat, lengths.tolist()))


def load_reference(cache_dir: Path, key: ReferenceKey) -> tuple[PromptReference | None, str]:
    """The cached reference for ``key``, or None with the reason it cannot be used."""
    from safetensors import safe_open

    path = reference_path(cache_dir, key)
    if not path.is_file():
        return None, f"{path}: no cached FP16 prompt reference for these settings"
    try:
        with safe_open(str(path), framework="pt") as fh:
            meta = fh.metadata() or {}
            tensors = {name: fh.get_tensor(name) for name in fh.keys()}
    except Exception as exc:  # truncated or not a safetensors file
        return None, f"{path}: unreadable ({type(exc).__name__}: {exc})"
    if meta.get("format") != str(REFERENCE_FORMAT):
        return None, f"{path}: format {meta.get('format')} != {REFERENCE_FORMAT}"
    if meta.get("key") != json.dumps(asdict(key), sort_keys=True):
        return None, f"{path}: stale (settings differ)"
    if meta.get("tensors_sha256") != tensors_digest(tensors):
        return None, f"{path}: content digest mismatch (corrupt)"
    response_lengths = tensors["response_lengths"]
    return PromptReference(
        key=key,
        prompt_ids=[t.tolist() for t in _split(tensors["prompt_ids"], tensors["prompt_lengths"])],
        response_ids=[t.tolist() for t in _split(tensors["response_ids"], response_lengths)],
        topk_logp=_split(tensors["topk_logp"], response_lengths),
        topk_idx=_split(tensors["topk_idx"], response_lengths),
        full_logp=_split(tensors["full_logp"], response_lengths) if "full_logp" in tensors else None,
    ), "ok"


def tokenizer_sha256(tokenizer: Any) -> str:
    """A digest of the tokenizer's vocabulary, special tokens and chat template."""
    state = {"vocab": sorted(tokenizer.get_vocab().items()), "special": tokenizer.special_tokens_map,
             "chat_template": getattr(tokenizer, "chat_template", None), "class": type(tokenizer).__name__}
    return hashlib.sha256(json.dumps(state, sort_keys=True, default=str).encode()).hexdigest()
