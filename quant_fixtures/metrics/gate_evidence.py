"""How each gateable metric was sampled, read from an evaluation document: the evidence a verdict
(metrics/decision.py) stands on.

Every sampled metric is an estimate over independent units, and its evidence names them:

* perplexity (``ppl``, ``delta_ppl_pct``, ``bits_per_byte_delta``): perplexity windows. Per window
  ``d_w`` = variant NLL - FP16 NLL (nats, summed over the window's scored tokens) and ``t_w`` tokens;
  the ratio estimator ``r = sum d_w / sum t_w`` is the mean log-ratio of perplexities
  (``PPL / PPL_fp16 = exp(r)``), with the cluster standard error over windows and Student's t with
  ``windows - 1`` degrees of freedom. ``ΔPPL % = 100 (exp(r) - 1)``, ``PPL = PPL_fp16 exp(r)`` and
  ``Δ bits per byte = r T / (B ln 2)`` (T tokens, B bytes) are increasing functions of ``r``, so
  their bounds and p-values are those of ``r`` (the FP16 reference is fixed: it is what the
  variant is compared with).
* prompt KL (``kl_mean``, ``top1_agreement``): prompts, each weighted equally (mean over prompts of
  the prompt's own mean), Student's t; ``kl_p99``: the exact, distribution-free binomial test of the
  prompts above the limit (:func:`decide_quantile`).
* corpus KL (``corpus_kl_mean``, ``corpus_top1_agreement``): WikiText-2 windows, ratio estimator of
  the per-window sums over positions, Student's t.
* long context (``long_delta_ppl_pct``, ``long_kl_mean``): blocks of 128 consecutive positions of
  the deepest bucket (its ``block_sums``, metrics/position_buckets.py), ratio estimator, Student's
  t; ``long_kl_growth``: the buckets' least-squares slope with the standard error from each
  bucket's, t with the fewest blocks' df.
* answer flips and retrieval probe flips: the count of flips among prompts (probes), exact
  binomial: a flip is a discordant pair of FP16's and the variant's verdicts, and the flip rate is
  the rate of discordant pairs.
* memory (``footprint_gb``, ``memory_reduction_pct``): deterministic, no sampling error.

A metric whose section is missing has no evidence (None): its gate fails as "missing".
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from quant_fixtures.metrics.blocks import BLOCK
from quant_fixtures.metrics.decision import (
    BinomialEvidence,
    Decision,
    ExactEvidence,
    MeanEvidence,
    binom_cdf,
    binom_sf,
    decide,
    mean_evidence,
    ratio_evidence,
)
from quant_fixtures.metrics.metric_spec import lookup, number

EvidenceOf = Callable[[object], "Evidence | None"]
BLOCKS = f"blocks of {BLOCK} positions"


def _field(record: object, name: str) -> object:
    return record.get(name) if isinstance(record, Mapping) else getattr(record, name, None)


def _floats(values: object, where: str) -> list[float]:
    if not isinstance(values, Sequence):
        raise TypeError(f"{where}: {values!r} is not a list of numbers")
    return [float(v) for v in values]


def _window_log_ratio(
    document: object, to_value: Callable[[float], float], from_value: Callable[[float], float]
) -> MeanEvidence | None:
    """The mean per-token log-ratio of variant to FP16 perplexity over the perplexity windows."""
    nll = lookup(document, ("perplexity", "window_nll"))
    fp16 = lookup(document, ("perplexity", "fp16_window_nll"))
    tokens = lookup(document, ("perplexity", "window_tokens"))
    if nll is None or fp16 is None or tokens is None:
        return None
    diffs = np.asarray(_floats(nll, "window_nll")) - np.asarray(_floats(fp16, "fp16_window_nll"))
    ctx = number(lookup(document, ("perplexity", "ctx")), "perplexity.ctx")
    return ratio_evidence(diffs, _floats(tokens, "window_tokens"), "windows", to_value, from_value, ctx)


def _delta_ppl(document: object) -> MeanEvidence | None:
    return _window_log_ratio(document, lambda r: 100.0 * math.expm1(r), lambda v: math.log1p(v / 100.0))


def _ppl(document: object) -> MeanEvidence | None:
    fp16 = number(lookup(document, ("perplexity", "fp16_ppl")), "perplexity.fp16_ppl")
    if fp16 is None:
        return None
    return _window_log_ratio(document, lambda r: fp16 * math.exp(r), lambda v: math.log(v / fp16))


def _bits_per_byte_delta(document: object) -> MeanEvidence | None:
    tokens = lookup(document, ("perplexity", "window_tokens"))
    scored_bytes = number(lookup(document, ("perplexity", "scored_bytes")), "perplexity.scored_bytes")
    if tokens is None or not scored_bytes:
        return None
    per_r = sum(_floats(tokens, "window_tokens")) / (scored_bytes * math.log(2))  # bits per byte per nat of r
    return _window_log_ratio(document, lambda r: r * per_r, lambda v: v / per_r)


def _per_prompt(document: object, name: str) -> list[float] | None:
    records = lookup(document, ("kl_divergence", "per_prompt"))
    if records is None:
        return None
    if not isinstance(records, Sequence):
        raise TypeError(f"kl_divergence.per_prompt: {records!r} is not a list of records")
    values = [_field(r, name) for r in records]
    return [float(v) for v in values if isinstance(v, (int, float)) and math.isfinite(v)]


def _prompt_mean(name: str) -> EvidenceOf:
    def evidence(document: object) -> MeanEvidence | None:
        values = _per_prompt(document, name)
        return mean_evidence(values, "prompts") if values else None

    return evidence


@dataclass(frozen=True, eq=False)
class QuantileEvidence:
    """The ``q`` quantile of per-unit ``values`` (a p99 over prompts), decided without assumptions on
    their distribution by :func:`decide_quantile`."""

    values: np.ndarray
    q: float
    unit: str


Evidence = MeanEvidence | BinomialEvidence | ExactEvidence | QuantileEvidence


def decide_gate(evidence: Evidence, limit: float, better: str, alpha: float, alpha_beyond: float) -> Decision:
    """:func:`decide_quantile` for a quantile, else metrics/decision.decide."""
    if isinstance(evidence, QuantileEvidence):
        return decide_quantile(evidence, limit, better, alpha, alpha_beyond)
    return decide(evidence, limit, better, alpha, alpha_beyond)


def decide_quantile(
    evidence: QuantileEvidence, limit: float, better: str, alpha: float, alpha_beyond: float
) -> Decision:
    """A lower-is-better limit on the ``q`` quantile Q: Q <= L exactly when the share of units above L
    is at most 1 - q, so the gate is the exact binomial test of the units at or above L against the
    rate 1 - q (distribution-free: no bootstrap, whose upper bound of a p99 over 96 prompts never
    exceeds their maximum). p_within = P(Bin(n, 1 - q) <= #{x >= L}), p_beyond = P(Bin(n, 1 - q) >=
    #{x > L}); the interval holds the order statistics where the verdict changes: PASS iff L lies
    above the upper one (infinite when n is too small to pass at all: n < log(alpha) / log(q), 299
    for a p99 at 5 %), FAIL iff L lies below the lower one. ``value`` is the linear-interpolated
    percentile the report shows."""
    if better != "lower":
        raise ValueError("a quantile gate is a maximum (lower is better)")
    x = np.sort(evidence.values)
    n, rate = x.size, 1.0 - evidence.q
    at_or_above, above = int((x >= limit).sum()), int((x > limit).sum())
    binomial = decide(BinomialEvidence(at_or_above, n, evidence.unit), rate, "lower", alpha, alpha_beyond)
    beyond = binom_sf(above, n, rate)
    verdict = "FAIL" if beyond <= alpha_beyond else "PASS" if binomial.verdict == "PASS" else "UNDECIDED"
    most = -1  # PASS iff #{x >= L} <= most (binom_cdf rises with e)
    while most < n and binom_cdf(most + 1, n, rate) <= alpha:
        most += 1
    least = 0  # FAIL iff #{x > L} >= least (binom_sf falls with e)
    while least <= n and binom_sf(least, n, rate) > alpha_beyond:
        least += 1
    upper = float(x[n - most - 1]) if 0 <= most < n else -math.inf if most >= n else math.inf
    lower = float(x[n - least]) if 0 < least <= n else -math.inf
    return Decision(
        verdict=verdict,
        value=float(np.percentile(x, 100.0 * evidence.q)),
        interval=[lower, upper],
        p_within=binomial.p_within,
        p_beyond=beyond,
        units=n,
        unit=evidence.unit,
        more_units=binomial.more_units if verdict == "UNDECIDED" else None,
        method=f"exact binomial test of the {evidence.unit} above the limit against {rate:g} (distribution-free "
        f"bound of the {100 * evidence.q:g}th percentile over {n} {evidence.unit})",
    )


def _prompt_p99(document: object) -> QuantileEvidence | None:
    values = _per_prompt(document, "kl_mean")
    return QuantileEvidence(np.asarray(values, dtype=np.float64), 0.99, "prompts") if values else None


def _corpus(sums: str, counts: str) -> EvidenceOf:
    def evidence(document: object) -> MeanEvidence | None:
        windows = lookup(document, ("corpus_kl", "per_window"))
        if windows is None:
            return None
        return ratio_evidence(
            _floats(_field(windows, sums), f"corpus_kl.per_window.{sums}"),
            _floats(_field(windows, counts), f"corpus_kl.per_window.{counts}"),
            "windows",
        )

    return evidence


def _blocks(bucket: object, sums: str, counts: str, percent: bool) -> MeanEvidence | None:
    """The ratio estimator over a bucket's blocks (its ``block_sums``): mean log-ratio of
    perplexities (``percent``: reported as ΔPPL %) or mean KL."""
    blocks = _field(bucket, "block_sums")
    if blocks is None:
        return None
    values = _floats(_field(blocks, sums), f"block_sums.{sums}")
    positions = _floats(_field(blocks, counts), f"block_sums.{counts}")
    if not percent:
        return ratio_evidence(values, positions, BLOCKS, tokens_per_unit=float(BLOCK))
    return ratio_evidence(
        values, positions, BLOCKS, lambda r: 100.0 * math.expm1(r), lambda v: math.log1p(v / 100.0), float(BLOCK)
    )


def _deepest(sums: str, counts: str, percent: bool) -> EvidenceOf:
    def evidence(document: object) -> MeanEvidence | None:
        bucket = lookup(document, ("long_context", "deepest"))
        return None if bucket is None else _blocks(bucket, sums, counts, percent)

    return evidence


def _growth(document: object) -> MeanEvidence | None:
    """The least-squares slope of the buckets' mean KL on log2 of their mean context: a linear
    combination ``sum c_i y_i`` with ``c_i = (x_i - x̄) / Sxx``, so ``SE = sqrt(sum c_i^2 SE_i^2)``
    (buckets hold disjoint positions; SE_i over the bucket's blocks); t with the fewest blocks of a
    bucket less one as df."""
    buckets = lookup(document, ("long_context", "buckets", "buckets"))
    slope = lookup(document, ("long_context", "buckets", "growth", "kl_slope_per_doubling"))
    if not isinstance(buckets, Sequence) or not isinstance(slope, (int, float)):
        return None
    used = [(b, e) for b in buckets if (e := _blocks(b, "kl", "kl_positions", False)) is not None]
    if len(used) < 2:
        return MeanEvidence(float(slope), math.nan, 1, BLOCKS)
    x = np.array([math.log2(float(_field(b, "mean_context"))) for b, _ in used])  # type: ignore[arg-type]
    c = (x - x.mean()) / float(((x - x.mean()) ** 2).sum())
    spread = math.sqrt(float(sum(ci**2 * e.se**2 for ci, (_, e) in zip(c, used))))
    return MeanEvidence(float(slope), spread, min(e.units for _, e in used), BLOCKS)


def _flips(section: tuple[str, ...], of: str, unit: str) -> EvidenceOf:
    def evidence(document: object) -> BinomialEvidence | None:
        flips = number(lookup(document, (*section, "flips")), ".".join((*section, "flips")))
        trials = number(lookup(document, (*section, of)), ".".join((*section, of)))
        if flips is None or trials is None:
            return None
        return BinomialEvidence(int(flips), int(trials), unit)

    return evidence


def _exact(path: tuple[str, ...]) -> EvidenceOf:
    def evidence(document: object) -> ExactEvidence | None:
        value = number(lookup(document, path), path)
        return None if value is None else ExactEvidence(float(value))

    return evidence


EVIDENCE: dict[str, EvidenceOf] = {
    "ppl": _ppl,
    "delta_ppl_pct": _delta_ppl,
    "bits_per_byte_delta": _bits_per_byte_delta,
    "kl_mean": _prompt_mean("kl_mean"),
    "kl_p99": _prompt_p99,
    "top1_agreement": _prompt_mean("top1_agreement"),
    "corpus_kl_mean": _corpus("kl_sum", "finite_positions"),
    "corpus_top1_agreement": _corpus("same_top1", "positions"),
    "long_delta_ppl_pct": _deepest("log_ratio", "positions", percent=True),
    "long_kl_mean": _deepest("kl", "kl_positions", percent=False),
    "long_kl_growth": _growth,
    "retrieval_flip_rate": _flips(("long_context", "retrieval"), "probes", "probes"),
    "flip_rate": _flips(("flips",), "checkable_prompts", "prompts with a checkable answer"),
    "footprint_gb": _exact(("memory", "footprint_gb")),
    "memory_reduction_pct": _exact(("memory", "reduction_pct")),
}
