"""The attention kernels of the suite's CUDA reads: every fused SDPA backend but cuDNN's.

PyTorch's cuDNN attention builds an execution graph for each new shape, and the suite meets a new
shape at almost every call of its long-context read (a chunk against a longer cache each time, a
probe's answer one position per call) and of its padded prompt batches. Measured on one H100
(2026-12-07, random weights, torch 2.11, one read of 2 x 32,768 tokens and 12 probes of 4,096 with
answers decoded, 6 sequences per pass): Qwen2.5-0.5B 13.8 s with cuDNN the first time, 2.8 s the
second, 3.3-3.4 s without it; Mistral-7B 14.5 / 5.4 / 6.0-6.2 s. Fixed shapes lose little without it
(three forwards of 8 x 2,048 tokens: Qwen 0.195 s against 0.201 s, Mistral 1.54 against 1.58 s).

The choice is part of the CUDA numerics fingerprint (environment.py), so references and baselines
read with other attention kernels are recomputed, never compared with these.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager, nullcontext

from torch.nn.attention import SDPBackend, sdpa_kernel

ATTENTION_KERNELS = "sdpa: flash, memory-efficient, math (no cuDNN)"
_BACKENDS = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]


@contextmanager
def suite_attention(device: str) -> Iterator[None]:
    """While active, attention on CUDA runs on :data:`ATTENTION_KERNELS` (the CPU is left as it is).
    The backend flags are global to the process; they are restored on exit."""
    with sdpa_kernel(_BACKENDS) if device.startswith("cuda") else nullcontext():
        yield
