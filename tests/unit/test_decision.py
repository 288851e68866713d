"""Unit tests for quant_fixtures.metrics.decision: the hand-written distributions against scipy, hand-computed
cases, interval coverage by simulation, verdict boundaries, more_units and the joint release rule."""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable

import numpy as np
import pytest
from scipy import special, stats

from quant_fixtures.metrics.decision import (
    BinomialEvidence,
    ExactEvidence,
    GateOutcome,
    MeanEvidence,
    binom_cdf,
    binom_sf,
    clopper_pearson_lower,
    clopper_pearson_upper,
    decide,
    family_alpha,
    holm,
    joint_verdict,
    mean_evidence,
    ratio_evidence,
    regularized_incomplete_beta,
    t_cdf,
    t_ppf,
)

REL = 1e-9
DFS = [1, 2, 2.5, 3, 30, 1000]
QS = [1e-6, 1e-3, 0.0014, 0.025, 0.05, 0.3, 0.5, 0.7, 0.95, 0.975, 0.999, 1 - 1e-6]


def _ppl(r: float) -> float:
    return 100.0 * math.expm1(r)


def _log_ratio(v: float) -> float:
    return math.log1p(v / 100.0)


# -- 1. the distributions against scipy ---------------------------------------------------------------------------


def test_incomplete_beta_matches_scipy() -> None:
    for a, b in itertools.product([0.5, 1.0, 2.5, 10.0, 100.0, 1000.0], repeat=2):
        for x in [0.0, 1e-6, 0.01, 0.2, 0.5, 0.8, 0.99, 1 - 1e-6, 1.0, a / (a + b), (a + 1) / (a + b + 2)]:
            expected = special.betainc(a, b, x)
            assert regularized_incomplete_beta(x, a, b) == pytest.approx(expected, rel=REL, abs=1e-300), (x, a, b)
    with pytest.raises(ValueError):
        regularized_incomplete_beta(0.5, 0.0, 1.0)


@pytest.mark.parametrize("df", DFS)
def test_t_cdf_matches_scipy(df: float) -> None:
    grid = [-1e4, -50.0, -10.0, -3.0, -1.5, -0.3, 0.0, 0.3, 1.5, 3.0, 10.0, 50.0, 1e4]
    grid += [float(stats.t.ppf(q, df)) for q in (1e-6, 1e-9, 1 - 1e-6)]
    for t in grid:
        assert t_cdf(t, df) == pytest.approx(stats.t.cdf(t, df), rel=REL), t
    # Near 0 scipy 1.17 loses digits (t.cdf(-1e-8, 1) is 0.5); df 1 and 2 have closed forms.
    for t in (-1e-8, -1e-4, 1e-8, 0.7, -123.0):
        assert t_cdf(t, 1) == pytest.approx(0.5 + math.atan(t) / math.pi, rel=1e-14)
        assert t_cdf(t, 2) == pytest.approx(0.5 + t / (2 * math.sqrt(2 + t * t)), rel=1e-14)
    assert t_cdf(math.inf, df) == 1.0 and t_cdf(-math.inf, df) == 0.0
    assert t_cdf(1.3, math.inf) == pytest.approx(stats.norm.cdf(1.3), rel=1e-12)


@pytest.mark.parametrize("df", [*DFS, 9999, 1e4, 1e6])
def test_t_ppf_matches_scipy(df: float) -> None:
    for q in QS:
        assert t_ppf(q, df) == pytest.approx(stats.t.ppf(q, df), rel=REL, abs=1e-12), q
        if df <= 1000:  # beyond, t_cdf's log-gamma terms lose digits (1e-9 relative at df 1e6)
            assert t_cdf(t_ppf(q, df), df) == pytest.approx(q, rel=1e-11)
    assert t_ppf(0.975, math.inf) == pytest.approx(stats.norm.ppf(0.975), rel=1e-12)
    for bad in (0.0, 1.0, math.nan):
        with pytest.raises(ValueError):
            t_ppf(bad, df)


