"""Summary statistics and seeded bootstrap confidence intervals (numpy only).

Percentiles everywhere use numpy's default ``method="linear"`` interpolation. Every
random draw comes from ``np.random.default_rng(seed)``, so results are reproducible for a
given seed and numpy version.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from typing import TypedDict

import numpy as np

Statistic = Callable[..., np.ndarray]


class Summary(TypedDict):
    """:func:`summarize`'s statistics."""

    n: int
    nonfinite: int
    mean: float
    median: float
    min: float
    max: float
    p90: float
    p99: float


_MAX_INDEX_ELEMENTS: int = 1 << 24
"""Upper bound on resample-index elements drawn at once (bounds memory to ~128 MiB)."""


def _as_1d_float(values: Sequence[float] | np.ndarray, name: str) -> np.ndarray:
    """``values`` as a 1-D float64 array; ValueError if it is empty."""
    arr = np.asarray(values, dtype=np.float64).reshape(-1)
    if arr.size == 0:
        raise ValueError(f"{name} is empty")
    return arr


def summarize(values: Sequence[float] | np.ndarray) -> Summary:
    """Descriptive statistics of the finite entries of ``values``.

    Keys: ``n`` (finite values used), ``nonfinite`` (NaN/inf values excluded), ``mean``,
    ``median``, ``min``, ``max``, ``p90``, ``p99`` (linear-interpolated percentiles), in the
    units of ``values``. Raises ValueError when ``values`` is empty or has no finite entry.
    """
    arr = _as_1d_float(values, "values")
    finite = arr[np.isfinite(arr)]
    if finite.size == 0:
        raise ValueError(f"all {arr.size} values are non-finite")
    p50, p90, p99 = np.percentile(finite, [50.0, 90.0, 99.0], method="linear")
    return {
        "n": int(finite.size),
        "nonfinite": int(arr.size - finite.size),
        "mean": float(finite.mean()),
        "median": float(p50),
        "min": float(finite.min()),
        "max": float(finite.max()),
        "p90": float(p90),
        "p99": float(p99),
    }


def _check_bootstrap_args(n_resamples: int, confidence: float) -> None:
    """ValueError unless ``n_resamples >= 1`` and ``0 < confidence < 1``."""
    if n_resamples < 1:
        raise ValueError(f"n_resamples must be >= 1, got {n_resamples}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must lie in (0, 1), got {confidence}")


