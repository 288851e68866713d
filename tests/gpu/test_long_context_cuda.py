"""The long-context read on CUDA (compute/long_context.py): LLM.int8 read in chunks uses the outlier
columns of the whole prefill, so it gives what one read gives; a probe's answer read token by token
is what ``generate`` decodes. A tiny random Llama with planted outlier features (its norms scale a
few hidden dimensions so that some tokens cross LLM.int8's threshold and others do not)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import torch

if TYPE_CHECKING:
    from quant_fixtures.compute.scoring import ScoredChunk

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]

OUTLIER_DIMS = [3, 17, 40, 58, 101]


@pytest.fixture(scope="module")
def int8_with_outliers(tiny_llama: Path) -> Any:
    from transformers import AutoModelForCausalLM

    from quant_fixtures.models.int8_per_sequence import install_per_sequence_int8
    from quant_fixtures.settings import LoadSettings
    from quant_fixtures.variants import VARIANTS

    model = AutoModelForCausalLM.from_pretrained(
        tiny_llama, dtype=torch.float16, device_map="cuda:0", **VARIANTS["int8"].load_kwargs(LoadSettings("cuda:0"))
    ).eval()
    with torch.no_grad():
        for layer in model.model.layers:
            for norm in (layer.input_layernorm, layer.post_attention_layernorm):
                norm.weight[OUTLIER_DIMS] = 3.0
    install_per_sequence_int8(model)
    return model


def test_int8_in_chunks_equals_the_whole_read_on_cuda(int8_with_outliers: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from quant_fixtures.compute.long_context import score_in_chunks
    from quant_fixtures.metrics.perplexity import Window

    ids = torch.randint(3, 500, (1200,), generator=torch.Generator().manual_seed(0))
    windows = [Window(0, 600, 1), Window(600, 1200, 601)]
    whole = score_in_chunks(int8_with_outliers, ids, windows, 2000, "long context")
    chunked = score_in_chunks(int8_with_outliers, ids, windows, 64, "long context", whole_first=False)
    monkeypatch.setattr("quant_fixtures.compute.long_context.amplifies_float_noise", lambda model: False)
    per_chunk = score_in_chunks(int8_with_outliers, ids, windows, 64, "long context", whole_first=False)
    ours = max(abs(a / b - 1) for a, b in zip(chunked.window_nll, whole.window_nll))
    control = max(abs(a / b - 1) for a, b in zip(per_chunk.window_nll, whole.window_nll))
    print(f"\n[measured] chunked vs whole {ours:.2e} (reads {chunked.reads}); columns per chunk {control:.2e}")
    assert whole.reads == [1, 1] and all(chunked.settled) and min(chunked.reads) >= 2
    assert ours < 1e-3  # float16 sums in another order (the KV cache) at most


def test_a_probe_answer_read_token_by_token_is_what_generate_decodes_on_cuda(int8_with_outliers: Any) -> None:
    from quant_fixtures.compute.long_context import score_in_chunks
    from quant_fixtures.metrics.perplexity import Window

    prompt = torch.randint(3, 500, (300,), generator=torch.Generator().manual_seed(1)).cuda()
    with torch.inference_mode():
        generated = int8_with_outliers.generate(
            prompt.unsqueeze(0),
            attention_mask=torch.ones(1, prompt.numel(), dtype=torch.long, device="cuda"),
            max_new_tokens=6,
            min_new_tokens=6,
            do_sample=False,
        )[0, prompt.numel() :]
    argmax: list[int] = []

    def record(chunk: ScoredChunk) -> None:
        argmax.extend(chunk.logp[0].argmax(-1)[chunk.mask[0]].tolist())

    ids = torch.cat([prompt, generated]).cpu()
    score_in_chunks(int8_with_outliers, ids, [Window(0, ids.numel(), 300)], 128, "long context", record,
                    decode_from=[300])  # fmt: skip
    assert argmax == generated.tolist()


def test_sequences_read_together_on_cuda_give_what_each_gives_alone(int8_with_outliers: Any) -> None:
    """Three windows of one length share a pass (their answers read one position per call): each row's
    sum is its sum read alone, up to float16 summation order."""
    from quant_fixtures.compute.long_context import score_in_chunks
    from quant_fixtures.compute.memory import BatchLog
    from quant_fixtures.metrics.perplexity import Window

    ids = torch.randint(3, 500, (1800,), generator=torch.Generator().manual_seed(1))
    windows = [Window(0, 600, 1), Window(600, 1200, 601), Window(1200, 1800, 1201)]
    decode_from = [590, 590, 590]
    alone = score_in_chunks(int8_with_outliers, ids, windows, 128, "long context", decode_from=decode_from)
    log = BatchLog()
    together = score_in_chunks(
        int8_with_outliers, ids, windows, 128, "long context", decode_from=decode_from, log=log, batch_size=3
    )
    worst = max(abs(a / b - 1) for a, b in zip(together.window_nll, alone.window_nll))
    print(f"\n[measured] {log.used['long context']} sequences per pass: relative difference to alone {worst:.2e}")
    assert log.used["long context"] > 1
    assert worst < 1e-3  # float16 sums in another order at most
