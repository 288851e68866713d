"""The corpus summary against a plain transcription of llama.cpp's --kl-divergence accumulation
(running sums as kl_divergence() keeps them, in pure Python) and against hand-computed cases."""

import math
import random
from typing import Any

import numpy as np
import pytest

from quant_fixtures.metrics import corpus_stats as cs


def llama_cpp_by_running_sums(
    kld: list[float], logq_t: list[float], logp_t: list[float], same: list[bool]
) -> dict[str, Any]:
    """The sums kl_divergence_result keeps, one token at a time, and the final formulas of
    kl_divergence() (tools/perplexity/perplexity.cpp), in plain Python floats."""
    s = dict(nll=0.0, nll2=0.0, base=0.0, base2=0.0, nb=0.0, kld=0.0, kld2=0.0, dp=0.0, dp2=0.0, dp4=0.0, same=0)
    n = len(kld)
    for k, lq, lp, sm in zip(kld, logq_t, logp_t, same):
        nll, nll_base = -lq, -lp
        s["nll"] += nll
        s["nll2"] += nll * nll
        s["base"] += nll_base
        s["base2"] += nll_base * nll_base
        s["nb"] += nll * nll_base
        s["kld"] += k
        s["kld2"] += k * k
        d = math.exp(-nll) - math.exp(-nll_base)
        s["dp"] += d
        s["dp2"] += d * d
        s["dp4"] += d**4
        s["same"] += int(sm)

    def mu(total: float, total2: float) -> tuple[float, float]:
        f = total / n
        df = total2 / n - f * f
        return f, (math.sqrt(df / (n - 1)) if df > 0 and n > 10 else 0.0)

    lq, uq = mu(s["nll"], s["nll2"])
    lb, ub = mu(s["base"], s["base2"])
    cov = (s["nb"] / n - (s["nll"] / n) * (s["base"] / n)) / (n - 1)
    ppl, ppl_b = math.exp(lq), math.exp(lb)
    ratio_unc = math.sqrt(uq * uq + ub * ub - 2 * cov)
    mse, mse_unc = mu(s["dp2"], s["dp4"])
    p = s["same"] / n
    return {
        "ppl_q": (ppl, ppl * uq),
        "ppl_base": (ppl_b, ppl_b * ub),
        "cor": cov / (uq * ub),
        "ln_ratio": (lq - lb, ratio_unc),
        "ratio": (math.exp(lq - lb), math.exp(lq - lb) * ratio_unc),
        "diff": (ppl - ppl_b, math.sqrt((ppl * uq) ** 2 + (ppl_b * ub) ** 2 - 2 * ppl * ppl_b * cov)),
        "kld": mu(s["kld"], s["kld2"]),
        "dp": mu(s["dp"], s["dp2"]),
        "rms": (math.sqrt(mse), 0.5 / math.sqrt(mse) * mse_unc),
        "same": (p, math.sqrt(p * (1 - p) / (n - 1))),
    }


def _pair(d: cs.WithUncertainty) -> tuple[float, float]:
    return d["value"], d["uncertainty"]


def test_llama_cpp_tables_equal_the_running_sum_transcription() -> None:
    rng = random.Random(0)
    n = 5000
    logp = [-abs(rng.gauss(2.0, 1.5)) for _ in range(n)]
    logq = [lp + rng.gauss(0.0, 0.05) - 0.01 for lp in logp]
    kld = [abs(rng.gauss(0.0, 0.02)) for _ in range(n)]
    same = [rng.random() < 0.93 for _ in range(n)]
    want = llama_cpp_by_running_sums(kld, logq, logp, same)
    got = cs.llama_cpp_statistics(np.array(kld), np.array(logq), np.array(logp), np.array(same))
    ppl = got["perplexity"]
    for mine, theirs in (
        (_pair(ppl["ppl_q"]), want["ppl_q"]),
        (_pair(ppl["ppl_base"]), want["ppl_base"]),
        (_pair(ppl["ln_ppl_ratio"]), want["ln_ratio"]),
        (_pair(ppl["ppl_ratio"]), want["ratio"]),
        (_pair(ppl["ppl_diff"]), want["diff"]),
        (_pair(got["kld"]["mean"]), want["kld"]),
        (_pair(got["delta_p"]["mean"]), want["dp"]),
        (_pair(got["delta_p"]["rms"]), want["rms"]),
        (_pair(got["same_top_p"]), want["same"]),
    ):
        assert mine == pytest.approx(theirs, rel=1e-9, abs=1e-15)
    assert ppl["cor_ln_ppl"] == pytest.approx(want["cor"], rel=1e-9)
    assert ppl["cor_ln_ppl"] is not None and 0.9 < ppl["cor_ln_ppl"] <= 1.0  # Q's NLL follows the base's closely here


