"""Exact token-level comparison with FP16 over the WikiText-2 perplexity pass.

The FP16 pass keeps the final hidden state of every scored position (window after window) and its
output head (metrics/reference_head.py); a variant's pass rebuilds the FP16 logits at the same
positions from them and compares the two distributions over the whole vocabulary
(metrics/token_comparison.py). One model is resident at a time.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch

from quant_fixtures.compute.scoring import ScoredChunk
from quant_fixtures.metrics.reference_head import ReferenceHead
from quant_fixtures.metrics.token_comparison import compare_positions, concat_comparisons

if TYPE_CHECKING:
    from transformers import PreTrainedModel


class HiddenRecorder:
    """Hook for the FP16 pass: the final hidden states of the scored positions, per window."""

    def __init__(self, n_windows: int) -> None:
        self.hidden: list[list[torch.Tensor]] = [[] for _ in range(n_windows)]

    def reset(self, batch: Sequence[int]) -> None:
        """Forget what these windows recorded (their batch is being run again)."""
        for w in batch:
            self.hidden[w] = []

    def __call__(self, chunk: ScoredChunk) -> None:
        for row, w in enumerate(chunk.windows):
            self.hidden[w].append(chunk.hidden[row][chunk.mask[row]].cpu())

    def hidden_states(self) -> torch.Tensor:
        """The recorded hidden states [positions, H], window after window."""
        return torch.cat([t for w in self.hidden for t in w])

    def tensors(self, model: PreTrainedModel) -> dict[str, torch.Tensor]:
        """What the corpus reference stores: the hidden states in window order and the output head."""
        return {"hidden": self.hidden_states(), **ReferenceHead.of(model).to_tensors()}


class KLAgainstReference:
    """Hook for a variant's pass: the full comparison with FP16 at every scored position.

    The reference rows are stored window after window; a batch delivers chunks of positions for
    several windows at once, so each window keeps its own cursor into its slice and its own results
    (a window whose batch is run again starts over; the results are read in window order).
    """

    def __init__(
        self, reference: dict[str, torch.Tensor], window_tokens: Sequence[int], head: ReferenceHead | None = None
    ) -> None:
        """``head``: the FP16 head to use instead of the stored one (the live model's, for FP16 against itself)."""
        self.hidden, self.head = reference["hidden"], head or ReferenceHead.from_tensors(reference)
        if self.hidden.shape[0] != sum(window_tokens):
            raise ValueError(
                f"corpus reference holds {self.hidden.shape[0]} positions, the windows score {sum(window_tokens)}"
            )
        self.start = [0]
        for n in window_tokens[:-1]:
            self.start.append(self.start[-1] + n)
        self.cursor = list(self.start)
        self.end = [s + n for s, n in zip(self.start, window_tokens)]
        self.parts: list[list[dict[str, np.ndarray]]] = [[] for _ in window_tokens]

    def reset(self, batch: Sequence[int]) -> None:
        for w in batch:
            self.cursor[w], self.parts[w] = self.start[w], []

    def __call__(self, chunk: ScoredChunk) -> None:
        for row, w in enumerate(chunk.windows):
            cand = chunk.logits[row][chunk.mask[row]]
            lo, hi = self.cursor[w], self.cursor[w] + cand.shape[0]
            if hi > self.end[w]:
                raise RuntimeError(f"corpus KL: window {w} scored more positions than the FP16 reference holds")
            ref = self.head.logits(self.hidden[lo:hi].to(cand.device))
            self.parts[w].append(
                compare_positions(ref, cand, chunk.targets[row][chunk.mask[row]], chunk.slice_elements)
            )
            self.cursor[w] = hi

    def complete(self) -> bool:
        return self.cursor == self.end

    def positions(self) -> dict[str, np.ndarray]:
        """Every scored position's comparison, in window order."""
        if not self.complete():
            raise RuntimeError("corpus KL: the pass did not score every position of the FP16 reference")
        return concat_comparisons(p for parts in self.parts for p in parts)
