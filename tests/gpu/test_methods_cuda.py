"""Every registered method loads through the suite's loader on CUDA (torchao_int4wo only runs
there): the linear layers are quantized, the footprint is below FP16's, and the logits stay near
FP16's. A missing package skips with its install command."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import torch

from quant_fixtures.config import ModelSpec
from quant_fixtures.settings import LoadSettings
from quant_fixtures.variants import VARIANTS

if TYPE_CHECKING:
    from quant_fixtures.models.loading import LoadedModel

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

CUDA = LoadSettings(device="cuda:0", weight_dtype="float16")
BITS = {"int8": 8, "int8_threshold0": 8, "torchao_int8wo": 8, "torchao_int8dq": 8, "quanto_int8": 8, "hqq_3bit": 3}
KL_BOUND = {8: 0.01, 4: 0.3, 3: 0.8}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random Llama whose widths suit every method (multiples of 128), with a word-level tokenizer."""
    from tokenizers import Tokenizer, models
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    path = tmp_path_factory.mktemp("methods-llama")
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=1024,
        hidden_size=256,
        intermediate_size=768,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
        initializer_range=0.05,
    )
    LlamaForCausalLM(config).to(torch.float16).save_pretrained(path)  # type: ignore[arg-type]  # transformers types the wrapped .to() as unbound
    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, **{f"w{i}": i for i in range(3, 1024)}}
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer(models.WordLevel(vocab, unk_token="<pad>")),
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
    )
    tokenizer.save_pretrained(path)
    return path


def _load(path: Path, key: str) -> LoadedModel:
    from quant_fixtures.models.loading import load_model
    from quant_fixtures.models.sources import resolve_model

    spec = ModelSpec(key="methods-llama", path=str(path))
    return load_model(spec, resolve_model(spec, path / ".cache"), VARIANTS[key], CUDA)


@pytest.fixture(scope="module")
def fp16(model_dir: Path) -> tuple[torch.Tensor, torch.Tensor, int]:
    loaded = _load(model_dir, "fp16")
    tokens = torch.randint(3, 1024, (4, 64), generator=torch.Generator().manual_seed(0)).cuda()
    with torch.inference_mode():
        reference = torch.log_softmax(loaded.model(tokens).logits.double(), -1)
    footprint = loaded.footprint_bytes
    del loaded.model  # its one reference: the FP16 model goes before the methods load
    return tokens, reference, footprint


@pytest.mark.parametrize("key", [k for k, v in VARIANTS.items() if not v.is_baseline])
def test_method_runs_on_cuda(key: str, model_dir: Path, fp16: tuple[torch.Tensor, torch.Tensor, int]) -> None:
    reason = VARIANTS[key].unavailable_reason("cuda")
    if reason:
        pytest.skip(reason)
    tokens, reference, fp16_bytes = fp16
    loaded = _load(model_dir, key)
    layer = loaded.model.model.layers[0].mlp.down_proj
    assert type(layer) is not torch.nn.Linear or type(layer.weight) is not torch.nn.Parameter, type(layer)
    assert 0 < loaded.footprint_bytes < fp16_bytes
    with torch.inference_mode():
        logp = torch.log_softmax(loaded.model(tokens).logits.double(), -1)
    kl = float((reference.exp() * (reference - logp)).sum(-1).mean())
    assert 0 <= kl < KL_BOUND[BITS.get(key, 4)], f"{key}: KL {kl}"
    print(
        f"{key}: footprint {loaded.footprint_bytes} (fp16 {fp16_bytes}), state {loaded.quant_state_bytes}, "
        f"KL {kl:.5f}, dtype {loaded.weight_dtype}, load {loaded.load_seconds:.2f} s"
    )
