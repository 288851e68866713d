"""Harm by context position: hand-computed buckets, block CIs and growth, and the vectorized
summary against a plain-Python transcription of the definitions on random stretches."""

import math
import random
from collections.abc import Mapping
from typing import cast

import numpy as np
import pytest

from quant_fixtures.metrics import blocks as blocks_module
from quant_fixtures.metrics import position_buckets as pb


def stretches_of(lengths: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """context_tokens and stretch arrays for stretches of these token counts (L - 1 positions each)."""
    context = [c for length in lengths for c in range(1, length)]
    stretch = [s for s, length in enumerate(lengths) for _ in range(1, length)]
    return np.array(context), np.array(stretch)


# --- hand-computed case -------------------------------------------------------------------------
# One stretch of 6 tokens: contexts 1..5; edges (0, 3, 8) clipped at 5 -> buckets [0, 3) and [3, 6).
HAND_CONTEXT = np.array([1, 2, 3, 4, 5])
HAND_STRETCH = np.zeros(5, dtype=int)
HAND_LOGP = np.array([-1.0, -3.0, -1.0, -2.0, -3.0])
HAND_LOGQ = np.array([-2.0, -4.0, -1.0, -2.0, -3.3])
HAND_KL = np.array([0.1, 0.3, 0.2, 0.4, 0.6])
HAND_SAME = np.array([True, False, True, True, False])


def test_hand_case_two_buckets() -> None:
    buckets = pb.clip_edges((0, 3, 8), 5)
    assert buckets == [(0, 3), (3, 6)]
    first, second = pb.variant_buckets(HAND_CONTEXT, HAND_STRETCH, HAND_LOGP, HAND_LOGQ, HAND_KL, HAND_SAME, buckets)
    # Bucket [0, 3): contexts 1, 2. mean logp = (-1 - 3) / 2 = -2 -> fp16_ppl = e^2 = 7.389;
    # mean logq = (-2 - 4) / 2 = -3 -> ppl = e^3 = 20.086; ΔPPL = 100 (e^3 / e^2 - 1) = 100 (e - 1) = 171.83 %.
    # KL mean (0.1 + 0.3) / 2 = 0.2; same top-1 1 of 2 = 0.5; mean context 1.5.
    assert (first["lo"], first["hi"], first["positions"], first["stretches"]) == (0, 3, 2, 1)
    assert first["mean_context"] == pytest.approx(1.5)
    assert first["fp16_ppl"] == pytest.approx(math.exp(2))
    assert first["ppl"] == pytest.approx(math.exp(3))
    assert first["delta_ppl_pct"] == pytest.approx(171.8281828)
    assert first["kl_mean"] == pytest.approx(0.2)
    assert first["same_top1_rate"] == 0.5
    # Bucket [3, 6): contexts 3, 4, 5. mean logp = -6 / 3 = -2 -> e^2; mean logq = -6.3 / 3 = -2.1 ->
    # e^2.1 = 8.166; ΔPPL = 100 (e^0.1 - 1) = 10.517 %. KL mean 1.2 / 3 = 0.4; p99 of (0.2, 0.4, 0.6):
    # rank 0.99 * 2 = 1.98 -> 0.4 + 0.98 * 0.2 = 0.596. same top-1 2 of 3.
    assert second["positions"] == 3 and second["mean_context"] == pytest.approx(4.0)
    assert second["fp16_ppl"] == pytest.approx(math.exp(2))
    assert second["ppl"] == pytest.approx(8.16616991)
    assert second["delta_ppl_pct"] == pytest.approx(10.51709181)
    assert second["kl_mean"] == pytest.approx(0.4)
    assert second["kl_p99"] == pytest.approx(0.596)
    assert second["same_top1_rate"] == pytest.approx(2 / 3)
    # One block per bucket: no CI.
    for bucket in (first, second):
        assert bucket["blocks"] == 1
        assert bucket["delta_ppl_pct_ci95"] is None and bucket["kl_mean_ci95"] is None
        assert bucket["non_finite_kl"] == 0


def test_hand_case_fp16_summary_and_entry_points() -> None:
    fp16 = pb.long_context_fp16(HAND_CONTEXT, HAND_STRETCH, HAND_LOGP, (0, 3, 8))
    assert [(b["lo"], b["hi"], b["positions"]) for b in fp16["buckets"]] == [(0, 3, 2), (3, 6, 3)]
    assert [b["fp16_ppl"] for b in fp16["buckets"]] == pytest.approx([math.exp(2), math.exp(2)])
    assert (fp16["positions"], fp16["stretches"], fp16["unbucketed_positions"]) == (5, 1, 0)
    full = pb.long_context_comparison(HAND_CONTEXT, HAND_STRETCH, HAND_LOGP, HAND_LOGQ, HAND_KL, HAND_SAME, (0, 3, 8))
    assert full["position_unit"] == "tokens of context before the predicted token"
    # Growth: KL 0.4 / 0.2 = 2; ΔPPL 10.517 - 171.828 = -161.311 points;
    # slope (0.4 - 0.2) / (log2 4 - log2 1.5) = 0.2 / 1.41504 = 0.141339 nats per doubling.
    assert full["growth"]["kl_ratio_last_first"] == pytest.approx(2.0)
    assert full["growth"]["delta_ppl_pct_change"] == pytest.approx(-161.3110910)
    assert full["growth"]["kl_slope_per_doubling"] == pytest.approx(0.2 / (2 - math.log2(1.5)))


# --- block CIs by hand ----------------------------------------------------------------------------


def test_block_ci_two_blocks_per_bucket() -> None:
    # One stretch of 513 tokens: contexts 1..512; buckets [1, 257) and [257, 513), 256 positions each,
    # i.e. two blocks of 128 per bucket. Per bucket, block 1 has KL 1 and d = logp - logq = 0.1,
    # block 2 KL 3 and d = 0.3 (second bucket: KL and d doubled).
    context, stretch = stretches_of([513])
    per_bucket = np.repeat([1.0, 3.0], 128)
    kl = np.concatenate([per_bucket, 2 * per_bucket])
    d = np.concatenate([0.1 * per_bucket, 0.2 * per_bucket])
    logp = np.full(512, -2.0)
    logq = logp - d
    same = np.ones(512, dtype=bool)
    first, second = pb.variant_buckets(context, stretch, logp, logq, kl, same, pb.clip_edges((1, 257, 600), 512))
    assert (first["lo"], first["hi"], second["lo"], second["hi"]) == (1, 257, 257, 513)
    assert first["blocks"] == second["blocks"] == 2
    # Bucket 1 KL: block means 1, 3 -> mean 2, SE = std(ddof=1) / sqrt(2) = sqrt(2) / sqrt(2) = 1;
    # two blocks: Student's t with 1 degree of freedom, 12.7062 -> [2 - 12.7062, 2 + 12.7062].
    assert first["kl_mean"] == pytest.approx(2.0)
    assert first["kl_mean_ci95"] == pytest.approx([-10.7062047, 14.7062047])
    # Bucket 1 ΔPPL: mean d 0.2, SE 0.1 -> 100 (e^0.2 - 1) = 22.140 %, CI 100 (e^(0.2 -+ 1.2706) - 1).
    assert first["delta_ppl_pct"] == pytest.approx(22.14027582)
    assert first["delta_ppl_pct_ci95"] == pytest.approx([100 * math.expm1(-1.07062047), 100 * math.expm1(1.47062047)])
    # Bucket 2: KL block means 2, 6 -> mean 4, SE 2 -> 4 -+ 25.412; d block means 0.2, 0.6 -> 0.4 -+ 2.5412.
    assert second["kl_mean_ci95"] == pytest.approx([-21.41241, 29.41241])
    assert second["delta_ppl_pct_ci95"] == pytest.approx([100 * math.expm1(-2.141241), 100 * math.expm1(2.941241)])


def test_short_last_block_weighs_by_size() -> None:
    # Blocks of 128, 128 and 4 positions with means 0, 1, 10: plain mean (128 + 40) / 260 = 0.646154.
    # Weights 128/260, 128/260, 4/260; SE^2 = 3/2 * sum w^2 (m_b - m)^2.
    values = np.concatenate([np.zeros(128), np.ones(128), np.full(4, 10.0)])
    blocks = blocks_module.block_ids(np.zeros(260, dtype=int))
    assert list(np.bincount(blocks)) == [128, 128, 4]
    mean, ci = blocks_module.block_mean_ci(values, blocks)
    m = 168 / 260
    w = np.array([128, 128, 4]) / 260
    se = math.sqrt(1.5 * float((w**2 * (np.array([0.0, 1.0, 10.0]) - m) ** 2).sum()))
    assert mean == pytest.approx(values.mean()) and mean == pytest.approx(m)
    assert ci == pytest.approx((m - 4.30265 * se, m + 4.30265 * se))  # three blocks: t with 2 degrees of freedom


def test_blocks_stop_at_stretch_boundaries() -> None:
    # Two stretches of 100 positions in one bucket: two blocks of 100, not 128 + 72.
    blocks = blocks_module.block_ids(np.repeat([4, 9], 100))
    assert list(np.bincount(blocks)) == [100, 100]
    # 300 positions of one stretch: 128, 128, 44.
    assert list(np.bincount(blocks_module.block_ids(np.zeros(300, dtype=int)))) == [128, 128, 44]


def test_one_block_has_no_ci() -> None:
    mean, ci = blocks_module.block_mean_ci(np.array([1.0, 2.0, 6.0]), np.zeros(3, dtype=int))
    assert mean == pytest.approx(3.0) and ci is None


# --- against a plain-Python transcription -----------------------------------------------------------


STUDENT_T975 = {1: 12.7062, 2: 4.3027, 3: 3.1824, 4: 2.7764, 5: 2.5706, 6: 2.4469, 7: 2.3646, 8: 2.3060, 9: 2.2622}
STUDENT_T975 |= {10: 2.2281, 20: 2.0860, 30: 2.0423, 60: 2.0003, 120: 1.9799}


def reference_buckets(
    context: list[int],
    stretch: list[int],
    logp: list[float],
    logq: list[float],
    kl: list[float],
    same: list[bool],
    buckets: list[tuple[int, int]],
) -> list[pb.VariantBucket]:
    """The definitions, position by position in Python floats: blocks are runs of up to 128 positions
    of one stretch inside one bucket; CI = mean ± t(B - 1) sqrt(B / (B - 1) sum (n_b / N)^2 (m_b - m)^2)
    with t the Student's t 0.975 quantile (checked on its own against a table written out here)."""

    def ci(pairs: list[tuple[int, float]]) -> tuple[float, tuple[float, float] | None]:  # pairs: [(block, value)]
        groups: dict[int, list[float]] = {}
        for block, value in pairs:
            groups.setdefault(block, []).append(value)
        n = sum(len(g) for g in groups.values())
        m = sum(sum(g) for g in groups.values()) / n
        if len(groups) < 2:
            return m, None
        var = sum((len(g) / n) ** 2 * (sum(g) / len(g) - m) ** 2 for g in groups.values())
        se = math.sqrt(len(groups) / (len(groups) - 1) * var)
        t = blocks_module.t975(len(groups) - 1)  # the quantile itself is checked against a table below
        return m, (m - t * se, m + t * se)

    out: list[pb.VariantBucket] = []
    for lo, hi in buckets:
        rows: list[tuple[int, int]] = []  # (block, position)
        seen: set[int] = set()
        block, rank = -1, 0
        previous: int | None = None
        for i in range(len(context)):
            if lo <= context[i] < hi:
                rank = rank + 1 if stretch[i] == previous else 0
                if rank % 128 == 0:
                    block += 1
                previous = stretch[i]
                seen.add(stretch[i])
                rows.append((block, i))
        n = len(rows)
        fp16_ppl = math.exp(-sum(logp[i] for _, i in rows) / n)
        ppl = math.exp(-sum(logq[i] for _, i in rows) / n)
        _, d_ci = ci([(b, logp[i] - logq[i]) for b, i in rows])
        finite = [(b, kl[i]) for b, i in rows if math.isfinite(kl[i])]
        kl_mean, kl_ci = ci(finite) if finite else (None, None)
        blocks = range(block + 1)
        out.append(
            {
                "lo": lo,
                "hi": hi,
                "positions": n,
                "stretches": len(seen),
                "mean_context": sum(context[i] for _, i in rows) / n,
                "fp16_ppl": fp16_ppl,
                "blocks": block + 1,
                "ppl": ppl,
                "delta_ppl_pct": 100 * (ppl / fp16_ppl - 1),
                "delta_ppl_pct_ci95": None if d_ci is None else [100 * (math.exp(b) - 1) for b in d_ci],
                "kl_mean": kl_mean,
                "kl_mean_ci95": None if kl_ci is None else list(kl_ci),
                "kl_p99": None if not finite else float(np.percentile([v for _, v in finite], 99)),
                "non_finite_kl": n - len(finite),
                "same_top1_rate": sum(bool(same[i]) for _, i in rows) / n,
                "block_sums": {
                    "positions": [sum(1 for b, _ in rows if b == k) for k in blocks],
                    "log_ratio": [sum(logp[i] - logq[i] for b, i in rows if b == k) for k in blocks],
                    "kl_positions": [sum(1 for b, v in finite if b == k) for k in blocks],
                    "kl": [sum(v for b, v in finite if b == k) for k in blocks],
                },
            }
        )
    return out


def _known(value: float | None) -> float:
    assert value is not None
    return value


def test_matches_plain_python_on_random_stretches() -> None:
    rng = random.Random(7)
    lengths = [300, 1000, 50, 700, 129]
    context, stretch = stretches_of(lengths)
    n = context.size
    logp = [-rng.expovariate(0.4) for _ in range(n)]
    logq = [p - rng.gauss(0.02, 0.1) for p in logp]
    kl = [rng.expovariate(20.0) for _ in range(n)]
    for i in rng.sample(range(n), 9):
        kl[i] = rng.choice([math.nan, math.inf])
    same = [rng.random() < 0.9 for _ in range(n)]
    buckets = pb.clip_edges((0, 64, 256, 1024, 4096), int(context.max()))
    assert buckets == [(0, 64), (64, 256), (256, 1000)]  # longest context 999
    # Positions per bucket from contexts 1..299, 1..999, 1..49, 1..699, 1..128.
    got = pb.variant_buckets(context, stretch, np.array(logp), np.array(logq), np.array(kl), np.array(same), buckets)
    want = reference_buckets(list(context), list(stretch), logp, logq, kl, same, buckets)
    assert sum(b["non_finite_kl"] for b in got) == 9
    assert [b["positions"] for b in got] == [63 * 4 + 49, 192 * 3 + 65, 44 + 744 + 444]
    for g, w in zip(got, want):
        assert set(g) == set(w)
        got_row: Mapping[str, object] = g
        for key, value in w.items():
            if key != "block_sums":
                assert got_row[key] == pytest.approx(value, rel=1e-9, abs=1e-12), key
        got_sums: Mapping[str, object] = g["block_sums"]
        for part, sums in w["block_sums"].items():
            assert got_sums[part] == pytest.approx(sums, rel=1e-9, abs=1e-12), part
    ref_kl = [_known(b["kl_mean"]) for b in want]
    ref_growth_slope = np.polyfit(np.log2([b["mean_context"] for b in want]), ref_kl, 1)[0]
    assert pb.harm_growth(got)["kl_slope_per_doubling"] == pytest.approx(ref_growth_slope)


# --- clip_edges ----------------------------------------------------------------------------------


def test_clip_edges_cuts_the_bucket_holding_the_longest_context() -> None:
    assert pb.clip_edges((0, 512, 2048, 8192, 32768), 1000) == [(0, 512), (512, 1001)]
    assert pb.clip_edges((0, 512, 2048), 511) == [(0, 512)]
    assert pb.clip_edges((0, 512, 2048), 512) == [(0, 512), (512, 513)]
    # [0, 1) can hold no position (context >= 1).
    assert pb.clip_edges((0, 1, 10), 5) == [(1, 6)]


def test_clip_edges_beyond_the_last_edge_keeps_the_edges() -> None:
    assert pb.clip_edges((0, 512, 2048), 5000) == [(0, 512), (512, 2048)]
    context, stretch = stretches_of([12])  # contexts 1..11; edges stop at 8
    result = pb.long_context_fp16(context, stretch, np.full(11, -1.0), (0, 4, 8))
    assert [b["positions"] for b in result["buckets"]] == [3, 4]
    assert result["unbucketed_positions"] == 4 and result["positions"] == 11


@pytest.mark.parametrize(
    ("edges", "longest", "shown"),
    [
        ((0, 512, 256), 1000, "(0, 512, 256)"),
        ((0, 512, 512, 2048), 1000, "(0, 512, 512, 2048)"),
        ((-8, 512), 1000, "(-8, 512)"),
        ((512,), 1000, "(512,)"),
        ((100, 200), 50, "(100, 200)"),
        ((0, 1), 50, "(0, 1)"),
    ],
)
def test_clip_edges_rejects_bad_edges(edges: tuple[int, ...], longest: int, shown: str) -> None:
    with pytest.raises(ValueError, match=r"bucket edges " + shown.replace("(", r"\(").replace(")", r"\)")):
        pb.clip_edges(edges, longest)


# --- growth by hand ---------------------------------------------------------------------------------


def _bucket(mean_context: float, kl_mean: float, delta: float) -> pb.VariantBucket:
    # a stand-in with the fields harm_growth reads
    return cast(pb.VariantBucket, {"mean_context": mean_context, "kl_mean": kl_mean, "delta_ppl_pct": delta})


def test_growth_by_hand() -> None:
    # x = log2(1, 2, 4, 8) = 0, 1, 2, 3 (mean 1.5); y = 0.1, 0.2, 0.2, 0.5 (mean 0.25).
    # sum (x - 1.5)(y - 0.25) = 0.225 + 0.025 - 0.025 + 0.375 = 0.6; sum (x - 1.5)^2 = 5 -> slope 0.12.
    buckets = [_bucket(1, 0.1, 1.0), _bucket(2, 0.2, 1.5), _bucket(4, 0.2, 2.0), _bucket(8, 0.5, 4.5)]
    growth = pb.harm_growth(buckets)
    assert growth["kl_slope_per_doubling"] == pytest.approx(0.12)
    assert growth["kl_ratio_last_first"] == pytest.approx(5.0)
    assert growth["delta_ppl_pct_change"] == pytest.approx(3.5)


def test_growth_without_a_first_kl_or_with_one_bucket() -> None:
    growth = pb.harm_growth([_bucket(1, 0.0, 1.0), _bucket(8, 0.3, 2.0)])
    assert growth["kl_ratio_last_first"] is None
    assert growth["kl_slope_per_doubling"] == pytest.approx(0.1)  # 0.3 / 3 doublings
    single = pb.harm_growth([_bucket(5, 0.2, 3.0)])
    assert single == {"kl_ratio_last_first": 1.0, "delta_ppl_pct_change": 0.0, "kl_slope_per_doubling": None}


# --- non-finite values and validation -------------------------------------------------------------


def test_non_finite_kl_is_counted_not_averaged() -> None:
    kl = np.array([0.1, math.nan, math.inf, -math.inf, 0.3])
    first, second = pb.variant_buckets(
        HAND_CONTEXT, HAND_STRETCH, HAND_LOGP, HAND_LOGQ, kl, HAND_SAME, pb.clip_edges((0, 3, 8), 5)
    )
    assert first["kl_mean"] == pytest.approx(0.1) and first["non_finite_kl"] == 1
    assert second["kl_mean"] == pytest.approx(0.3) and second["non_finite_kl"] == 2
    assert second["kl_p99"] == pytest.approx(0.3)
    # PPL and top-1 agreement still use every position.
    assert second["ppl"] == pytest.approx(math.exp(2.1)) and second["same_top1_rate"] == pytest.approx(2 / 3)
    all_bad = np.full(5, math.nan)
    result = pb.long_context_comparison(HAND_CONTEXT, HAND_STRETCH, HAND_LOGP, HAND_LOGQ, all_bad, HAND_SAME, (0, 3))
    (only,) = result["buckets"]
    assert (only["kl_mean"], only["kl_mean_ci95"], only["kl_p99"], only["non_finite_kl"]) == (None, None, None, 2)
    assert result["growth"]["kl_ratio_last_first"] is None and result["unbucketed_positions"] == 3


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"logq_target": HAND_LOGQ[:4]}, "logq_target has 4 positions but context_tokens has 5"),
        ({"kl_pq": HAND_KL.reshape(5, 1)}, "kl_pq must be 1-D"),
        ({"context_tokens": np.array([0, 1, 2, 3, 4])}, "context_tokens must be >= 1"),
        ({"context_tokens": HAND_CONTEXT.astype(float)}, "context_tokens must hold integers"),
        ({"stretch": np.array([0, 0, 1, 1, 0])}, "stretch: a stretch's positions must be consecutive"),
        ({"logp_target": np.array([-1.0, math.nan, -1.0, -2.0, -3.0])}, "logp_target has 1 non-finite"),
        ({"same_top1": HAND_SAME[:2]}, "same_top1 has 2 positions"),
    ],
)
def test_bad_inputs_name_the_argument(change: dict[str, np.ndarray], message: str) -> None:
    args = {
        "context_tokens": HAND_CONTEXT,
        "stretch": HAND_STRETCH,
        "logp_target": HAND_LOGP,
        "logq_target": HAND_LOGQ,
        "kl_pq": HAND_KL,
        "same_top1": HAND_SAME,
    }
    with pytest.raises(ValueError, match=message):
        pb.variant_buckets(**{**args, **change}, buckets=[(0, 3), (3, 6)])


def test_a_bucket_without_positions_is_an_error() -> None:
    with pytest.raises(ValueError, match=r"bucket \[6, 9\) holds no scored position"):
        pb.fp16_buckets(HAND_CONTEXT, HAND_STRETCH, HAND_LOGP, [(0, 6), (6, 9)])


@pytest.mark.parametrize("df", sorted(STUDENT_T975))
def test_student_t_quantiles(df: int) -> None:
    assert blocks_module.t975(df) == pytest.approx(STUDENT_T975[df], abs=1e-4)