def _resample_index_chunks(
    n: int, n_resamples: int, seed: int, max_elements: int = _MAX_INDEX_ELEMENTS
) -> Iterator[np.ndarray]:
    """Rows of the ``(n_resamples, n)`` index matrix drawn with replacement from ``[0, n)``.

    Drawn in row blocks of at most ``max_elements`` entries from one
    ``np.random.default_rng(seed)`` stream, in the same order as a single full draw.
    """
    rng = np.random.default_rng(seed)
    rows_per_chunk = max(1, max_elements // n)
    for start in range(0, n_resamples, rows_per_chunk):
        rows = min(rows_per_chunk, n_resamples - start)
        yield rng.integers(0, n, size=(rows, n))


def _percentile_interval(samples: np.ndarray, confidence: float) -> tuple[float, float]:
    """Central interval: the ``100*a`` and ``100*(1-a)`` percentiles, ``a = (1 - confidence)/2``."""
    alpha = 100.0 * (1.0 - confidence) / 2.0
    low, high = np.percentile(samples, [alpha, 100.0 - alpha], method="linear")
    return float(low), float(high)


def bootstrap_ci(
    values: Sequence[float] | np.ndarray,
    statistic: Statistic = np.mean,
    n_resamples: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile-bootstrap confidence interval of ``statistic(values)``.

    Items are resampled with replacement (index matrix ``(n_resamples, n)`` drawn from
    ``np.random.default_rng(seed)``); ``statistic`` must accept ``axis=-1`` and reduce each
    row (numpy reductions such as ``np.mean``/``np.median`` do). Returns the central
    ``confidence`` percentile interval, in the units of the statistic. With ``n == 1`` the
    interval is degenerate: ``(s, s)`` with ``s = statistic([v])``, i.e. ``(v, v)`` for a mean.
    Values must be finite (ValueError otherwise, and for empty input).
    """
    _check_bootstrap_args(n_resamples, confidence)
    arr = _as_1d_float(values, "values")
    if not np.all(np.isfinite(arr)):
        raise ValueError("bootstrap_ci needs finite values; filter NaN/inf first")
    if arr.size == 1:
        single = float(np.asarray(statistic(arr[np.newaxis, :], axis=-1)).reshape(-1)[0])
        return single, single
    stats = [
        np.asarray(statistic(arr[idx], axis=-1), dtype=np.float64)
        for idx in _resample_index_chunks(arr.size, n_resamples, seed)
    ]
    return _percentile_interval(np.concatenate(stats), confidence)


def _paired_window_arrays(
    base_nll: Sequence[float] | np.ndarray,
    base_tokens: Sequence[int] | np.ndarray,
    cand_nll: Sequence[float] | np.ndarray,
    cand_tokens: Sequence[int] | np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Validate per-window inputs; return ``(cand_nll - base_nll, tokens)`` as float64."""
    arrays = {
        "base_nll": np.asarray(base_nll, dtype=np.float64).reshape(-1),
        "base_tokens": np.asarray(base_tokens, dtype=np.float64).reshape(-1),
        "cand_nll": np.asarray(cand_nll, dtype=np.float64).reshape(-1),
        "cand_tokens": np.asarray(cand_tokens, dtype=np.float64).reshape(-1),
    }
    for first, second in (("base_nll", "cand_nll"), ("base_nll", "base_tokens"), ("cand_nll", "cand_tokens")):
        if arrays[first].size != arrays[second].size:
            raise ValueError(f"{first} has {arrays[first].size} windows but {second} has {arrays[second].size}")
    if arrays["base_nll"].size == 0:
        raise ValueError("no perplexity windows given")
    mismatch = np.flatnonzero(arrays["base_tokens"] != arrays["cand_tokens"])
    if mismatch.size:
        i = int(mismatch[0])
        raise ValueError(
            f"token counts differ at window {i}: base {arrays['base_tokens'][i]:g} vs "
            f"candidate {arrays['cand_tokens'][i]:g} ({mismatch.size} windows differ)"
        )
    if np.any(arrays["base_tokens"] <= 0):
        raise ValueError("every window needs a positive token count")
    if not (np.all(np.isfinite(arrays["base_nll"])) and np.all(np.isfinite(arrays["cand_nll"]))):
        raise ValueError("window NLL sums must be finite")
    return arrays["cand_nll"] - arrays["base_nll"], arrays["base_tokens"]


def paired_bootstrap_delta_ppl_ci(
    base_nll: Sequence[float] | np.ndarray,
    base_tokens: Sequence[int] | np.ndarray,
    cand_nll: Sequence[float] | np.ndarray,
    cand_tokens: Sequence[int] | np.ndarray,
    n_resamples: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
) -> tuple[float, float]:
    """Paired percentile-bootstrap CI of the perplexity change, in percent.

    Inputs are per perplexity window: summed token NLL in nats and the token count (which
    must match between the models). Windows are the resampling unit and each resample uses
    the same window indices for both models. Per resample ``W``:
    ``ppl_b = exp(sum_W nll_b / sum_W tok)``, ``ppl_c`` likewise, and
    ``delta% = 100 * (ppl_c / ppl_b - 1)``, evaluated as
    ``100 * expm1(sum_W (nll_c - nll_b) / sum_W tok)`` (identical maths, no cancellation).
    Returns the central ``confidence`` percentile interval of ``delta%``.
    """
    _check_bootstrap_args(n_resamples, confidence)
    diff, tokens = _paired_window_arrays(base_nll, base_tokens, cand_nll, cand_tokens)
    deltas = [
        100.0 * np.expm1(diff[idx].sum(axis=-1) / tokens[idx].sum(axis=-1))
        for idx in _resample_index_chunks(diff.size, n_resamples, seed)
    ]
    return _percentile_interval(np.concatenate(deltas), confidence)


def ratio_bootstrap_ci(
    sums: Sequence[float] | np.ndarray,
    counts: Sequence[float] | np.ndarray,
    n_resamples: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile-bootstrap CI of ``sum(sums) / sum(counts)`` resampling the items (e.g. perplexity
    windows: a per-token mean whose tokens are correlated inside a window, so windows, not tokens,
    are the resampling unit). Per resample ``W``: ``sum_W sums / sum_W counts``."""
    _check_bootstrap_args(n_resamples, confidence)
    a, b = _as_1d_float(sums, "sums"), _as_1d_float(counts, "counts")
    if a.shape != b.shape:
        raise ValueError(f"sums has {a.size} items but counts has {b.size}")
    if not (np.all(np.isfinite(a)) and np.all(b > 0)):
        raise ValueError("ratio_bootstrap_ci needs finite sums and positive counts")
    if a.size == 1:
        return float(a[0] / b[0]), float(a[0] / b[0])
    ratios = [a[idx].sum(axis=-1) / b[idx].sum(axis=-1) for idx in _resample_index_chunks(a.size, n_resamples, seed)]
    return _percentile_interval(np.concatenate(ratios), confidence)


def delta_pct(candidate: float, base: float) -> float:
    """Relative change in percent: ``100 * (candidate / base - 1)``; ValueError unless base > 0."""
    if not base > 0 or math.isinf(base):
        raise ValueError(f"base must be a finite positive number, got {base}")
    return 100.0 * (candidate / base - 1.0)


def counts_differ_p_value(a: int, b: int) -> float:
    """Two-sided exact p-value that counts ``a`` and ``b`` (events out of the same number of
    trials, e.g. answer flips in two runs of one prompt suite) come from the same rate.

    Conditional on ``n = a + b``, equal rates make ``a ~ Binomial(n, 1/2)`` (the exact test of
    two Poisson counts; McNemar's exact test when the events are the discordant pairs):
    ``p = min(1, 2 * P(X <= min(a, b)))``, and ``p = 1`` when ``n = 0``.
    """
    if a < 0 or b < 0:
        raise ValueError(f"counts must be non-negative, got {a} and {b}")
    n = a + b
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, k) for k in range(min(a, b) + 1)) / 2.0**n
    return min(1.0, 2.0 * tail)
