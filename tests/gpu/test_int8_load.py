"""LLM.int8 weights quantized on the GPU while loading are those of transformers' own loader (which
copies each weight to the host and back first): same int8 rows, same scales, same logits."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


def _load(path: Path) -> Any:
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    return AutoModelForCausalLM.from_pretrained(
        path, dtype=torch.float16, device_map={"": "cuda:0"}, quantization_config=BitsAndBytesConfig(load_in_8bit=True)
    ).eval()


def test_on_device_quantization_matches_transformers_loader(tiny_llama: Path) -> None:
    from quant_fixtures.models.int8_on_device import int8_quantized_on_device

    theirs = _load(tiny_llama)
    with int8_quantized_on_device("cuda:0") as replaced:
        ours = _load(tiny_llama)
    assert replaced, "the installed transformers no longer round-trips int8 weights: drop the replacement"
    quantized = 0
    for (name, a), (_, b) in zip(theirs.named_parameters(), ours.named_parameters()):
        assert a.device == b.device and a.dtype == b.dtype and torch.equal(a, b), name
        if a.dtype == torch.int8:
            quantized += 1
            assert torch.equal(a.SCB, b.SCB), name
    assert quantized == 4 * 7
    ids = torch.randint(0, 512, (2, 64), device="cuda:0")
    with torch.inference_mode():
        assert torch.equal(theirs(ids).logits, ours(ids).logits)
