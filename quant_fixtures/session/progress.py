"""Progress of an evaluation's long stages, told to a sink the caller passes in.

The session does not know where progress goes: the pytest plugin passes a sink that writes on
pytest's terminal (plugin/progress.py); without a sink nothing is shown. A sink receives every
event, batch by batch; how much of it to show (a live line, or one line per start and end in a
log) is the sink's choice.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

PHASES = ("start", "step", "end", "failed")


@dataclass(frozen=True)
class StageEvent:
    pair: str  # the model and variant evaluated, e.g. "tiny int8"
    stage: str  # e.g. "perplexity", "generation"
    phase: str  # one of PHASES
    done: int = 0  # units finished so far
    total: int | None = None  # units in the stage; None when the stage is not counted
    unit: str = ""  # e.g. "windows", "prompts"
    seconds: float = 0.0  # since the stage started


ProgressSink = Callable[[StageEvent], None]


def describe(event: StageEvent) -> str:
    """One line for a person: what runs, how far it got, how long it took."""
    head, took = f"quant-fixtures: {event.pair} {event.stage}", f"{event.seconds:.1f} s"
    counted = event.total is not None
    unit = event.unit.removesuffix("s") if (event.total if counted else event.done) == 1 else event.unit
    count = f"{event.done}/{event.total} {unit}" if counted else f"{event.done} {unit}".strip()
    if event.phase == "start":
        return f"{head}: {event.total} {unit} ..." if counted else f"{head} ..."
    if event.phase == "step":
        return f"{head}: {count}, {took}"
    if event.phase == "failed":
        return f"{head}: FAILED after {took}" + (f" ({count})" if counted else "")
    return f"{head}: {count} in {took}" if counted else f"{head}: done in {took}"


class StageProgress:
    """One stage's progress: tells the sink when the stage starts, each time work is done in it
    (:meth:`advance`, the ``progress`` callback of the compute functions) and when it ends. With
    no sink it does nothing, so callers need not check."""

    def __init__(
        self, sink: ProgressSink | None, pair: str, stage: str, total: int | None = None, unit: str = ""
    ) -> None:
        self.sink, self.pair, self.stage, self.total, self.unit = sink, pair, stage, total, unit
        self.done, self.started = 0, time.perf_counter()

    def advance(self, n: int = 1) -> None:
        # Clamped: a batch rerun after running out of memory must not count past the total.
        self.done = self.done + n if self.total is None else min(self.total, self.done + n)
        self._emit("step")

    def _emit(self, phase: str) -> None:
        if self.sink is not None:
            self.sink(
                StageEvent(
                    self.pair, self.stage, phase, self.done, self.total, self.unit, time.perf_counter() - self.started
                )
            )

    def __enter__(self) -> StageProgress:
        self.started = time.perf_counter()
        self._emit("start")
        return self

    def __exit__(self, kind: type[BaseException] | None, *_: object) -> None:
        self._emit("end" if kind is None else "failed")
