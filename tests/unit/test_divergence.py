"""Unit tests for quant_fixtures.metrics.divergence."""

from __future__ import annotations

import math

import pytest
import torch

from quant_fixtures.metrics.divergence import (
    kl_exact,
    kl_topk,
    nll_of_targets,
    tail_mass,
    top1_agree,
    topk_reference,
)

LN2 = math.log(2.0)


def _logits_from_probs(*probs: list[float]) -> torch.Tensor:
    """Logits whose softmax is exactly the given rows of probabilities (float64)."""
    return torch.log(torch.tensor(probs, dtype=torch.float64))


def _random_logits(rows: int, vocab: int, seed: int, scale: float = 3.0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(rows, vocab, generator=gen, dtype=torch.float64) * scale


# --- independent plain-Python reference implementation -----------------------------------


def py_log_softmax(row: list[float]) -> list[float]:
    peak = max(row)
    total = 0.0
    for x in row:
        total += math.exp(x - peak)
    log_norm = peak + math.log(total)
    return [x - log_norm for x in row]


def py_kl_exact(ref_row: list[float], cand_row: list[float]) -> float:
    logp = py_log_softmax(ref_row)
    logq = py_log_softmax(cand_row)
    kl = 0.0
    for lp, lq in zip(logp, logq):
        p = math.exp(lp)
        if p > 0.0:
            kl += p * (lp - lq)
    return kl


def py_kl_topk(ref_logp: list[float], ref_idx: list[int], cand_row: list[float]) -> float:
    logq = py_log_softmax(cand_row)
    kl = 0.0
    p_head = 0.0
    q_head = 0.0
    for lp, j in zip(ref_logp, ref_idx):
        p = math.exp(lp)
        p_head += p
        q_head += math.exp(logq[j])
        if p > 0.0:
            kl += p * (lp - logq[j])
    p_tail = max(0.0, 1.0 - p_head)
    chosen = set(ref_idx)
    q_tail = 0.0
    for j, lq in enumerate(logq):
        if j not in chosen:
            q_tail += math.exp(lq)
    if p_tail > 0.0:
        kl += p_tail * (math.log(p_tail) - math.log(q_tail))
    return max(0.0, kl)


def py_nll(cand_row: list[float], target: int) -> float:
    return -py_log_softmax(cand_row)[target]


# --- hand-computed cases -----------------------------------------------------------------


def test_kl_exact_hand_case() -> None:
    ref = _logits_from_probs([0.5, 0.25, 0.25])
    cand = _logits_from_probs([0.25, 0.5, 0.25])
    # 0.5 ln(0.5/0.25) + 0.25 ln(0.25/0.5) + 0.25 ln 1 = 0.25 ln 2
    assert kl_exact(ref, cand).item() == pytest.approx(0.25 * LN2, rel=1e-12)


def test_kl_identical_distributions_is_zero() -> None:
    logits = _random_logits(5, 11, seed=1)
    assert torch.all(kl_exact(logits, logits) == 0.0)
    logp, idx = topk_reference(logits, 4)
    assert torch.allclose(kl_topk(logp, idx, logits), torch.zeros(5, dtype=torch.float64), atol=1e-6)


def test_kl_exact_infinite_when_candidate_misses_support() -> None:
    ref = _logits_from_probs([0.5, 0.5])
    cand = torch.tensor([[0.0, float("-inf")]], dtype=torch.float64)
    assert math.isinf(kl_exact(ref, cand).item())
    # the reverse direction has p = 0 where q > 0: 0 * log 0 = 0, finite
    assert kl_exact(cand, ref).item() == pytest.approx(LN2, rel=1e-12)


def test_topk_reference_sorted_and_clamped() -> None:
    logits = torch.tensor([[1.0, 3.0, 2.0]])
    logp, idx = topk_reference(logits, 10)
    assert logp.dtype == torch.float32 and idx.dtype == torch.int64
    assert idx.tolist() == [[1, 2, 0]]
    expected = torch.log_softmax(logits, dim=-1)[0, [1, 2, 0]]
    assert torch.allclose(logp[0], expected)
    with pytest.raises(ValueError):
        topk_reference(logits, 0)


def test_tail_mass_hand_case() -> None:
    logp = torch.log(torch.tensor([[0.5, 0.25], [0.7, 0.3]]))
    assert tail_mass(logp).tolist() == pytest.approx([0.25, 0.0], abs=1e-7)
    # rounding that pushes the head mass above 1 is clamped to 0
    over = torch.log(torch.tensor([[0.6, 0.400001]]))
    assert tail_mass(over).item() == 0.0


def test_kl_topk_bucketed_hand_case() -> None:
    ref = _logits_from_probs([0.5, 0.25, 0.125, 0.125])
    cand = _logits_from_probs([0.25, 0.25, 0.4, 0.1])
    logp, idx = topk_reference(ref, 2)
    assert idx.tolist() == [[0, 1]]
    # head: 0.5 ln(0.5/0.25) + 0.25 ln(0.25/0.25); tail bucket: p = 0.25, q = 0.4 + 0.1 = 0.5
    by_hand = 0.5 * math.log(0.5 / 0.25) + 0.25 * math.log(0.25 / 0.25)
    by_hand += 0.25 * math.log(0.25 / 0.5)
    assert by_hand == pytest.approx(0.25 * LN2)
    assert kl_topk(logp, idx, cand).item() == pytest.approx(by_hand, rel=1e-6)
    exact = 0.5 * LN2 + 0.125 * math.log(0.125 / 0.4) + 0.125 * math.log(0.125 / 0.1)
    assert kl_exact(ref, cand).item() == pytest.approx(exact, rel=1e-12)
    assert by_hand < exact


def test_kl_topk_with_full_vocab_equals_exact() -> None:
    ref = _random_logits(64, 17, seed=2)
    cand = ref + 0.5 * _random_logits(64, 17, seed=3, scale=1.0)
    logp, idx = topk_reference(ref, 17)
    assert torch.allclose(kl_topk(logp, idx, cand), kl_exact(ref, cand), rtol=1e-5, atol=1e-6)


def test_kl_topk_is_lower_bound_of_exact() -> None:
    ref = _random_logits(500, 50, seed=4)
    cand = ref + _random_logits(500, 50, seed=5, scale=1.0)
    exact = kl_exact(ref, cand)
    for k in (1, 5, 20, 49):
        logp, idx = topk_reference(ref, k)
        approx = kl_topk(logp, idx, cand)
        assert torch.all(approx >= 0.0)
        assert torch.all(approx <= exact + 1e-6), k


def test_kl_topk_tiny_candidate_tail_stays_finite() -> None:
    # candidate tail mass ~ e^-60, far below float32 epsilon relative to 1
    ref = torch.tensor([[0.0, 0.0, -2.0]], dtype=torch.float64)
    cand = torch.tensor([[0.0, 0.0, -60.0]], dtype=torch.float64)
    logp, idx = topk_reference(ref, 2)
    value = kl_topk(logp, idx, cand).item()
    assert math.isfinite(value)
    assert value == pytest.approx(py_kl_topk(logp[0].tolist(), idx[0].tolist(), cand[0].tolist()), rel=1e-6)


def test_matches_plain_python_reference() -> None:
    rows, vocab = 20, 30
    ref = _random_logits(rows, vocab, seed=6)
    cand = ref + 0.7 * _random_logits(rows, vocab, seed=7, scale=1.0)
    targets = torch.randint(0, vocab, (rows,), generator=torch.Generator().manual_seed(8))
    logp, idx = topk_reference(ref, 8)
    exact = kl_exact(ref, cand)
    bucketed = kl_topk(logp, idx, cand)
    nll = nll_of_targets(cand, targets)
    for r in range(rows):
        ref_row, cand_row = ref[r].tolist(), cand[r].tolist()
        assert exact[r].item() == pytest.approx(py_kl_exact(ref_row, cand_row), rel=1e-6)
        assert bucketed[r].item() == pytest.approx(py_kl_topk(logp[r].tolist(), idx[r].tolist(), cand_row), rel=1e-6)
        assert nll[r].item() == pytest.approx(py_nll(cand_row, int(targets[r])), rel=1e-6)


def test_float16_logits_are_upcast() -> None:
    ref = _random_logits(8, 40, seed=9)
    cand = ref + 0.3 * _random_logits(8, 40, seed=10, scale=1.0)
    half = kl_exact(ref.half(), cand.half())
    assert half.dtype == torch.float64
    assert torch.allclose(half, kl_exact(ref.half().double(), cand.half().double()), rtol=1e-4, atol=1e-6)


def test_top1_agree_accepts_indices_or_logits() -> None:
    ref = torch.tensor([[0.1, 2.0, 0.3], [5.0, 1.0, 0.0]])
    cand = torch.tensor([[0.0, 1.0, 0.5], [0.0, 1.0, 0.5]])
    assert top1_agree(ref, cand).tolist() == [True, False]
    _, idx = topk_reference(ref, 2)
    assert top1_agree(idx[..., 0], cand).tolist() == [True, False]
    with pytest.raises(ValueError):
        top1_agree(idx, cand)


def test_nll_of_targets_hand_case_and_range_check() -> None:
    cand = _logits_from_probs([0.5, 0.25, 0.25])
    assert nll_of_targets(cand, torch.tensor([0])).item() == pytest.approx(LN2, rel=1e-12)
    assert nll_of_targets(cand, torch.tensor([2])).item() == pytest.approx(2 * LN2, rel=1e-12)
    with pytest.raises(ValueError):
        nll_of_targets(cand, torch.tensor([3]))
