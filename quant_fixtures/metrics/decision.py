"""Release-gate verdicts with known error rates (numpy and the standard library only: the GPU machines lack scipy).

*Within*: ``value <= limit`` where lower is better, ``>=`` where higher is. PASS: ``p_within <= alpha`` (one-sided test
of H0 "beyond"); FAIL: ``p_beyond <= alpha_beyond`` (H0 "within"; alpha / m for m gates, :func:`family_alpha`); else
UNDECIDED. The interval: PASS iff its 1 - alpha bound is within, FAIL iff its 1 - alpha_beyond bound is strictly beyond.
A p-value within 1e-9 (relative) of its level is a rounding tie: the bound decides, and the p-value is set to agree.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from statistics import NormalDist
from typing import TypeAlias

import numpy as np

ALPHA = 0.05
_NORMAL = NormalDist()
_TINY = 1e-300
Fn = Callable[[float], float]
Scale = Fn | None
Num = float | None
Data = Sequence[float] | np.ndarray
Who = tuple[int | None, str | None, str]  # units, unit, method
Side = tuple[float, bool, float, float]  # limit, lower is better, alpha, alpha_beyond
Evidence: TypeAlias = "MeanEvidence | BinomialEvidence | ExactEvidence"


def regularized_incomplete_beta(x: float, a: float, b: float, y: float | None = None) -> float:
    """I_x(a, b) = int_0^x t^(a-1) (1-t)^(b-1) dt / B(a, b) (``y``: 1 - x where known more exactly). Above x =
    (a+1)/(a+b+2): 1 - I_y(b, a); below: x^a y^b / (a B(a, b) (1 + d_1 / (1 + d_2 / (1 + ...)))) by modified Lentz,
    d_2m = m(b-m)x / ((a+2m-1)(a+2m)), d_2m+1 = -(a+m)(a+b+m)x / ((a+2m)(a+2m+1)), B(a, b) from math.lgamma."""
    y = 1.0 - x if y is None else y
    if not (a > 0 and b > 0 and 0.0 <= x <= 1.0):
        raise ValueError(f"incomplete beta needs a > 0, b > 0 and 0 <= x <= 1, got x={x}, a={a}, b={b}")
    if x == 0.0 or y == 0.0 or x > (a + 1.0) / (a + b + 2.0):
        return float(y == 0.0) if x == 0.0 or y == 0.0 else 1.0 - regularized_incomplete_beta(y, b, a, x)
    c, d, h, log_front = 1.0, 0.0, 1.0, math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b)
    for j in range(1, 400_000):
        m = j // 2
        coef = (m * (b - m) if j % 2 == 0 else -(a + m) * (a + b + m)) * x / ((a + j - 1) * (a + j))
        d, c = 1.0 + coef * d, 1.0 + coef / c
        d, c = 1.0 / (d if abs(d) > _TINY else _TINY), (c if abs(c) > _TINY else _TINY)
        h *= d * c
        if j % 2 and abs(d * c - 1.0) <= 1e-16:
            return math.exp(a * math.log(x) + b * math.log(y) + log_front) / (a * h)
    raise ArithmeticError(f"incomplete beta: no convergence for x={x}, a={a}, b={b}")


def t_cdf(t: float, df: float) -> float:
    """P(T <= t), Student's t with real ``df > 0`` (``inf``: the normal). With x = df / (df + t^2):
    P(T <= -|t|) = I_x(df/2, 1/2) / 2 and P(|T| < |t|) = I_{1-x}(1/2, df/2)."""
    if not df > 0:
        raise ValueError(f"df must be > 0, got {df}")
    if math.isnan(t) or math.isinf(df) or math.isinf(t):
        return math.nan if math.isnan(t) else _NORMAL.cdf(t) if math.isinf(df) else float(t > 0)
    u = t * t / df if abs(t) <= math.sqrt(df) else df / t / t  # x and 1 - x without cancellation or overflow
    x, y = (1.0 / (1.0 + u), u / (1.0 + u)) if abs(t) <= math.sqrt(df) else (u / (1.0 + u), 1.0 / (1.0 + u))
    tail_or_centre = regularized_incomplete_beta(*((x, df / 2, 0.5, y) if t < 0 else (y, 0.5, df / 2, x)))
    return 0.5 * tail_or_centre if t < 0 else 0.5 + 0.5 * tail_or_centre


def _solve(g: Fn, dg: Fn, target: float, lo: float, hi: float, x: float) -> float:
    """The root of monotone g > 0 at ``target`` in (lo, hi): Newton steps on log g from x, bisection off the bracket."""
    rising = g(hi) > g(lo)
    for _ in range(500):
        v, d = g(x), dg(x)
        lo, hi = (x, hi) if (v < target) == rising else (lo, x)
        new = x + (math.log(target) - math.log(v)) * v / d if v > 0 and d != 0 else math.nan
        if not lo < new < hi:
            new = math.sqrt(lo * hi) if lo > 0 and hi > 4 * lo else 0.5 * (lo + hi)
        if abs(new - x) <= 1e-13 * abs(x) or hi - lo <= 1e-15 * hi:
            return new
        x = new
    return x


@lru_cache(maxsize=4096)
def t_ppf(q: float, df: float) -> float:
    """The t with ``t_cdf(t, df) = q``, q in (0, 1): P(T <= -t) = min(q, 1 - q) solved for t > 0 in a doubling bracket;
    for df >= 1e4 the Cornish-Fisher t = z + g1/df + ... + g4/df^4 (Abramowitz & Stegun 26.7.5), exact there."""
    if not (0.0 < q < 1.0 and df > 0):
        raise ValueError(f"t_ppf needs 0 < q < 1 and df > 0, got q={q}, df={df}")
    p = min(q, 1.0 - q)  # 1 - q is exact for q >= 1/2
    if math.isinf(df) or p == 0.5:
        return _NORMAL.inv_cdf(q) if p != 0.5 else 0.0
    s, lo, hi = (z := -_NORMAL.inv_cdf(p)) ** 2, 0.0, max(1.0, 2 * z)
    g = ((s + 1) / 4, ((5 * s + 16) * s + 3) / 96, (((3 * s + 19) * s + 17) * s - 15) / 384)
    g4 = ((((79 * s + 776) * s + 1482) * s - 1920) * s - 945) / 92160
    t = z * (1 + g[0] / df + g[1] / df**2 + g[2] / df**3 + g4 / df**4)
    while df < 1e4 and t_cdf(-hi, df) > p:
        lo, hi = hi, 2 * hi
    if df < 1e4:
        log_c = math.lgamma((df + 1) / 2) - math.lgamma(df / 2) - 0.5 * math.log(df * math.pi)
        dg = lambda v: -math.exp(log_c - (df + 1) / 2 * math.log1p(v * v / df))  # noqa: E731
        t = _solve(lambda v: t_cdf(-v, df), dg, p, lo, hi, min(max(t, lo + (hi - lo) / 64), hi - (hi - lo) / 64))
    return -t if q < 0.5 else t


def binom_cdf(k: int, n: int, p: float) -> float:
    """P(X <= k) for X ~ Binomial(n, p): I_{1-p}(n - k, k + 1); 0 for k < 0, 1 for k >= n."""
    if n < 0 or not 0.0 <= p <= 1.0:
        raise ValueError(f"binomial needs n >= 0 and 0 <= p <= 1, got n={n}, p={p}")
    if k < 0 or k >= n or p in (0.0, 1.0):
        return float(k >= 0 and (k >= n or p == 0.0))
    return regularized_incomplete_beta(1.0 - p, n - k, k + 1, p)


def binom_sf(k: int, n: int, p: float) -> float:
    """P(X >= k) for X ~ Binomial(n, p): I_p(k, n - k + 1) = 1 - binom_cdf(k - 1, n, p)."""
    if k <= 0 or k > n or p in (0.0, 1.0):
        return 1.0 - binom_cdf(k - 1, n, p)
    return regularized_incomplete_beta(p, k, n - k + 1)


def clopper_pearson_lower(x: int, n: int, alpha: float) -> float:
    """One-sided 1 - alpha lower bound of a rate: the p with P(X >= x | n, p) = alpha (the Beta(x, n - x + 1) quantile
    alpha), solved with d/dp P(X >= x) = the Beta(x, n - x + 1) density; 0 for x = 0, alpha^(1/n) for x = n."""
    if not (0 <= x <= n and n > 0 and 0.0 < alpha < 1.0):
        raise ValueError(f"Clopper-Pearson needs 0 <= x <= n, n > 0 and 0 < alpha < 1, got {x}, {n}, {alpha}")
    if x in (0, n):
        return 0.0 if x == 0 else math.exp(math.log(alpha) / n)
    log_b = math.lgamma(x) + math.lgamma(n - x + 1) - math.lgamma(n + 1)
    pdf = lambda p: math.exp((x - 1) * math.log(p) + (n - x) * math.log1p(-p) - log_b)  # noqa: E731
    return _solve(lambda p: binom_sf(x, n, p), pdf, alpha, 0.0, 1.0, x / n)


def clopper_pearson_upper(x: int, n: int, alpha: float) -> float:
    """One-sided 1 - alpha upper bound: the p with P(X <= x | n, p) = alpha, 1 - the n - x failures' lower bound."""
    if x == 0 and n > 0 and 0.0 < alpha < 1.0:
        return -math.expm1(math.log(alpha) / n)
    return 1.0 - clopper_pearson_lower(n - x, n, alpha)


