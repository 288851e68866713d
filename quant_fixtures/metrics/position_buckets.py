"""Quantization harm by position in a long context.

Several long text stretches are each scored as one sequence from its first token. Every scored
position predicts the next token after ``c`` tokens of context (``c = 1 .. L - 1`` in a stretch of
``L`` tokens). Positions are grouped into buckets of context length, ``[lo, hi)`` in tokens of
context before the predicted token, and each bucket gets FP16's perplexity and, for a quantized
variant, its perplexity, ΔPPL %, mean and 99th-percentile KL(FP16 || variant) in nats, and the
top-1 agreement rate. :func:`harm_growth` turns the buckets into numbers that say whether the harm
grows with the context: last-over-first KL ratio, ΔPPL change, KL slope per doubling of context.

Neighbouring positions of one stretch are correlated (they share most of their context), so the
95 % confidence intervals treat blocks of :data:`BLOCK` consecutive positions, not positions, as
the independent units (see :func:`block_mean_ci`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TypedDict, TypeGuard

import numpy as np

from quant_fixtures.metrics.blocks import BlockSums, block_ids, block_mean_ci, block_sums
from quant_fixtures.metrics.corpus_stats import percentiles
from quant_fixtures.metrics.stats import delta_pct

POSITION_UNIT = "tokens of context before the predicted token"

Ints = np.ndarray | Sequence[int]
Floats = np.ndarray | Sequence[float]


class Fp16Bucket(TypedDict):
    """One context-length bucket of the FP16 pass."""

    lo: int  # first context length of the bucket (tokens)
    hi: int  # one past the last context length (tokens)
    positions: int  # scored positions in the bucket
    stretches: int  # stretches with at least one position in the bucket
    mean_context: float  # mean context length of the bucket's positions (tokens)
    fp16_ppl: float  # exp(-mean FP16 log-prob of the correct token)


class VariantBucket(Fp16Bucket):
    """One context-length bucket of the FP16-against-variant comparison."""

    blocks: int  # blocks of the ΔPPL CI (runs of up to BLOCK positions of one stretch)
    ppl: float  # the variant's exp(-mean log-prob of the correct token)
    delta_ppl_pct: float  # 100 * (ppl / fp16_ppl - 1)
    delta_ppl_pct_ci95: list[float] | None  # [low, high]; None: fewer than 2 blocks
    kl_mean: float | None  # mean finite KL(FP16 || variant), nats; None: no finite KL
    kl_mean_ci95: list[float] | None  # [low, high] nats; None: fewer than 2 blocks with finite KL
    kl_p99: float | None  # 99th percentile of the finite KL, nats (linear interpolation)
    non_finite_kl: int  # positions whose KL is NaN or infinite, left out of the three KL fields
    same_top1_rate: float  # share of positions where the variant's argmax is FP16's
    block_sums: BlockSums  # the blocks' own sums: the units of the gates' intervals (metrics/gate_evidence.py)


class Growth(TypedDict):
    """How the harm changes from the first bucket (shortest context) to the last (longest)."""

    kl_ratio_last_first: float | None  # kl_mean last / first; None: a kl_mean is None or first is 0
    delta_ppl_pct_change: float  # delta_ppl_pct last - first, percentage points
    kl_slope_per_doubling: float | None  # nats per doubling of context; None: < 2 buckets with KL


class LongContextFp16(TypedDict):
    """FP16's perplexity by context length over all stretches."""

    buckets: list[Fp16Bucket]
    positions: int  # all scored positions given
    unbucketed_positions: int  # positions whose context lies in no bucket (beyond the last edge)
    stretches: int
    position_unit: str


class LongContextComparison(TypedDict):
    """The variant's harm by context length over all stretches."""

    buckets: list[VariantBucket]
    growth: Growth
    positions: int  # all scored positions given
    unbucketed_positions: int  # positions whose context lies in no bucket (beyond the last edge)
    stretches: int
    position_unit: str


