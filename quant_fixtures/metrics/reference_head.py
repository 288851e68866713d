"""The FP16 model's output head, stored beside its final hidden states so that a variant's pass can
rebuild the exact FP16 logits at any scored position with only the variant loaded.

The FP16 logits are the FP16 model's final (post-norm) hidden state times its output head. Keeping
the hidden state costs the hidden size per position instead of the vocabulary size (576 vs 49,152
for SmolLM2, 4,096 vs 32,000 for Mistral-7B, 896 vs 151,936 for Qwen2.5-0.5B), and the logits it
gives back are the forward pass's own: full-vocabulary KL with no top-k bound.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from transformers import PreTrainedModel


class UnsupportedHeadError(RuntimeError):
    """The model's output head is not a plain linear layer, so its logits cannot be rebuilt."""


@dataclass
class ReferenceHead:
    weight: torch.Tensor  # [V, H] on the CPU, in the FP16 model's head dtype
    bias: torch.Tensor | None = None
    softcap: float | None = None
    _on_device: dict[str, tuple[torch.Tensor, torch.Tensor | None]] = field(default_factory=dict, repr=False)

    @classmethod
    def of(cls, model: PreTrainedModel) -> ReferenceHead:
        """A copy of the model's head on the CPU (what the references store)."""
        live = cls.live(model)
        bias = live.bias.to("cpu", copy=True) if live.bias is not None else None
        return cls(live.weight.to("cpu", copy=True), bias, live.softcap)

    @classmethod
    def live(cls, model: PreTrainedModel) -> ReferenceHead:
        """The loaded model's own head, not copied (FP16 against itself, the noise floors, needs no
        second copy of the head on the device)."""
        head = model.get_output_embeddings()
        if not isinstance(head, torch.nn.Linear):
            raise UnsupportedHeadError(
                f"{type(model).__name__}: output head is {type(head).__name__}, not a "
                "torch.nn.Linear; its FP16 logits cannot be rebuilt from hidden states"
            )
        softcap = getattr(model.config, "final_logit_softcapping", None)
        return cls(
            head.weight.detach(),
            head.bias.detach() if head.bias is not None else None,
            float(softcap) if softcap else None,
        )

    @property
    def vocab(self) -> int:
        return int(self.weight.shape[0])

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """FP16 logits [..., V] for final hidden states [..., H], on the hidden states' device, computed
        as the model computes them (same dtype, bias and final soft-capping)."""
        key = str(hidden.device)
        if key not in self._on_device:  # one copy per device, made once
            bias = self.bias.to(hidden.device) if self.bias is not None else None
            self._on_device[key] = (self.weight.to(hidden.device), bias)
        weight, bias = self._on_device[key]
        logits = torch.nn.functional.linear(hidden.to(weight.dtype), weight, bias)
        if self.softcap:
            logits = torch.tanh(logits / self.softcap) * self.softcap
        return logits

    def to_tensors(self) -> dict[str, torch.Tensor]:
        out = {"head_weight": self.weight.contiguous()}
        if self.bias is not None:
            out["head_bias"] = self.bias.contiguous()
        if self.softcap:
            out["head_softcap"] = torch.tensor([self.softcap], dtype=torch.float64)
        return out

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor]) -> ReferenceHead:
        softcap = tensors.get("head_softcap")
        return cls(
            tensors["head_weight"], tensors.get("head_bias"), float(softcap.item()) if softcap is not None else None
        )
