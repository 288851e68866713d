"""The FP16 corpus reference: the FP16 final hidden state at every scored WikiText-2 position, the
FP16 output head and the corpus noise floor (per-position KL of FP16 against itself in another batch
composition), safetensors in the cache, tied to the FP16 baseline it was recorded with by that
baseline's key digest."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from quant_fixtures.store.atomic import load_tensors, save_tensors

if TYPE_CHECKING:
    import torch

REQUIRED = {"hidden", "head_weight", "noise_kl"}  # noise_kl: FP16 against itself (session/passes.py)
OPTIONAL = {"head_bias", "head_softcap"}


def corpus_reference_path(cache_dir: Path, baseline_digest: str) -> Path:
    return Path(cache_dir) / "corpus_reference" / f"{baseline_digest[:16]}-hidden.safetensors"


def store_corpus_reference(path: Path, tensors: dict[str, torch.Tensor], baseline_digest: str) -> None:
    save_tensors(path, tensors, {"baseline_key_sha256": baseline_digest})


def load_corpus_reference(
    path: Path, baseline_digest: str, positions: int
) -> tuple[dict[str, torch.Tensor] | None, str]:
    """(the stored hidden states and head, "ok") if they belong to this baseline and are intact,
    else (None, why not)."""
    tensors, meta, reason = load_tensors(path)
    if tensors is None:
        return None, reason
    if meta.get("baseline_key_sha256") != baseline_digest:
        return None, f"{path}: recorded with another FP16 baseline"
    if not REQUIRED <= set(tensors) <= REQUIRED | OPTIONAL:
        return None, f"{path}: tensors {sorted(tensors)} are not a corpus reference's"
    if tensors["hidden"].shape[0] != positions:
        return None, f"{path}: {tensors['hidden'].shape[0]} hidden states for the baseline's {positions} positions"
    if tensors["hidden"].shape[-1] != tensors["head_weight"].shape[-1]:
        return None, f"{path}: hidden states and output head differ in width"
    return tensors, "ok"
