"""How much a process may put on its device, and batch sizes that fit in it.

A run may be capped (``--max-gpu-memory`` / ``QUANT_MAX_GPU_MEMORY``); the cap is enforced with
``torch.cuda.set_per_process_memory_fraction`` so nothing in the process can exceed it. Batch sizes
are upper bounds: the first batch of a stage runs one item alone and its peak memory sets how many
fit in what is left; an out-of-memory error halves the batch and retries it. Every choice and retry
is logged (:class:`BatchLog`) and lands in the report's ``batching`` section. On the CPU nothing is
capped and the requested sizes are used.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch

GiB = 2**30
HEADROOM = 0.10  # share of the free memory left unplanned (allocator fragmentation, kernels' workspaces)
_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
          "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


def parse_size(text: str, what: str) -> int:
    """Bytes from '15GiB', '16 GB', '15.5e9' or '800MiB'; ValueError naming ``what`` otherwise."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*([A-Za-z]*)\s*", str(text))
    unit = match.group(2).lower() if match else ""
    if not match or unit not in _UNITS:
        raise ValueError(f"{what}: {text!r} is not a memory size (examples: 15GiB, 16GB, 15.5e9)")
    value = float(match.group(1)) * _UNITS[unit]
    if value < GiB / 4:
        raise ValueError(f"{what}: {text!r} is {value / GiB:.3g} GiB; below 0.25 GiB no model fits")
    return int(value)


def is_out_of_memory(exc: BaseException) -> bool:
    """CUDA's OutOfMemoryError, Python's MemoryError, or the CPU allocator's RuntimeError."""
    if isinstance(exc, (torch.OutOfMemoryError, MemoryError)):
        return True
    return isinstance(exc, RuntimeError) and ("out of memory" in str(exc) or "can't allocate memory" in str(exc))


@dataclass
class BatchLog:
    """Batch sizes used per stage, and what changed them (the report's ``batching`` notes)."""

    used: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    generation_method: str | None = None  # how the decode steps ran (compute/decoding.py)


