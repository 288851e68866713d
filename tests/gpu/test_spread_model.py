"""A model spread over two GPUs (accelerate's device_map="auto", as the suite loads one too big for
its GPU) gives the numbers of the same model on one GPU: perplexity windows, generated tokens
(eager: graphs are per GPU) and prompt scoring."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import pytest
import torch

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices")]


def _load(path: Path, **placement: object) -> Any:
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float16, **placement).eval()


def test_spread_model_gives_the_one_gpu_numbers(tiny_llama: Path) -> None:
    from quant_fixtures.compute.decoding import can_capture
    from quant_fixtures.compute.generation import greedy_generate, response_logits
    from quant_fixtures.compute.scoring import head_device, model_device, score_windows
    from quant_fixtures.metrics.perplexity import nonoverlapping_windows

    one = _load(tiny_llama, device_map={"": "cuda:0"})
    spread = _load(tiny_llama, device_map="auto", max_memory={0: "2MiB", 1: "200MiB"})
    assert model_device(spread) != head_device(spread)  # really spread: inputs on one GPU, logits on the other
    assert can_capture(one) and not can_capture(spread)

    ids = torch.randint(3, 512, (64 * 6 + 1,), generator=torch.Generator().manual_seed(0))
    windows = nonoverlapping_windows(len(ids), 64)
    a, b = score_windows(one, ids, windows, 3), score_windows(spread, ids, windows, 3)
    torch.testing.assert_close(torch.tensor(b.window_nll), torch.tensor(a.window_nll), rtol=1e-3, atol=1e-3)

    class Tok:
        pad_token_id, eos_token_id = 0, 2

    tok = cast("PreTrainedTokenizerBase", Tok())  # greedy_generate reads only the two token ids
    prompts = [ids[i : i + 5 + i % 7].tolist() for i in range(0, 60, 6)]
    limits = [12] * len(prompts)
    assert greedy_generate(spread, tok, prompts, limits, 4) == greedy_generate(one, tok, prompts, limits, 4)
    got: dict[int, torch.Tensor] = {}
    response_logits(spread, prompts, [[3, 4, 5]] * len(prompts), 4, 0, lambda i, lg, _h: got.__setitem__(i, lg))
    want: dict[int, torch.Tensor] = {}
    response_logits(one, prompts, [[3, 4, 5]] * len(prompts), 4, 0, lambda i, lg, _h: want.__setitem__(i, lg))
    for i in want:
        torch.testing.assert_close(got[i].to(want[i].device), want[i], rtol=1e-2, atol=1e-2)
