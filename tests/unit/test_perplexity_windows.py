"""Unit tests for the perplexity window plans and the PPL formula (quant_fixtures.metrics.perplexity)."""

from __future__ import annotations

import math
from collections import Counter

import pytest

from quant_fixtures.metrics.perplexity import Window, nonoverlapping_windows, perplexity, strided_windows


def scored_positions(windows: list[Window]) -> Counter[int]:
    """How many times each token position is scored by the plan."""
    counts: Counter[int] = Counter()
    for w in windows:
        counts.update(range(w.first_target, w.end))
    return counts


def assert_well_formed(windows: list[Window], n_tokens: int, ctx: int) -> None:
    for w in windows:
        assert 0 <= w.begin < w.end <= n_tokens
        assert w.length <= ctx
        assert w.begin + 1 <= w.first_target < w.end, w  # every target has context inside the window
        assert w.scored == w.end - w.first_target >= 1


# -- Window ---------------------------------------------------------------------------------------


def test_window_properties() -> None:
    w = Window(begin=10, end=18, first_target=13)
    assert w.length == 8 and w.scored == 5


# -- nonoverlapping_windows -------------------------------------------------------------------------


@pytest.mark.parametrize("n_tokens, ctx, expected", [(8, 4, 2), (11, 4, 2), (12, 4, 3), (4, 4, 1), (1000, 7, 142)])
def test_nonoverlapping_counts_and_tail_dropped(n_tokens: int, ctx: int, expected: int) -> None:
    windows = nonoverlapping_windows(n_tokens, ctx)
    assert len(windows) == expected
    assert_well_formed(windows, n_tokens, ctx)
    for i, w in enumerate(windows):
        assert (w.begin, w.end, w.first_target) == (i * ctx, (i + 1) * ctx, i * ctx + 1)
        assert w.length == ctx and w.scored == ctx - 1
    # The incomplete tail is dropped: nothing past the last full window is touched.
    assert windows[-1].end == (n_tokens // ctx) * ctx
    assert sum(w.scored for w in windows) == expected * (ctx - 1)


def test_nonoverlapping_windows_are_contiguous() -> None:
    windows = nonoverlapping_windows(50, 5)
    assert all(a.end == b.begin for a, b in zip(windows, windows[1:]))
    # First token of each window is context only.
    assert set(scored_positions(windows)) == set(range(50)) - set(range(0, 50, 5))
    assert max(scored_positions(windows).values()) == 1


@pytest.mark.parametrize(
    "max_tokens, expected",
    [(100, 10), (99, 9), (40, 4), (41, 4), (10, 1), (1000, 10)],
)
def test_nonoverlapping_max_tokens_floor(max_tokens: int, expected: int) -> None:
    windows = nonoverlapping_windows(105, 10, max_tokens=max_tokens)
    assert len(windows) == expected
    assert windows[-1].end <= max_tokens


def test_nonoverlapping_max_tokens_none_uses_everything() -> None:
    assert nonoverlapping_windows(105, 10, max_tokens=None) == nonoverlapping_windows(105, 10)


@pytest.mark.parametrize("ctx", [1, 0, -4])
def test_nonoverlapping_rejects_small_ctx(ctx: int) -> None:
    with pytest.raises(ValueError, match="ctx"):
        nonoverlapping_windows(100, ctx)


@pytest.mark.parametrize("n_tokens, ctx, max_tokens", [(3, 4, None), (0, 2, None), (100, 10, 9), (100, 10, 0)])
def test_nonoverlapping_no_complete_window(n_tokens: int, ctx: int, max_tokens: int | None) -> None:
    with pytest.raises(ValueError, match="no complete window"):
        nonoverlapping_windows(n_tokens, ctx, max_tokens)


# -- strided_windows --------------------------------------------------------------------------------

STRIDED_CASES = [
    (10, 4, 2),
    (11, 4, 3),
    (100, 16, 8),
    (101, 16, 5),
    (37, 8, 1),
    (2, 2, 1),
    (5, 8, 4),  # whole sequence fits one window
    (64, 16, 15),
    (1000, 64, 32),
    (1001, 64, 63),
]


@pytest.mark.parametrize("n_tokens, ctx, stride", STRIDED_CASES)
def test_strided_scores_every_token_after_the_first_once(n_tokens: int, ctx: int, stride: int) -> None:
    windows = strided_windows(n_tokens, ctx, stride)
    assert_well_formed(windows, n_tokens, ctx)
    counts = scored_positions(windows)
    assert set(counts) == set(range(1, n_tokens))
    assert set(counts.values()) == {1}
    assert sum(w.scored for w in windows) == n_tokens - 1


@pytest.mark.parametrize("n_tokens, ctx", [(12, 4), (10, 4), (9, 4), (100, 16), (2048 * 3 + 5, 2048)])
def test_strided_stride_equal_ctx_skips_each_window_start(n_tokens: int, ctx: int) -> None:
    # As in the HF guide's loop: without overlap, a window's first token has no context.
    windows = strided_windows(n_tokens, ctx, ctx)
    counts = scored_positions(windows)
    starts = {w.begin for w in windows}
    assert set(counts) == set(range(n_tokens)) - starts
    assert set(counts.values()) == {1}


def test_strided_stride_equal_ctx_window_layout() -> None:
    # What the plan is today (not its coverage): non-overlapping windows, the last one shorter.
    windows = strided_windows(10, 4, 4)
    assert [(w.begin, w.end) for w in windows] == [(0, 4), (4, 8), (8, 10)]
    assert windows[0].first_target == 1


@pytest.mark.parametrize("n_tokens, ctx, stride", STRIDED_CASES)
def test_strided_first_window(n_tokens: int, ctx: int, stride: int) -> None:
    first = strided_windows(n_tokens, ctx, stride)[0]
    assert first.begin == 0 and first.first_target == 1
    assert first.end == min(ctx, n_tokens)
    assert first.scored == first.end - 1


def test_strided_explicit_plan() -> None:
    windows = strided_windows(10, 4, 2)
    assert [(w.begin, w.end, w.first_target) for w in windows] == [(0, 4, 1), (2, 6, 4), (4, 8, 6), (6, 10, 8)]


def test_strided_last_window_shorter() -> None:
    windows = strided_windows(11, 4, 3)
    assert [(w.begin, w.end, w.first_target) for w in windows] == [(0, 4, 1), (3, 7, 4), (6, 10, 7), (9, 11, 10)]
    assert windows[-1].length == 2 < 4
    assert all(w.length == 4 for w in windows[:-1])


@pytest.mark.parametrize("n_tokens, ctx, stride", STRIDED_CASES)
def test_strided_windows_start_every_stride_and_end_at_n(n_tokens: int, ctx: int, stride: int) -> None:
    windows = strided_windows(n_tokens, ctx, stride)
    assert [w.begin for w in windows] == [i * stride for i in range(len(windows))]
    assert windows[-1].end == n_tokens
    assert all(w.end < n_tokens for w in windows[:-1])
    assert all(w.length == ctx for w in windows[:-1])


def test_strided_max_tokens_truncates_first() -> None:
    assert strided_windows(1000, 16, 8, max_tokens=100) == strided_windows(100, 16, 8)
    assert strided_windows(50, 16, 8, max_tokens=100) == strided_windows(50, 16, 8)
    counts = scored_positions(strided_windows(1000, 16, 8, max_tokens=100))
    assert set(counts) == set(range(1, 100))


@pytest.mark.parametrize("ctx", [1, 0])
def test_strided_rejects_small_ctx(ctx: int) -> None:
    with pytest.raises(ValueError, match="ctx"):
        strided_windows(100, ctx, 1)


@pytest.mark.parametrize("stride", [0, -1, 9])
def test_strided_rejects_bad_stride(stride: int) -> None:
    with pytest.raises(ValueError, match="stride"):
        strided_windows(100, 8, stride)


@pytest.mark.parametrize("n_tokens, max_tokens", [(1, None), (0, None), (100, 1)])
def test_strided_too_few_tokens(n_tokens: int, max_tokens: int | None) -> None:
    with pytest.raises(ValueError, match="too few"):
        strided_windows(n_tokens, 8, 4, max_tokens)


# -- perplexity -------------------------------------------------------------------------------------


def test_perplexity_hand_computed() -> None:
    # 3 tokens, each with NLL ln 2: PPL = exp(3 ln 2 / 3) = 2.
    assert perplexity([2 * math.log(2), math.log(2)], [2, 1]) == pytest.approx(2.0, rel=1e-12)


def test_perplexity_weights_by_tokens_not_windows() -> None:
    # Mean over tokens (ln 3 * 1 + 0 * 3) / 4, not over windows.
    assert perplexity([math.log(3), 0.0], [1, 3]) == pytest.approx(3**0.25)


def test_perplexity_zero_nll_is_one() -> None:
    assert perplexity([0.0, 0.0], [5, 7]) == 1.0


def test_perplexity_uniform_over_vocab() -> None:
    vocab = 50_000
    windows = 7
    tokens = [127] * windows
    nll = [t * math.log(vocab) for t in tokens]
    assert perplexity(nll, tokens) == pytest.approx(vocab, rel=1e-9)


@pytest.mark.parametrize("nll, tokens", [([], []), ([1.0], [0])])
def test_perplexity_no_scored_tokens(nll: list[float], tokens: list[int]) -> None:
    with pytest.raises(ValueError, match="no scored tokens"):
        perplexity(nll, tokens)
