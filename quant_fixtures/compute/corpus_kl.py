"""Token-level KL over the WikiText-2 perplexity pass (llama.cpp `--kl-divergence` parity).

The FP16 pass keeps the top-k log-probs of every scored position (in window order); a variant's
pass compares its full distribution at the same positions against them.
"""

from __future__ import annotations

from typing import Sequence

import torch

from quant_fixtures.metrics.divergence import CorpusKL, kl_topk, topk_reference
from quant_fixtures.store.corpus_reference import CORPUS_TOP_K


class TopkRecorder:
    """Logprob hook for the FP16 pass: collects (logp, idx) top-k rows of scored positions per window."""

    def __init__(self, n_windows: int, k: int = CORPUS_TOP_K) -> None:
        self.k = k
        self.logp: list[list[torch.Tensor]] = [[] for _ in range(n_windows)]
        self.idx: list[list[torch.Tensor]] = [[] for _ in range(n_windows)]

    def reset(self, batch: Sequence[int]) -> None:
        """Forget what these windows recorded (their batch is being run again)."""
        for w in batch:
            self.logp[w], self.idx[w] = [], []

    def __call__(self, batch: Sequence[int], targets: torch.Tensor, logp: torch.Tensor, mask: torch.Tensor) -> None:
        for row, w in enumerate(batch):
            values, indices = topk_reference(logp[row][mask[row]], self.k)
            self.logp[w].append(values.cpu())
            self.idx[w].append(indices.to(torch.int32).cpu())

    def tensors(self) -> dict[str, torch.Tensor]:
        return {"logp": torch.cat([t for w in self.logp for t in w]),
                "idx": torch.cat([t for w in self.idx for t in w])}


class KLAgainstReference:
    """Logprob hook for a variant's pass: KL and same-top-1 at each scored position.

    The reference rows are stored window after window; a batch delivers chunks of positions for
    several windows at once, so each window keeps its own cursor into its slice and its own values
    (a window whose batch is run again starts over; the summary reads the windows in order).
    """

    def __init__(self, reference: dict[str, torch.Tensor], window_tokens: Sequence[int]) -> None:
        self.ref_logp, self.ref_idx = reference["logp"], reference["idx"].long()
        if self.ref_logp.shape[0] != sum(window_tokens):
            raise ValueError(f"corpus KL reference holds {self.ref_logp.shape[0]} positions, "
                             f"the windows score {sum(window_tokens)}")
        self.start = [0]
        for n in window_tokens[:-1]:
            self.start.append(self.start[-1] + n)
        self.cursor = list(self.start)
        self.end = [s + n for s, n in zip(self.start, window_tokens)]
        self.kl: list[list[torch.Tensor]] = [[] for _ in window_tokens]
        self.same: list[list[torch.Tensor]] = [[] for _ in window_tokens]

    def reset(self, batch: Sequence[int]) -> None:
        for w in batch:
            self.cursor[w], self.kl[w], self.same[w] = self.start[w], [], []

    def __call__(self, batch: Sequence[int], targets: torch.Tensor, logp: torch.Tensor, mask: torch.Tensor) -> None:
        for row, w in enumerate(batch):
            cand = logp[row][mask[row]]
            lo, hi = self.cursor[w], self.cursor[w] + cand.shape[0]
            if hi > self.end[w]:
                raise RuntimeError(f"corpus KL: window {w} scored more positions than the FP16 reference holds")
            ref_logp, ref_idx = self.ref_logp[lo:hi].to(cand.device), self.ref_idx[lo:hi].to(cand.device)
            self.kl[w].append(kl_topk(ref_logp, ref_idx, cand).cpu())
            self.same[w].append((cand.argmax(-1) == ref_idx[:, 0]).cpu())
            self.cursor[w] = hi

    def summary(self) -> CorpusKL:
        """Every scored position's KL and top-1 agreement, in window order."""
        acc = CorpusKL()
        for kl, same in zip(self.kl, self.same):
            for k, s in zip(kl, same):
                acc.update(k, s)
        return acc
