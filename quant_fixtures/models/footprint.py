"""How many bytes a loaded model holds, counted the same way for every method.

``get_memory_footprint`` multiplies each parameter's element count by its element size, which
overstates weights held as tensor subclasses (torchao, quanto report their 16-bit logical dtype)
and misses what methods keep beside the parameters (bitsandbytes scales, HQQ scales and zeros).
Here: tensor subclasses count their inner tensors; unquantized floating-point parameters count
at the 16-bit weight dtype (on the CPU some methods must load in float32 to compute in float32);
buffers as they are. For 16-bit and bitsandbytes models the footprint equals
``get_memory_footprint`` (tested); the state kept beside the weights is counted apart.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


def _bytes(tensor: torch.Tensor, seen: set[tuple[int, int, str]], float_itemsize: int | None = None) -> int:
    import torch

    # A tensor subclass (torchao, quanto) names its inner tensors through PyTorch's flatten protocol.
    flatten = getattr(tensor, "__tensor_flatten__", None)
    if type(tensor) not in (torch.Tensor, torch.nn.Parameter) and flatten is not None:
        names, _ = flatten()
        return sum(_bytes(getattr(tensor, name), seen) for name in names)
    key = (tensor.data_ptr(), tensor.numel(), str(tensor.device))
    if key in seen:  # tied weights and shared inner tensors count once
        return 0
    seen.add(key)
    size = float_itemsize if float_itemsize and tensor.is_floating_point() else tensor.element_size()
    return tensor.numel() * size


def model_footprint(model: torch.nn.Module, weight_dtype: torch.dtype) -> int:
    """Bytes of the parameters and buffers as held (see the module docstring)."""
    import torch

    itemsize = torch.empty((), dtype=weight_dtype).element_size()
    seen: set[tuple[int, int, str]] = set()
    params = sum(_bytes(p.data if type(p) is torch.nn.Parameter else p, seen, itemsize) for p in model.parameters())
    return params + sum(_bytes(b, seen) for b in model.buffers())


def _tensors(value: object) -> list[torch.Tensor]:
    import torch

    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, dict):
        return [t for v in value.values() for t in _tensors(v)]
    return []


def quantization_state_bytes(model: torch.nn.Module) -> int:
    """Bytes of quantization state kept outside parameters and buffers: LLM.int8 row scales (SCB),
    NF4/FP4 block absmax and code book (with double quantization the second level too), HQQ's
    scales and zeros (its ``meta``)."""
    total = 0
    for param in model.parameters():
        scb = getattr(param, "SCB", None)
        if scb is not None:
            total += scb.numel() * scb.element_size()
        state = getattr(param, "quant_state", None)
        while state is not None:
            total += sum(t.numel() * t.element_size() for t in (state.absmax, state.code) if t is not None)
            state = getattr(state, "state2", None)
    for module in model.modules():
        if hasattr(module, "W_q") and isinstance(getattr(module, "meta", None), dict):  # hqq HQQLinear
            total += sum(t.numel() * t.element_size() for t in _tensors(module.meta))
    return total