class MemoryBudget:
    """The memory one process may use on ``device`` (a cap in bytes, else the whole card)."""

    def __init__(self, device: str, cap_bytes: int | None = None) -> None:
        self.device, self.cap_bytes = device, cap_bytes
        self.cuda = device.startswith("cuda")
        self._peak = 0

    def enforce(self) -> None:
        """Make this process's device its current one (graphs and streams are made there; it also
        initialises CUDA) and the cap binding for every allocation of the process on it."""
        if self.cuda:
            torch.cuda.set_device(self.device)
        if self.cuda and self.cap_bytes is not None:
            total = torch.cuda.get_device_properties(self.device).total_memory
            torch.cuda.set_per_process_memory_fraction(min(1.0, self.cap_bytes / total), self.device)

    def limit(self) -> int | None:
        """Bytes this process may hold on the device; None on the CPU (not planned)."""
        if not self.cuda:
            return None
        total = torch.cuda.get_device_properties(self.device).total_memory
        return min(total, self.cap_bytes) if self.cap_bytes is not None else total

    def held(self) -> int | None:
        return torch.cuda.memory_allocated(self.device) if self.cuda else None

    def free(self) -> int | None:
        limit, held = self.limit(), self.held()
        return None if limit is None or held is None else max(0, limit - held)

    def synchronize(self) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.device)

    def release_cached(self) -> None:
        if self.cuda:
            torch.cuda.empty_cache()

    # -- peak tracking that survives the probes' resets ------------------------------------------
    def start_peak(self) -> None:
        self._peak = 0
        if self.cuda:
            torch.cuda.reset_peak_memory_stats(self.device)

    def peak_bytes(self) -> int | None:
        if not self.cuda:
            return None
        return max(self._peak, torch.cuda.max_memory_allocated(self.device))

    def probe(self, run: Callable[[], Any]) -> tuple[Any, int]:
        """(result, bytes ``run`` needed above what was allocated before it)."""
        if not self.cuda:
            return run(), 0
        self._peak = max(self._peak, torch.cuda.max_memory_allocated(self.device))
        before = torch.cuda.memory_allocated(self.device)
        torch.cuda.reset_peak_memory_stats(self.device)
        result = run()
        return result, max(1, torch.cuda.max_memory_allocated(self.device) - before)

    def fit(self, requested: int, bytes_per_item: float) -> int:
        """The largest batch <= ``requested`` whose items fit in the free memory (at least 1)."""
        free = self.free()
        if free is None or bytes_per_item <= 0:
            return requested
        return max(1, min(requested, int(free * (1 - HEADROOM) // bytes_per_item)))

    def logprob_elements(self, ceiling: int, floor: int) -> int:
        """Float32 log-prob elements to materialise at once: ``ceiling`` unless a quarter of the
        free memory is smaller (about 16 bytes per element live: logits, float32 copy, log-softmax)."""
        free = self.free()
        if free is None:
            return ceiling
        return max(floor, min(ceiling, free // 4 // 16))


def size_by_probe(requested: int, run_one: Callable[[], None], budget: MemoryBudget, log: BatchLog, stage: str,
                  unit: str) -> int:
    """Run one item alone (``run_one``) and return how many such items fit in one pass (<= requested)."""
    _, need = budget.probe(run_one)
    size = budget.fit(requested, need)
    if size < requested:
        log.notes.append(f"{stage}: {size} {unit} per pass, not {requested}: one needs {need / GiB:.2f} GiB "
                         f"and {(budget.free() or 0) / GiB:.2f} GiB is free")
    return size


def chunked(items: Sequence[int], size: int, same_group: Callable[[int, int], bool] | None = None) -> list[list[int]]:
    """Consecutive items in batches of at most ``size``, a batch holding only items ``same_group``
    allows together with its first."""
    batches: list[list[int]] = []
    for item in items:
        if batches and len(batches[-1]) < size and (same_group is None or same_group(batches[-1][0], item)):
            batches[-1].append(item)
        else:
            batches.append([item])
    return batches


def run_sized(items: Sequence[int], requested: int, run: Callable[[list[int]], None], budget: MemoryBudget,
              log: BatchLog, stage: str, unit: str, same_group: Callable[[int, int], bool] | None = None) -> None:
    """Run ``items`` in consecutive batches of at most ``requested``: on CUDA the first item runs
    alone to measure how many fit (:func:`size_by_probe`), then :func:`run_batches` runs the rest."""
    size = requested
    if budget.cuda and requested > 1 and len(items) > 1:
        size = size_by_probe(requested, lambda: run([items[0]]), budget, log, stage, unit)
        items = items[1:]
    run_batches(chunked(items, size, same_group), run, budget, log, stage, unit)


def run_batches(batches: Sequence[list[int]], run: Callable[[list[int]], None], budget: MemoryBudget, log: BatchLog,
                stage: str, unit: str) -> None:
    """Call ``run`` on each batch in order. Out of memory halves the batch and every later one
    (``run`` must be safe to repeat for the same items); at one item the error is raised. The
    largest size that ran is logged as the stage's batch size."""
    queue, largest, cap = [list(b) for b in batches], 0, None
    while queue:
        batch = queue.pop(0)
        if cap is not None and len(batch) > cap:
            queue[:0] = [batch[i:i + cap] for i in range(0, len(batch), cap)]
            continue
        out_of_memory = False
        try:
            run(batch)
        except Exception as exc:
            if not is_out_of_memory(exc) or len(batch) == 1:
                raise
            out_of_memory = True  # handled below, once the exception (and the tensors its frames hold) is gone
        if out_of_memory:
            budget.release_cached()
            cap = max(1, len(batch) // 2)
            log.notes.append(f"{stage}: out of memory at {len(batch)} {unit} per pass; retried at {cap}")
            queue.insert(0, batch)
            continue
        largest = max(largest, len(batch))
    log.used[stage] = max(largest, log.used.get(stage, 0))
