"""An xdist scheduler for `--dist loadgroup` that keeps every worker (every GPU) busy.

Each (model, variant) is one xdist group. A quantized variant needs its model's FP16 references,
made by the FP16 group, so xdist's own order (largest groups first; quantized groups have the most
tests) put workers on variants whose FP16 pass another worker had not finished, and they waited.
Here an idle worker takes, in order:

1. an FP16 group, the largest model first (the longest passes start earliest);
2. a quantized group whose FP16 group has finished (or runs on this same worker, earlier in its
   queue), the largest model first;
3. a quantized group whose FP16 pass is still running elsewhere (it waits on the lock);
4. other tests (not tied to a pair);
5. last, a model's group (tests that read every variant of a model, e.g. its snapshot): by then
   its pairs are done or being done elsewhere, and the suite's per-pair lock makes it wait for
   them instead of evaluating them again.

A worker is given one group at a time, when it is down to the test it holds back for pytest's
teardown bookkeeping, so every choice is made with the latest knowledge of what has finished.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import pytest
from xdist.scheduler import LoadGroupScheduling

Pair = tuple[str, str]


class WorkerNode(Protocol):
    """What the scheduler uses of xdist's WorkerController (xdist ships no type information)."""

    shutting_down: bool

    def shutdown(self) -> None: ...


def pair_of_group(group: str, models: list[str], variant_keys: list[str]) -> Pair | None:
    """The (model, variant key) an xdist group name "{model}-{variant key}" stands for, else None."""
    for variant_key in variant_keys:
        model = group[: -len(variant_key) - 1] if group.endswith("-" + variant_key) else None
        if model is not None and model in models:
            return model, variant_key
    return None


def next_group(
    waiting: list[str],
    finished: set[str],
    here: set[str],
    assigned: set[str],
    pair: Callable[[str], Pair | None],
    baseline: str,
    size: Callable[[str], float],
    models: frozenset[str] = frozenset(),
) -> str:
    """The group an idle worker takes next (see the module docstring). ``finished``: groups whose
    every test has run; ``here``: groups this worker holds; ``assigned``: groups any worker holds;
    ``models``: the model keys (a group named after one holds that model's whole-model tests)."""

    def tier(group: str) -> int:
        p = pair(group)
        if p is None:
            return 4 if group in models else 3
        if p[1] == baseline:
            return 0
        fp16 = f"{p[0]}-{baseline}"
        # ready: FP16 done, queued before it on this worker, or not part of this run (nobody makes it)
        ready = fp16 in finished or fp16 in here or (fp16 not in waiting and fp16 not in assigned)
        return 1 if ready else 2

    return min(waiting, key=lambda g: (tier(g), -size(g) if pair(g) else 0.0, waiting.index(g)))


class PairAwareScheduling(LoadGroupScheduling):
    """LoadGroupScheduling with the order above (see the module docstring)."""

    def __init__(
        self,
        config: pytest.Config,
        log: object = None,  # xdist's Producer, handed on to LoadGroupScheduling
        pair: Callable[[str], Pair | None] | None = None,
        baseline: str = "fp16",
        size: Callable[[str], float] | None = None,
        models: frozenset[str] = frozenset(),
    ) -> None:
        super().__init__(config, log)
        self.models = models
        self.pair = pair or (lambda group: None)
        self.baseline = baseline
        self.size = size or (lambda group: 0.0)

    def _finished_groups(self) -> set[str]:
        return {scope for work in self.assigned_work.values() for scope, tests in work.items() if all(tests.values())}

    def _assign_work_unit(self, node: WorkerNode) -> None:
        assigned = {scope for work in self.assigned_work.values() for scope in work}
        choice = next_group(
            list(self.workqueue),
            self._finished_groups(),
            set(self.assigned_work.get(node, {})),
            assigned,
            self.pair,
            self.baseline,
            self.size,
            self.models,
        )
        self.workqueue.move_to_end(choice, last=False)  # the parent hands out the head of the queue
        super()._assign_work_unit(node)

    def _reschedule(self, node: WorkerNode) -> None:
        if node.shutting_down:
            return
        if not self.workqueue:
            node.shutdown()
            return
        if self._pending_of(self.assigned_work[node]) > 1:  # one test is always held back by the worker
            return
        self._assign_work_unit(node)
