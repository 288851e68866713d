"""What a pass receives: the services the session shares with every pass (the run's settings, what
the passes read: corpus plans, text, prompt suite, environment; the FP16 reference store, the memory
budget and where the progress of long stages goes), and what the pass itself records: the stage it
is in (so that running out of memory can say where), the seconds spent in each row of the stage
table every report carries (``timing.stages``) and the batches it ran."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from quant_fixtures.compute.memory import BatchLog, MemoryBudget
from quant_fixtures.session.corpus_plans import CorpusPlans
from quant_fixtures.session.inputs import CorpusText, PromptSuite, RunEnvironment
from quant_fixtures.session.progress import ProgressSink, StageProgress
from quant_fixtures.session.references import ReferenceStore
from quant_fixtures.settings import RunSettings

# The rows of a report's stage table, in order. Every second of an evaluation is in one of them;
# "other" is what the timed stages leave out (it should stay near zero).
STAGE_ROWS = (
    "start-up",
    "tokenize",
    "references",
    "load",
    "perplexity",
    "generation",
    "scoring",
    "long context",
    "statistics",
    "report",
    "other",
)


@dataclass(frozen=True)
class SessionServices:
    """What the session shares with every pass, built once per session."""

    settings: RunSettings
    corpus_text: CorpusText
    plans: CorpusPlans
    prompt_suite: PromptSuite
    environment: RunEnvironment
    references: ReferenceStore
    budget: MemoryBudget
    progress: ProgressSink | None = None  # None: progress is not shown


@dataclass
class PassContext:
    """One pass: the session's services, and the stages, seconds and batches of this pass alone."""

    shared: SessionServices
    pair: str = ""  # "model variant", as progress names it
    current_stage: str = "start"
    failed_stage: str | None = None  # the innermost stage an exception left (clean-up stages run after it)
    seconds: dict[str, float] = field(default_factory=lambda: dict.fromkeys(STAGE_ROWS, 0.0))
    batches: BatchLog = field(default_factory=BatchLog)

    @contextmanager
    def stage(
        self, name: str, row: str, shown: bool = False, total: int | None = None, unit: str = ""
    ) -> Iterator[Callable[[int], None]]:
        """Names the stage an error (out of memory) happened in and adds its time to ``row``
        (the device is synchronised first, so queued GPU work is counted where it was queued).
        A ``shown`` stage tells the progress sink its start, its end and, through the callable it
        yields, how many of its ``total`` ``unit`` are done."""
        if row not in self.seconds:
            raise ValueError(f"unknown stage-table row {row!r}")
        self.current_stage = name
        with StageProgress(self.shared.progress if shown else None, self.pair, name, total, unit) as progress:
            start = time.perf_counter()
            try:
                yield progress.advance
            except BaseException:
                self.failed_stage = self.failed_stage or name
                raise
            finally:
                self.shared.budget.synchronize()  # before the stage's end is told: its GPU work is done
                self.seconds[row] += time.perf_counter() - start

    def stage_table(self, wall_seconds: float) -> dict[str, float]:
        """The rows, with "other" = the evaluation's wall time not spent in a timed stage."""
        table = dict(self.seconds)
        table["other"] = max(0.0, wall_seconds - sum(v for k, v in table.items() if k != "other"))
        return {k: round(v, 3) for k, v in table.items()}