@dataclass(frozen=True)
class MeanEvidence:
    """``estimate`` with standard error ``se`` over ``units`` units (t, df units - 1) on an analysis scale; increasing
    ``to_value`` maps it to the reported one, ``from_value`` back (delta-PPL %: 100 expm1(r), log1p(v / 100))."""

    estimate: float
    se: float
    units: int
    unit: str
    to_value: Scale = None
    from_value: Scale = None
    tokens_per_unit: float | None = None

    def __post_init__(self) -> None:
        if (self.to_value is None) != (self.from_value is None) or self.se < 0 or self.units < 0:
            raise ValueError("MeanEvidence needs to_value and from_value both or neither, se >= 0 and units >= 0")


def ratio_evidence(
    sums: Data, counts: Data, unit: str, to_value: Scale = None, from_value: Scale = None, tokens_per_unit: Num = None
) -> MeanEvidence:
    """R = sum(sums) / sum(counts) over B units (count 0: dropped), cluster standard error SE = sqrt(B / (B - 1) *
    sum_b (w_b (m_b - R))^2), w_b = counts_b / N, m_b = sums_b / counts_b (std(m_b, ddof=1) / sqrt(B) for equal
    counts; nan for B = 1). ValueError, naming the argument, on non-finite values, negative counts, unequal lengths."""
    s, c = np.asarray(sums, dtype=np.float64).reshape(-1), np.asarray(counts, dtype=np.float64).reshape(-1)
    if s.size != c.size:
        raise ValueError(f"sums has {s.size} units but counts has {c.size}")
    for name, ok in (("sums", np.all(np.isfinite(s))), ("counts", np.all(np.isfinite(c) & (c >= 0)) and c.any())):
        if not ok:
            raise ValueError(f"{name} must be finite" + (", non-negative and not all 0" if name == "counts" else ""))
    s, c = s[c > 0], c[c > 0]
    b, ratio = s.size, float(s.sum() / c.sum())
    se = math.sqrt(b / (b - 1) * float(np.sum(((s - ratio * c) / c.sum()) ** 2))) if b > 1 else math.nan
    return MeanEvidence(ratio, se, b, unit, to_value, from_value, tokens_per_unit)