def clip_edges(edges: Sequence[int], longest_context: int) -> list[tuple[int, int]]:
    """The buckets ``[lo, hi)`` (tokens of context) of ``edges`` that can hold a scored position.

    ``edges`` must be strictly increasing non-negative integers; consecutive edges make the
    buckets. Possible context lengths are ``1 .. longest_context``, so a bucket is kept when
    ``lo <= longest_context`` and ``hi >= 2``; ``lo`` stays as given, and the last kept bucket's
    ``hi`` becomes ``min(hi, longest_context + 1)``. Context lengths at or beyond the last edge fall
    in no bucket (the edges are not extended). Example: edges (0, 512, 2048, 8192) with
    ``longest_context`` 1000 give [(0, 512), (512, 1001)]. ValueError for unsorted, duplicate or
    negative edges, fewer than two edges, ``longest_context < 1``, or no usable bucket.
    """
    values = [int(e) for e in edges]
    if len(values) < 2:
        raise ValueError(f"bucket edges {tuple(values)}: need at least two edges to make a bucket")
    if values[0] < 0:
        raise ValueError(f"bucket edges {tuple(values)}: edges must be non-negative")
    if any(b <= a for a, b in zip(values[:-1], values[1:])):
        raise ValueError(f"bucket edges {tuple(values)}: edges must be strictly increasing (sorted, no duplicates)")
    if longest_context < 1:
        raise ValueError(f"longest_context must be >= 1, got {longest_context}")
    kept = [(lo, hi) for lo, hi in zip(values[:-1], values[1:]) if lo <= longest_context and hi >= 2]
    if not kept:
        raise ValueError(f"bucket edges {tuple(values)}: no bucket holds a context length in 1..{longest_context}")
    lo, hi = kept[-1]
    kept[-1] = (lo, min(hi, longest_context + 1))
    return kept


def _array(values: Ints | Floats, name: str, n: int | None, kind: str) -> np.ndarray:
    """``values`` as a 1-D array of ``kind`` ("int", "float" or "bool"); ValueError naming ``name``
    when it is not 1-D, empty, not integer (for "int"), or not ``n`` long."""
    arr = np.asarray(values)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {arr.shape}")
    if arr.size == 0:
        raise ValueError(f"{name} is empty: no scored positions")
    if n is not None and arr.size != n:
        raise ValueError(f"{name} has {arr.size} positions but context_tokens has {n}")
    if kind == "int":
        if not np.issubdtype(arr.dtype, np.integer):
            raise ValueError(f"{name} must hold integers, got dtype {arr.dtype}")
        return arr.astype(np.int64)
    if kind == "bool":
        return arr.astype(bool)
    out = arr.astype(np.float64)
    if name != "kl_pq" and not np.all(np.isfinite(out)):
        raise ValueError(f"{name} has {int((~np.isfinite(out)).sum())} non-finite log-probabilities")
    return out


def _positions(context_tokens: Ints, stretch: Ints) -> tuple[np.ndarray, np.ndarray]:
    """Validated ``context_tokens`` (each >= 1) and ``stretch`` (each stretch one run of positions)."""
    context = _array(context_tokens, "context_tokens", None, "int")
    if int(context.min()) < 1:
        raise ValueError(f"context_tokens must be >= 1 (a predicted token has context), got {int(context.min())}")
    stretches = _array(stretch, "stretch", context.size, "int")
    runs = 1 + int((stretches[1:] != stretches[:-1]).sum())
    if runs != np.unique(stretches).size:
        raise ValueError("stretch: a stretch's positions must be consecutive (stretch after stretch)")
    return context, stretches


def _check_buckets(buckets: Sequence[tuple[int, int]]) -> None:
    """ValueError unless the buckets are non-empty ranges, sorted and non-overlapping."""
    if not buckets:
        raise ValueError("no buckets given")
    for lo, hi in buckets:
        if hi <= lo:
            raise ValueError(f"bucket [{lo}, {hi}) is empty: buckets {list(buckets)}")
    for (_, hi), (lo, _) in zip(buckets[:-1], buckets[1:]):
        if lo < hi:
            raise ValueError(f"buckets overlap or are unsorted: {list(buckets)}")