def test_percentiles_interpolate_like_llama_cpp() -> None:
    values = np.array([5.0, 1.0, 4.0, 2.0, 3.0])
    got = cs.percentiles(values)
    # fraction * (n - 1) = 0.25 * 4 = 1: the second smallest; 0.1 * 4 = 0.4: 1 + 0.4 * (2 - 1)
    assert got["p25"] == 2.0 and got["p50"] == 3.0 and got["p10"] == pytest.approx(1.4)
    assert got["p99_9"] == pytest.approx(4.0 + 0.996 * 1.0)
    assert set(got) == {"p0_1", "p1", "p5", "p10", "p25", "p50", "p75", "p90", "p95", "p99", "p99_9"}
    assert list(got) == [f"p{p:g}".replace(".", "_") for p in cs.PERCENTILES]  # named after PERCENTILES, in order


def test_uncertainty_is_zero_for_ten_or_fewer_values() -> None:
    assert cs.mean_and_uncertainty(np.arange(10.0)) == (4.5, 0.0)
    mean, unc = cs.mean_and_uncertainty(np.arange(11.0))
    assert mean == 5.0 and unc == pytest.approx(math.sqrt(10.0 / 10))  # population variance 10, n - 1 = 10


def test_confidence_buckets_by_hand() -> None:
    kl = np.array([0.5, 0.1, 0.2, 0.0, 0.4])
    p_top1 = np.array([0.1, 0.95, 0.3, 1.0, 0.15])
    same = np.array([False, True, True, True, False])
    buckets = {tuple(b["fp16_top1_prob"]): b for b in cs.by_confidence(kl, p_top1, same)}
    low = buckets[(0.0, 0.2)]
    assert low["positions"] == 2 and low["kl_mean"] == pytest.approx(0.45) and low["same_top1_rate"] == 0.0
    assert low["kl_share"] == pytest.approx(0.9 / 1.2)
    assert buckets[(0.99, 1.0)]["positions"] == 1  # p = 1 falls in the last, closed bucket
    assert buckets[(0.6, 0.8)]["positions"] == 0 and buckets[(0.6, 0.8)]["kl_mean"] is None
    assert sum(b["positions"] for b in buckets.values()) == 5


def test_corpus_comparison_top_k_agreement_and_bad_input() -> None:
    n = 4
    positions = {
        "kl_pq": np.array([0.1, 0.2, 0.3, 0.4]),
        "kl_qp": np.array([0.1, 0.2, 0.3, 0.5]),
        "p_top1": np.full(n, 0.5),
        "same_top1": np.array([True, True, False, True]),
        "topk_overlap": np.tile(np.arange(1, 11), (n, 1)).astype(np.int16),
        "logp_target": np.full(n, -1.0),
        "logq_target": np.full(n, -1.1),
    }
    positions["topk_overlap"][2] = np.arange(0, 10)  # one position off by one at every K
    out = cs.corpus_comparison(positions, [2, 2])
    assert out.topk_agreement[0] == pytest.approx(0.75)  # K=1: 3 of 4 positions share the top token
    assert out.topk_agreement[9] == pytest.approx((3 * 1.0 + 0.9) / 4)
    assert out.mean == pytest.approx(0.25) and out.reverse["mean"] == pytest.approx(0.275)
    assert out.same_top1_rate == 0.75 and out.basis == "exact"
    with pytest.raises(ValueError, match="4 positions for windows scoring 5"):
        cs.corpus_comparison(positions, [2, 3])


def test_noise_floor_summary_and_its_place_in_the_section() -> None:
    floor = cs.noise_floor(np.array([0.0, 1e-6, 3e-6, float("nan")]))
    assert floor["positions"] == 4 and floor["mean"] == pytest.approx(4e-6 / 3) and floor["max"] == 3e-6
    n = 4
    positions = {
        "kl_pq": np.full(n, 0.1),
        "kl_qp": np.full(n, 0.1),
        "p_top1": np.full(n, 0.5),
        "same_top1": np.ones(n, dtype=bool),
        "topk_overlap": np.tile(np.arange(1, 11), (n, 1)),
        "logp_target": np.full(n, -1.0),
        "logq_target": np.full(n, -1.0),
    }
    measured = cs.corpus_comparison(positions, [4], np.array([1e-6, 2e-6])).noise_floor
    assert measured is not None and measured["mean"] == pytest.approx(1.5e-6)
    assert cs.corpus_comparison(positions, [4]).noise_floor is None