def mean_evidence(
    values: Data, unit: str, to_value: Scale = None, from_value: Scale = None, tokens_per_unit: Num = None
) -> MeanEvidence:
    """The mean of per-unit ``values``, SE = std(values, ddof=1) / sqrt(n): :func:`ratio_evidence` with counts 1."""
    if not np.all(np.isfinite(v := np.asarray(values, dtype=np.float64))):
        raise ValueError("values must be finite")
    return ratio_evidence(v, np.ones(v.size), unit, to_value, from_value, tokens_per_unit)


@dataclass(frozen=True)
class BinomialEvidence:
    """``events`` out of ``trials`` (a rate such as a flip rate): exact binomial bounds and p-values."""

    events: int
    trials: int
    unit: str


@dataclass(frozen=True)
class ExactEvidence:
    """A deterministic number (a memory footprint): no sampling error."""

    value: float


@dataclass(frozen=True)
class Decision:
    """A gate's verdict: ``p_within`` tests H0 "beyond", ``p_beyond`` H0 "within"; ``more_units``: :func:`decide`."""

    verdict: str
    value: float | None
    interval: list[float] | None
    p_within: float | None
    p_beyond: float | None
    units: int | None
    unit: str | None
    more_units: int | None
    method: str


def _apply(f: Scale, v: float) -> float:
    try:  # f is increasing: an overflow is +-inf
        return v if f is None else f(v)
    except OverflowError:
        return math.copysign(math.inf, v)


