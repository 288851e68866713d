"""The FP16 corpus reference: top-k log-probs of every scored WikiText-2 position (safetensors in
the cache), tied to the FP16 baseline it was recorded with by that baseline's key digest."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from quant_fixtures.store.atomic import load_tensors, save_tensors

CORPUS_TOP_K = 32


def corpus_reference_path(cache_dir: Path, baseline_digest: str, k: int) -> Path:
    return Path(cache_dir) / "corpus_reference" / f"{baseline_digest[:16]}-top{k}.safetensors"


def store_corpus_reference(path: Path, tensors: dict[str, Any], baseline_digest: str) -> None:
    save_tensors(path, tensors, {"baseline_key_sha256": baseline_digest})


def load_corpus_reference(path: Path, baseline_digest: str, positions: int) -> dict[str, Any] | None:
    """The stored top-k rows if they belong to this baseline and are intact, else None."""
    tensors, meta, _ = load_tensors(path)
    if tensors is None or meta.get("baseline_key_sha256") != baseline_digest:
        return None
    if set(tensors) != {"logp", "idx"} or tensors["logp"].shape[0] != positions:
        return None
    return tensors
