"""The metric registry: every headline number the suite reports, gates and snapshots, declared once.

A :class:`MetricSpec` says where a metric lives in the evaluation document, which direction is
better, its unit and format, its 95 % CI (if measured), its default snapshot tolerance and whether
it can be gated. Gates (limit names ``max_<name>`` / ``min_<name>``, their direction and valid
range), snapshots, the terminal table, REPORT.md, findings and plots all read this table, so adding
a metric is one entry here plus the code that computes it into the document.

A document is whatever holds the sections: report/schema.EvaluationDocument (typed sections), or
its JSON object (dicts); this bottom layer reads either by name (:func:`lookup`) and narrows what it
finds to a number (:func:`number`) or a CI pair.
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


def _bounds(value: object, where: tuple[str, ...]) -> list[float] | None:
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
        return _bounds(lookup(document, self.ci_path), self.ci_path) if self.ci_path else None

    def uncertainty(self, document: object) -> float | None:
        """The measured 95 % CI half-width, or None."""
        if self.half_width is not None:
            return self.half_width(document)
        pair = self.ci(document)
        return None if not pair else (pair[1] - pair[0]) / 2.0

    def gate_value(self, document: object, gate_on: str) -> float | None:
        """The number a gate compares: the point estimate, or with ``gate_on == "upper"`` the CI's
        bound on the failing side (upper for a maximum, lower for a minimum) where a CI exists."""
        pair = self.ci(document) if gate_on == "upper" else None
        if not pair:
            return self.value(document)
        return pair[1] if self.better == "lower" else pair[0]

    def passes(self, value: float | None, limit: float) -> bool:
        """A missing or non-finite value fails."""
        if value is None or not math.isfinite(value):
            return False
        return value <= limit if self.better == "lower" else value >= limit

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


def _ppl_half_width(document: object) -> float | None:
    ci_path, fp16_path = ("perplexity", "delta_ppl_pct_ci95"), ("perplexity", "fp16_ppl")
    ci, fp16 = _bounds(lookup(document, ci_path), ci_path), number(lookup(document, fp16_path), fp16_path)
    if not ci or fp16 is None:
        return None
    return fp16 * ((ci[1] - ci[0]) / 2.0) / 100.0  # FP16 PPL is fixed: PPL moves with ΔPPL


def _share(part: object, whole: object) -> float | None:
    """``part / whole`` of two counts in the document; None when either is missing or whole is 0."""
    numerator, denominator = number(part, "share"), number(whole, "share")
    return None if numerator is None or not denominator else numerator / denominator


# Registry order is the order of table columns and snapshot keys.
METRICS: dict[str, MetricSpec] = {
    m.name: m
    for m in (
        MetricSpec(
            "ppl",
            ("perplexity", "ppl"),
            "lower",
            "PPL",
            ".4f",
            width=10,
            half_width=_ppl_half_width,
            tolerance={"rel": 1e-3},
            gate=OPTIONAL,
            limit_low=1.0,
            description="WikiText-2 perplexity of the variant",
        ),
        MetricSpec(
            "delta_ppl_pct",
            ("perplexity", "delta_ppl_pct"),
            "lower",
            "dPPL%",
            "+.2f",
            unit="%",
            ci_path=("perplexity", "delta_ppl_pct_ci95"),
            tolerance={"abs": 0.1},
            gate=REQUIRED,
            title="ΔPPL %",
            description="perplexity change against FP16, in percent",
        ),
        MetricSpec(
            "kl_mean",
            ("kl_divergence", "mean"),
            "lower",
            "KL mean",
            ".4f",
            unit="nats",
            width=9,
            ci_path=("kl_divergence", "ci95"),
            tolerance={"rel": 0.02, "abs": 5e-4},
            gate=REQUIRED,
            limit_low_inclusive=False,
            title="mean KL",
            description="mean over prompts of per-prompt KL(FP16 || variant)",
        ),
        MetricSpec(
            "kl_p99",
            ("kl_divergence", "p99"),
            "lower",
            "KL p99",
            ".4f",
            unit="nats",
            width=9,
            ci_path=("kl_divergence", "p99_ci95"),
            tolerance={"rel": 0.05, "abs": 1e-3},
            in_table=False,
            gate=OPTIONAL,
            limit_low_inclusive=False,
            title="KL p99",
            description="99th percentile over prompts of per-prompt KL",
        ),
        MetricSpec(
            "top1_agreement",
            ("kl_divergence", "top1_agreement"),
            "higher",
            "top1",
            ".3f",
            width=6,
            ci_path=("kl_divergence", "top1_agreement_ci95"),
            tolerance={"abs": 0.01},
            gate=OPTIONAL,
            limit_low_inclusive=False,
            limit_high=1.0,
            limit_high_inclusive=True,
            title="top-1 agree",
            description="share of response positions where the variant's argmax is FP16's",
        ),
        MetricSpec(
            "corpus_kl_mean",
            ("corpus_kl", "mean"),
            "lower",
            "corpus KL",
            ".4f",
            unit="nats",
            width=9,
            ci_path=("corpus_kl", "ci95"),
            in_table=False,
            gate=OPTIONAL,
            limit_low_inclusive=False,
            title="corpus KL",
            description="mean KL(FP16 || variant) over every scored WikiText-2 position (exact)",
        ),
        MetricSpec(
            "corpus_kl_p99",
            ("corpus_kl", "p99"),
            "lower",
            "corpus KL p99",
            ".4f",
            unit="nats",
            in_table=False,
            gate=OPTIONAL,
            limit_low_inclusive=False,
            description="99th percentile over WikiText-2 positions of KL(FP16 || variant)",
        ),
        MetricSpec(
            "corpus_top1_agreement",
            ("corpus_kl", "same_top1_rate"),
            "higher",
            "corpus top1",
            ".4f",
            ci_path=("corpus_kl", "same_top1_rate_ci95"),
            in_table=False,
            gate=OPTIONAL,
            limit_low_inclusive=False,
            limit_high=1.0,
            limit_high_inclusive=True,
            description="share of WikiText-2 positions where the variant's argmax is FP16's (llama.cpp's 'same top p')",
        ),
        MetricSpec(
            "bits_per_byte_delta",
            ("perplexity", "bits_per_byte_delta"),
            "lower",
            "dbpb",
            "+.5f",
            unit="bits",
            in_table=False,
            gate=OPTIONAL,
            description="bits per byte of the scored text, variant minus FP16 (tokenizer-independent)",
        ),
        MetricSpec(
            "flips",
            ("flips", "flips"),
            "lower",
            "flips",
            "d",
            width=5,
            tolerance={"abs": 0},
            is_count=True,
            count_of=("flips", "checkable_prompts"),
            description="checkable answers whose verdict differs from FP16's",
        ),
        MetricSpec(
            "flip_rate",
            ("flips",),
            "lower",
            "flip rate",
            ".3f",
            width=9,
            in_table=False,
            derive=lambda doc: _share(lookup(doc, ("flips", "flips")), lookup(doc, ("flips", "checkable_prompts"))),
            gate=OPTIONAL,
            limit_high=1.0,
            limit_high_inclusive=True,
            description="flipped answers / prompts with a checkable answer",
        ),
        MetricSpec(
            "footprint_gb",
            ("memory", "footprint_gb"),
            "lower",
            "size GB",
            ".3f",
            unit="GB",
            tolerance={"rel": 1e-4},
            gate=OPTIONAL,
            limit_low_inclusive=False,
            title="footprint GB",
            description="parameters and buffers as loaded, counted one way for every method (models/footprint.py; "
            "for 16-bit and bitsandbytes models model.get_memory_footprint())",
        ),
        MetricSpec(
            "memory_reduction_pct",
            ("memory", "reduction_pct"),
            "higher",
            "reduct%",
            ".1f",
            unit="%",
            tolerance={"abs": 0.05},
            gate=REQUIRED,
            limit_low_inclusive=False,
            limit_high=100.0,
            title="reduction %",
            description="footprint reduction against FP16, in percent",
        ),
        MetricSpec(
            "compression_ratio",
            ("memory", "compression_ratio"),
            "higher",
            "ratio",
            ".2f",
            width=6,
            description="FP16 footprint / variant footprint",
        ),
        MetricSpec(
            "tokens_per_s",
            ("timing", "ppl_tokens_per_s"),
            "higher",
            "tok/s",
            ".0f",
            vs_fp16=True,
            description="scored tokens per second of the perplexity pass, the comparison hooks excluded "
            "(timing, never gated)",
        ),
    )
}

# Limit names people wrote before the names were derived from the registry; read as the new name.
LIMIT_ALIASES = {"max_mean_kl": "max_kl_mean"}
# Snapshot-tolerance names of earlier versions.
TOLERANCE_ALIASES = {"reduction_pct": "memory_reduction_pct"}

GATEABLE: dict[str, MetricSpec] = {m.limit_name: m for m in METRICS.values() if m.gate}
REQUIRED_LIMITS: tuple[str, ...] = tuple(name for name, m in GATEABLE.items() if m.gate == REQUIRED)
SNAPSHOT_METRICS: tuple[str, ...] = tuple(name for name, m in METRICS.items() if m.tolerance is not None)
TABLE_METRICS: tuple[MetricSpec, ...] = tuple(m for m in METRICS.values() if m.in_table)


def limit_spec(limit_name: str) -> MetricSpec | None:
    """The metric a limit name bounds (aliases included), or None for an unknown name."""
    return GATEABLE.get(LIMIT_ALIASES.get(limit_name, limit_name))
