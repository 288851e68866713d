"""Tiny real-architecture models through load_model: bitsandbytes layers, footprints, float32 compute."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch
from integration_support import CPU_OPTIONS, MISTRAL_SLIDING_WINDOW, TINY_ARCHS, TINY_DIMS, load_variant

VARIANT_KEYS = ("fp16", "int8", "nf4")
LINEAR_NAMES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@pytest.fixture(scope="module")
def loaded(tiny_models: dict[str, Path], digest_cache: Path) -> dict[tuple[str, str], Any]:
    """Every (arch, variant) loaded once; tiny, so all fit at once."""
    return {
        (arch, variant): load_variant(tiny_models[arch], variant, digest_cache, key=f"tiny-{arch}")
        for arch in TINY_ARCHS
        for variant in VARIANT_KEYS
    }


def _linears(model: Any) -> list[Any]:
    return [
        getattr(layer.self_attn if name.endswith(("q_proj", "k_proj", "v_proj", "o_proj")) else layer.mlp, name)
        for layer in model.model.layers
        for name in LINEAR_NAMES
    ]


def test_saved_models_are_float16_safetensors_with_tokenizer(tiny_models: dict[str, Path]) -> None:
    from safetensors import safe_open
    from transformers import AutoTokenizer

    for arch, directory in tiny_models.items():
        config = json.loads((directory / "config.json").read_text())
        assert config["model_type"] == arch
        assert config["vocab_size"] == 49152 and config["hidden_size"] == TINY_DIMS["hidden_size"]
        with safe_open(str(directory / "model.safetensors"), framework="pt") as fh:
            dtypes = {fh.get_slice(name).get_dtype() for name in fh.keys()}
        assert dtypes == {"F16"}, f"{arch}: stored dtypes {dtypes}"
        assert len(AutoTokenizer.from_pretrained(directory)) == 49152
    qwen = json.loads((tiny_models["qwen2"] / "config.json").read_text())
    mistral = json.loads((tiny_models["mistral"] / "config.json").read_text())
    assert qwen["tie_word_embeddings"] is True
    assert mistral["sliding_window"] == MISTRAL_SLIDING_WINDOW


@pytest.mark.parametrize("arch", TINY_ARCHS)
def test_linear_layers_are_bitsandbytes_modules(loaded: dict[tuple[str, str], Any], arch: str) -> None:
    import bitsandbytes as bnb

    fp16, int8, nf4 = (loaded[arch, v].model for v in VARIANT_KEYS)
    for layer in _linears(fp16):
        assert type(layer) is torch.nn.Linear
    for layer in _linears(int8):
        assert isinstance(layer, bnb.nn.Linear8bitLt)
        assert isinstance(layer.weight, bnb.nn.Int8Params) and layer.weight.dtype == torch.int8
        assert tuple(layer.weight.shape) == (layer.out_features, layer.in_features)
        assert layer.weight.SCB.numel() == layer.out_features  # one absmax scale per output row
    for layer in _linears(nf4):
        assert isinstance(layer, bnb.nn.Linear4bit)
        assert isinstance(layer.weight, bnb.nn.Params4bit) and layer.weight.dtype == torch.uint8
        state = layer.weight.quant_state
        assert state.quant_type == "nf4" and tuple(state.shape) == (layer.out_features, layer.in_features)
        # The dimensions suit NF4: whole 64-weight blocks, two 4-bit codes per stored byte.
        weights = layer.in_features * layer.out_features
        assert state.blocksize == 64 and weights % 64 == 0 and state.absmax.numel() == weights // 64
        assert layer.weight.numel() == weights // 2
    # The output head and embeddings are never quantized.
    for model in (int8, nf4):
        assert type(model.lm_head) is torch.nn.Linear
        assert type(model.model.embed_tokens) is torch.nn.Embedding


@pytest.mark.parametrize("arch", TINY_ARCHS)
def test_footprint_strictly_decreases(loaded: dict[tuple[str, str], Any], arch: str) -> None:
    fp16, int8, nf4 = (loaded[arch, v] for v in VARIANT_KEYS)
    assert fp16.footprint_bytes > int8.footprint_bytes > nf4.footprint_bytes > 0
    # The baseline footprint is exactly 2 bytes per (distinct) parameter plus the float32 buffers.
    model = fp16.model
    params = sum(p.numel() for p in model.parameters())
    buffers = sum(b.numel() * b.element_size() for b in model.buffers())
    assert fp16.footprint_bytes == 2 * params + buffers


NF4_BLOCK = 64  # bitsandbytes' 4-bit block size: one float32 absmax per 64 weights
NF4_CODE_BYTES = 16 * 4  # the NF4 code book: 16 float32 levels per quantized weight


def _quantized_weight_bytes(model: Any, variant: str) -> tuple[int, int, int]:
    """(fp16 bytes the quantized weights had, bytes of their quantized storage, bytes of the
    quantization state), worked out from the layer shapes alone: LLM.int8 stores 1 byte per weight
    and one float32 scale per output row; NF4 half a byte per weight, a float32 absmax per block of
    64 and the code book."""
    fp16_bytes = stored = state = 0
    for layer in _linears(model):
        n = layer.in_features * layer.out_features
        fp16_bytes += 2 * n
        if variant == "int8":
            stored, state = stored + n, state + 4 * layer.out_features
        else:
            stored, state = stored + n // 2, state + 4 * math.ceil(n / NF4_BLOCK) + NF4_CODE_BYTES
    return fp16_bytes, stored, state


@pytest.mark.parametrize("arch", TINY_ARCHS)
def test_footprint_counts_quantized_weights_at_their_storage_size(
    loaded: dict[tuple[str, str], Any], arch: str
) -> None:
    """What the footprint does count: 1 byte (int8) or half a byte (NF4) per quantized weight."""
    fp16 = loaded[arch, "fp16"]
    for variant, bytes_per_weight in (("int8", 1.0), ("nf4", 0.5)):
        pair = loaded[arch, variant]
        fp16_bytes, stored, state = _quantized_weight_bytes(pair.model, variant)
        assert stored == bytes_per_weight * fp16_bytes / 2
        assert stored == sum(layer.weight.numel() * layer.weight.element_size() for layer in _linears(pair.model))
        # Never more than the weights actually resident (the state is measured separately).
        assert pair.footprint_bytes <= fp16.footprint_bytes - fp16_bytes + stored + state


@pytest.mark.parametrize("variant", ("int8", "nf4"))
def test_footprint_plus_quantization_state_is_resident(loaded: dict[tuple[str, str], Any], variant: str) -> None:
    """get_memory_footprint (the footprint, as the seed figures use it) leaves out bitsandbytes'
    scales; the suite measures them separately, and footprint + state is what is resident."""
    fp16, pair = loaded["llama", "fp16"], loaded["llama", variant]
    fp16_bytes, stored, state = _quantized_weight_bytes(pair.model, variant)
    assert state > 0 and pair.quant_state_bytes == state
    resident = fp16.footprint_bytes - fp16_bytes + stored + state
    assert pair.footprint_bytes + pair.quant_state_bytes == resident, (
        f"{variant}: footprint {pair.footprint_bytes} B, resident weights + quantization state {resident} B "
        f"({state} B of state missing)"
    )


@pytest.mark.parametrize("arch", TINY_ARCHS)
def test_tied_embeddings_stay_tied(loaded: dict[tuple[str, str], Any], arch: str) -> None:
    for variant in VARIANT_KEYS:
        model = loaded[arch, variant].model
        tied = model.lm_head.weight is model.model.embed_tokens.weight
        assert tied == (arch == "qwen2"), f"{arch} {variant}"


@pytest.mark.parametrize("variant", VARIANT_KEYS)
@pytest.mark.parametrize("arch", TINY_ARCHS)
def test_compute_dtype_is_float32_after_upcast(loaded: dict[tuple[str, str], Any], arch: str, variant: str) -> None:
    import bitsandbytes as bnb

    pair = loaded[arch, variant]
    assert (pair.weight_dtype, pair.compute_dtype, pair.device) == ("float16", "float32", "cpu")
    quantized = (bnb.nn.Int8Params, bnb.nn.Params4bit)
    for name, param in pair.model.named_parameters():
        if not isinstance(param, quantized):
            assert param.dtype == torch.float32, f"{arch} {variant}: {name} is {param.dtype}"
    for name, buffer in pair.model.named_buffers():
        if buffer.is_floating_point():
            assert buffer.dtype == torch.float32, f"{arch} {variant}: buffer {name} is {buffer.dtype}"
    for module in pair.model.modules():
        if isinstance(module, bnb.nn.Linear4bit):
            assert module.compute_dtype == torch.float32


@pytest.mark.parametrize("arch", TINY_ARCHS)
def test_quantization_config_is_recorded(loaded: dict[tuple[str, str], Any], arch: str) -> None:
    assert loaded[arch, "fp16"].quantization_config is None
    int8 = loaded[arch, "int8"].quantization_config
    assert int8["load_in_8bit"] is True and not int8.get("load_in_4bit", False)
    nf4 = loaded[arch, "nf4"].quantization_config
    assert nf4["load_in_4bit"] is True and nf4["bnb_4bit_quant_type"] == "nf4"
    assert not nf4.get("load_in_8bit", False)


def test_quantization_config_records_effective_settings(loaded: dict[tuple[str, str], Any]) -> None:
    int8 = loaded["llama", "int8"].quantization_config
    nf4 = loaded["llama", "nf4"].quantization_config
    assert int8.get("llm_int8_threshold") == 6.0
    assert nf4.get("bnb_4bit_compute_dtype") == CPU_OPTIONS.compute_dtype
    assert nf4.get("bnb_4bit_use_double_quant") is False
    assert nf4.get("bnb_4bit_quant_storage") == "uint8"


@pytest.mark.parametrize("arch", TINY_ARCHS)
def test_forward_gives_finite_float32_logits_close_to_fp16(
    loaded: dict[tuple[str, str], Any], wikitext_ids: torch.Tensor, arch: str
) -> None:
    ids = wikitext_ids[:48].unsqueeze(0)
    logits = {}
    with torch.inference_mode():
        for variant in VARIANT_KEYS:
            out = loaded[arch, variant].model(input_ids=ids).logits
            assert out.shape == (1, 48, 49152) and out.dtype == torch.float32
            assert torch.isfinite(out).all(), f"{arch} {variant}: non-finite logits"
            logits[variant] = out
    # Quantization perturbs the model but does not break it: the quantized logits stay close to
    # the fp16 ones relative to their spread, and differ from them (the weights really changed).
    spread = logits["fp16"].std().item()
    assert math.isfinite(spread) and spread > 0
    for variant in ("int8", "nf4"):
        diff = (logits[variant] - logits["fp16"]).abs()
        assert diff.max().item() > 0, f"{arch} {variant}: identical to fp16, not quantized?"
        assert diff.mean().item() < 0.25 * spread, (
            f"{arch} {variant}: mean |dlogit| {diff.mean():.3g} vs spread {spread:.3g}"
        )
