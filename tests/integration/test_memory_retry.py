"""A real model's numbers do not change when memory forces smaller batches: perplexity windows and
corpus KL after simulated out-of-memory retries (one mid-way through a batch's log-prob chunks,
after the hooks saw part of it) equal a run that never failed; prompt scoring likewise."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest
import torch
from integration_support import load_variant

import quant_fixtures.compute.scoring as scoring
from quant_fixtures.compute.corpus_kl import HiddenRecorder, KLAgainstReference
from quant_fixtures.compute.memory import BatchLog, GiB, MemoryBudget
from quant_fixtures.metrics.perplexity import nonoverlapping_windows

CTX = 64
T = TypeVar("T")


class PlannedBudget(MemoryBudget):
    """Plans as on CUDA (probe, fit, small log-prob chunks) on the CPU."""

    def __init__(self, chunk_elements: int) -> None:
        super().__init__("cpu")
        self.cuda, self.planned = True, chunk_elements

    def free(self) -> int:
        return 64 * GiB

    def limit(self) -> int:
        return 64 * GiB

    def probe(self, run: Callable[[], T]) -> tuple[T, int]:
        return run(), GiB  # 64 GiB x 0.9 / 1 GiB: the requested size fits

    def chunk_elements(self, ceiling: int, floor: int, bytes_per_element: int = 16) -> int:
        return max(floor, int(self.planned * self.scale))

    def synchronize(self) -> None:
        pass

    def release_cached(self) -> None:
        pass


@pytest.fixture(scope="module")
def model(tiny_models: dict[str, Path], digest_cache: Path) -> Any:
    return load_variant(tiny_models["llama"], "fp16", digest_cache, key="tiny-llama").model


@pytest.fixture(scope="module")
def ids(wikitext_ids: torch.Tensor) -> torch.Tensor:
    return wikitext_ids[: CTX * 12 + 1]


def _fail_second_chunk_of_big_batches(monkeypatch: pytest.MonkeyPatch) -> None:
    """Out of memory on the second log-prob chunk of any batch of more than two windows."""
    real = scoring.output_logits
    calls: dict[tuple[int, int], int] = {}  # (storage, rows) -> log-prob chunks computed

    def output_logits(model: Any, hidden: torch.Tensor) -> torch.Tensor:
        rows = hidden.shape[0] if hidden.dim() == 3 else 1
        key = (id(hidden.untyped_storage()), rows)
        calls[key] = calls.get(key, 0) + 1
        if rows > 2 and calls[key] == 2:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 1.00 GiB (simulated)")
        return real(model, hidden)

    monkeypatch.setattr(scoring, "output_logits", output_logits)


def test_perplexity_and_corpus_kl_survive_retries_unchanged(
    model: Any, ids: torch.Tensor, monkeypatch: pytest.MonkeyPatch
) -> None:
    windows = nonoverlapping_windows(len(ids), CTX)
    vocab = model.get_output_embeddings().weight.shape[0]
    budget = PlannedBudget(chunk_elements=vocab * 8 * 16)  # 16 positions per chunk at 8 windows a pass

    clean_recorder = HiddenRecorder(len(windows))
    clean = scoring.score_windows(model, ids, windows, 2, hook=clean_recorder, budget=budget)
    reference = clean_recorder.tensors(model)
    clean_kl = KLAgainstReference(reference, clean.window_tokens)
    scoring.score_windows(model, ids, windows, 2, hook=clean_kl, budget=budget)

    _fail_second_chunk_of_big_batches(monkeypatch)
    log, recorder = BatchLog(), HiddenRecorder(len(windows))
    retried = scoring.score_windows(model, ids, windows, 8, hook=recorder, budget=budget, log=log)
    assert log.notes == [
        "perplexity: out of memory at 8 windows per pass; retried at 4",
        "perplexity: out of memory at 4 windows per pass; retried at 2",
    ]
    assert log.used["perplexity"] == 2
    torch.testing.assert_close(torch.tensor(retried.window_nll), torch.tensor(clean.window_nll), rtol=0, atol=1e-9)
    again = recorder.tensors(model)
    assert again["hidden"].shape == reference["hidden"].shape  # nothing recorded twice
    torch.testing.assert_close(again["hidden"], reference["hidden"], rtol=0, atol=1e-5)

    kl_hook = KLAgainstReference(reference, clean.window_tokens)
    scoring.score_windows(model, ids, windows, 8, hook=kl_hook, budget=budget, log=BatchLog())
    ours, theirs = kl_hook.positions(), clean_kl.positions()
    assert len(ours["kl_pq"]) == len(theirs["kl_pq"]) == sum(clean.window_tokens)
    assert ours["kl_pq"].mean() == pytest.approx(theirs["kl_pq"].mean(), abs=1e-7)


def test_one_window_that_does_not_fit_is_retried_with_smaller_chunks(
    model: Any, ids: torch.Tensor, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Out of memory at one window per pass halves the chunks inside the pass (the budget's scale),
    not the run: the executor retries until the chunk fits, and the numbers are those of a clean run."""
    windows = nonoverlapping_windows(len(ids), CTX)[:3]
    vocab = model.get_output_embeddings().weight.shape[0]
    clean = scoring.score_windows(model, ids, windows, 1, budget=PlannedBudget(chunk_elements=vocab * 64))
    real = scoring.output_logits

    def output_logits(model: Any, hidden: torch.Tensor) -> torch.Tensor:
        if hidden.shape[-2] > 16:  # more than 16 positions at once does not "fit"
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 1.00 GiB (simulated)")
        return real(model, hidden)

    monkeypatch.setattr(scoring, "output_logits", output_logits)
    budget, log = PlannedBudget(chunk_elements=vocab * 64), BatchLog()
    retried = scoring.score_windows(model, ids, windows, 1, budget=budget, log=log)
    assert budget.scale == 0.25
    assert log.notes == [
        "perplexity: out of memory at 1 windows per pass; retried with chunks at 0.5 of their planned size",
        "perplexity: out of memory at 1 windows per pass; retried with chunks at 0.25 of their planned size",
    ]
    torch.testing.assert_close(torch.tensor(retried.window_nll), torch.tensor(clean.window_nll), rtol=0, atol=1e-9)


def test_out_of_memory_at_the_smallest_chunk_is_raised(
    model: Any, ids: torch.Tensor, monkeypatch: pytest.MonkeyPatch
) -> None:
    windows = nonoverlapping_windows(len(ids), CTX)[:1]

    def output_logits(model: Any, hidden: torch.Tensor) -> None:
        raise torch.OutOfMemoryError("CUDA out of memory (simulated)")

    monkeypatch.setattr(scoring, "output_logits", output_logits)
    budget = PlannedBudget(chunk_elements=10**9)
    with pytest.raises(torch.OutOfMemoryError):
        scoring.score_windows(model, ids, windows, 1, budget=budget, log=BatchLog())
    assert budget.scale <= 1 / 64