def _fp16_bucket(lo: int, hi: int, context: np.ndarray, stretch: np.ndarray, logp: np.ndarray) -> Fp16Bucket:
    return {
        "lo": lo,
        "hi": hi,
        "positions": int(context.size),
        "stretches": int(np.unique(stretch).size),
        "mean_context": float(context.mean()),
        "fp16_ppl": math.exp(-float(logp.mean())),
    }


def _inside(context: np.ndarray, lo: int, hi: int) -> np.ndarray:
    """Mask of the positions in ``[lo, hi)``; ValueError when there is none."""
    inside = (context >= lo) & (context < hi)
    if not inside.any():
        raise ValueError(
            f"bucket [{lo}, {hi}) holds no scored position; build buckets with clip_edges(edges, longest context)"
        )
    return inside


def fp16_buckets(
    context_tokens: Ints, stretch: Ints, logp_target: Floats, buckets: Sequence[tuple[int, int]]
) -> list[Fp16Bucket]:
    """FP16's perplexity per context bucket: ``fp16_ppl = exp(-mean logp_target)`` over the bucket's
    positions (``logp_target`` in nats). Every bucket must hold a position (ValueError otherwise)."""
    context, stretches = _positions(context_tokens, stretch)
    logp = _array(logp_target, "logp_target", context.size, "float")
    _check_buckets(buckets)
    out = []
    for lo, hi in buckets:
        inside = _inside(context, lo, hi)
        out.append(_fp16_bucket(lo, hi, context[inside], stretches[inside], logp[inside]))
    return out


def _ci(bounds: tuple[float, float] | None) -> list[float] | None:
    return None if bounds is None else [bounds[0], bounds[1]]


def variant_buckets(
    context_tokens: Ints,
    stretch: Ints,
    logp_target: Floats,
    logq_target: Floats,
    kl_pq: Floats,
    same_top1: np.ndarray | Sequence[bool],
    buckets: Sequence[tuple[int, int]],
) -> list[VariantBucket]:
    """The variant's harm per context bucket (fields: :class:`VariantBucket`).

    ``ppl = exp(-mean logq_target)``, ``delta_ppl_pct = 100 (ppl / fp16_ppl - 1)``; its CI comes
    from ``d = logp - logq`` (variant NLL minus FP16 NLL, nats): ``100 (exp(bound) - 1)`` of the
    :func:`block_mean_ci` bounds of ``mean d``. KL mean, its CI and p99 use only the finite
    ``kl_pq``; the others are counted in ``non_finite_kl``. Log-probabilities must be finite.
    Blocks (:func:`block_ids`) never cross a stretch or a bucket boundary; a CI is None with fewer
    than 2 blocks.
    """
    context, stretches = _positions(context_tokens, stretch)
    n = context.size
    logp = _array(logp_target, "logp_target", n, "float")
    logq = _array(logq_target, "logq_target", n, "float")
    kl = _array(kl_pq, "kl_pq", n, "float")
    same = _array(same_top1, "same_top1", n, "bool")
    _check_buckets(buckets)
    out: list[VariantBucket] = []
    for lo, hi in buckets:
        inside = _inside(context, lo, hi)
        base = _fp16_bucket(lo, hi, context[inside], stretches[inside], logp[inside])
        blocks = block_ids(stretches[inside])
        _, d_ci = block_mean_ci(logp[inside] - logq[inside], blocks)
        kl_in = kl[inside]
        finite = np.isfinite(kl_in)
        kl_mean, kl_ci = block_mean_ci(kl_in[finite], blocks[finite]) if finite.any() else (None, None)
        ppl = math.exp(-float(logq[inside].mean()))
        out.append(
            {
                **base,
                "blocks": int(blocks[-1]) + 1,
                "ppl": ppl,
                "delta_ppl_pct": delta_pct(ppl, base["fp16_ppl"]),
                "delta_ppl_pct_ci95": None if d_ci is None else [100.0 * math.expm1(b) for b in d_ci],
                "kl_mean": kl_mean,
                "kl_mean_ci95": _ci(kl_ci),
                "kl_p99": percentiles(kl_in[finite])["p99"] if finite.any() else None,
                "non_finite_kl": int((~finite).sum()),
                "same_top1_rate": float(same[inside].mean()),
                "block_sums": block_sums(blocks, logp[inside] - logq[inside], kl_in),
            }
        )
    return out


