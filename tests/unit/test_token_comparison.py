"""Position-level comparison of FP16 and variant distributions, on hand-computed cases."""

import math

import numpy as np
import pytest
import torch

from quant_fixtures.metrics import token_comparison as tc
from quant_fixtures.metrics.reference_head import ReferenceHead


def _logits(*probs: tuple[float, ...]) -> torch.Tensor:
    return torch.tensor([[math.log(p) if p > 0 else float("-inf") for p in row] for row in probs], dtype=torch.float64)


def test_a_three_token_case_by_hand() -> None:
    # P = (0.5, 0.3, 0.2), Q = (0.35, 0.45, 0.2); the correct token is the third.
    out = tc.compare_positions(_logits((0.5, 0.3, 0.2)), _logits((0.35, 0.45, 0.2)), torch.tensor([2]))
    kl_pq = 0.5 * math.log(0.5 / 0.35) + 0.3 * math.log(0.3 / 0.45)  # the 0.2 terms cancel
    kl_qp = 0.35 * math.log(0.35 / 0.5) + 0.45 * math.log(0.45 / 0.3)
    assert out["kl_pq"][0] == pytest.approx(kl_pq, rel=1e-12)  # 0.056698...
    assert out["kl_qp"][0] == pytest.approx(kl_qp, rel=1e-12)  # 0.057623...
    assert out["p_top1"][0] == pytest.approx(0.5)
    assert not out["same_top1"][0]  # P's top token is 0, Q's is 1
    # top-1 sets {0} vs {1}: 0 shared; top-2 {0,1} both: 2; top-3 and beyond: the whole vocabulary.
    assert out["topk_overlap"][0].tolist() == [0, 2] + [3] * (tc.TOPK_MAX - 2)
    assert out["logp_target"][0] == pytest.approx(math.log(0.2))
    assert out["logq_target"][0] == pytest.approx(math.log(0.2))


def test_zero_probabilities() -> None:
    # P puts everything on token 0: KL(P||Q) = -log q_0; KL(Q||P) is infinite (Q has mass where P has none).
    out = tc.compare_positions(_logits((1.0, 0.0, 0.0)), _logits((0.5, 0.25, 0.25)), torch.tensor([0]))
    assert out["kl_pq"][0] == pytest.approx(math.log(2))
    assert math.isinf(out["kl_qp"][0])
    assert out["same_top1"][0] and out["p_top1"][0] == 1.0


def test_identical_distributions_compare_to_zero_and_full_agreement() -> None:
    logits = torch.randn(5, 40, generator=torch.Generator().manual_seed(0))
    out = tc.compare_positions(logits, logits.clone(), torch.arange(5))
    assert np.all(out["kl_pq"] == 0) and np.all(out["kl_qp"] == 0)
    assert out["same_top1"].all()
    assert (out["topk_overlap"] == np.arange(1, tc.TOPK_MAX + 1)).all()


def test_slicing_long_inputs_changes_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    gen = torch.Generator().manual_seed(1)
    ref, cand = torch.randn(37, 50, generator=gen), torch.randn(37, 50, generator=gen)
    targets = torch.randint(0, 50, (37,), generator=gen)
    whole = tc.compare_positions(ref, cand, targets)
    monkeypatch.setattr(tc, "CPU_ELEMENTS_PER_SLICE", 50 * 4)  # 4 positions a slice
    sliced = tc.compare_positions(ref, cand, targets)
    for name in tc.FIELDS:
        np.testing.assert_array_equal(whole[name], sliced[name])


def test_topk_overlap_against_sets() -> None:
    gen = torch.Generator().manual_seed(2)
    ref, cand = torch.randn(20, 30, generator=gen), torch.randn(20, 30, generator=gen)
    out = tc.compare_positions(ref, cand, torch.zeros(20, dtype=torch.long))
    for row in range(20):
        p_order = torch.argsort(ref[row], descending=True).tolist()
        q_order = torch.argsort(cand[row], descending=True).tolist()
        for k in range(1, tc.TOPK_MAX + 1):
            assert out["topk_overlap"][row, k - 1] == len(set(p_order[:k]) & set(q_order[:k]))


