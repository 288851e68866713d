"""A stored file that is there but cannot be used is recomputed, and the run says which and why;
a file not there yet says nothing."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch

from quant_fixtures.store.corpus_reference import corpus_reference_path, load_corpus_reference, store_corpus_reference
from quant_fixtures.store.stale import StaleStoreWarning, warn_recomputed


def test_a_file_that_is_there_is_named_with_the_reason(tmp_path: Path) -> None:
    path = tmp_path / "reference.safetensors"
    path.write_bytes(b"half")
    with pytest.warns(StaleStoreWarning) as caught:
        warn_recomputed(path, f"{path}: content digest mismatch (corrupt)")
    (warning,) = caught
    assert str(warning.message) == f"{path}: recomputed, not used: content digest mismatch (corrupt)"


def test_a_file_not_there_yet_says_nothing(tmp_path: Path) -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        warn_recomputed(tmp_path / "reference.safetensors", "not in the cache")
    assert caught == []


HIDDEN = {"hidden": torch.zeros(6, 4), "head_weight": torch.zeros(10, 4), "noise_kl": torch.zeros(6)}


@pytest.mark.parametrize(
    "digest, positions, reason",
    [
        ("a" * 64, 6, "ok"),
        ("b" * 64, 6, "recorded with another FP16 baseline"),
        ("a" * 64, 8, "6 hidden states for the baseline's 8 positions"),
    ],
    ids=["intact", "other-baseline", "other-positions"],
)
def test_the_corpus_reference_says_why_it_cannot_be_used(
    tmp_path: Path, digest: str, positions: int, reason: str
) -> None:
    path = corpus_reference_path(tmp_path, "a" * 64)
    store_corpus_reference(path, HIDDEN, "a" * 64)
    tensors, why = load_corpus_reference(path, digest, positions)
    assert (tensors is not None) == (reason == "ok")
    assert why == (reason if reason == "ok" else f"{path}: {reason}")


def test_a_damaged_corpus_reference_is_called_corrupt(tmp_path: Path) -> None:
    path = corpus_reference_path(tmp_path, "a" * 64)
    store_corpus_reference(path, HIDDEN, "a" * 64)
    data = bytearray(path.read_bytes())
    data[-4:] = b"\x01\x02\x03\x04"
    path.write_bytes(bytes(data))
    tensors, why = load_corpus_reference(path, "a" * 64, 6)
    assert tensors is None and why == f"{path}: content digest mismatch (corrupt)"
