"""The evaluation's stage progress on pytest's terminal.

pytest captures output while a test (and its fixtures, where evaluations run) is running, so the
lines go through the terminal reporter with capture suspended, as pytest's own live logging does:
they show under the default capture and with ``-q``. On a terminal one line is rewritten in place
while a stage runs and stays once it ended; in a log (CI), each stage writes one line when it
starts and one when it ends, never one per batch. An xdist worker's terminal is not the user's
(its output is discarded or would break into the controller's lines): workers stay quiet.
"""

from __future__ import annotations

import time
from contextlib import AbstractContextManager, nullcontext
from typing import Protocol

import pytest

from quant_fixtures.plugin.workers import is_worker
from quant_fixtures.session.progress import ProgressSink, StageEvent, describe

REDRAW_S = 0.2  # a live line is redrawn at most this often (generation reports every batch)


class LineWidth(Protocol):
    """What is read of pytest's terminal writer (``config.get_terminal_writer()``, whose class
    pytest does not export)."""

    @property
    def width_of_current_line(self) -> int: ...


class CaptureSwitch(Protocol):
    """What is used of pytest's capture manager (the ``capturemanager`` plugin, a class pytest
    does not export)."""

    def global_and_fixture_disabled(self) -> AbstractContextManager[None]: ...


class TerminalProgress:
    """A progress sink writing on pytest's terminal reporter; ``live``: rewrite one line in place."""

    def __init__(
        self, reporter: pytest.TerminalReporter, writer: LineWidth, capture: CaptureSwitch | None, live: bool
    ) -> None:
        self.reporter, self.writer, self.capture, self.live = reporter, writer, capture, live
        self.drawn_at: float | None = None  # when the live line was last drawn; None: no live line

    def __call__(self, event: StageEvent) -> None:
        if event.phase == "step" and not self._redraw_due():
            return
        with self.capture.global_and_fixture_disabled() if self.capture is not None else nullcontext():
            if self.live:
                self._draw(describe(event), final=event.phase in ("end", "failed"))
            elif event.phase != "step":
                self._new_line()
                self.reporter.write(describe(event) + "\n")
            self.reporter.flush()  # now, while capture is off: a pipe's buffer would flush into the capture

    def _new_line(self) -> None:
        """Start on a line of our own: pytest may be in the middle of a line of results. (As pytest's
        live logging does; write_line would also make pytest repeat the file name afterwards.)"""
        if self.writer.width_of_current_line:
            self.reporter.write("\n")

    def _redraw_due(self) -> bool:
        return self.live and (self.drawn_at is None or time.monotonic() - self.drawn_at >= REDRAW_S)

    def _draw(self, line: str, final: bool) -> None:
        if self.drawn_at is None:
            self._new_line()
        self.reporter.rewrite(line, erase=True)
        if final:  # the finished stage's line stays; the next one starts below it
            self.reporter.write("\n")
        self.drawn_at = None if final else time.monotonic()


def terminal_progress(config: pytest.Config) -> ProgressSink | None:
    """The sink for this pytest process, or None where progress is not shown (an xdist worker,
    or a run without the terminal reporter, ``-p no:terminal``)."""
    reporter: pytest.TerminalReporter | None = config.pluginmanager.get_plugin("terminalreporter")
    if reporter is None or is_worker(config):
        return None
    return TerminalProgress(
        reporter,
        config.get_terminal_writer(),
        config.pluginmanager.get_plugin("capturemanager"),
        live=bool(reporter.isatty()),
    )
