"""How much a process may put on its device, and the one executor every batched stage runs through.

A run may be capped (``--max-gpu-memory`` / ``QUANT_MAX_GPU_MEMORY``); the cap is enforced with
``torch.cuda.set_per_process_memory_fraction`` so nothing in the process can exceed it. Every
batched forward pass of every stage (perplexity windows, references, generation, scoring, exact KL,
noise floors) runs inside :func:`run_sized` / :func:`run_batches`: batch sizes are upper bounds; the
first batch of a stage runs one item alone and its peak memory sets how many fit in what is left;
an out-of-memory error halves the batch and retries it, and at one item halves the budget's
``scale``, which every chunk of positions and every slice of vocabulary-wide work inside a pass is
sized by (:meth:`MemoryBudget.chunk_elements`). Every choice and retry is logged (:class:`BatchLog`)
and lands in the report's ``batching`` section. On the CPU nothing is capped and the requested
sizes are used. :func:`executing_stage` names the stage being executed (None outside the executor);
with ``QUANT_FIXTURES_STRICT_EXECUTOR=1`` a forward pass outside it is an error (the tests run so).
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import TypeVar

import torch

from quant_fixtures.models.placement import gpu_limit

GiB = 2**30
# Share of the free memory a batch size leaves unplanned: the measured need of one item misses the
# allocator's fragmentation and kernels' workspaces. (Not the placement's ACTIVATION_HEADROOM, which
# keeps a share of the whole GPU free of weights when a model is loaded.)
BATCH_HEADROOM = 0.10
MIN_SCALE = 1 / 64  # the smallest share of the planned chunk sizes tried before out of memory is final
STRICT_ENV = "QUANT_FIXTURES_STRICT_EXECUTOR"
_STAGE: ContextVar[str | None] = ContextVar("quant_fixtures_executor_stage", default=None)
T = TypeVar("T")
_UNITS = {
    "": 1,
    "b": 1,
    "kb": 10**3,
    "mb": 10**6,
    "gb": 10**9,
    "tb": 10**12,
    "kib": 2**10,
    "mib": 2**20,
    "gib": 2**30,
    "tib": 2**40,
}


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
        self.scale = 1.0  # share of the planned chunk sizes (halved when one item does not fit)

    def enforce(self) -> None:
        """Make this process's device its current one (graphs and streams are made there; it also
        initialises CUDA) and the cap binding for every allocation of the process on it."""
        if self.cuda:
            torch.cuda.set_device(self.device)
        if self.cuda and self.cap_bytes is not None:
            total = torch.cuda.get_device_properties(self.device).total_memory
            torch.cuda.set_per_process_memory_fraction(gpu_limit(self.device, self.cap_bytes) / total, self.device)

    def limit(self) -> int | None:
        """Bytes this process may hold on the device (models/placement.gpu_limit: the card, or the cap
        where smaller); None on the CPU (not planned)."""
        return gpu_limit(self.device, self.cap_bytes) if self.cuda else None

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

    def start_stage_peak(self) -> None:
        """Start measuring one stage's own peak (:meth:`stage_peak_bytes`); the evaluation's peak
        (:meth:`peak_bytes`) keeps what came before."""
        if self.cuda:
            self._peak = max(self._peak, torch.cuda.max_memory_allocated(self.device))
            torch.cuda.reset_peak_memory_stats(self.device)

    def stage_peak_bytes(self) -> int | None:
        """The most this process held on its GPU since :meth:`start_stage_peak` (None on the CPU)."""
        return torch.cuda.max_memory_allocated(self.device) if self.cuda else None

    def peak_bytes(self) -> int | None:
        if not self.cuda:
            return None
        return max(self._peak, torch.cuda.max_memory_allocated(self.device))

    def probe(self, run: Callable[[], T]) -> tuple[T, int]:
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
        return max(1, min(requested, int(free * (1 - BATCH_HEADROOM) // bytes_per_item)))

    def chunk_elements(self, ceiling: int, floor: int, bytes_per_element: int = 16) -> int:
        """Elements of vocabulary-wide work to materialise at once: ``ceiling`` unless a quarter of
        the free memory is smaller (``bytes_per_element`` live per element: 16 for logits with their
        float32 log-softmax; about 80 for the float64 comparison's temporaries), times ``scale``."""
        free = self.free()
        planned = ceiling if free is None else min(ceiling, free // 4 // bytes_per_element)
        return max(floor, int(planned * self.scale))


# The float64 full-vocabulary comparison (metrics/token_comparison.py) keeps about ten [positions,
# vocab] temporaries live; on a GPU its slices grow with the free memory up to 2**26 elements (fewer,
# larger kernels: 152k-token vocabularies gave 110-position slices at the fixed 2**24).
COMPARISON_BYTES_PER_ELEMENT = 80
COMPARISON_ELEMENTS_CEILING = 2**26


def comparison_slice_elements(budget: MemoryBudget, vocab: int) -> int | None:
    """Elements per slice of the exact comparison on this budget's device (None on the CPU: its
    cache-sized default)."""
    if not budget.cuda:
        return None
    return budget.chunk_elements(COMPARISON_ELEMENTS_CEILING, vocab, COMPARISON_BYTES_PER_ELEMENT)


def size_by_probe(
    requested: int, run_one: Callable[[], None], budget: MemoryBudget, log: BatchLog, stage: str, unit: str
) -> int:
    """Run one item alone (``run_one``) and return how many such items fit in one pass (<= requested)."""
    _, need = budget.probe(run_one)
    size = budget.fit(requested, need)
    if size < requested:
        log.notes.append(
            f"{stage}: {size} {unit} per pass, not {requested}: one needs {need / GiB:.2f} GiB "
            f"and {(budget.free() or 0) / GiB:.2f} GiB is free"
        )
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


def run_sized(
    items: Sequence[int],
    requested: int,
    run: Callable[[list[int]], None],
    budget: MemoryBudget,
    log: BatchLog,
    stage: str,
    unit: str,
    same_group: Callable[[int, int], bool] | None = None,
) -> None:
    """Run ``items`` in consecutive batches of at most ``requested``: on CUDA the first item runs
    alone, through :func:`run_batches` too, to measure how many fit (:func:`size_by_probe`), then
    :func:`run_batches` runs the rest."""
    size = requested
    if budget.cuda and requested > 1 and len(items) > 1:
        first = [items[0]]
        sized: list[int] = []
        run_batches(
            [first],
            lambda batch: sized.append(size_by_probe(requested, lambda: run(batch), budget, log, stage, unit)),
            budget,
            log,
            stage,
            unit,
        )
        size, items = sized[-1], items[1:]
    run_batches(chunked(items, size, same_group), run, budget, log, stage, unit)


def run_batches(
    batches: Sequence[list[int]],
    run: Callable[[list[int]], None],
    budget: MemoryBudget,
    log: BatchLog,
    stage: str,
    unit: str,
) -> None:
    """Call ``run`` on each batch in order. Out of memory halves the batch and every later one
    (``run`` must be safe to repeat for the same items); at one item it halves ``budget.scale``
    (the chunks inside a pass) down to :data:`MIN_SCALE`, then the error is raised. The largest
    size that ran is logged as the stage's batch size."""
    queue, largest, cap = [list(b) for b in batches], 0, None
    while queue:
        batch = queue.pop(0)
        if cap is not None and len(batch) > cap:
            queue[:0] = [batch[i : i + cap] for i in range(0, len(batch), cap)]
            continue
        out_of_memory = False
        token = _STAGE.set(stage)
        try:
            run(batch)
        except Exception as exc:
            if not is_out_of_memory(exc) or (len(batch) == 1 and budget.scale <= MIN_SCALE):
                raise
            out_of_memory = True  # handled below, once the exception (and the tensors its frames hold) is gone
        finally:
            _STAGE.reset(token)
        if out_of_memory:
            budget.release_cached()
            if len(batch) > 1:
                cap = max(1, len(batch) // 2)
                log.notes.append(f"{stage}: out of memory at {len(batch)} {unit} per pass; retried at {cap}")
            else:
                budget.scale /= 2
                log.notes.append(
                    f"{stage}: out of memory at 1 {unit} per pass; retried with chunks at "
                    f"{budget.scale:g} of their planned size"
                )
            queue.insert(0, batch)
            continue
        largest = max(largest, len(batch))
    log.used[stage] = max(largest, log.used.get(stage, 0))


def executing_stage() -> str | None:
    """The stage :func:`run_batches` is executing now, or None outside the executor."""
    return _STAGE.get()


def require_executor(module: torch.nn.Module, args: object) -> None:
    """Forward pre-hook (strict mode): a model's forward pass must run inside the executor."""
    if _STAGE.get() is None:
        raise RuntimeError(
            f"{type(module).__name__}: a forward pass ran outside the memory executor "
            "(compute/memory.run_batches): its memory is neither planned nor retried"
        )


def strict_executor() -> bool:
    """Whether forward passes outside the executor are errors (``QUANT_FIXTURES_STRICT_EXECUTOR=1``)."""
    return os.environ.get(STRICT_ENV, "") == "1"
