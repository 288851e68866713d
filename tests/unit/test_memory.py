"""Batch sizes from the memory a process may use, the out-of-memory retry, and the cap's parsing."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import pytest
import torch

from quant_fixtures.compute.memory import (
    BatchLog,
    GiB,
    MemoryBudget,
    chunked,
    is_out_of_memory,
    parse_size,
    run_batches,
    size_by_probe,
)

T = TypeVar("T")


class PlannedBudget(MemoryBudget):
    """A CUDA-like budget with a fixed amount free and a fixed measured need per item."""

    def __init__(self, free: float, need: float) -> None:
        super().__init__("cpu")
        self.cuda, self._free, self._need = True, int(free), int(need)

    def free(self) -> int:
        return self._free

    def limit(self) -> int:
        return self._free

    def probe(self, run: Callable[[], T]) -> tuple[T, int]:
        return run(), self._need

    def release_cached(self) -> None:
        self.released = getattr(self, "released", 0) + 1


def _oom() -> torch.OutOfMemoryError:
    return torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (simulated)")


def test_the_batch_is_as_large_as_fits_after_the_probe() -> None:
    log, ran = BatchLog(), []
    size = size_by_probe(
        8, lambda: ran.append("probe"), PlannedBudget(free=10 * GiB, need=3 * GiB), log, "perplexity", "windows"
    )
    assert ran == ["probe"]
    assert size == 3  # floor(10 GiB x 0.9 / 3 GiB)
    assert log.notes == ["perplexity: 3 windows per pass, not 8: one needs 3.00 GiB and 10.00 GiB is free"]
    assert size_by_probe(8, lambda: None, PlannedBudget(free=100 * GiB, need=1 * GiB), BatchLog(), "p", "w") == 8
    assert size_by_probe(8, lambda: None, PlannedBudget(free=1 * GiB, need=5 * GiB), BatchLog(), "p", "w") == 1


def test_on_the_cpu_the_requested_size_is_used() -> None:
    budget = MemoryBudget("cpu", cap_bytes=GiB)
    assert budget.fit(16, 10 * GiB) == 16 and budget.free() is None and budget.limit() is None


def test_out_of_memory_halves_the_batch_and_every_later_one() -> None:
    budget, log, seen = PlannedBudget(free=GiB, need=1), BatchLog(), []

    def run(batch: list[int]) -> None:
        seen.append(list(batch))
        if len(batch) > 2:
            raise _oom()

    run_batches(chunked(range(10), 8), run, budget, log, "scoring", "prompts")
    assert seen == [[0, 1, 2, 3, 4, 5, 6, 7], [0, 1, 2, 3], [0, 1], [2, 3], [4, 5], [6, 7], [8, 9]]
    assert log.notes == [
        "scoring: out of memory at 8 prompts per pass; retried at 4",
        "scoring: out of memory at 4 prompts per pass; retried at 2",
    ]
    assert log.used["scoring"] == 2 and budget.released == 2


def test_out_of_memory_at_one_item_and_other_errors_are_raised() -> None:
    budget = PlannedBudget(free=GiB, need=1)

    def always(batch: list[int]) -> None:
        raise _oom()

    with pytest.raises(torch.OutOfMemoryError):
        run_batches([[0, 1]], always, budget, BatchLog(), "generation", "prompts")

    def broken(batch: list[int]) -> None:
        raise ValueError("not memory")

    with pytest.raises(ValueError):
        run_batches([[0, 1]], broken, budget, BatchLog(), "generation", "prompts")


def test_groups_keep_only_items_allowed_together() -> None:
    lengths = [4, 4, 4, 2, 2]
    assert chunked(range(5), 2, lambda a, b: lengths[a] == lengths[b]) == [[0, 1], [2], [3, 4]]


@pytest.mark.parametrize(
    "text,expected",
    [("15GiB", 15 * GiB), ("16 GB", 16 * 10**9), ("15.5e9", int(15.5e9)), ("800MiB", 800 * 2**20), ("1tib", 2**40)],
)
def test_memory_sizes_parse(text: str, expected: int) -> None:
    assert parse_size(text, "--max-gpu-memory") == expected


@pytest.mark.parametrize("text", ["15 GiBs", "lots", "", "-3GiB", "15GiB 2", "100MB"])
def test_bad_memory_sizes_name_the_option(text: str) -> None:
    with pytest.raises(ValueError, match="--max-gpu-memory"):
        parse_size(text, "--max-gpu-memory")


def test_out_of_memory_is_recognised() -> None:
    assert is_out_of_memory(_oom()) and is_out_of_memory(MemoryError())
    assert is_out_of_memory(RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 1"))
    assert not is_out_of_memory(RuntimeError("shape mismatch"))
