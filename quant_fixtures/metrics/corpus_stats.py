"""The corpus comparison's summary: every scored WikiText-2 position of the perplexity pass, FP16 (P,
"base") against the variant (Q).

Two parts:
* ``llama_cpp``: the statistics llama.cpp's ``llama-perplexity --kl-divergence`` prints, under its
  names and with its formulas (ggml-org/llama.cpp, tools/perplexity/perplexity.cpp: kl_divergence(),
  its mean_and_uncertainty / covariance / percentile helpers). Means carry llama.cpp's uncertainty,
  sqrt((E[x^2] - E[x]^2) / (n - 1)) (0 for n <= 10); PPL uncertainties are propagated through exp();
  Δp is p_Q(correct token) - p_base(correct token); "same top p" is argmax agreement with
  sqrt(p (1 - p) / (n - 1)). One difference: llama.cpp stores the base log-probs as 16-bit integers
  over [max - 16, max] and drops terms below e^-16; here both distributions are exact, in float64.
* what llama.cpp does not report: KL(Q || P), top-K agreement for K = 1..10, and KL by the FP16
  top-token confidence.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypedDict

import numpy as np

from quant_fixtures.metrics.stats import ratio_bootstrap_ci

PERCENTILES = (0.1, 1, 5, 10, 25, 50, 75, 90, 95, 99, 99.9)
CONFIDENCE_EDGES = (0.0, 0.2, 0.4, 0.6, 0.8, 0.9, 0.99, 1.0)


def mean_and_uncertainty(values: np.ndarray) -> tuple[float, float]:
    """llama.cpp's mean_and_uncertainty: the mean and sqrt(population variance / (n - 1)), or 0
    when the variance is not positive or n <= 10."""
    n = values.size
    if n < 1:
        return 0.0, 0.0
    mean = float(values.sum() / n)
    var = float((values * values).sum() / n - mean * mean)
    return mean, math.sqrt(var / (n - 1)) if var > 0 and n > 10 else 0.0


def covariance(a: np.ndarray, b: np.ndarray) -> float:
    """llama.cpp's covariance of two means: (E[ab] - E[a]E[b]) / (n - 1), 0 for n < 10."""
    n = a.size
    if n < 10:
        return 0.0
    return float(((a * b).sum() / n - (a.sum() / n) * (b.sum() / n)) / (n - 1))


class Percentiles(TypedDict):
    """The :data:`PERCENTILES` of a distribution, named ``p<percent>`` ("." as "_")."""

    p0_1: float
    p1: float
    p5: float
    p10: float
    p25: float
    p50: float
    p75: float
    p90: float
    p95: float
    p99: float
    p99_9: float


def percentiles(values: np.ndarray) -> Percentiles:
    """Linear interpolation between order statistics at fraction * (n - 1) (llama.cpp's and numpy's)."""
    p = [float(v) for v in np.percentile(values, PERCENTILES, method="linear")]
    return {
        "p0_1": p[0],
        "p1": p[1],
        "p5": p[2],
        "p10": p[3],
        "p25": p[4],
        "p50": p[5],
        "p75": p[6],
        "p90": p[7],
        "p95": p[8],
        "p99": p[9],
        "p99_9": p[10],
    }


class WithUncertainty(TypedDict):
    value: float
    uncertainty: float


class LlamaCppPerplexity(TypedDict):
    ppl_q: WithUncertainty
    ppl_base: WithUncertainty
    cor_ln_ppl: float | None  # None: an uncertainty is 0
    ln_ppl_ratio: WithUncertainty
    ppl_ratio: WithUncertainty
    ppl_diff: WithUncertainty


class KLDistribution(Percentiles):
    mean: WithUncertainty
    max: float
    min: float


class DeltaPDistribution(KLDistribution):
    rms: WithUncertainty


class LlamaCppTables(TypedDict):
    """llama-perplexity --kl-divergence's three tables, under its names."""

    perplexity: LlamaCppPerplexity
    kld: KLDistribution
    delta_p: DeltaPDistribution
    same_top_p: WithUncertainty


class ConfidenceBucket(TypedDict):
    fp16_top1_prob: list[float]  # [low, high) of FP16's probability of its own top token
    positions: int
    share: float
    kl_mean: float | None  # None: no position in the bucket
    kl_share: float | None
    same_top1_rate: float | None


class CorpusNoiseFloor(TypedDict):
    positions: int
    mean: float | None  # None: no finite KL
    p99: float | None
    max: float | None


class ReverseKL(TypedDict):
    mean: float
    median: float
    p99: float
    max: float


class WindowSums(TypedDict):
    """Per perplexity window (the units of the gates' intervals, metrics/gate_evidence.py): the sum
    of the finite KL, the finite positions, the positions where the argmaxes agree, all positions."""

    kl_sum: list[float]
    finite_positions: list[int]
    same_top1: list[int]
    positions: list[int]


