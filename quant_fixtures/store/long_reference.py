"""The FP16 long-context reference: the FP16 final hidden state at every scored position of the long
WikiText-2 stretches and at every answer position of the retrieval probes, whether FP16's argmax was
the key token there, and the FP16 output head. Safetensors in the cache, keyed by everything that
shapes them (the key is stored in the file's metadata and compared field by field on load), so a
variant's exact comparison never runs against a stale reference."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from quant_fixtures.names import file_in
from quant_fixtures.store.atomic import load_tensors, save_tensors
from quant_fixtures.store.keys import ReferenceKeyBase

if TYPE_CHECKING:
    import torch

LONG_REFERENCE_FORMAT = 1
REQUIRED = {"stretch_hidden", "probe_hidden", "probe_hits", "head_weight"}
OPTIONAL = {"head_bias", "head_softcap"}


@dataclass(frozen=True)
class LongReferenceKey(ReferenceKeyBase):
    dataset_sha256: str
    length: int  # tokens per stretch (the model's, after its maximum)
    stretches: int
    chunk_tokens: int
    probe_lengths: tuple[int, ...]
    probe_depths: tuple[float, ...]
    probe_keys: int
    probe_version: int


def long_reference_path(cache_dir: Path, key: LongReferenceKey) -> Path:
    return file_in(Path(cache_dir) / "long_reference", f"{key.model}-{key.digest()[:16]}.safetensors")


def _key_text(key: LongReferenceKey) -> str:
    return json.dumps(key.as_dict(), sort_keys=True)


def store_long_reference(cache_dir: Path, key: LongReferenceKey, tensors: dict[str, torch.Tensor]) -> None:
    missing = REQUIRED - set(tensors)
    if missing:
        raise ValueError(f"long-context reference of {key.model}: missing tensors {sorted(missing)}")
    save_tensors(
        long_reference_path(cache_dir, key), tensors, {"format": str(LONG_REFERENCE_FORMAT), "key": _key_text(key)}
    )


def load_long_reference(cache_dir: Path, key: LongReferenceKey) -> tuple[dict[str, torch.Tensor] | None, str]:
    """The stored reference for ``key``, or None and why not. The key fixes the positions it holds;
    the comparison checks their number again (compute/corpus_kl.KLAgainstReference)."""
    path = long_reference_path(cache_dir, key)
    tensors, meta, reason = load_tensors(path)
    if tensors is None:
        return None, reason
    if meta.get("format") != str(LONG_REFERENCE_FORMAT) or meta.get("key") != _key_text(key):
        return None, f"{path}: stale (format or settings differ)"
    if not REQUIRED <= set(tensors) <= REQUIRED | OPTIONAL:
        return None, f"{path}: tensors {sorted(tensors)} are not a long-context reference's"
    if tensors["probe_hidden"].shape[0] != tensors["probe_hits"].shape[0]:
        return (
            None,
            f"{path}: {tensors['probe_hidden'].shape[0]} probe hidden states for {tensors['probe_hits'].shape[0]} hits",
        )
    return tensors, "ok"
