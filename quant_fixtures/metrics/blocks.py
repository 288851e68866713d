"""Blocks of consecutive positions: the independent units of the long-context statistics.

Neighbouring positions of one stretch share most of their context, so they are not independent
draws; runs of :data:`BLOCK` consecutive positions of one stretch are treated as the units of the
95 % confidence intervals (metrics/position_buckets.py) and of the gates' intervals
(metrics/gate_evidence.py, from each bucket's :class:`BlockSums`).
"""

from __future__ import annotations

import math
from typing import TypedDict

import numpy as np

from quant_fixtures.metrics.decision import t_ppf

BLOCK = 128
"""Consecutive positions of one stretch and one bucket that form one unit of the block CIs."""


def t975(df: int) -> float:
    """Student's t 0.975 quantile with ``df`` degrees of freedom (a bucket holds few blocks at short
    contexts, 2 to 4 below 512 tokens, where the normal quantile would make the interval far too narrow)."""
    if df < 1:
        raise ValueError(f"degrees of freedom must be >= 1, got {df}")
    return t_ppf(0.975, df)


class BlockSums(TypedDict):
    """Per block of a bucket (``BLOCK`` consecutive positions of one stretch): positions, the sum of
    ``d = logp - logq`` (variant NLL minus FP16's, nats), finite-KL positions and their KL sum."""

    positions: list[int]
    log_ratio: list[float]
    kl_positions: list[int]
    kl: list[float]


def block_ids(stretch: np.ndarray) -> np.ndarray:
    """Block number (0, 1, ...) of each position of one bucket, in the order given.

    A block is a run of at most :data:`BLOCK` consecutive positions of one stretch: a new block
    starts where the stretch changes and after every ``BLOCK`` positions of the same stretch, so a
    stretch's short remainder is a block of its own.
    """
    n = stretch.size
    index = np.arange(n)
    run_start = np.ones(n, dtype=bool)
    run_start[1:] = stretch[1:] != stretch[:-1]
    rank = index - np.maximum.accumulate(np.where(run_start, index, 0))
    return np.cumsum(rank % BLOCK == 0) - 1


def block_mean_ci(values: np.ndarray, blocks: np.ndarray) -> tuple[float, tuple[float, float] | None]:
    """The plain mean ``m`` of ``values`` and its 95 % CI with blocks as the independent units.

    ``blocks`` gives each value's block number. With ``B`` non-empty blocks of ``n_b`` values,
    means ``m_b`` and ``N = sum n_b``, ``m = sum (n_b / N) m_b`` (the plain mean: a short block
    weighs by its size) and the standard error is the cluster (ratio-estimator) one,
    ``SE = sqrt(B / (B - 1) * sum (n_b / N)^2 (m_b - m)^2)``; with equal blocks this is the standard
    error of the block means, ``std(m_b, ddof=1) / sqrt(B)``. The CI is ``m ± t SE`` with ``t`` the
    0.975 quantile of Student's t with ``B - 1`` degrees of freedom (:func:`t975`), in the units of
    ``values``; None with fewer than 2 blocks. The gates use the same blocks (:class:`BlockSums`).
    """
    sums = np.bincount(blocks, weights=values)
    counts = np.bincount(blocks).astype(np.float64)
    present = counts > 0
    sums, counts = sums[present], counts[present]
    total = float(counts.sum())
    mean = float(sums.sum() / total)
    b = counts.size
    if b < 2:
        return mean, None
    se = math.sqrt(b / (b - 1) * float((((counts / total) * (sums / counts - mean)) ** 2).sum()))
    t = t975(b - 1)
    return mean, (mean - t * se, mean + t * se)


def block_sums(blocks: np.ndarray, d: np.ndarray, kl: np.ndarray) -> BlockSums:
    """Per block: its positions, the sum of ``d`` over them, its finite-KL positions and their KL sum."""
    finite = np.isfinite(kl)
    size = int(blocks[-1]) + 1
    return {
        "positions": np.bincount(blocks, minlength=size).tolist(),
        "log_ratio": np.bincount(blocks, weights=d, minlength=size).tolist(),
        "kl_positions": np.bincount(blocks[finite], minlength=size).tolist(),
        "kl": np.bincount(blocks[finite], weights=kl[finite], minlength=size).tolist(),
    }
