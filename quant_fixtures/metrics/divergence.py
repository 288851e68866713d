"""Token-level divergence between a reference (FP16) model and a quantized candidate.

Conventions
-----------
* All logarithms are natural, so KL divergences and NLLs are in nats.
* ``P`` is the reference distribution, ``Q`` the candidate's: ``P = softmax(ref_logits)``,
  ``Q = softmax(cand_logits)`` over the last (vocabulary) axis of size ``V``.
* ``0 * log 0 = 0``: tokens with ``p = 0`` contribute nothing, even where ``q = 0``.
* Precision: log-softmax runs in *at least* float32 (float16/bfloat16 logits are upcast,
  float64 logits stay float64). Per-position sums and the small top-k/tail arithmetic run
  in float64, and every per-position result is returned as float64.
"""

from __future__ import annotations

import torch
from torch import Tensor

# Part of every stored reference's key: bump it when a formula here changes what a stored number
# means, so caches made with the old math are recomputed, never compared with the new. One line per bump:
#   1  KL(P || Q) exact and over the FP16 top-k + one tail bucket; NLL of targets; log-softmax in >= float32
METRICS_VERSION: int = 1
"""Bump whenever the maths of any metric changes; cached results carry it to be invalidated."""


def _log_softmax(logits: Tensor) -> Tensor:
    """log_softmax over the last axis in float32, or float64 when the input already is."""
    if not logits.is_floating_point():
        raise TypeError(f"logits must be a floating tensor, got {logits.dtype}")
    dtype = torch.float64 if logits.dtype == torch.float64 else torch.float32
    return torch.log_softmax(logits.to(dtype), dim=-1)


def weighted_log_ratio(p: Tensor, logp: Tensor, logq: Tensor) -> Tensor:
    """Elementwise ``p * (log p - log q)``, defined as 0 where ``p == 0`` (0*log0 = 0)."""
    return torch.where(p > 0, p * (logp - logq), torch.zeros_like(p))


def _check_leading_shape(per_token: Tensor, logits: Tensor, what: str) -> None:
    """Raise ValueError unless ``per_token.shape == logits.shape[:-1]``."""
    if tuple(per_token.shape) != tuple(logits.shape[:-1]):
        raise ValueError(
            f"{what} has shape {tuple(per_token.shape)}, expected {tuple(logits.shape[:-1])} "
            f"(the logits' shape {tuple(logits.shape)} without the vocabulary axis)"
        )


