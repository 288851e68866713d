"""LLM.int8 with outlier columns chosen per sequence, so a batch gives each sequence what it gets alone.

bitsandbytes' ``MatMul8bitLt`` (0.45 and later) computes ``X @ W.T`` for a 2-D ``X`` of every token
in the call as

    int8 part:  X with the outlier columns zeroed, each row quantized by its own absmax (outlier
                elements left out of the absmax), times the int8 weight, exact in int32;
    float part: X[:, C] @ dequant(W)[:, C].T in the input's dtype,

where C holds every column in which *any* row of the call has an element ``|x| >= threshold``. C is
chosen over the whole batch (padding rows included), so a sequence's numbers depend on the other
sequences and on how much padding it was given; and scoring one sequence per pass to avoid that
costs half the throughput on the GPU.

Here C is chosen per sequence (a row of ``X`` of shape [B, T, K]; padding positions named by
:func:`real_tokens` take no part): row r of sequence s gets its own columns C_s in float and every
other column in int8, in one batched call. bitsandbytes' own operators do the work (the row
quantization, the int8 matmul and its dequantization, the weight dequantization; on the CPU the
int8 matmul is ``torch._int_mm`` where exact, int8_static.scaled_int8_product); only the columns
of the union that are not a row's own are quantized again here, with the default backend's formula
(``round(x * 127 / absmax)``), and on the CPU the float part runs once per distinct set of owned columns over
exactly those columns, as bitsandbytes runs it for the sequence alone, so a sequence in a batch gets
bit for bit what bitsandbytes gives it alone (tested). On CUDA (and past 16 distinct sets) one float
product over the union with the columns a row does not own zeroed: the same terms in another
summation order, which cuBLAS changes with the shape anyway (for the 16-bit model too). A 2-D input
(no batch axis) is one sequence, as in bitsandbytes.

The replacement is bound per module (``module.forward``), only to ``Linear8bitLt`` layers with
int8 weights, a threshold above 0 and no training; :func:`remove_per_sequence_int8` restores
bitsandbytes' own forward.

**One sequence read in chunks** (the long-context stage, compute/long_context.py) would pick C per
chunk, which no user's model does: a model reads a prompt in one pass, so C is chosen over the whole
prompt. :class:`WholeSequenceColumns` gives every layer the columns a whole read would choose: while
active (:func:`whole_sequence_columns`), each layer records the columns its rows flag and treats the
columns of ``forced`` as outliers too; the reader repeats the chunked read with ``forced`` set to what
the previous read flagged until the two agree for every layer. Then every chunk used exactly the
columns the whole sequence flags, and a row's own quantization does not depend on other rows (its
absmax leaves out only its own outlier elements), so the read equals a whole read up to float
summation order.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from types import MethodType
from typing import TYPE_CHECKING

import torch

from quant_fixtures.models import int8_static
from quant_fixtures.models.int8_static import active_guard, scaled_int8_product, static_per_sequence_int8_matmul

if TYPE_CHECKING:
    from bitsandbytes.nn import Linear8bitLt

_REAL_TOKENS: ContextVar[torch.Tensor | None] = ContextVar("quant_fixtures_real_tokens", default=None)
_WHOLE_SEQUENCE: ContextVar[WholeSequenceColumns | None] = ContextVar("quant_fixtures_whole_sequence", default=None)
_MARK = "_quant_fixtures_per_sequence_int8"
MAX_EXACT_SETS = 16  # distinct owned-column sets given a float product each (beyond: one masked product)


@contextmanager
def real_tokens(mask: torch.Tensor | None) -> Iterator[None]:
    """While active, a [B, T] input of a per-sequence int8 layer counts only the positions where
    ``mask`` [B, T] is true (left padding is false) when it picks a sequence's outlier columns.
    Inputs of another shape (decode steps) count every position."""
    token = _REAL_TOKENS.set(mask.bool() if mask is not None else None)
    try:
        yield
    finally:
        _REAL_TOKENS.reset(token)


class WholeSequenceColumns:
    """Outlier columns per LLM.int8 layer over one sequence read in several calls (see the module
    docstring): ``forced`` holds what the previous read flagged, ``flagged`` what this read flags."""

    def __init__(self) -> None:
        self.forced: dict[int, torch.Tensor] = {}  # id(layer) -> bool [in_features]
        self.flagged: dict[int, torch.Tensor] = {}

    def next_read(self) -> None:
        """Start another read of the same sequence, forcing what the last one flagged."""
        self.forced, self.flagged = self.flagged, {}

    def agrees(self) -> bool:
        """Whether the last read forced exactly the columns it flagged, in every layer."""
        return self.forced.keys() == self.flagged.keys() and all(
            torch.equal(self.forced[k], self.flagged[k]) for k in self.flagged
        )

    def flagged_of(self, layer: object, width: int, device: torch.device) -> torch.Tensor:
        mask = self.flagged.get(id(layer))
        if mask is None:
            mask = self.flagged[id(layer)] = torch.zeros(width, dtype=torch.bool, device=device)
        return mask


@contextmanager
def whole_sequence_columns(columns: WholeSequenceColumns | None) -> Iterator[None]:
    """While active, per-sequence int8 layers record and force outlier columns in ``columns``
    (None: nothing recorded or forced)."""
    token = _WHOLE_SEQUENCE.set(columns)
    try:
        yield
    finally:
        _WHOLE_SEQUENCE.reset(token)


def _real_positions(x: torch.Tensor) -> torch.Tensor | None:
    mask = _REAL_TOKENS.get()
    if mask is None or x.dim() != 3 or tuple(mask.shape) != tuple(x.shape[:2]):
        return None
    return mask.to(x.device)


def per_sequence_int8_matmul(
    x: torch.Tensor,
    weight_int8: torch.Tensor,
    weight_scale: torch.Tensor,
    bias: torch.Tensor | None,
    threshold: float,
    real: torch.Tensor | None = None,
    forced: torch.Tensor | None = None,
    flagged: torch.Tensor | None = None,
) -> torch.Tensor:
    """``x @ W.T (+ bias)`` by LLM.int8 with outlier columns per sequence (see the module docstring).

    ``x`` [B, T, K] (B sequences) or [N, K] (one sequence); ``weight_int8`` [O, K] int8 rows and
    ``weight_scale`` [O] their absmax (bitsandbytes' CB and SCB); ``real`` [B, T] bool: positions
    that take part in choosing outlier columns (None: all); ``forced`` [K] bool: columns every
    sequence treats as outliers besides its own; ``flagged`` [K] bool: set where a row of the call
    has an outlier (recorded in place)."""
    ops = torch.ops.bitsandbytes
    shape, width = x.shape, x.shape[-1]
    rows = x.reshape(-1, width)
    sequences = shape[0] if x.dim() == 3 else 1
    # bitsandbytes' row quantization: outlier elements zeroed and left out of each row's absmax; the
    # columns in which any row has an outlier (``union``) come back zeroed in every row.
    quantized, row_scale, union = ops.int8_vectorwise_quant.default(rows.to(torch.float16), threshold)
    if flagged is not None and union is not None:
        flagged[union] = True
    if forced is not None:  # forced columns go to the float part too: zero them in the int8 rows
        extra = forced.clone()
        if union is not None:
            extra[union] = False
        quantized[:, extra] = 0
        union = (extra | _column_mask(union, width, x.device)).nonzero().view(-1)
    if union is None or union.numel() == 0:
        out = scaled_int8_product(quantized, weight_int8, row_scale, weight_scale, bias, x.dtype)
        return out.view(*shape[:-1], -1)
    # Which of the union's columns each sequence owns: those where one of its real rows has an outlier.
    sub = rows.index_select(1, union).to(torch.float16)
    outlier = sub.abs() >= threshold
    per_sequence = outlier.view(sequences, -1, union.numel())
    if real is not None:
        per_sequence = per_sequence & real.unsqueeze(-1)
    owns = per_sequence.any(1)  # [sequences, union]
    if forced is not None:
        owns = owns | forced[union]
    owned = owns.unsqueeze(1).expand_as(per_sequence).reshape(outlier.shape)  # [rows, union]
    # The union's columns a row does not own go back to int8 (default backend's formula), its own stay zero.
    requantized = torch.round(sub.masked_fill(outlier, 0) * (127.0 / row_scale.unsqueeze(-1))).to(torch.int8)
    quantized.index_copy_(1, union, requantized.masked_fill(owned, 0))
    out = scaled_int8_product(quantized, weight_int8, row_scale, weight_scale, bias, x.dtype)
    # The float part. On the CPU, once per distinct set of owned columns (usually one: the model's few
    # massive activation dimensions) over exactly those columns: the product bitsandbytes computes
    # alone. On CUDA, whose float16 kernels sum differently with the shape anyway, for decode steps
    # (one token per sequence: every row its own set) and past MAX_EXACT_SETS sets: one product over
    # the union with the columns a row does not own zeroed, the same terms in another order.
    exact = x.device.type == "cpu" and sequences <= MAX_EXACT_SETS and rows.shape[0] > sequences
    owned_sets: torch.Tensor | None = None
    set_of_sequence: torch.Tensor | None = None
    if exact:
        owned_sets, set_of_sequence = torch.unique(owns, dim=0, return_inverse=True)
    if owned_sets is None or set_of_sequence is None or owned_sets.shape[0] > MAX_EXACT_SETS:
        own_values = rows.index_select(1, union).masked_fill(~owned, 0)
        out.addmm_(own_values, _float_columns(weight_int8, weight_scale, union, x.dtype))
        return out.view(*shape[:-1], -1)
    row_set = set_of_sequence.repeat_interleave(rows.shape[0] // sequences)
    for index, owned_set in enumerate(owned_sets):
        columns = union[owned_set]
        if columns.numel() == 0:
            continue
        weights = _float_columns(weight_int8, weight_scale, columns, x.dtype)
        if owned_sets.shape[0] == 1:
            out.addmm_(rows.index_select(1, columns), weights)
        else:
            which = (row_set == index).nonzero().view(-1)
            out.index_copy_(0, which, out.index_select(0, which).addmm(rows[which].index_select(1, columns), weights))
    return out.view(*shape[:-1], -1)


def _column_mask(columns: torch.Tensor | None, width: int, device: torch.device) -> torch.Tensor:
    mask = torch.zeros(width, dtype=torch.bool, device=device)
    if columns is not None:
        mask[columns] = True
    return mask


def _float_columns(
    weight_int8: torch.Tensor, weight_scale: torch.Tensor, columns: torch.Tensor, dtype: torch.dtype
) -> torch.Tensor:
    """dequant(W)[:, columns].T in ``dtype``, as bitsandbytes builds it for its float part."""
    dequantized: torch.Tensor = torch.ops.bitsandbytes.int8_vectorwise_dequant.default(  # torch.ops: untyped
        weight_int8.index_select(1, columns), weight_scale
    )
    return dequantized.to(dtype).t()


def _own_forward(layer: Linear8bitLt, x: torch.Tensor) -> torch.Tensor:
    out: torch.Tensor = type(layer).forward(layer, x)  # bitsandbytes' forward has no return annotation
    return out


def _forward(self: Linear8bitLt, x: torch.Tensor) -> torch.Tensor:
    """Linear8bitLt.forward for inference, with per-sequence outlier columns."""
    if self.training or self.state.has_fp16_weights:
        return _own_forward(self, x)
    if getattr(self.weight, "CB", None) is not None:  # bitsandbytes moves the int8 rows into the state on first use
        self.init_8bit_state()
    rows, scales = self.state.CB, self.state.SCB
    if rows is None or scales is None:
        return _own_forward(self, x)
    if self.bias is not None and self.bias.dtype != x.dtype:
        self.bias.data = self.bias.data.to(x.dtype)
    columns = _WHOLE_SEQUENCE.get()
    guard = active_guard()
    if columns is None and guard is not None:  # no host sync (int8_static.py)
        return static_per_sequence_int8_matmul(
            x, rows, scales, self.bias, self.state.threshold, guard, _real_positions(x)
        )
    if columns is None:
        return per_sequence_int8_matmul(x, rows, scales, self.bias, self.state.threshold, _real_positions(x))
    width = x.shape[-1]
    return per_sequence_int8_matmul(
        x,
        rows,
        scales,
        self.bias,
        self.state.threshold,
        _real_positions(x),
        forced=columns.forced.get(id(self)),
        flagged=columns.flagged_of(self, width, x.device),
    )


def _int8_layers(model: torch.nn.Module) -> list[Linear8bitLt]:
    try:
        import bitsandbytes as bnb
    except ImportError:
        return []
    return [
        m
        for m in model.modules()
        if isinstance(m, bnb.nn.Linear8bitLt) and not m.state.has_fp16_weights and m.state.threshold > 0
    ]


def install_per_sequence_int8(model: torch.nn.Module) -> int:
    """Bind the per-sequence forward to every LLM.int8 layer with outlier decomposition; how many."""
    layers = _int8_layers(model)
    for module in layers:
        # a per-instance override of the layer's method (mypy refuses an assignment to a method)
        setattr(module, "forward", MethodType(_forward, module))  # noqa: B010
        setattr(module, _MARK, True)
    return len(layers)


def remove_per_sequence_int8(model: torch.nn.Module) -> int:
    """Give those layers bitsandbytes' own forward back (tests compare the two); how many."""
    layers = [m for m in _int8_layers(model) if getattr(m, _MARK, False)]
    for module in layers:
        del module.forward
        delattr(module, _MARK)
    return len(layers)


def has_batch_dependent_int8(model: torch.nn.Module) -> bool:
    """Whether an LLM.int8 layer of ``model`` still picks outlier columns over the whole batch."""
    return any(not getattr(m, _MARK, False) for m in _int8_layers(model))


def static_int8_applies(model: torch.nn.Module, device: torch.device) -> bool:
    """Whether decoding ``model`` on ``device`` runs its LLM.int8 layers on the static path
    (int8_static.py): per-sequence layers on a device in ``STATIC_DEVICE_TYPES``."""
    layers = _int8_layers(model)
    per_sequence = all(getattr(m, _MARK, False) for m in layers)
    return bool(layers) and per_sequence and device.type in int8_static.STATIC_DEVICE_TYPES


def amplifies_float_noise(model: torch.nn.Module) -> bool:
    """Whether ``model`` has LLM.int8 layers with an outlier threshold. Their numbers jump when float
    noise of ~1e-7 (another kernel for another shape) moves an activation across the threshold or a
    rounding boundary: measured on SmolLM2-135M, a prompt's KL moved by up to 99 % when it was scored
    beside longer ones, by 0 when beside prompts of its own length. Such a model is scored in passes
    of equal-length rows on the CPU (on CUDA float16 kernels chosen by shape differ from alone
    whatever the padding, so padded batches run there)."""
    return bool(_int8_layers(model))