@dataclass
class CorpusKL:
    """The report's ``corpus_kl`` section: the position-level comparison over the WikiText-2
    perplexity pass (re-exported by report/schema.py)."""

    tokens: int
    nonfinite: int
    mean: float
    median: float
    p90: float
    p99: float
    p99_9: float
    max: float
    min: float
    same_top1_rate: float
    ci95: list[float]
    same_top1_rate_ci95: list[float]
    basis: str
    noise_floor: CorpusNoiseFloor | None
    reverse: ReverseKL
    topk_agreement: list[float]
    by_confidence: list[ConfidenceBucket]
    llama_cpp: LlamaCppTables
    per_window: WindowSums
    method: str


def _with_unc(value: float, unc: float) -> WithUncertainty:
    return {"value": value, "uncertainty": unc}


def llama_cpp_statistics(
    kld: np.ndarray, logq_target: np.ndarray, logp_target: np.ndarray, same_top1: np.ndarray
) -> LlamaCppTables:
    """llama.cpp's three tables: perplexity, KL divergence, token probability."""
    nll, nll_base = -logq_target, -logp_target
    ln_q, unc_q = mean_and_uncertainty(nll)
    ln_base, unc_base = mean_and_uncertainty(nll_base)
    cov = covariance(nll, nll_base)
    ppl, ppl_base = math.exp(ln_q), math.exp(ln_base)
    ln_ratio, ln_ratio_unc = ln_q - ln_base, math.sqrt(max(0.0, unc_q**2 + unc_base**2 - 2 * cov))
    ppl_unc, base_unc = ppl * unc_q, ppl_base * unc_base
    p_diff = np.exp(logq_target) - np.exp(logp_target)
    mse, mse_unc = mean_and_uncertainty(p_diff * p_diff)
    rms = math.sqrt(mse)
    same = float(same_top1.mean())
    n = kld.size
    return {
        "perplexity": {
            "ppl_q": _with_unc(ppl, ppl_unc),
            "ppl_base": _with_unc(ppl_base, base_unc),
            "cor_ln_ppl": cov / (unc_q * unc_base) if unc_q > 0 and unc_base > 0 else None,
            "ln_ppl_ratio": _with_unc(ln_ratio, ln_ratio_unc),
            "ppl_ratio": _with_unc(math.exp(ln_ratio), math.exp(ln_ratio) * ln_ratio_unc),
            "ppl_diff": _with_unc(
                ppl - ppl_base, math.sqrt(max(0.0, ppl_unc**2 + base_unc**2 - 2 * ppl * ppl_base * cov))
            ),
        },
        "kld": {
            "mean": _with_unc(*mean_and_uncertainty(kld)),
            "max": float(kld.max()),
            "min": float(kld.min()),
            **percentiles(kld),
        },
        "delta_p": {
            "mean": _with_unc(*mean_and_uncertainty(p_diff)),
            "max": float(p_diff.max()),
            "min": float(p_diff.min()),
            **percentiles(p_diff),
            "rms": _with_unc(rms, 0.5 / rms * mse_unc if rms > 0 else 0.0),
        },
        "same_top_p": _with_unc(same, math.sqrt(same * (1 - same) / (n - 1)) if n > 1 else 0.0),
    }


def by_confidence(kl: np.ndarray, p_top1: np.ndarray, same_top1: np.ndarray) -> list[ConfidenceBucket]:
    """KL and top-1 agreement per bucket of FP16's probability of its own top token."""
    buckets: list[ConfidenceBucket] = []
    for lo, hi in zip(CONFIDENCE_EDGES[:-1], CONFIDENCE_EDGES[1:]):
        inside = (p_top1 >= lo) & ((p_top1 < hi) if hi < 1.0 else (p_top1 <= hi))
        count = int(inside.sum())
        buckets.append(
            {
                "fp16_top1_prob": [lo, hi],
                "positions": count,
                "share": count / kl.size if kl.size else 0.0,
                "kl_mean": float(kl[inside].mean()) if count else None,
                "kl_share": float(kl[inside].sum() / kl.sum()) if count and kl.sum() > 0 else None,
                "same_top1_rate": float(same_top1[inside].mean()) if count else None,
            }
        )
    return buckets


def window_cis(
    kl: np.ndarray, same: np.ndarray, finite: np.ndarray, window_tokens: Sequence[int]
) -> tuple[list[float], list[float]]:
    """95 % CIs of the mean KL and the same-top-1 rate, resampling windows (positions inside a window
    are correlated, so they are not independent draws)."""
    bounds = np.cumsum([0, *window_tokens])
    kl_sums, same_sums, counts = [], [], []
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        keep = finite[lo:hi]
        if keep.any():
            kl_sums.append(float(kl[lo:hi][keep].sum()))
            same_sums.append(float(same[lo:hi][keep].sum()))
            counts.append(float(keep.sum()))
    return list(ratio_bootstrap_ci(kl_sums, counts)), list(ratio_bootstrap_ci(same_sums, counts))


