"""REPORT.md's long-context section: what it says about chunked LLM.int8 prefills."""

from __future__ import annotations

from types import SimpleNamespace
from typing import cast

from quant_fixtures.report.long_context_markdown import _unsettled_lines
from quant_fixtures.report.schema import LongContext


def _long(unsettled: list[int], max_reads: int) -> LongContext:
    reads = {"max_reads": max_reads, "unsettled_sequences": unsettled}
    return cast(LongContext, SimpleNamespace(prefill_reads=reads))


def test_prefills_whose_columns_did_not_settle_are_named_in_the_report() -> None:
    lines = _unsettled_lines({"int8": _long([0, 1, 29], 4), "nf4": _long([], 1)})
    assert len(lines) == 1
    assert "int8: 3 sequence(s)" in lines[0] and "after 4 reads" in lines[0] and "[0, 1, 29]" in lines[0]


def test_nothing_is_said_when_every_prefill_settled() -> None:
    assert _unsettled_lines({"int8": _long([], 2)}) == []