def harm_growth(buckets: Sequence[VariantBucket]) -> Growth:
    """The change of harm from the first bucket to the last.

    ``kl_ratio_last_first = kl_mean[last] / kl_mean[first]`` (None when either is None or the first
    is 0); ``delta_ppl_pct_change = delta_ppl_pct[last] - delta_ppl_pct[first]`` (percentage
    points); ``kl_slope_per_doubling``: unweighted least-squares slope of ``kl_mean`` against
    ``log2(mean_context)`` over the buckets with a ``kl_mean``, i.e.
    ``sum (x - x̄)(y - ȳ) / sum (x - x̄)^2`` in nats per doubling of context (None with fewer than
    2 such buckets or equal ``mean_context``). One bucket gives ratio 1 (or None) and change 0.
    """
    if not buckets:
        raise ValueError("harm_growth needs at least one bucket")
    first, last = buckets[0], buckets[-1]
    k_first, k_last = first["kl_mean"], last["kl_mean"]
    ratio = k_last / k_first if k_first is not None and k_last is not None and k_first != 0 else None
    with_kl = [(math.log2(b["mean_context"]), b["kl_mean"]) for b in buckets if b["kl_mean"] is not None]
    slope = None
    if len(with_kl) >= 2:
        x = np.array([p[0] for p in with_kl])
        y = np.array([p[1] for p in with_kl])
        sxx = float(((x - x.mean()) ** 2).sum())
        slope = float(((x - x.mean()) * (y - y.mean())).sum()) / sxx if sxx > 0 else None
    return {
        "kl_ratio_last_first": ratio,
        "delta_ppl_pct_change": last["delta_ppl_pct"] - first["delta_ppl_pct"],
        "kl_slope_per_doubling": slope,
    }


def _unbucketed(context: np.ndarray, buckets: Sequence[tuple[int, int]]) -> int:
    inside = np.zeros(context.size, dtype=bool)
    for lo, hi in buckets:
        inside |= (context >= lo) & (context < hi)
    return int((~inside).sum())


def long_context_fp16(
    context_tokens: Ints, stretch: Ints, logp_target: Floats, edges: Sequence[int]
) -> LongContextFp16:
    """FP16's perplexity by context length: :func:`fp16_buckets` over ``clip_edges(edges, longest
    context given)``, with the position and stretch counts."""
    context, stretches = _positions(context_tokens, stretch)
    buckets = clip_edges(edges, int(context.max()))
    return {
        "buckets": fp16_buckets(context, stretches, logp_target, buckets),
        "positions": int(context.size),
        "unbucketed_positions": _unbucketed(context, buckets),
        "stretches": int(np.unique(stretches).size),
        "position_unit": POSITION_UNIT,
    }


def long_context_comparison(
    context_tokens: Ints,
    stretch: Ints,
    logp_target: Floats,
    logq_target: Floats,
    kl_pq: Floats,
    same_top1: np.ndarray | Sequence[bool],
    edges: Sequence[int],
) -> LongContextComparison:
    """The variant's harm by context length: :func:`variant_buckets` over ``clip_edges(edges,
    longest context given)`` and their :func:`harm_growth`, with the position and stretch counts."""
    context, stretches = _positions(context_tokens, stretch)
    buckets = clip_edges(edges, int(context.max()))
    records = variant_buckets(context, stretches, logp_target, logq_target, kl_pq, same_top1, buckets)
    return {
        "buckets": records,
        "growth": harm_growth(records),
        "positions": int(context.size),
        "unbucketed_positions": _unbucketed(context, buckets),
        "stretches": int(np.unique(stretches).size),
        "position_unit": POSITION_UNIT,
    }


def is_comparison(summary: LongContextComparison | LongContextFp16) -> TypeGuard[LongContextComparison]:
    """Whether a long-context summary is a variant's comparison (it has a growth) rather than FP16's."""
    return "growth" in summary


def is_variant_bucket(bucket: Fp16Bucket) -> TypeGuard[VariantBucket]:
    """Whether a bucket record is a variant's (it has the variant's perplexity) rather than FP16's."""
    return "ppl" in bucket