def test_binomial_matches_scipy() -> None:
    for n in [1, 5, 12, 29, 100, 1000]:
        for k in sorted({0, 1, 2, n // 10, n // 4, n // 2, n - 1, n}):
            for p in [1e-4, 0.01, 0.1, 0.25, 0.5, 0.9, 0.999]:
                assert binom_cdf(k, n, p) == pytest.approx(stats.binom.cdf(k, n, p), rel=REL, abs=1e-300), (k, n, p)
                assert binom_sf(k, n, p) == pytest.approx(stats.binom.sf(k - 1, n, p), rel=REL, abs=1e-300), (k, n, p)
    assert binom_cdf(-1, 10, 0.3) == 0.0 and binom_cdf(10, 10, 0.3) == 1.0
    assert binom_cdf(3, 10, 0.0) == 1.0 and binom_cdf(3, 10, 1.0) == 0.0
    assert binom_sf(0, 10, 0.3) == 1.0 and binom_sf(11, 10, 0.3) == 0.0
    assert binom_sf(3, 10, 0.0) == 0.0 and binom_sf(3, 10, 1.0) == 1.0


def test_clopper_pearson_matches_scipy() -> None:
    for n in [1, 6, 29, 100, 1000]:
        for x in sorted({0, 1, 2, n // 3, n // 2, n - 1, n} & set(range(n + 1))):
            for alpha in [1e-6, 0.05 / 36, 0.025, 0.05, 0.5]:
                upper = 1.0 if x == n else stats.beta.ppf(1 - alpha, x + 1, n - x)
                lower = 0.0 if x == 0 else stats.beta.ppf(alpha, x, n - x + 1)
                assert clopper_pearson_upper(x, n, alpha) == pytest.approx(upper, rel=REL), (x, n, alpha)
                assert clopper_pearson_lower(x, n, alpha) == pytest.approx(lower, rel=REL), (x, n, alpha)


# -- 2. hand-computed cases ---------------------------------------------------------------------------------------


def test_ratio_evidence_by_hand() -> None:
    # sums 1, 3, 2 over counts 2, 4, 4: N = 10, R = 6 / 10 = 0.6. Per unit (sums_b - R counts_b) / N:
    # (1 - 1.2) / 10 = -0.02, (3 - 2.4) / 10 = 0.06, (2 - 2.4) / 10 = -0.04; squares 0.0004 + 0.0036 + 0.0016
    # = 0.0056; times B / (B - 1) = 3 / 2: 0.0084; SE = sqrt(0.0084) = 0.0916515139.
    ev = ratio_evidence([1.0, 3.0, 2.0, 5.0], [2, 4, 4, 0], "windows")  # the count-0 unit is dropped
    assert ev.estimate == pytest.approx(0.6, rel=1e-15) and ev.units == 3 and ev.unit == "windows"
    assert ev.se == pytest.approx(0.0916515139, rel=1e-9)
    values = np.random.default_rng(0).normal(size=20)
    equal = mean_evidence(values, "prompts")
    assert equal.estimate == pytest.approx(values.mean(), rel=1e-13)
    assert equal.se == pytest.approx(values.std(ddof=1) / math.sqrt(20), rel=1e-12)
    assert math.isnan(ratio_evidence([1.0], [3], "windows").se)


@pytest.mark.parametrize(
    ("sums", "counts", "message"),
    [
        ([1.0, math.nan], [1, 1], "^sums must be finite"),
        ([1.0, 2.0], [1, math.inf], "^counts must be"),
        ([1.0, 2.0], [1, -1], "^counts must be"),
        ([1.0, 2.0], [1], "^sums has 2 units but counts has 1"),
        ([1.0], [0], "^counts must be"),
    ],
)
def test_ratio_evidence_rejects_bad_input(sums: list[float], counts: list[float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ratio_evidence(sums, counts, "windows")
    with pytest.raises(ValueError, match="^values must be finite"):
        mean_evidence([1.0, math.inf], "prompts")


def test_zero_events_in_29_trials_bound_the_rate_below_a_tenth() -> None:
    assert clopper_pearson_upper(0, 29, 0.05) == pytest.approx(1 - 0.05 ** (1 / 29), rel=1e-14)
    assert clopper_pearson_upper(0, 29, 0.05) < 0.1 < clopper_pearson_upper(0, 28, 0.05)
    assert clopper_pearson_lower(7, 7, 0.05) == pytest.approx(0.05 ** (1 / 7), rel=1e-14)
    assert decide(BinomialEvidence(0, 29, "probes"), 0.1, "lower").verdict == "PASS"
    assert decide(BinomialEvidence(0, 28, "probes"), 0.1, "lower").verdict == "UNDECIDED"


def test_mean_decision_by_hand() -> None:
    # estimate 0.5, se 0.2 over 10 prompts (df 9), limit 1.0: T = (0.5 - 1.0) / 0.2 = -2.5.
    ab = 0.05 / 36
    d = decide(MeanEvidence(0.5, 0.2, 10, "prompts"), 1.0, "lower", alpha_beyond=ab)
    assert d.verdict == "PASS" and d.value == 0.5 and d.units == 10 and d.more_units is None
    assert d.p_within == pytest.approx(stats.t.cdf(-2.5, 9), rel=1e-10)
    assert d.p_beyond == pytest.approx(stats.t.sf(-2.5, 9), rel=1e-10)
    assert d.interval == pytest.approx(
        [0.5 - stats.t.ppf(1 - ab, 9) * 0.2, 0.5 + stats.t.ppf(0.95, 9) * 0.2], rel=1e-10
    )
    assert d.method == (
        "Student's t over 10 prompts (df 9): one-sided 95 % bound on the passing side, 99.86 % on the failing side"
    )
    # The same on the delta-PPL scale: 100 expm1(r) with the limit mapped back by log1p.
    ppl = decide(MeanEvidence(0.01, 0.004, 10, "windows", _ppl, _log_ratio), 2.0, "lower")
    t = (0.01 - math.log1p(0.02)) / 0.004
    assert ppl.p_within == pytest.approx(stats.t.cdf(t, 9), rel=1e-10) and ppl.verdict == "PASS"
    assert ppl.interval is not None and ppl.interval[1] == pytest.approx(_ppl(0.01 + stats.t.ppf(0.95, 9) * 0.004))


# -- 3. coverage by simulation: two-sided 95 % from the two one-sided 97.5 % bounds ---------------------------------


def _covers(evidence: MeanEvidence | BinomialEvidence, truth: float) -> bool:
    d = decide(evidence, truth, "lower", alpha=0.025, alpha_beyond=0.025)
    assert d.interval is not None and (d.verdict == "UNDECIDED") == (d.interval[0] <= truth < d.interval[1])
    return d.interval[0] <= truth <= d.interval[1]


def test_coverage_of_the_ratio_estimator() -> None:
    rng = np.random.default_rng(1)
    counts = rng.integers(100, 401, size=(2000, 40))
    sums = counts * rng.gamma(4.0, size=(2000, 40))  # per-unit means gamma(shape 4): the true ratio is 4
    coverage = np.mean([_covers(ratio_evidence(s, c, "windows"), 4.0) for s, c in zip(sums, counts)])
    assert 0.93 <= coverage <= 0.97


def test_coverage_of_the_mean() -> None:
    values = np.random.default_rng(2).gamma(1.5, size=(2000, 96))
    coverage = np.mean([_covers(mean_evidence(v, "prompts"), 1.5) for v in values])
    assert 0.93 <= coverage <= 0.97


def test_coverage_of_clopper_pearson() -> None:
    n, p = 100, 0.3
    covers = np.array([_covers(BinomialEvidence(x, n, "probes"), p) for x in range(n + 1)])
    exact = float(np.sum(stats.binom.pmf(np.arange(n + 1), n, p)[covers]))
    simulated = float(np.mean(covers[np.random.default_rng(4).binomial(n, p, size=2000)]))
    assert 0.95 <= exact <= 0.99 and 0.95 <= simulated <= 0.99


# -- 4. verdict boundaries ----------------------------------------------------------------------------------------

Scale = Callable[[float], float] | None
SCALES = [(None, None), (_ppl, _log_ratio)]


@pytest.mark.parametrize(("to", "back"), SCALES)
def test_limit_at_the_passing_bound_passes(to: Scale, back: Scale) -> None:
    ev = MeanEvidence(0.01, 0.004, 12, "prompts", to, back)
    # better, a limit far inside, the passing bound's end of the interval, the direction of a limit outside it
    for better, far, side, out in (("lower", 50.0, 1, -math.inf), ("higher", -50.0, 0, math.inf)):
        interval = decide(ev, far, better).interval
        assert interval is not None
        bound = interval[side]
        at = decide(ev, bound, better)
        assert at.verdict == "PASS" and at.p_within is not None and 0.05 - 1e-11 < at.p_within <= 0.05
        assert decide(ev, math.nextafter(bound, -out), better).verdict == "PASS"
        outside = decide(ev, math.nextafter(bound, out), better)
        assert outside.verdict == "UNDECIDED" and outside.p_within is not None and outside.p_within > 0.05


@pytest.mark.parametrize(("to", "back"), SCALES)
def test_limit_at_the_failing_bound_is_not_yet_a_fail(to: Scale, back: Scale) -> None:
    ev, ab = MeanEvidence(0.01, 0.004, 12, "prompts", to, back), 0.01
    for better, far, side, beyond in (("lower", -50.0, 0, -math.inf), ("higher", 50.0, 1, math.inf)):
        interval = decide(ev, far, better, alpha_beyond=ab).interval
        assert interval is not None
        bound = interval[side]
        at = decide(ev, bound, better, alpha_beyond=ab)
        assert at.verdict == "UNDECIDED" and at.p_beyond is not None and at.p_beyond > ab
        assert at.p_beyond == pytest.approx(ab, rel=1e-9) and at.interval is not None and at.interval[side] == bound
        shown = decide(ev, math.nextafter(bound, beyond), better, alpha_beyond=ab)
        assert shown.verdict == "FAIL" and shown.p_beyond is not None and shown.p_beyond <= ab
        assert decide(ev, math.nextafter(bound, -beyond), better, alpha_beyond=ab).verdict == "UNDECIDED"


def test_binomial_boundaries() -> None:
    ev, ab = BinomialEvidence(3, 50, "probes"), 0.01
    upper, lower = clopper_pearson_upper(3, 50, 0.05), clopper_pearson_lower(3, 50, ab)
    assert decide(ev, upper, "lower").verdict == "PASS"
    assert decide(ev, math.nextafter(upper, 0.0), "lower").verdict == "UNDECIDED"
    assert decide(ev, lower, "lower", alpha_beyond=ab).verdict == "UNDECIDED"
    assert decide(ev, math.nextafter(lower, 0.0), "lower", alpha_beyond=ab).verdict == "FAIL"
    assert decide(ev, clopper_pearson_lower(3, 50, 0.05), "higher").verdict == "PASS"
    assert decide(ev, math.nextafter(clopper_pearson_upper(3, 50, ab), 1.0), "higher", 0.05, ab).verdict == "FAIL"
    assert decide(ev, clopper_pearson_upper(3, 50, ab), "higher", 0.05, ab).verdict == "UNDECIDED"


def test_binomial_duality_of_bounds_and_p_values() -> None:
    """upper_{1-alpha}(x) <= L iff P(X <= x | L) <= alpha, and lower_{1-alpha}(x) > L iff P(X >= x | L) < alpha;
    decide's verdicts and intervals follow them."""
    limits = [0.0] + [0.0061 + 0.025 * i for i in range(40)]  # off the closed forms' exact values (0.05, 0.95, ...)
    for n, alpha in itertools.product([1, 7, 29, 60], [0.01, 0.05, 0.2]):
        for x in range(n + 1):
            upper, lower = clopper_pearson_upper(x, n, alpha), clopper_pearson_lower(x, n, alpha)
            for limit in limits:
                assert (upper <= limit) == (binom_cdf(x, n, limit) <= alpha), (x, n, alpha, limit)
                assert (lower > limit) == (binom_sf(x, n, limit) < alpha), (x, n, alpha, limit)
    for x, limit in itertools.product(range(30), limits[::2]):
        d = decide(BinomialEvidence(x, 29, "probes"), limit, "lower", 0.05, 0.01)
        assert d.interval is not None and (d.verdict == "PASS") == (binom_cdf(x, 29, limit) <= 0.05)
        assert (d.verdict == "PASS") == (d.interval[1] <= limit) and (d.verdict == "FAIL") == (d.interval[0] > limit)
        assert (d.verdict == "FAIL") == (binom_sf(x, 29, limit) <= 0.01)


def test_exact_evidence() -> None:
    for better in ("lower", "higher"):
        d = decide(ExactEvidence(3.0), 3.0, better)
        assert d.verdict == "PASS" and d.interval == [3.0, 3.0] and (d.p_within, d.p_beyond) == (0.0, 1.0)
        assert d.method == "deterministic: no sampling error" and d.units is None and d.more_units is None
    failed = decide(ExactEvidence(3.5), 3.0, "lower")
    assert failed.verdict == "FAIL" and (failed.p_within, failed.p_beyond) == (1.0, 0.0)
    assert decide(ExactEvidence(2.5), 3.0, "higher").verdict == "FAIL"
    zero_se = decide(MeanEvidence(0.02, 0.0, 8, "prompts", _ppl, _log_ratio), _ppl(0.02), "lower")
    assert zero_se.verdict == "PASS" and zero_se.method.startswith("zero standard error")


def test_no_verdict_without_two_units_or_a_finite_estimate() -> None:
    few = decide(MeanEvidence(0.1, math.nan, 1, "prompts"), 1.0, "lower")
    assert few.verdict == "UNDECIDED" and few.interval is None and few.p_within is None and few.more_units is None
    assert "at least 2 units" in few.method
    for ev in (
        MeanEvidence(math.inf, 0.1, 10, "prompts"),
        MeanEvidence(0.1, math.nan, 10, "prompts"),
        ExactEvidence(math.nan),
    ):
        for better in ("lower", "higher"):
            d = decide(ev, 1.0, better)
            assert d.verdict == "UNDECIDED" and d.interval is None and "not finite" in d.method
    assert decide(BinomialEvidence(0, 0, "probes"), 0.1, "lower").interval is None


@pytest.mark.parametrize("level", [0.0, -0.1, 0.51, 1.0, math.nan])
def test_invalid_levels_are_refused(level: float) -> None:
    ev = MeanEvidence(0.5, 0.1, 10, "prompts")
    with pytest.raises(ValueError, match="alpha"):
        decide(ev, 1.0, "lower", alpha=level)
    with pytest.raises(ValueError, match="alpha_beyond"):
        decide(ev, 1.0, "lower", alpha_beyond=level)
    with pytest.raises(ValueError):
        decide(ev, 1.0, "smaller")


# -- 5. more_units ------------------------------------------------------------------------------------------------


def test_more_units_for_zero_events() -> None:
    d = decide(BinomialEvidence(0, 6, "probes"), 0.1, "lower")
    assert d.verdict == "UNDECIDED" and d.more_units == 23  # 29 - 6
    assert decide(BinomialEvidence(5, 50, "probes"), 0.1, "lower").more_units is None  # the rate is on the limit
    beyond = decide(BinomialEvidence(4, 20, "probes"), 0.1, "lower", alpha_beyond=0.01)
    assert beyond.verdict == "UNDECIDED" and beyond.more_units is not None
    n = 20 + beyond.more_units
    assert (
        clopper_pearson_lower(round(0.2 * n), n, 0.01) > 0.1 >= clopper_pearson_lower(round(0.2 * (n - 1)), n - 1, 0.01)
    )


@pytest.mark.parametrize(
    ("estimate", "better", "ab"), [(0.8, "lower", 0.05), (1.2, "lower", 0.05 / 3), (1.2, "higher", 0.05)]
)
def test_more_units_decide_the_mean_and_one_fewer_does_not(estimate: float, better: str, ab: float) -> None:
    n, se, limit = 20, 0.15, 1.0
    d = decide(MeanEvidence(estimate, se, n, "prompts"), limit, better, alpha_beyond=ab)
    assert d.verdict == "UNDECIDED" and d.more_units is not None and d.more_units > 0
    spread = se * math.sqrt(n)

    def at(units: int) -> str:
        return decide(
            MeanEvidence(estimate, spread / math.sqrt(units), units, "prompts"), limit, better, 0.05, ab
        ).verdict

    assert at(n + d.more_units) != "UNDECIDED" and at(n + d.more_units - 1) == "UNDECIDED"
    assert decide(MeanEvidence(limit, se, n, "prompts"), limit, better).more_units is None


# -- 6. the joint rule --------------------------------------------------------------------------------------------


def _closed_testing(p: list[float], alpha: float) -> list[bool]:
    """H_i is rejected iff every intersection hypothesis containing i is rejected by Bonferroni."""
    subsets = [s for r in range(1, len(p) + 1) for s in itertools.combinations(range(len(p)), r)]
    rejected = {s: min(p[i] for i in s) <= alpha / len(s) for s in subsets}
    return [all(rejected[s] for s in subsets if i in s) for i in range(len(p))]


def test_holm_is_closed_testing_with_bonferroni() -> None:
    rng = np.random.default_rng(8)
    for _ in range(500):
        m = int(rng.integers(1, 7))
        p = [float(v) for v in rng.uniform(0, 0.06, size=m)]
        for i in range(m):  # p-values exactly at a Holm threshold, and ties
            p[i] = 0.05 / int(rng.integers(1, m + 1)) if rng.uniform() < 0.3 else p[i]
        assert holm(p, 0.05) == _closed_testing(p, 0.05), p


def test_joint_error_rates_by_enumeration() -> None:
    """Three binomial gates, 12 trials each, limit 0.25 (lower is better), FAIL level family_alpha(0.05, 3)."""
    n, limit = 12, 0.25
    outcomes = [
        decide(BinomialEvidence(x, n, "probes"), limit, "lower", 0.05, family_alpha(0.05, 3)) for x in range(n + 1)
    ]
    at_limit, at_zero = stats.binom.pmf(np.arange(n + 1), n, limit), np.eye(n + 1)[0]
    false_fail = false_pass = 0.0
    for xs in itertools.product(range(n + 1), repeat=3):
        gates = [
            GateOutcome(f"g{i}", outcomes[x].verdict, outcomes[x].p_within, outcomes[x].p_beyond, False)
            for i, x in enumerate(xs)
        ]
        joint = joint_verdict(gates)
        assert (joint.verdict == "FAIL") == any(g.verdict == "FAIL" for g in gates)
        false_fail += (joint.verdict == "FAIL") * math.prod(at_limit[x] for x in xs)
        false_pass += (joint.verdict == "PASS") * at_limit[xs[0]] * at_zero[xs[1]] * at_zero[xs[2]]
    assert false_fail <= 0.05 and false_pass <= 0.05
    assert false_pass == pytest.approx(0.75**12)  # only 0 events of 12 passes at 0.25


def test_joint_small_cases() -> None:
    ok = GateOutcome("a kl", "PASS", 0.01, 0.99, False)
    memory = GateOutcome("a memory", "PASS", 0.0, 1.0, True)
    assert joint_verdict([ok, memory]).verdict == "PASS"
    over = GateOutcome("a memory", "FAIL", 1.0, 0.0, True)
    failed = joint_verdict([ok, over])
    assert failed.verdict == "FAIL" and failed.beyond == ["a memory"] and failed.statistical_gates == 1
    open_gate = GateOutcome("b ppl", "UNDECIDED", 0.2, 0.3, False)
    undecided = joint_verdict([ok, open_gate, memory])
    assert undecided.verdict == "UNDECIDED" and undecided.undecided == ["b ppl"] and undecided.gates == 3
    assert joint_verdict([ok, GateOutcome("c", "UNDECIDED", None, None, False)]).verdict == "UNDECIDED"
    # Holm adds gates beyond their limit after the first: 0.004 <= 0.05 / 3, then 0.02 <= 0.05 / 2.
    gates = [GateOutcome(n, "UNDECIDED", 0.5, p, False) for n, p in (("x", 0.004), ("y", 0.02), ("z", 0.6))]
    assert joint_verdict(gates).beyond == ["x", "y"] and joint_verdict(gates).undecided == ["z"]
    assert joint_verdict([]).verdict == "NONE"
    assert family_alpha(0.05, 0) == 0.05 and family_alpha(0.05, 4) == 0.0125
