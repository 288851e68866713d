"""Unit tests for quant_fixtures.metrics.stats."""

from __future__ import annotations

import math

import numpy as np
import pytest

from quant_fixtures.metrics.stats import (
    _resample_index_chunks,
    bootstrap_ci,
    delta_pct,
    paired_bootstrap_delta_ppl_ci,
    summarize,
)


def test_summarize_known_values() -> None:
    res = summarize([0.0, 1.0, 2.0, 3.0, 4.0, float("nan"), float("inf")])
    assert res["n"] == 5 and res["nonfinite"] == 2
    assert res["mean"] == 2.0 and res["median"] == 2.0
    assert res["min"] == 0.0 and res["max"] == 4.0
    assert res["p90"] == pytest.approx(3.6) and res["p99"] == pytest.approx(3.96)


def test_summarize_errors() -> None:
    with pytest.raises(ValueError):
        summarize([])
    with pytest.raises(ValueError):
        summarize([float("nan")])


def test_bootstrap_deterministic_with_seed() -> None:
    values = np.random.default_rng(1).normal(size=200)
    assert bootstrap_ci(values, seed=3) == bootstrap_ci(values, seed=3)
    assert bootstrap_ci(values, seed=3) != bootstrap_ci(values, seed=4)


def test_bootstrap_contains_mean_of_symmetric_sample() -> None:
    values = [-3.0, -2.0, -1.0, 0.0, 1.0, 2.0, 3.0] * 5
    low, high = bootstrap_ci(values)
    assert low < 0.0 < high
    assert low == pytest.approx(-high, abs=0.3)


def test_bootstrap_single_value_and_other_statistic() -> None:
    assert bootstrap_ci([2.5]) == (2.5, 2.5)
    low, high = bootstrap_ci([1.0, 2.0, 3.0, 100.0], statistic=np.median)
    assert 1.0 <= low <= high <= 100.0


def test_bootstrap_argument_errors() -> None:
    with pytest.raises(ValueError):
        bootstrap_ci([])
    with pytest.raises(ValueError):
        bootstrap_ci([1.0, float("nan")])
    with pytest.raises(ValueError):
        bootstrap_ci([1.0, 2.0], confidence=1.0)
    with pytest.raises(ValueError):
        bootstrap_ci([1.0, 2.0], n_resamples=0)


def test_chunked_index_draw_equals_single_draw() -> None:
    full = np.random.default_rng(7).integers(0, 13, size=(50, 13))
    chunked = np.concatenate(list(_resample_index_chunks(13, 50, seed=7, max_elements=40)))
    assert np.array_equal(full, chunked)


def _windows(seed: int, count: int = 40) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    tokens = rng.integers(100, 512, size=count)
    nll = tokens * rng.uniform(1.5, 3.0, size=count)
    return nll, tokens


def test_paired_identical_models_give_zero() -> None:
    nll, tokens = _windows(0)
    assert paired_bootstrap_delta_ppl_ci(nll, tokens, nll, tokens) == (0.0, 0.0)


def test_paired_constant_per_token_shift() -> None:
    nll, tokens = _windows(1)
    shift = 0.02
    low, high = paired_bootstrap_delta_ppl_ci(nll, tokens, nll + shift * tokens, tokens)
    expected = 100.0 * (math.exp(shift) - 1.0)
    assert low == pytest.approx(expected, rel=1e-9)
    assert high == pytest.approx(expected, rel=1e-9)


def test_paired_interval_brackets_point_estimate() -> None:
    nll, tokens = _windows(2)
    cand = nll + np.random.default_rng(3).normal(0.05, 0.02, size=nll.size) * tokens
    point = delta_pct(math.exp(cand.sum() / tokens.sum()), math.exp(nll.sum() / tokens.sum()))
    low, high = paired_bootstrap_delta_ppl_ci(nll, tokens, cand, tokens, seed=5)
    assert low < point < high
    assert (low, high) == paired_bootstrap_delta_ppl_ci(nll, tokens, cand, tokens, seed=5)


def test_paired_validation_errors() -> None:
    nll, tokens = _windows(4, count=5)
    with pytest.raises(ValueError, match="5 windows.*4"):
        paired_bootstrap_delta_ppl_ci(nll, tokens, nll[:4], tokens[:4])
    bad_tokens = tokens.copy()
    bad_tokens[2] += 1
    with pytest.raises(ValueError, match="window 2"):
        paired_bootstrap_delta_ppl_ci(nll, tokens, nll, bad_tokens)
    with pytest.raises(ValueError):
        paired_bootstrap_delta_ppl_ci([], [], [], [])


def test_delta_pct() -> None:
    assert delta_pct(11.0, 10.0) == pytest.approx(10.0)
    assert delta_pct(9.0, 10.0) == pytest.approx(-10.0)
    for base in (0.0, -1.0, float("nan")):
        with pytest.raises(ValueError):
            delta_pct(1.0, base)