def topk_reference(logits: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """The reference model's log-probabilities at its own top-k tokens.

    ``logp = log_softmax(logits)`` over the last axis (computed in float32, or float64 for
    float64 logits), then the ``k`` largest entries sorted descending. ``k`` is clamped to
    ``V``. Returns ``(logp_topk[..., k] float32 in nats, idx_topk[..., k] int64)``.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    k_eff = min(int(k), logits.shape[-1])
    values, indices = torch.topk(_log_softmax(logits), k_eff, dim=-1, largest=True, sorted=True)
    return values.to(torch.float32), indices.to(torch.int64)


def tail_mass(logp_topk: Tensor) -> Tensor:
    """Probability outside the top-k: ``max(0, 1 - sum_i exp(logp_topk_i))``.

    Computed in float64 from ``logp_topk[..., k]`` (nats); returns float64 ``[...]``.
    """
    mass = torch.exp(logp_topk.to(torch.float64)).sum(dim=-1)
    return (1.0 - mass).clamp_min(0.0)


def _log_tail_prob(logq: Tensor, idx: Tensor) -> Tensor:
    """``log q_tail = log sum_{j not in idx} q_j`` via logsumexp over a complement mask.

    Stable even when ``q_tail`` is far below float32 epsilon; ``-inf`` for an empty
    complement. ``logq`` must be a normalised log-distribution over the last axis.
    """
    in_topk = torch.zeros_like(logq, dtype=torch.bool).scatter_(-1, idx, True)
    complement = logq.masked_fill(in_topk, float("-inf"))
    return torch.logsumexp(complement, dim=-1).to(torch.float64)


def kl_topk(ref_logp_topk: Tensor, ref_idx_topk: Tensor, cand_logits: Tensor) -> Tensor:
    """KL(P_ref || Q_cand) over the reference top-k tokens plus one "all other tokens" bucket.

    ``KL_k = sum_i p_i (log p_i - log q_i) + p_tail (log p_tail - log q_tail)`` in nats, with
    ``p_i = exp(ref_logp_topk_i)``, ``q = softmax(cand_logits)``, ``p_tail = tail_mass(...)``
    and ``q_tail = 1 - sum_i q_i`` over the same indices (taken as a log-sum-exp over the
    complement, so it stays accurate when tiny). By the log-sum inequality ``KL_k <= KL``
    (exact); with ``k == V`` the bucket is empty and ``KL_k == KL``. The result is clamped at
    >= 0 (rounding), NaN propagates, and ``q = 0`` where ``p > 0`` gives ``+inf``.
    Shapes: ``ref_*[..., k]``, ``cand_logits[..., V]`` -> float64 ``[...]``.
    """
    if tuple(ref_logp_topk.shape) != tuple(ref_idx_topk.shape):
        raise ValueError(
            f"ref_logp_topk shape {tuple(ref_logp_topk.shape)} != ref_idx_topk shape {tuple(ref_idx_topk.shape)}"
        )
    _check_leading_shape(ref_idx_topk[..., 0], cand_logits, "ref_idx_topk[..., 0]")
    idx = ref_idx_topk.to(device=cand_logits.device, dtype=torch.int64)
    logq_all = _log_softmax(cand_logits)
    logq = logq_all.gather(-1, idx).to(torch.float64)
    logp = ref_logp_topk.to(device=cand_logits.device, dtype=torch.float64)
    head = weighted_log_ratio(torch.exp(logp), logp, logq).sum(dim=-1)
    if idx.shape[-1] >= cand_logits.shape[-1]:
        return head.clamp_min(0.0)  # k == V: the tail bucket is empty, p_tail is exactly 0
    p_tail = tail_mass(logp)
    tail = weighted_log_ratio(p_tail, torch.log(p_tail), _log_tail_prob(logq_all, idx))
    return (head + tail).clamp_min(0.0)


def kl_exact(ref_logits: Tensor, cand_logits: Tensor) -> Tensor:
    """Full-vocabulary ``KL(P || Q) = sum_v p_v (log p_v - log q_v)`` in nats.

    Both log-softmaxes in at least float32 (the wider of the two input precisions), the sum
    accumulated in float64, clamped at >= 0; ``q = 0`` where ``p > 0`` gives ``+inf``.
    Shapes: ``[..., V]`` twice -> float64 ``[...]``.
    """
    if tuple(ref_logits.shape) != tuple(cand_logits.shape):
        raise ValueError(f"ref_logits shape {tuple(ref_logits.shape)} != cand_logits shape {tuple(cand_logits.shape)}")
    logp = _log_softmax(ref_logits)
    logq = _log_softmax(cand_logits.to(ref_logits.device))
    dtype = torch.promote_types(logp.dtype, logq.dtype)
    logp, logq = logp.to(dtype), logq.to(dtype)
    terms = weighted_log_ratio(torch.exp(logp), logp, logq)
    return terms.sum(dim=-1, dtype=torch.float64).clamp_min(0.0)


def top1_agree(ref: Tensor, cand_logits: Tensor) -> Tensor:
    """Whether ``argmax(cand_logits) == ref top-1 token``, bool ``[...]``.

    ``ref`` is either the reference top-1 index tensor (integer, shape ``[...]``, e.g.
    ``idx_topk[..., 0]``) or the reference logits (floating, shape ``[..., V]``; argmax taken).
    Exact ties resolve to the first maximal index in ``torch.argmax``; ``torch.topk`` gives
    no such guarantee, so tied reference logits may make the two ``ref`` forms differ.
    """
    if ref.is_floating_point():
        if tuple(ref.shape) != tuple(cand_logits.shape):
            raise ValueError(f"ref logits shape {tuple(ref.shape)} != cand_logits shape {tuple(cand_logits.shape)}")
        ref = ref.argmax(dim=-1)
    _check_leading_shape(ref, cand_logits, "ref top-1 index")
    return cand_logits.argmax(dim=-1) == ref.to(device=cand_logits.device, dtype=torch.int64)


def nll_of_targets(cand_logits: Tensor, targets: Tensor) -> Tensor:
    """Negative log-likelihood ``-log q(target)`` in nats, float64 ``[...]``.

    ``q = softmax(cand_logits)`` in at least float32; ``targets`` are integer token ids in
    ``[0, V)`` with shape ``cand_logits.shape[:-1]``.
    """
    if targets.is_floating_point() or targets.dtype == torch.bool:
        raise TypeError(f"targets must be an integer tensor, got {targets.dtype}")
    _check_leading_shape(targets, cand_logits, "targets")
    vocab = cand_logits.shape[-1]
    if targets.numel() and (int(targets.min()) < 0 or int(targets.max()) >= vocab):
        raise ValueError(f"targets must lie in [0, {vocab}), got range [{int(targets.min())}, {int(targets.max())}]")
    idx = targets.to(device=cand_logits.device, dtype=torch.int64).unsqueeze(-1)
    logq = _log_softmax(cand_logits).gather(-1, idx).squeeze(-1)
    return -logq.to(torch.float64)
