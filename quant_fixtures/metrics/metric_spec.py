"""One metric's declaration (:class:`MetricSpec`) and how a document's values are read for it.

A document is whatever holds the sections: report/schema.EvaluationDocument (typed sections), or
its JSON object (dicts); this bottom layer reads either by name (:func:`lookup`) and narrows what it
finds to a number (:func:`number`) or a CI pair. The table of metrics is metrics/registry.py.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

REQUIRED, OPTIONAL = "required", "optional"  # a required gate must be configured or opted out of


def lookup(document: object, path: tuple[str, ...]) -> object:
    """The value at ``path`` in a document (typed sections or dicts); None where a section is absent."""
    value = document
    for part in path:
        if value is None:
            return None
        value = value.get(part) if isinstance(value, dict) else getattr(value, part)
    return value


def number(value: object, where: tuple[str, ...] | str = "") -> float | None:
    """A metric's value as the document holds it (an int or a float, unchanged), or None."""
    if value is None or isinstance(value, (int, float)):
        return value
    raise TypeError(f"{where}: {value!r} is not a number")


def ci_bounds(value: object, where: tuple[str, ...]) -> list[float] | None:
    """A 95 % CI [low, high] as the document holds it, or None."""
    if value is None or isinstance(value, list):
        return value
    raise TypeError(f"{where}: {value!r} is not a [low, high] interval")


@dataclass(frozen=True)
class MetricSpec:
    name: str  # the one name: gate "metric", snapshot key, comparison column
    path: tuple[
        str, ...
    ]  # where the value lives in the evaluation document (for a derived metric: its inputs' section)
    better: str  # "lower" or "higher"
    label: str  # terminal column header
    fmt: str  # format spec of one value (".4f", "+.2f", "d")
    unit: str = ""
    width: int = 8  # terminal column width
    ci_path: tuple[str, ...] | None = None  # its 95 % CI [low, high] in the document
    # 95 % CI half-width when it is not (high - low) / 2 of ci_path (the variant's PPL: FP16 PPL x ΔPPL's)
    half_width: Callable[[object], float | None] | None = None
    tolerance: dict[str, float] | None = None  # default snapshot tolerance (None: not in snapshots)
    gate: str | None = None  # None: cannot be gated; REQUIRED or OPTIONAL
    limit_low: float = 0.0  # smallest valid limit
    limit_low_inclusive: bool = True
    limit_high: float | None = None  # limits must be below this (None: unbounded)
    limit_high_inclusive: bool = False
    in_table: bool = True  # a column of the terminal table and REPORT.md
    count_of: tuple[str, ...] | None = None  # shown as "value/count" (flips of checkable prompts)
    vs_fp16: bool = False  # REPORT.md also shows the ratio to FP16's value
    is_count: bool = False  # a count of events: snapshots compare two counts with an exact binomial test
    title: str = ""  # REPORT.md column header (default: label)
    # A metric computed from other numbers of the document rather than stored at ``path``.
    derive: Callable[[object], float | None] | None = None
    description: str = ""
    sampled: bool = True  # an estimate from a sample (prompts, windows, probes): its gate has an interval

    @property
    def heading(self) -> str:
        return self.title or self.label

    @property
    def limit_name(self) -> str:
        """``max_<name>`` when lower is better (the limit is a maximum), else ``min_<name>``."""
        return f"{'max' if self.better == 'lower' else 'min'}_{self.name}"

    @property
    def op(self) -> str:
        return "<=" if self.better == "lower" else ">="

    def value(self, document: object) -> float | None:
        if self.derive is not None:
            return self.derive(document) if lookup(document, self.path[:1]) is not None else None
        return number(lookup(document, self.path), self.path)

    def ci(self, document: object) -> list[float] | None:
        return ci_bounds(lookup(document, self.ci_path), self.ci_path) if self.ci_path else None

    def uncertainty(self, document: object) -> float | None:
        """The measured 95 % CI half-width, or None."""
        if self.half_width is not None:
            return self.half_width(document)
        pair = self.ci(document)
        return None if not pair else (pair[1] - pair[0]) / 2.0

    def limit_problem(self, limit: float) -> str | None:
        """Why ``limit`` is not a valid limit for this metric, or None."""
        if not math.isfinite(limit):
            return "must be a finite number"
        if limit < self.limit_low or (limit == self.limit_low and not self.limit_low_inclusive):
            return f"must be {'>=' if self.limit_low_inclusive else '>'} {self.limit_low:g}{self._unit()}"
        high = self.limit_high
        if high is not None and (limit > high or (limit == high and not self.limit_high_inclusive)):
            return f"must be {'<=' if self.limit_high_inclusive else '<'} {high:g}{self._unit()}"
        return None

    def format(self, value: float | None) -> str:
        return "missing" if value is None else f"{value:{self.fmt}}"

    def _unit(self) -> str:
        return f" {self.unit}" if self.unit else ""
