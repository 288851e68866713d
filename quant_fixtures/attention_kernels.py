"""The attention kernels of the suite's prompt stages on CUDA: every fused SDPA backend but cuDNN's.

PyTorch's cuDNN attention builds an execution graph for each new shape. Prompt scoring, the noise
floor and generation's prefill run padded batches whose length changes from batch to batch, so
they pay that build at nearly every call. Measured with `make gpu-check`'s matrix on one H100
(2026-12-07, random weights, torch 2.11): without cuDNN for the whole evaluation, prompt scoring
took 1.9 s against 4.2 s (Mistral-7B FP16) and 1.6 against 3.8 s (Qwen2.5-0.5B FP16), Qwen's FP16
generation 0.6 against 1.6 s; but Mistral-7B's long-context stage took 141 s against 119 s (INT8
reads whole 32K prefills, where cuDNN's kernel is the faster one), so the long-context and
perplexity stages keep PyTorch's own choice.

The choice is part of the CUDA numerics fingerprint (environment.py), so references and baselines
read with other attention kernels are recomputed, never compared with these.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager, nullcontext

from torch.nn.attention import SDPBackend, sdpa_kernel

ATTENTION_KERNELS = "prompt stages: sdpa flash, memory-efficient, math (no cuDNN); other stages: torch's choice"
_BACKENDS = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]


@contextmanager
def prompt_attention(device: str) -> Iterator[None]:
    """While active, attention on CUDA runs without cuDNN's SDPA (the CPU is left as it is). The
    backend flags are global to the process; they are restored on exit."""
    with sdpa_kernel(_BACKENDS) if device.startswith("cuda") else nullcontext():
        yield
