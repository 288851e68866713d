"""Position-by-position comparison of the FP16 distribution P with a variant's Q, full vocabulary.

For every scored position it returns, in float64 (log-softmax of both logits in float64, nats):
``kl_pq`` = KL(P || Q) = sum_v p_v (log p_v - log q_v), ``kl_qp`` = KL(Q || P), ``p_top1`` (FP16's
probability of its own top token: its confidence), ``same_top1`` (argmax agreement), ``topk_overlap``
([N, K_MAX] counts: how many of FP16's top-K tokens are among the variant's top-K, K = 1..K_MAX),
and for the correct next token ``logp_target`` / ``logq_target`` (its log-probability under each).
Terms with p = 0 count 0 (0 log 0 = 0); q = 0 where p > 0 gives +inf.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch

from quant_fixtures.metrics.divergence import weighted_log_ratio

TOPK_MAX = 10
FIELDS = ("kl_pq", "kl_qp", "p_top1", "same_top1", "topk_overlap", "logp_target", "logq_target")
# Bound on float64 elements of one [positions, vocab] temporary, so memory does not grow with the
# chunk the caller hands in: 2**24 (128 MiB) on a GPU; 2**20 (8 MiB) on the CPU, where temporaries
# that stay in cache made the comparison ~3x faster.
ELEMENTS_PER_SLICE = 2**24
CPU_ELEMENTS_PER_SLICE = 2**20


def _topk_overlap(ref_idx: torch.Tensor, cand_idx: torch.Tensor, k_max: int) -> torch.Tensor:
    k = ref_idx.shape[-1]
    counts = [(ref_idx[:, :j, None] == cand_idx[:, None, :j]).any(-1).sum(-1) for j in range(1, k + 1)]
    counts += [counts[-1]] * (k_max - k)  # a vocabulary smaller than K: both top-K sets are all of it
    return torch.stack(counts, dim=-1).to(torch.int16)


def _both_kl(logp: torch.Tensor, logq: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """KL(P||Q) and KL(Q||P) from log-probabilities, sharing the log ratio; the 0 log 0 = 0 guard
    (torch.where, slow) only where a term is not finite (a -inf log-probability)."""
    log_ratio = logp - logq
    pq = torch.exp(logp).mul_(log_ratio)
    qp = torch.exp(logq).mul_(log_ratio).neg_()
    if not (torch.isfinite(pq).all() and torch.isfinite(qp).all()):
        pq = weighted_log_ratio(torch.exp(logp), logp, logq)
        qp = weighted_log_ratio(torch.exp(logq), logq, logp)
    return pq.sum(-1).clamp_min(0.0), qp.sum(-1).clamp_min(0.0)


def _compare_slice(
    ref_logits: torch.Tensor, cand_logits: torch.Tensor, targets: torch.Tensor
) -> dict[str, torch.Tensor]:
    logp = torch.log_softmax(ref_logits.double(), -1)
    logq = torch.log_softmax(cand_logits.double().to(logp.device), -1)
    t = targets.to(device=logp.device, dtype=torch.int64).unsqueeze(-1)
    k = min(TOPK_MAX, logp.shape[-1])
    top_p, top_q = torch.topk(logp, k, dim=-1), torch.topk(logq, k, dim=-1)
    kl_pq, kl_qp = _both_kl(logp, logq)
    return {
        "kl_pq": kl_pq,
        "kl_qp": kl_qp,
        "p_top1": torch.exp(top_p.values[:, 0]),
        "same_top1": logp.argmax(-1) == logq.argmax(-1),
        "topk_overlap": _topk_overlap(top_p.indices, top_q.indices, TOPK_MAX),
        "logp_target": logp.gather(-1, t).squeeze(-1),
        "logq_target": logq.gather(-1, t).squeeze(-1),
    }


def compare_positions(
    ref_logits: torch.Tensor, cand_logits: torch.Tensor, targets: torch.Tensor, slice_elements: int | None = None
) -> dict[str, np.ndarray]:
    """Per-position comparison of ``ref_logits`` [N, V] (FP16) with ``cand_logits`` [N, V] (variant),
    ``targets`` [N] the correct next tokens; numpy arrays on the CPU (see the module docstring).
    ``slice_elements``: float64 elements of one [positions, vocab] temporary (None: the defaults)."""
    if ref_logits.shape != cand_logits.shape:
        raise ValueError(
            f"FP16 logits {tuple(ref_logits.shape)} and variant logits {tuple(cand_logits.shape)} differ in shape"
        )
    if tuple(targets.shape) != tuple(ref_logits.shape[:-1]):
        raise ValueError(
            f"targets {tuple(targets.shape)} do not match the logits' positions {tuple(ref_logits.shape[:-1])}"
        )
    per_slice = slice_elements or (CPU_ELEMENTS_PER_SLICE if ref_logits.device.type == "cpu" else ELEMENTS_PER_SLICE)
    rows = max(1, per_slice // max(1, ref_logits.shape[-1]))
    parts = [
        _compare_slice(ref_logits[lo : lo + rows], cand_logits[lo : lo + rows], targets[lo : lo + rows])
        for lo in range(0, ref_logits.shape[0], rows)
    ]
    if not parts:
        return empty_comparison()
    return {f: torch.cat([p[f] for p in parts]).cpu().numpy() for f in FIELDS}


def empty_comparison() -> dict[str, np.ndarray]:
    out = {f: np.zeros(0) for f in FIELDS}
    out["same_top1"] = np.zeros(0, dtype=bool)
    out["topk_overlap"] = np.zeros((0, TOPK_MAX), dtype=np.int16)
    return out


def concat_comparisons(parts: Iterable[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    parts = list(parts)
    if not parts:
        return empty_comparison()
    return {f: np.concatenate([p[f] for p in parts]) for f in FIELDS}