def window_sums(kl: np.ndarray, same: np.ndarray, finite: np.ndarray, window_tokens: Sequence[int]) -> WindowSums:
    """:class:`WindowSums` of positions in window order."""
    bounds = np.cumsum([0, *window_tokens])
    spans = list(zip(bounds[:-1], bounds[1:]))
    return {
        "kl_sum": [float(kl[lo:hi][finite[lo:hi]].sum()) for lo, hi in spans],
        "finite_positions": [int(finite[lo:hi].sum()) for lo, hi in spans],
        "same_top1": [int(same[lo:hi].sum()) for lo, hi in spans],
        "positions": [int(hi - lo) for lo, hi in spans],
    }


def noise_floor(noise_kl: np.ndarray) -> CorpusNoiseFloor:
    """Summary of FP16's KL against itself (another batch composition) over the first windows."""
    finite = noise_kl[np.isfinite(noise_kl)]
    if finite.size == 0:
        return {"positions": int(noise_kl.size), "mean": None, "p99": None, "max": None}
    return {
        "positions": int(noise_kl.size),
        "mean": float(finite.mean()),
        "p99": float(np.percentile(finite, 99)),
        "max": float(finite.max()),
    }


def corpus_comparison(
    positions: dict[str, np.ndarray], window_tokens: Sequence[int], noise_kl: np.ndarray | None = None
) -> CorpusKL:
    """The report's ``corpus_kl`` section from :func:`metrics.token_comparison.compare_positions`
    output over every scored position (window order)."""
    kl, reverse = positions["kl_pq"], positions["kl_qp"]
    if kl.size == 0 or kl.size != sum(window_tokens):
        raise ValueError(f"corpus comparison: {kl.size} positions for windows scoring {sum(window_tokens)}")
    finite = np.isfinite(kl) & np.isfinite(reverse)
    if not finite.any():
        raise ValueError(f"corpus comparison: all {kl.size} KL values are non-finite")
    kl_f, rev_f = kl[finite], reverse[finite]
    same = positions["same_top1"]
    overlap = positions["topk_overlap"].astype(np.float64)
    k = np.arange(1, overlap.shape[1] + 1)
    ci95, same_ci95 = window_cis(kl, same, finite, window_tokens)
    return CorpusKL(
        tokens=int(kl.size),
        nonfinite=int((~finite).sum()),
        mean=float(kl_f.mean()),
        median=float(np.median(kl_f)),
        p90=float(np.percentile(kl_f, 90)),
        p99=float(np.percentile(kl_f, 99)),
        p99_9=float(np.percentile(kl_f, 99.9)),
        max=float(kl_f.max()),
        min=float(kl_f.min()),
        same_top1_rate=float(same.mean()),
        ci95=ci95,
        same_top1_rate_ci95=same_ci95,
        basis="exact",
        noise_floor=noise_floor(noise_kl) if noise_kl is not None else None,
        reverse={
            "mean": float(rev_f.mean()),
            "median": float(np.median(rev_f)),
            "p99": float(np.percentile(rev_f, 99)),
            "max": float(rev_f.max()),
        },
        topk_agreement=[float(v) for v in (overlap / k).mean(axis=0)],
        by_confidence=by_confidence(kl_f, positions["p_top1"][finite], same[finite]),
        llama_cpp=llama_cpp_statistics(
            kl_f, positions["logq_target"][finite], positions["logp_target"][finite], same[finite]
        ),
        per_window=window_sums(kl, same, finite, window_tokens),
        method=CORPUS_METHOD,
    )


CORPUS_METHOD = (
    "Every scored position of the perplexity pass (same windows as the PPL): FP16 logits rebuilt from the "
    "stored FP16 final hidden states and output head, log-softmax of FP16 and variant logits over the whole "
    "vocabulary in float64. KL(P_fp16 || Q_variant) in nats (mean, median, percentiles over positions; "
    "95 % CIs of the mean and of same_top1_rate: percentile bootstrap over windows, 2000 resamples, seed 0); "
    "'reverse' is KL(Q || P); same_top1_rate: argmax agreement; topk_agreement[K-1]: mean |top-K(P) & "
    "top-K(Q)| / K; by_confidence: positions bucketed by FP16's probability of its own top token; "
    "llama_cpp: llama-perplexity --kl-divergence's statistics and uncertainties over the same positions "
    "(its base log-probs are 16-bit, these are exact); noise_floor: FP16 against its own reference over the "
    "first windows (8, or a quarter of a short pass) scored in another batch composition."
)
