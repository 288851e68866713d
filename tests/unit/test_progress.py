"""Stage progress: the events a stage tells its sink (session/progress.py, PassContext.stage) and
how the plugin's sink writes them on pytest's terminal (plugin/progress.py), with a recording
stand-in for the terminal reporter. The integration test test_plugin_end_to_end.py checks the
lines of a real run under pytest's output capture."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from types import SimpleNamespace
from typing import Any, cast

import pytest

from quant_fixtures.compute.memory import MemoryBudget
from quant_fixtures.plugin import progress as terminal
from quant_fixtures.plugin.progress import TerminalProgress, terminal_progress
from quant_fixtures.session.context import PassContext, SessionServices
from quant_fixtures.session.progress import StageEvent, StageProgress, describe


def _event(
    phase: str, done: int = 0, total: int | None = 4, unit: str = "windows", seconds: float = 1.25
) -> StageEvent:
    return StageEvent("tiny int8", "perplexity", phase, done, total, unit, seconds)


@pytest.mark.parametrize(
    "event, line",
    [
        (_event("start"), "quant-fixtures: tiny int8 perplexity: 4 windows ..."),
        (_event("step", 2), "quant-fixtures: tiny int8 perplexity: 2/4 windows, 1.2 s"),
        (_event("end", 4), "quant-fixtures: tiny int8 perplexity: 4/4 windows in 1.2 s"),
        (_event("failed", 3), "quant-fixtures: tiny int8 perplexity: FAILED after 1.2 s (3/4 windows)"),
        (_event("start", total=1), "quant-fixtures: tiny int8 perplexity: 1 window ..."),
        (_event("start", total=None, unit=""), "quant-fixtures: tiny int8 perplexity ..."),
        (_event("end", total=None, unit=""), "quant-fixtures: tiny int8 perplexity: done in 1.2 s"),
        (_event("failed", total=None, unit=""), "quant-fixtures: tiny int8 perplexity: FAILED after 1.2 s"),
    ],
)
def test_each_event_is_one_line_with_counts_and_seconds(event: StageEvent, line: str) -> None:
    assert describe(event) == line


def test_a_stage_tells_its_start_each_step_and_its_end() -> None:
    events: list[StageEvent] = []
    with StageProgress(events.append, "tiny fp16", "generation", 8, "prompts") as progress:
        progress.advance(5)
        progress.advance(5)  # a batch rerun after running out of memory: never past the total
    assert [(e.phase, e.done) for e in events] == [("start", 0), ("step", 5), ("step", 8), ("end", 8)]
    assert all(e.pair == "tiny fp16" and e.total == 8 and e.unit == "prompts" for e in events)
    assert events[-1].seconds >= events[0].seconds >= 0


def test_a_stage_left_by_an_exception_tells_it_failed() -> None:
    events: list[StageEvent] = []
    with pytest.raises(MemoryError):
        with StageProgress(events.append, "tiny int8", "load"):
            raise MemoryError
    assert [e.phase for e in events] == ["start", "failed"]


def test_without_a_sink_a_stage_does_nothing() -> None:
    with StageProgress(None, "tiny int8", "load", 3, "windows") as progress:
        progress.advance(1)
    assert progress.done == 1


def _context(events: list[StageEvent]) -> PassContext:
    # Only the budget is used by a stage (it synchronises the device).
    unused: Any = None
    shared = SessionServices(
        settings=unused,
        corpus_text=unused,
        plans=unused,
        prompt_suite=unused,
        environment=unused,
        references=unused,
        budget=MemoryBudget("cpu"),
        progress=events.append,
    )
    return PassContext(shared=shared, pair="tiny nf4")


def test_only_shown_stages_of_a_pass_reach_the_sink() -> None:
    events: list[StageEvent] = []
    run = _context(events)
    with run.stage("statistics", "statistics") as advance:
        advance(1)  # a stage that is not shown still yields a callable
    with run.stage("perplexity", "perplexity", shown=True, total=2, unit="windows") as advance:
        advance(2)
    assert [(e.stage, e.phase, e.done) for e in events] == [
        ("perplexity", "start", 0),
        ("perplexity", "step", 2),
        ("perplexity", "end", 2),
    ]
    assert all(e.pair == "tiny nf4" for e in events)
    assert run.seconds["perplexity"] > 0


def test_a_failed_pass_stage_is_told_and_still_named() -> None:
    events: list[StageEvent] = []
    run = _context(events)
    with pytest.raises(RuntimeError):
        with run.stage("generation", "generation", shown=True, total=8, unit="prompts"):
            raise RuntimeError("out of memory")
    assert [e.phase for e in events] == ["start", "failed"] and run.failed_stage == "generation"


# -- the terminal sink --------------------------------------------------------------------------


class Reporter:
    """Records what the sink writes, as pytest's TerminalReporter and its writer would receive it."""

    def __init__(self) -> None:
        self.out, self.width_of_current_line = "", 0
        self.capture: Capture | None = None
        self.flushes: list[bool] = []  # per flush: was the capture suspended?

    def write(self, text: str, **_: bool) -> None:
        self.out += text
        self.width_of_current_line = len(self.out) - (self.out.rfind("\n") + 1)

    def rewrite(self, line: str, erase: bool = False) -> None:
        self.write("\r" + line)

    def flush(self) -> None:
        self.flushes.append(self.capture is not None and self.capture.suspended)