def _search(n: int, decides: Callable[[int], bool], cap: int) -> int | None:
    """n' - n for an n' in (n, cap] with ``decides(n')`` and not n' - 1 (exponential search, bisection), or None."""
    lo, hi, step = n, n, 1
    while hi < cap and not decides(hi := min(n + step, cap)):
        lo, step = hi, 2 * step
    if hi <= n or not decides(hi):
        return None
    while hi - lo > 1:
        lo, hi = (lo, (lo + hi) // 2) if decides((lo + hi) // 2) else ((lo + hi) // 2, hi)
    return hi - n


def _more(n: int, d: float, spread: float, q: Callable[[float, int], float], side: Side) -> int | None:
    """Units to add at ``d`` inside the limit (< 0: beyond): n' with q(1 - alpha, n') spread / sqrt(n') <= d (< -d)."""
    margin = lambda m: q(1 - side[2 + (d < 0)], m) * spread / math.sqrt(m)  # noqa: E731
    return _search(n, lambda m: margin(m) <= d if d > 0 else margin(m) < -d, 10**9) if d and spread > 0 else None


def _finish(parts: tuple[float, ...], side: Side, tie: bool, who: Who, more: Callable[[], int | None]) -> Decision:
    """The verdict of (value, passing bound, failing bound, p_within, p_beyond): ties settled, bounds made to agree."""
    (value, *bounds), ps, (limit, lower, *levels) = parts[:3], list(parts[3:]), side
    decided, out = [False, False], math.nextafter(limit, math.inf if lower else -math.inf)
    for i in (0, 1):  # 0: the passing bound must be within; 1: the failing bound strictly beyond
        by_bound = (bounds[i] <= limit if lower else bounds[i] >= limit) == (i == 0)
        decided[i] = ps[i] <= levels[i]
        if tie and decided[i] != by_bound and abs(ps[i] - levels[i]) <= 1e-9 * levels[i]:
            decided[i], ps[i] = by_bound, levels[i] if by_bound else math.nextafter(levels[i], 1.0)
        bounds[i] = bounds[i] if decided[i] == by_bound else limit if decided[i] == (i == 0) else out
    verdict = "FAIL" if decided[1] else "PASS" if decided[0] else "UNDECIDED"
    more_units = more() if verdict == "UNDECIDED" else None
    return Decision(verdict, value, bounds[:: -1 if lower else 1], ps[0], ps[1], who[0], who[1], more_units, who[2])


def _exact(value: float, side: Side, who: Who) -> Decision:
    if not math.isfinite(value):
        return Decision("UNDECIDED", value, None, None, None, who[0], who[1], None, "not finite: no verdict")
    p = 0.0 if (value <= side[0] if side[1] else value >= side[0]) else 1.0
    return _finish((value, value, value, p, 1.0 - p), (*side[:2], 0.5, 0.5), False, who, lambda: None)


def decide(
    evidence: Evidence, limit: float, better: str, alpha: float = ALPHA, alpha_beyond: float = ALPHA
) -> Decision:
    """PASS, FAIL or UNDECIDED (module docstring); for ``better="lower"``, mirrored for "higher"; non-finite: UNDECIDED.
    Mean: l = from_value(limit), T = (estimate - l) / se, p_within = F_t(T; df), p_beyond = F_t(-T; df), bounds
    to_value(estimate -+ t_{1-a}(df) se); se = 0: exact; under 2 units: none. Binomial: p_within = P(X <= x | limit),
    p_beyond = P(X >= x | limit), Clopper-Pearson bounds. ``more_units`` (UNDECIDED): fewest units to add that
    decide at the estimate and per-unit spread measured (t; exact binomial)."""
    for name, level in (("alpha", alpha), ("alpha_beyond", alpha_beyond)):
        if not 0.0 < level <= 0.5:
            raise ValueError(f"{name} must lie in (0, 0.5], got {level}")
    if better not in ("lower", "higher") or not math.isfinite(limit):
        raise ValueError(f"better must be 'lower' or 'higher' and the limit finite, got {better!r}, {limit}")
    lower = better == "lower"
    sign, side, pct = (1.0 if lower else -1.0), (limit, lower, alpha, alpha_beyond), (1 - alpha, 1 - alpha_beyond)
    sides = f"one-sided {100 * pct[0]:.4g} % bound on the passing side, {100 * pct[1]:.4g} % on the failing side"
    if isinstance(evidence, ExactEvidence):
        return _exact(evidence.value, side, (None, None, "deterministic: no sampling error"))
    if isinstance(evidence, BinomialEvidence):
        x, n, unit = evidence.events, evidence.trials, evidence.unit
        if not (0.0 <= limit <= 1.0 and 0 <= x <= n):
            raise ValueError(f"need a rate limit in [0, 1] and 0 <= events <= trials, got {limit}, {x} of {n}")
        if n == 0:
            return Decision("UNDECIDED", None, None, None, None, 0, unit, None, f"no {unit}: no verdict")
        below = x / n < limit  # the rate's side: the matching tail decides at the matching level (FAIL: strictly)
        level, tail = (alpha if below == lower else alpha_beyond), binom_cdf if below else binom_sf
        decides = lambda m: (p := tail(round(x * m / n), m, limit)) < level or (below == lower and p == level)  # noqa: E731
        cp = (clopper_pearson_upper, clopper_pearson_lower)[:: 1 if lower else -1]
        ps = (binom_cdf(x, n, limit), binom_sf(x, n, limit))[:: 1 if lower else -1]
        who: Who = (n, unit, f"exact binomial (Clopper-Pearson) bounds and p-values over {n} {unit}: {sides}")
        more = lambda: None if x / n == limit else _search(n, decides, 10**7)  # noqa: E731
        return _finish((x / n, cp[0](x, n, alpha), cp[1](x, n, alpha_beyond), *ps), side, True, who, more)
    est, se, units, unit, to = evidence.estimate, evidence.se, evidence.units, evidence.unit, evidence.to_value
    if units < 2 or not (math.isfinite(est) and math.isfinite(se)):
        why = f"at least 2 units are needed, got {units}" if units < 2 and math.isfinite(est) else "not finite"
        return Decision("UNDECIDED", _apply(to, est), None, None, None, units, unit, None, f"{why}: no verdict")
    if se == 0:
        return _exact(_apply(to, est), side, (units, unit, f"zero standard error over {units} {unit}: exact"))
    lim = _apply(evidence.from_value, limit)
    df, stat = units - 1, sign * (est - lim) / se
    bounds = [_apply(to, est + s * t_ppf(1 - a, df) * se) for s, a in ((sign, alpha), (-sign, alpha_beyond))]
    who = (units, unit, f"Student's t over {units} {unit} (df {df}): {sides}")
    more = lambda: _more(units, sign * (lim - est), se * math.sqrt(units), lambda p, m: t_ppf(p, m - 1), side)  # noqa: E731
    return _finish((_apply(to, est), *bounds, t_cdf(stat, df), t_cdf(-stat, df)), side, True, who, more)


@dataclass(frozen=True)
class GateOutcome:
    """What the joint rule needs of one gate (``exact``: deterministic, no sampling error)."""

    name: str
    verdict: str
    p_within: float | None
    p_beyond: float | None
    exact: bool


@dataclass(frozen=True)
class JointVerdict:
    """The release verdict (PASS, FAIL, UNDECIDED; NONE without gates), the gates shown beyond and undecided."""

    verdict: str
    alpha: float
    gates: int
    statistical_gates: int
    beyond: list[str]
    undecided: list[str]
    method: str


def family_alpha(alpha: float, statistical_gates: int) -> float:
    """alpha / max(1, m): the per-gate FAIL level (Bonferroni) over a family of m statistical gates."""
    return alpha / max(1, statistical_gates)


def holm(p_values: Sequence[float], alpha: float) -> list[bool]:
    """Holm's step-down (family-wise error <= alpha): H_(j) rejected iff p_(i) <= alpha / (m - i + 1) for all i <= j."""
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must lie in (0, 1), got {alpha}")
    m = len(p_values)
    order = sorted(range(m), key=lambda i: math.inf if math.isnan(p_values[i]) else p_values[i])
    steps = next((r for r, i in enumerate(order) if not p_values[i] <= alpha / (m - r)), m)  # until the first failure
    return [i in order[:steps] for i in range(m)]


def joint_verdict(outcomes: Sequence[GateOutcome], alpha: float = ALPHA) -> JointVerdict:
    """FAIL iff a deterministic gate is beyond or Holm at family-wise ``alpha`` rejects a statistical gate's "within"
    (p_beyond None: never); else PASS iff there are gates, all with p_within <= alpha (intersection-union test: false
    PASS at most alpha, no correction); else UNDECIDED. Holm's first step is Bonferroni: the joint FAIL is "some
    p_beyond <= alpha / m", as per-gate verdicts with alpha_beyond = family_alpha(alpha, m); Holm adds further gates."""
    if not 0.0 < alpha <= 0.5:
        raise ValueError(f"alpha must lie in (0, 0.5], got {alpha}")
    stat = [i for i, o in enumerate(outcomes) if not o.exact]
    rejected = holm([math.inf if (p := outcomes[i].p_beyond) is None else p for i in stat], alpha)
    shown = {i for i, r in zip(stat, rejected) if r}
    beyond = [o.name for i, o in enumerate(outcomes) if i in shown or (o.exact and o.verdict == "FAIL")]
    undecided = [o.name for i, o in enumerate(outcomes) if o.verdict == "UNDECIDED" and i not in shown]
    within = all(o.verdict == "PASS" if o.exact else o.p_within is not None and o.p_within <= alpha for o in outcomes)
    verdict = "NONE" if not outcomes else "FAIL" if beyond else "PASS" if within else "UNDECIDED"
    method = f"FAIL: a deterministic gate beyond, or Holm's step-down over {len(stat)} statistical gates at {alpha:g}"
    return JointVerdict(verdict, alpha, len(outcomes), len(stat), beyond, undecided, f"{method}; PASS: all within")