def test_mismatched_shapes_are_refused() -> None:
    with pytest.raises(ValueError, match="differ in shape"):
        tc.compare_positions(torch.zeros(2, 5), torch.zeros(2, 6), torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError, match="targets"):
        tc.compare_positions(torch.zeros(2, 5), torch.zeros(2, 5), torch.zeros(3, dtype=torch.long))


def test_reference_head_rebuilds_a_linear_heads_logits() -> None:
    gen = torch.Generator().manual_seed(3)
    layer = torch.nn.Linear(6, 11, bias=True)
    model = type(
        "M",
        (),
        {"get_output_embeddings": lambda self: layer, "config": type("C", (), {"final_logit_softcapping": 5.0})()},
    )()
    head = ReferenceHead.from_tensors(ReferenceHead.of(model).to_tensors())
    hidden = torch.randn(4, 6, generator=gen)
    with torch.no_grad():
        want = torch.tanh(layer(hidden) / 5.0) * 5.0
    torch.testing.assert_close(head.logits(hidden), want, rtol=0, atol=0)


def _numpy_comparison(ref: np.ndarray, cand: np.ndarray, targets: np.ndarray) -> dict[str, np.ndarray]:
    """The module docstring's definitions in plain float64 numpy, for rows without ties in their top-K."""

    def log_softmax(x: np.ndarray) -> np.ndarray:
        shifted = x - x.max(-1, keepdims=True)
        out: np.ndarray = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
        return out

    logp, logq = log_softmax(ref.astype(np.float64)), log_softmax(cand.astype(np.float64))
    p, q = np.exp(logp), np.exp(logq)
    p_order, q_order = np.argsort(-ref, axis=-1, kind="stable"), np.argsort(-cand, axis=-1, kind="stable")
    overlap = [
        [len(set(p_order[r, :k]) & set(q_order[r, :k])) for k in range(1, tc.TOPK_MAX + 1)] for r in range(len(ref))
    ]
    rows = np.arange(len(ref))
    return {
        "kl_pq": (p * (logp - logq)).sum(-1),
        "kl_qp": (q * (logq - logp)).sum(-1),
        "p_top1": p.max(-1),
        "same_top1": ref.argmax(-1) == cand.argmax(-1),
        "topk_overlap": np.array(overlap),
        "logp_target": logp[rows, targets],
        "logq_target": logq[rows, targets],
    }


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_half_precision_logits_against_plain_numpy(dtype: torch.dtype) -> None:
    """Logits as a model hands them over (float16 on a GPU): every field equals the float64 numpy
    computation of its definition; ranks are read from the logits themselves (see _compare_slice)."""
    gen = torch.Generator().manual_seed(4)
    ref = (torch.randn(64, 3000, generator=gen) * 3).to(dtype)
    cand = (ref.float() + torch.randn(64, 3000, generator=gen) * 0.3).to(dtype)
    targets = torch.randint(0, 3000, (64,), generator=gen)
    ours = tc.compare_positions(ref, cand, targets)
    plain = _numpy_comparison(ref.float().numpy(), cand.float().numpy(), targets.numpy())
    for name in ("kl_pq", "kl_qp", "p_top1", "logp_target", "logq_target"):
        np.testing.assert_allclose(ours[name], plain[name], rtol=1e-12, atol=1e-15, err_msg=name)
    np.testing.assert_array_equal(ours["same_top1"], plain["same_top1"])
    # top-K sets are defined up to ties at the K-th place: compare the rows whose top-K+1 are distinct
    distinct = [
        r
        for r in range(64)
        if all(
            len(set(x[r].sort(descending=True).values[: tc.TOPK_MAX + 1].tolist())) == tc.TOPK_MAX + 1
            for x in (ref, cand)
        )
    ]
    assert len(distinct) >= (2 if dtype == torch.bfloat16 else 16)  # bfloat16's 8 bits tie most rows' top-K
    np.testing.assert_array_equal(ours["topk_overlap"][distinct], plain["topk_overlap"][distinct])
    assert 0 < plain["same_top1"].mean() < 1  # the case separates agreeing and disagreeing rows