class Capture:
    """Counts writes made while pytest's output capture is suspended."""

    def __init__(self, reporter: Reporter) -> None:
        self.reporter, self.suspended, self.written_outside = reporter, False, 0
        reporter.capture = self

    @contextmanager
    def global_and_fixture_disabled(self) -> Iterator[None]:
        before, self.suspended = len(self.reporter.out), True
        yield
        self.suspended = False
        self.written_outside += len(self.reporter.out) - before


def _sink(live: bool) -> tuple[TerminalProgress, Reporter, Capture]:
    reporter = Reporter()
    capture = Capture(reporter)
    return TerminalProgress(cast(pytest.TerminalReporter, reporter), reporter, capture, live), reporter, capture


def _stage(sink: TerminalProgress) -> None:
    sink(_event("start"))
    for done in (1, 2, 3, 4):
        sink(_event("step", done))
    sink(_event("end", 4))


def test_in_a_log_each_stage_writes_its_start_and_end_only() -> None:
    sink, reporter, capture = _sink(live=False)
    reporter.write("test_release_gates.py ")  # pytest in the middle of a line of results
    _stage(sink)
    assert reporter.out.splitlines() == [
        "test_release_gates.py ",
        "quant-fixtures: tiny int8 perplexity: 4 windows ...",
        "quant-fixtures: tiny int8 perplexity: 4/4 windows in 1.2 s",
    ]
    assert capture.written_outside == len(reporter.out) - len("test_release_gates.py ")
    assert reporter.flushes == [True, True]  # once per line, while the capture was off


def test_on_a_terminal_one_line_is_redrawn_and_stays_when_the_stage_ends(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(terminal, "REDRAW_S", 0.0)
    sink, reporter, _ = _sink(live=True)
    _stage(sink)
    sink(_event("start"))
    drawn = reporter.out.split("\n")
    assert drawn[0].split("\r")[1:] == [
        "quant-fixtures: tiny int8 perplexity: 4 windows ...",
        *[f"quant-fixtures: tiny int8 perplexity: {n}/4 windows, 1.2 s" for n in (1, 2, 3, 4)],
        "quant-fixtures: tiny int8 perplexity: 4/4 windows in 1.2 s",
    ]
    assert drawn[1] == "\rquant-fixtures: tiny int8 perplexity: 4 windows ..."  # the next stage, below


def test_on_a_terminal_redraws_are_throttled(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(terminal, "REDRAW_S", 3600.0)
    sink, reporter, _ = _sink(live=True)
    _stage(sink)
    assert reporter.out.count("\r") == 2  # the start and the end, no step within the hour


def _config(workerinput: dict[str, str] | None = None, reporter: object | None = None) -> pytest.Config:
    plugins = {"terminalreporter": reporter, "capturemanager": None}
    config = SimpleNamespace(
        pluginmanager=SimpleNamespace(get_plugin=plugins.get), get_terminal_writer=lambda: reporter
    )
    if workerinput is not None:
        config.workerinput = workerinput
    return cast(pytest.Config, config)  # the parts terminal_progress reads


def test_an_xdist_worker_and_a_run_without_a_terminal_stay_quiet() -> None:
    class NotATerminal(Reporter):
        def isatty(self) -> bool:
            return False

    reporter = NotATerminal()
    assert terminal_progress(_config({"workerid": "gw0"}, reporter)) is None
    assert terminal_progress(_config(None, None)) is None
    sink = terminal_progress(_config(None, reporter))
    assert isinstance(sink, TerminalProgress) and not sink.live


def test_prompt_scoring_counts_every_prompt_once() -> None:
    """response_logits reports each pass's prompts, and those with an empty response (nothing to
    score) at once, so the stage ends at its total."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from quant_fixtures.compute.generation import response_logits

    torch.manual_seed(0)
    model = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=32,
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            num_key_value_heads=1,
        )
    ).eval()
    counts: list[int] = []
    response_logits(
        model, [[1, 2], [3], [4, 5, 6]], [[7, 8], [], [9]], 2, 0, lambda i, logits, hidden: None, progress=counts.append
    )
    assert sum(counts) == 3 and counts[0] == 1  # the empty response first, then the passes
