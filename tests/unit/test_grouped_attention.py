"""Grouped attention (decode steps) against a plain implementation that copies each key/value head
per query head, as transformers' eager attention does; and it is used only inside its context."""

from __future__ import annotations

import pytest
import torch

from quant_fixtures.compute.grouped_attention import NAME, grouped_attention, grouped_attention_for


def plain_attention(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, mask: torch.Tensor, scale: float
) -> torch.Tensor:
    group = query.shape[1] // key.shape[1]
    key, value = key.repeat_interleave(group, dim=1), value.repeat_interleave(group, dim=1)
    scores = query @ key.transpose(2, 3) * scale + mask[:, :, :, : key.shape[2]]
    return (torch.softmax(scores.double(), -1) @ value.double()).transpose(1, 2)


@pytest.mark.parametrize("heads,kv_heads,q_len", [(8, 2, 1), (8, 8, 1), (6, 3, 5), (14, 2, 1)])
def test_grouped_attention_matches_head_copies(heads: int, kv_heads: int, q_len: int) -> None:
    gen = torch.Generator().manual_seed(0)
    batch, length, dim = 3, 11, 16
    query = torch.randn(batch, heads, q_len, dim, generator=gen)
    key = torch.randn(batch, kv_heads, length, dim, generator=gen)
    value = torch.randn(batch, kv_heads, length, dim, generator=gen)
    mask = torch.zeros(batch, 1, q_len, length + 4)
    mask[0, :, :, :3] = torch.finfo(torch.float32).min  # a left-padded row
    mask[2, :, :, 7:] = torch.finfo(torch.float32).min  # slots not yet written
    out, weights = grouped_attention(torch.nn.Module(), query, key, value, mask, scaling=dim**-0.5)
    assert weights is None and out.shape == (batch, q_len, heads, dim)
    torch.testing.assert_close(out.double(), plain_attention(query, key, value, mask, dim**-0.5), rtol=1e-5, atol=1e-5)


def test_the_model_uses_it_only_inside_the_context() -> None:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    model = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=64,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
        )
    ).eval()
    before = model.config._attn_implementation
    ids = torch.randint(0, 64, (2, 9))
    # the decoder always passes a prepared 4D additive mask: causal, first row left-padded by 2
    allowed = torch.ones(9, 9).tril().bool().expand(2, 1, 9, 9).clone()
    allowed[0, :, :, :2] = False
    mask = torch.zeros(2, 1, 9, 9).masked_fill(~allowed, torch.finfo(torch.float32).min)
    with torch.inference_mode():
        theirs = model(ids, attention_mask=mask).logits
        with grouped_attention_for(model):
            assert model.config._attn_implementation == NAME
            ours = model(ids, attention_mask=mask).logits
    assert model.config._attn_implementation == before
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4)
