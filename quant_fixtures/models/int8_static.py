"""Per-sequence LLM.int8 with static shapes: no host synchronisation, so a CUDA graph can capture it.

The per-sequence layer (int8_per_sequence.py) finds the outlier columns with ``argwhere``,
``nonzero`` and ``unique``: every call waits for the GPU and has shapes that depend on the data, so
decoding an INT8 model could not be captured as a CUDA graph and every layer of every step stalled
the GPU (Mistral-7B int8 generation: 27 s eager against 3.4 s for NF4, H100, 2026-12-06).

Here every shape is fixed by the input's shape alone. For ``x`` [B, T, K]:

    1. each row quantized by its own absmax over its elements below the threshold, outlier elements
       zeroed (bitsandbytes' ``int8_vectorwise_quant`` on the row with its outliers masked: the row
       statistics bitsandbytes computes with the threshold);
    2. sequence s owns the columns in which one of its real rows has ``|x| >= threshold``; its rows
       get those columns zeroed in int8, times the int8 weight, dequantized (``int8_scaled_mm``);
    3. the float part over ``columns`` fixed columns: the ``columns`` largest of the union of owned
       columns (all of them when the union has no more), each row's values kept only in the columns
       its sequence owns, times the dequantized weight columns.

That is, per sequence, the sum bitsandbytes computes for the sequence alone: the same int8 terms
(exact in int32) and the same float terms, plus products with zeros, in another summation order.
When the union has more than ``columns`` columns, the columns past the largest ``columns`` are
left out: the call is wrong, and ``OverflowGuard`` records it on the device, with the widest union
it saw. A caller reads the guard once after its work (one synchronisation, not one per layer) and
redoes the work with a guard of a width that holds that union (:func:`wider_columns`), or with the
exact dynamic path (``int8_per_sequence``).
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

import torch

# Float columns per call. Outliers of LLM.int8 sit in a few feature dimensions (Dettmers et al.,
# arXiv 2208.07339: 6 dimensions carry them at 6.7B parameters), so 64 leaves room across a batch.
STATIC_OUTLIER_COLUMNS = 64
# Where decoding takes the static path: CUDA, for its graphs. The CPU keeps the exact dynamic path,
# bit for bit bitsandbytes' numbers for each sequence alone (tests add "cpu" to run this one there).
STATIC_DEVICE_TYPES = frozenset({"cuda"})


class OverflowGuard:
    """The float columns of the static calls it guards (``columns``) and a device flag that a call
    sets when its union of outlier columns did not fit (see the module docstring), beside the widest
    union seen. Made before the work, on the model's device, so a captured graph writes into them;
    inference tensors, written only in inference mode, wherever the guard's caller is."""

    def __init__(self, device: torch.device | str, columns: int | None = None) -> None:
        self.columns = STATIC_OUTLIER_COLUMNS if columns is None else columns
        if self.columns < 1:
            raise ValueError(f"static LLM.int8 path: columns must be at least 1, got {self.columns}")
        with torch.inference_mode():
            self.flag = torch.zeros((), dtype=torch.bool, device=device)
            self.widest = torch.zeros((), dtype=torch.int64, device=device)

    def record(self, union_size: torch.Tensor, take: int) -> None:
        """A call whose union of owned columns has ``union_size`` columns and that kept ``take``."""
        with torch.inference_mode():
            self.flag.logical_or_(union_size > take)
            torch.maximum(self.widest, union_size, out=self.widest)

    def overflowed(self) -> bool:
        """Whether a call overflowed since the guard was made or reset (waits for the device)."""
        return bool(self.flag.item())

    def widest_union(self) -> int:
        """The most outlier columns one call's union held since the guard was made or reset."""
        return int(self.widest.item())

    def reset(self) -> None:
        with torch.inference_mode():
            self.flag.zero_()
            self.widest.zero_()


# The widest static try. Its float part dequantizes that many weight columns at every call, yet even
# at a layer's whole width the CUDA graph beats the exact path, whose every layer waits for the host:
# random-weight Mistral-7B INT8 (4 of its layers, 96 prompts, 64 steps; its unions cover all 14,336
# MLP columns) decoded in 1.17 s at the whole width against 1.68 s exactly, one process, H100,
# 2026-12-07 (benchmarks/int8_decode_widths.py). So the limit is past any layer input of the seed
# models (Mistral-7B's widest is 14,336): a try wider than a layer's input takes its whole width.
MAX_STATIC_COLUMNS = 1 << 16


def wider_columns(guard: OverflowGuard) -> int | None:
    """The width for another try after ``guard`` overflowed: a power of two of at least twice the
    widest union it saw (the union moves once the overflowing calls are computed right: the next
    layers see other activations), or None past ``MAX_STATIC_COLUMNS``: the exact path then."""
    need = max(2 * guard.widest_union(), 2 * guard.columns)
    width = 1 << (need - 1).bit_length()
    return width if width <= MAX_STATIC_COLUMNS else None


_STATIC: ContextVar[OverflowGuard | None] = ContextVar("quant_fixtures_static_int8", default=None)


@contextmanager
def static_outlier_columns(guard: OverflowGuard | None) -> Iterator[None]:
    """While active with a guard, per-sequence int8 layers take the static path and record overflows
    in ``guard`` (None: the exact dynamic path)."""
    token = _STATIC.set(guard)
    try:
        yield
    finally:
        _STATIC.reset(token)


