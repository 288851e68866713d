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
    several windows at once, so each window keeps its own cursor into its slice.
    """

    def __init__(self, reference: dict[str, torch.Tensor], window_tokens: Sequence[int]) -> None:
        self.ref_logp, self.ref_idx = reference["logp"], reference["idx"].long()
        if self.ref_logp.shape[0] != sum(window_tokens):
            raise ValueError(f"corpus KL reference holds {self.ref_logp.shape[0]} positions, "
                             f"the windows score {sum(window_tokens)}")
        starts = [0]
        for n in window_tokens[:-1]:
            starts.append(starts[-1] + n)
        self.cursor = starts
        self.end = [s + n for s, n in zip(starts, window_tokens)]
        self.acc = CorpusKL()

    def __call__(self, batch: Sequence[int], targets: torch.Tensor, logp: torch.Tensor, mask: torch.Tensor) -> None:
        for row, w in enumerate(batch):
            cand = logp[row][mask[row]]
            lo, hi = self.cursor[w], self.cursor[w] + cand.shape[0]
            if hi > self.end[w]:
                raise RuntimeError(f"corpus KL: window {w} scored more positions than the FP16 reference holds")
            ref_logp, ref_idx = self.ref_logp[lo:hi].to(cand.device), self.ref_idx[lo:hi].to(cand.device)
            self.acc.update(kl_topk(ref_logp, ref_idx, cand), cand.argmax(-1) == ref_idx[:, 0])
            self.cursor[w] = hi
