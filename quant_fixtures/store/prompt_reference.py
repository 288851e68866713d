"""The FP16 prompt reference: greedy responses, and the FP16 final hidden state at every response
position with the FP16 output head, from which the exact FP16 logits are rebuilt.

Stored as safetensors in the cache directory (outside git), keyed by a hash of everything that
shapes it; the file's metadata carries the key and a digest of the tensors, both checked on load,
so a stale or corrupt cache is never used.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from quant_fixtures.metrics.reference_head import ReferenceHead
from quant_fixtures.names import file_in
from quant_fixtures.store.atomic import load_tensors, save_tensors
from quant_fixtures.store.keys import ReferenceKeyBase

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

REFERENCE_FORMAT = 2  # 2: hidden states + output head (1 kept top-k log-probs)


@dataclass(frozen=True)
class ReferenceKey(ReferenceKeyBase):
    prompts_sha256: str
    categories: tuple[str, ...] | None
    use_chat_template: bool
    max_new_tokens_cap: int | None
    top_k: int


@dataclass
class PromptReference:
    """Per prompt (in suite order): prompt ids, FP16 response ids and the FP16 final hidden states
    [R, H] at the R positions that predict the response tokens; plus the FP16 output head."""

    key: ReferenceKey
    prompt_ids: list[list[int]]
    response_ids: list[list[int]]
    hidden: list[torch.Tensor]
    head: ReferenceHead

    def logits(self, i: int, device: torch.device | str) -> torch.Tensor:
        """The FP16 logits [R, V] of prompt ``i``'s response positions, rebuilt on ``device``."""
        return self.head.logits(self.hidden[i].to(device))

    def subset(self, chosen: list[int]) -> PromptReference:
        return PromptReference(
            self.key,
            [self.prompt_ids[i] for i in chosen],
            [self.response_ids[i] for i in chosen],
            [self.hidden[i] for i in chosen],
            self.head,
        )

    def to_tensors(self) -> dict[str, torch.Tensor]:
        def flat(rows: list[list[int]]) -> torch.Tensor:
            return torch.tensor([t for r in rows for t in r], dtype=torch.int64)

        def lengths(rows: list[list[int]]) -> torch.Tensor:
            return torch.tensor([len(r) for r in rows], dtype=torch.int64)

        width = self.head.weight.shape[1]
        return {
            **self.head.to_tensors(),
            "prompt_ids": flat(self.prompt_ids),
            "prompt_lengths": lengths(self.prompt_ids),
            "response_ids": flat(self.response_ids),
            "response_lengths": lengths(self.response_ids),
            "hidden": torch.cat(self.hidden) if self.hidden else torch.zeros(0, width),
        }


def reference_path(cache_dir: Path, key: ReferenceKey) -> Path:
    return file_in(Path(cache_dir) / "reference", f"{key.model}-{key.digest()[:16]}.safetensors")


def store_reference(cache_dir: Path, reference: PromptReference) -> Path:
    path = reference_path(cache_dir, reference.key)
    save_tensors(
        path,
        reference.to_tensors(),
        {"format": str(REFERENCE_FORMAT), "key": json.dumps(reference.key.as_dict(), sort_keys=True)},
    )
    return path


def _split(flat: torch.Tensor, lengths: torch.Tensor) -> list[torch.Tensor]:
    return list(torch.split(flat, lengths.tolist()))


def load_reference(cache_dir: Path, key: ReferenceKey) -> tuple[PromptReference | None, str]:
    """The cached reference for ``key``, or None with the reason it cannot be used."""
    path = reference_path(cache_dir, key)
    if not path.is_file():
        return None, f"{path}: no cached FP16 prompt reference for these settings"
    tensors, meta, reason = load_tensors(path)
    if tensors is None:
        return None, reason
    if meta.get("format") != str(REFERENCE_FORMAT):
        return None, f"{path}: format {meta.get('format')} != {REFERENCE_FORMAT}"
    if meta.get("key") != json.dumps(key.as_dict(), sort_keys=True):
        return None, f"{path}: stale (settings differ)"
    response_lengths = tensors["response_lengths"]
    if tensors["hidden"].shape[0] != int(response_lengths.sum()):
        return (
            None,
            f"{path}: {tensors['hidden'].shape[0]} hidden states for {int(response_lengths.sum())} response tokens",
        )
    return PromptReference(
        key=key,
        prompt_ids=[t.tolist() for t in _split(tensors["prompt_ids"], tensors["prompt_lengths"])],
        response_ids=[t.tolist() for t in _split(tensors["response_ids"], response_lengths)],
        hidden=_split(tensors["hidden"], response_lengths),
        head=ReferenceHead.from_tensors(tensors),
    ), "ok"


def tokenizer_sha256(tokenizer: PreTrainedTokenizerBase) -> str:
    """A digest of everything that decides how the tokenizer turns text into ids: for a fast
    tokenizer its whole serialization (normalizer, pre-tokenizer, model and merges, added tokens,
    post-processor), else the vocabulary; plus special tokens, BOS/EOS settings and chat template."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    state = {
        "backend": backend.to_str() if backend is not None else None,
        "vocab": None if backend is not None else sorted(tokenizer.get_vocab().items()),
        "special": tokenizer.special_tokens_map,
        "class": type(tokenizer).__name__,
        "add_bos": getattr(tokenizer, "add_bos_token", None),
        "add_eos": getattr(tokenizer, "add_eos_token", None),
        "chat_template": getattr(tokenizer, "chat_template", None),
    }
    return hashlib.sha256(json.dumps(state, sort_keys=True, default=str).encode()).hexdigest()
