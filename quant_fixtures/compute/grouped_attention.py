"""Attention for decode steps that reads each key/value head once.

transformers' SDPA path copies every key/value head ``heads / kv_heads`` times before attending
when it is given a mask (``repeat_kv``; torch's own grouped-query support is used only without a
mask). A decode step with a static cache always has a mask (left padding), and for Mistral-7B at
96 prompts that copy was 57 % of a captured step's GPU time (H200, torch.profiler: 2 copies of
about 260 MB per layer per step). Here the query heads of a group attend to their shared key and
value head through a broadcast matmul instead. Arithmetic as transformers' eager attention:
scores scaled, mask added, softmax in float32, cast back, weighted sum of values.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from transformers import PreTrainedModel

NAME = "quant_fixtures_grouped"


def grouped_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    **kwargs: object,
) -> tuple[torch.Tensor, None]:
    """query [B, H, Q, D], key/value [B, KV, L, D], additive mask [B, 1, Q, L'] (L' >= L) ->
    ([B, Q, H, D], None), the layout transformers' attention functions return."""
    batch, heads, q_len, dim = query.shape
    kv_heads, length = key.shape[1], key.shape[2]
    group = heads // kv_heads
    scale = scaling if scaling is not None else dim**-0.5
    # Query head h uses key/value head h // group (transformers' repeat_kv order).
    q = query.reshape(batch, kv_heads, group * q_len, dim)
    scores = torch.matmul(q, key.transpose(2, 3)) * scale  # [B, KV, group*Q, L]
    if attention_mask is not None:
        mask = attention_mask[:, :, :, :length]  # [B, 1, Q, L]
        scores = (scores.view(batch, kv_heads, group, q_len, length) + mask.unsqueeze(2)).view_as(scores)
    weights = torch.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)
    out = torch.matmul(weights, value).view(batch, heads, q_len, dim)
    return out.transpose(1, 2).contiguous(), None


def _register() -> bool:
    try:
        from transformers import AttentionInterface
    except ImportError:
        return False
    AttentionInterface.register(NAME, grouped_attention)
    return True


@contextmanager
def grouped_attention_for(model: PreTrainedModel) -> Iterator[None]:
    """Inside, the model's attention layers use :func:`grouped_attention` (they read the name from
    the shared model config on every call); the model's own implementation is restored after."""
    model_config = model.config
    previous = getattr(model_config, "_attn_implementation", None)
    if previous not in ("sdpa", "eager") or not _register():  # other kernels (flash...) are left alone
        yield
        return
    model_config._attn_implementation = NAME
    try:
        yield
    finally:
        model_config._attn_implementation = previous
