"""Where a (model, variant) goes: its process's GPU, or, when it cannot fit there, every GPU of the
host (accelerate's ``device_map="auto"`` with a memory limit per GPU).

Spreading is for a process that owns the host's GPUs (a serial run); a pytest-xdist worker owns one
GPU and keeps the model there (if it does not fit, the pair fails with its out-of-memory line).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

HEADROOM = 0.10  # share of a GPU's limit left for activations when the weights are placed


@dataclass(frozen=True)
class Placement:
    device_map: Any  # {"": device} or "auto"
    max_memory: dict[Any, int] | None
    note: str | None  # said in the report when the model is spread


def placement(
    device: str, weight_bytes: int, weight_share: float, gpu_limits: list[int], may_spread: bool
) -> Placement:
    """``weight_bytes``: the 16-bit weights on disk; ``weight_share``: the variant's share of them
    once loaded (variants.Variant.weight_share); ``gpu_limits``: bytes each visible
    GPU may hold (the cap, else the card); ``device``: this process's GPU."""
    if not device.startswith("cuda") or not gpu_limits:
        return Placement({"": device}, None, None)
    index = int(device.split(":")[1]) if ":" in device else 0
    need = weight_bytes * weight_share
    if need <= gpu_limits[index] * (1 - HEADROOM) or not may_spread or len(gpu_limits) < 2:
        return Placement({"": device}, None, None)
    max_memory = {i: int(limit * (1 - HEADROOM)) for i, limit in enumerate(gpu_limits)}
    if need > sum(max_memory.values()):
        return Placement({"": device}, None, None)  # fits nowhere: fail on this GPU with one line
    note = (
        f"load: {need / 2**30:.1f} GiB of weights do not fit {device} ({gpu_limits[index] / 2**30:.1f} GiB); "
        f"spread over {len(gpu_limits)} GPUs with device_map=auto, at most "
        + ", ".join(f"{v / 2**30:.1f}" for v in max_memory.values())
        + " GiB each"
    )
    return Placement("auto", max_memory, note)


def gpu_limits(cap_bytes: int | None) -> list[int]:
    """Bytes each visible GPU may hold: the cap where it is smaller than the card."""
    import torch

    if not torch.cuda.is_available():
        return []
    totals = [torch.cuda.get_device_properties(i).total_memory for i in range(torch.cuda.device_count())]
    return [min(t, cap_bytes) if cap_bytes is not None else t for t in totals]
