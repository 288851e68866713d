"""On CUDA, the captured decode step (a CUDA graph replayed per token) gives the tokens of the same
step run eagerly and of transformers' greedy ``generate``, for FP16 and NF4 weights; LLM.int8 is
never captured; batch after batch, decoding holds no more memory than after the first. Small random
Llama models built here, so the test needs no download."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


def _load(path: Path, variant: str) -> Any:
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    extra = {}
    if variant == "nf4":
        extra["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.float16
        )
    if variant == "int8":
        extra["quantization_config"] = BitsAndBytesConfig(load_in_8bit=True)
    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float16, device_map={"": "cuda:0"}, **extra).eval()


def _prompts(rows: int = 24) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-padded prompts of 3 to 40 tokens (every row has its own padding)."""
    from quant_fixtures.compute.generation import _left_pad

    gen = torch.Generator().manual_seed(1)
    prompts = [
        torch.randint(3, 512, (int(n),), generator=gen).tolist() for n in torch.randint(3, 41, (rows,), generator=gen)
    ]
    return _left_pad(prompts, 0, torch.device("cuda:0"))


@pytest.mark.parametrize("variant", ["fp16", "nf4"])
def test_captured_decoding_gives_the_eager_and_generate_tokens(tiny_llama: Path, variant: str) -> None:
    from quant_fixtures.compute.decoding import can_capture, static_greedy

    model = _load(tiny_llama, variant)
    ids, mask = _prompts()
    steps = 24
    assert can_capture(model)
    graphed, how = static_greedy(model, ids, mask, steps, set(), use_graph=True)
    eager, how_eager = static_greedy(model, ids, mask, steps, set(), use_graph=False)
    model.generation_config.eos_token_id = None  # random weights: run every step, as ours did
    with torch.inference_mode():
        generated = model.generate(
            input_ids=ids,
            attention_mask=mask,
            max_new_tokens=steps,
            do_sample=False,
            temperature=None,
            top_p=None,
            top_k=None,
            pad_token_id=0,
        )[:, ids.shape[1] :]
    assert (how, how_eager) == ("cuda graph", "eager")
    assert torch.equal(graphed, eager)
    # generate's own kernels see other key lengths: allow a rare near-tie to go the other way late
    same = (graphed == generated).all(-1).float().mean().item()
    assert same >= 0.9, f"only {same:.0%} of rows match transformers' generate"


def test_int8_is_not_captured(tiny_llama: Path) -> None:
    from quant_fixtures.compute.decoding import can_capture

    assert not can_capture(_load(tiny_llama, "int8"))


def test_decoding_holds_no_memory_batch_after_batch(tiny_llama: Path) -> None:
    """Warm-up and capture run on one stream per device: cuBLAS keeps a workspace for every stream it
    ran on, and a new stream per batch held 32 MiB more after each (H100; see decoding.side_stream)."""
    from quant_fixtures.compute.decoding import side_stream, static_greedy

    model = _load(tiny_llama, "fp16")
    ids, mask = _prompts()
    static_greedy(model, ids, mask, 24, set(), use_graph=True)
    torch.cuda.synchronize()
    after_first = torch.cuda.memory_allocated()
    for _ in range(4):
        static_greedy(model, ids, mask, 24, set(), use_graph=True)
    torch.cuda.synchronize()
    grown = torch.cuda.memory_allocated() - after_first
    assert grown <= 2**20, f"decoding holds {grown / 2**20:.1f} MiB more after 4 more batches"
    assert side_stream(ids.device) is side_stream(torch.device("cuda", 0))
