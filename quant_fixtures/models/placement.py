"""Where a (model, variant) goes: its process's GPU, or, when it cannot fit there, every GPU of the
host (accelerate's ``device_map="auto"`` with a memory limit per GPU); and how many bytes a process
may hold on a GPU at all (:func:`gpu_limit`, which the memory budget of compute/memory.py uses too).

Spreading is for a process that owns the host's GPUs (a serial run); a pytest-xdist worker owns one
GPU and keeps the model there (if it does not fit, the pair fails with its out-of-memory line).
"""

from __future__ import annotations

from dataclasses import dataclass

# Share of a GPU's limit kept free of weights when a model is placed: room for the activations and
# caches of the passes that follow. (Not compute/memory.BATCH_HEADROOM, the margin a batch size
# leaves of the memory that is free once the model is loaded.)
ACTIVATION_HEADROOM = 0.10


@dataclass(frozen=True)
class Placement:
    device_map: dict[str, str] | str  # {"": device} or "auto"
    max_memory: dict[int, int] | None  # GPU index -> bytes accelerate may put there
    note: str | None  # said in the report when the model is spread


def placement(
    device: str, weight_bytes: int, weight_share: float, gpu_limits: list[int], may_spread: bool
) -> Placement:
    """``weight_bytes``: the 16-bit weights on disk; ``weight_share``: the variant's share of them
    once loaded (variants.Variant.weight_share); ``gpu_limits``: bytes each visible
    GPU may hold (:func:`gpu_limits`); ``device``: this process's GPU."""
    if not device.startswith("cuda") or not gpu_limits:
        return Placement({"": device}, None, None)
    index = int(device.split(":")[1]) if ":" in device else 0
    need = weight_bytes * weight_share
    if need <= gpu_limits[index] * (1 - ACTIVATION_HEADROOM) or not may_spread or len(gpu_limits) < 2:
        return Placement({"": device}, None, None)
    max_memory = {i: int(limit * (1 - ACTIVATION_HEADROOM)) for i, limit in enumerate(gpu_limits)}
    if need > sum(max_memory.values()):
        return Placement({"": device}, None, None)  # fits nowhere: fail on this GPU with one line
    note = (
        f"load: {need / 2**30:.1f} GiB of weights do not fit {device} ({gpu_limits[index] / 2**30:.1f} GiB); "
        f"spread over {len(gpu_limits)} GPUs with device_map=auto, at most "
        + ", ".join(f"{v / 2**30:.1f}" for v in max_memory.values())
        + " GiB each"
    )
    return Placement("auto", max_memory, note)


def gpu_limit(device: str | int, cap_bytes: int | None) -> int:
    """Bytes one process may hold on a GPU ("cuda:N" or its index): the card's memory, or the cap
    (``--max-gpu-memory``) where that is smaller. The one place this rule is written."""
    import torch

    card = torch.cuda.get_device_properties(device).total_memory
    return card if cap_bytes is None else min(card, cap_bytes)


def gpu_limits(cap_bytes: int | None) -> list[int]:
    """:func:`gpu_limit` of each visible GPU (none without CUDA)."""
    import torch

    if not torch.cuda.is_available():
        return []
    return [gpu_limit(i, cap_bytes) for i in range(torch.cuda.device_count())]