def active_guard() -> OverflowGuard | None:
    return _STATIC.get()


@functools.cache
def int_mm_is_exact() -> bool:
    """Whether ``torch._int_mm`` multiplies int8 matrices exactly on this CPU. oneDNN's int8 GEMM
    for AVX2 alone saturates sums of product pairs (off by up to 119,357 on random matrices,
    docs/REPRODUCIBILITY.md); on such a machine bitsandbytes' own product is used. Checked once per
    process on random and extreme matrices against int64 arithmetic."""
    generator = torch.Generator().manual_seed(0)
    a = torch.randint(-128, 128, (64, 576), generator=generator, dtype=torch.int8)
    b = torch.randint(-128, 128, (256, 576), generator=generator, dtype=torch.int8)
    a[:8], b[:8], a[8:16], b[8:16] = 127, 127, -128, -128  # the largest pair sums either way
    try:
        product = torch._int_mm(a, b.t())
    except RuntimeError:  # no int8 GEMM for this CPU or build
        return False
    return torch.equal(product.long(), a.long() @ b.long().t())


def scaled_int8_product(
    quantized: torch.Tensor,
    weight_int8: torch.Tensor,
    row_scale: torch.Tensor,
    weight_scale: torch.Tensor,
    bias: torch.Tensor | None,
    dtype: torch.dtype,
) -> torch.Tensor:
    """bitsandbytes' ``int8_scaled_mm``: the int8 product in int32, dequantized by both scales.

    On the CPU the int32 product is ``torch._int_mm`` where it is exact (see :func:`int_mm_is_exact`).
    bitsandbytes takes it only where ATen dispatches AVX-512, and otherwise (on every machine under
    the suite's AVX2 pin, cpu_kernels.py) multiplies the int8 values as float32: exact while no
    partial sum passes 2**24, and 4x slower (SmolLM2-135M, 2 cores: 2.3 s of a 5.3 s forward of 2048
    tokens). So this is bitsandbytes' number wherever its own float32 sum is exact."""
    ops = torch.ops.bitsandbytes
    if quantized.device.type != "cpu" or not int_mm_is_exact():
        scaled: torch.Tensor = ops.int8_scaled_mm.default(  # torch.ops' operators are untyped
            quantized, weight_int8, row_scale, weight_scale, bias=bias, dtype=dtype
        )
        return scaled
    product = torch._int_mm(quantized, weight_int8.t())
    dequantized: torch.Tensor = ops.int8_mm_dequant.default(product, row_scale, weight_scale, dtype=dtype, bias=bias)
    return dequantized


def static_per_sequence_int8_matmul(
    x: torch.Tensor,
    weight_int8: torch.Tensor,
    weight_scale: torch.Tensor,
    bias: torch.Tensor | None,
    threshold: float,
    guard: OverflowGuard,
    real: torch.Tensor | None = None,
) -> torch.Tensor:
    """``x @ W.T (+ bias)`` by per-sequence LLM.int8 with static shapes (see the module docstring).

    ``x`` [B, T, K] (B sequences) or [N, K] (one sequence); ``weight_int8`` [O, K] and
    ``weight_scale`` [O]: bitsandbytes' CB and SCB; ``real`` [B, T] bool: the positions that choose
    outlier columns (None: all); ``guard`` gives the float columns and records a call whose union
    of owned columns exceeds them."""
    ops = torch.ops.bitsandbytes
    shape, width = x.shape, x.shape[-1]
    sequences = x if x.dim() == 3 else x.reshape(1, -1, width)
    half = sequences.to(torch.float16)
    outlier = half.abs() >= threshold  # [B, T, K]
    # 1. the row statistics bitsandbytes computes with a threshold: outlier elements left out
    quantized, row_scale, _ = ops.int8_vectorwise_quant.default(half.masked_fill(outlier, 0).view(-1, width), 0.0)
    # 2. each sequence's own columns leave its int8 rows
    seen = outlier if real is None else outlier & real.to(outlier.device).unsqueeze(-1)
    owns = seen.any(1)  # [B, K]
    quantized = quantized.view(sequences.shape).masked_fill(owns.unsqueeze(1), 0).view(-1, width)
    out = scaled_int8_product(quantized, weight_int8, row_scale, weight_scale, bias, x.dtype)
    # 3. the float part over a fixed number of columns: every owned one, unless the union overflows
    union = owns.any(0)
    take = min(guard.columns, width)
    guard.record(union.sum(), take)
    if take == width:  # every column: nothing to choose, and no copy of the weight to gather
        kept, values, columns = owns.unsqueeze(1), sequences, weight_int8
    else:
        _, index = union.to(torch.float16).topk(take)  # the union's columns first (ties: any order)
        # in column order: gathering int8 weight columns in topk's order reads single bytes far apart
        index = index.sort().values
        kept = owns.index_select(1, index).unsqueeze(1)  # [B, 1, take]: a sequence keeps only its own
        values, columns = sequences.index_select(2, index), weight_int8.index_select(1, index)
    values = values.masked_fill(~kept, 0).view(quantized.shape[0], take)
    dequantized = ops.int8_vectorwise_dequant.default(columns, weight_scale)
    out.addmm_(values, dequantized.to(x.dtype).t())
    return out.view(*shape[:-1], -1)
