"""Every registered method that runs on the CPU, loaded for real on a tiny Llama: the linear layers
become the method's quantized modules, the rest stays 16-bit, the footprint shrinks with the bit
width, the logits stay near FP16's, and what the registry says about batch dependence holds."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from integration_support import CPU_OPTIONS, load_variant

from quant_fixtures.models.loading import VariantUnavailableError, load_model
from quant_fixtures.variants import VARIANTS

# The method's module type on the linear layers, and its bits per weight.
CPU_METHODS = {
    "int8": ("Linear8bitLt", 8),
    "int8_threshold0": ("Linear8bitLt", 8),
    "fp4": ("Linear4bit", 4),
    "nf4": ("Linear4bit", 4),
    "nf4_dq": ("Linear4bit", 4),
    "nf4_bf16": ("Linear4bit", 4),
    "torchao_int8wo": ("Linear", 8),
    "torchao_int8dq": ("Linear", 8),
    "hqq_4bit": ("HQQLinear", 4),
    "hqq_3bit": ("HQQLinear", 3),
    "quanto_int8": ("QLinear", 8),
}
# KL(FP16 || variant) per position on random tokens is far below these on the tiny model
# (measured: 8-bit 1e-4..2.4e-4, 4-bit 0.023..0.047, 3-bit 0.088).
KL_BOUND = {8: 0.005, 4: 0.3, 3: 0.6}
PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def test_every_cpu_capable_method_is_listed_here() -> None:
    cpu = {k for k, v in VARIANTS.items() if "cpu" in v.devices and not v.is_baseline}
    assert cpu == set(CPU_METHODS)


@pytest.fixture(scope="module")
def tiny_llama(tiny_models: dict[str, Path]) -> Path:
    return tiny_models["llama"]


@pytest.fixture(scope="module")
def tokens() -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    return torch.randint(0, 49152, (2, 24), generator=generator)


@pytest.fixture(scope="module")
def variant(tiny_llama: Path, digest_cache: Path) -> Callable[[str], Any]:
    """Each variant loaded once for the module (tiny: they all fit)."""
    cache: dict[str, Any] = {}

    def loaded(key: str) -> Any:
        if key not in cache:
            reason = VARIANTS[key].unavailable_reason("cpu")
            if reason:
                pytest.skip(reason)
            cache[key] = load_variant(tiny_llama, key, digest_cache, key="tiny-llama")
        return cache[key]

    return loaded


@pytest.fixture(scope="module")
def fp16(variant: Callable[[str], Any], tokens: torch.Tensor) -> tuple[Any, torch.Tensor]:
    loaded = variant("fp16")
    with torch.no_grad():
        logp = torch.log_softmax(loaded.model(tokens).logits.double(), -1)
    return loaded, logp


def _projections(model: Any) -> list[Any]:
    layer = model.model.layers[0]
    return [
        getattr(layer.self_attn if name.endswith(("q_proj", "k_proj", "v_proj", "o_proj")) else layer.mlp, name)
        for name in PROJECTIONS
    ]


@pytest.mark.parametrize("key", sorted(CPU_METHODS))
def test_method_quantizes_linear_layers_and_stays_near_fp16(
    key: str, variant: Callable[[str], Any], tokens: torch.Tensor, fp16: tuple[Any, torch.Tensor]
) -> None:
    module_type, bits = CPU_METHODS[key]
    base, reference = fp16
    loaded = variant(key)
    model = loaded.model
    assert {type(p).__name__ for p in _projections(model)} == {module_type}
    assert type(model.lm_head) is torch.nn.Linear and type(model.model.embed_tokens) is torch.nn.Embedding
    assert model.lm_head.weight.dtype == torch.float32  # left 16-bit, upcast for CPU compute
    # Smaller than FP16, and what it keeps beside the weights is counted apart.
    assert 0 < loaded.footprint_bytes < base.footprint_bytes
    assert loaded.quantization_config and loaded.quantization_config["quant_method"]
    with torch.no_grad():
        logp = torch.log_softmax(model(tokens).logits.double(), -1)
    kl = float((reference.exp() * (reference - logp)).sum(-1).mean())
    assert 0 < kl < KL_BOUND[bits], f"{key}: KL {kl}"


def test_footprints_follow_bit_widths(variant: Callable[[str], Any], fp16: tuple[Any, torch.Tensor]) -> None:
    """Each family: fewer bits, smaller footprint; the 16-bit parts of the model are the same bytes."""
    sizes = {
        k: variant(k).footprint_bytes
        for k in ("int8", "nf4", "hqq_4bit", "hqq_3bit", "torchao_int8wo")
        if not VARIANTS[k].unavailable_reason("cpu")
    }
    base = fp16[0].footprint_bytes
    linear = sum(
        p.weight.numel()
        for layer in fp16[0].model.model.layers
        for p in [
            layer.self_attn.q_proj,
            layer.self_attn.k_proj,
            layer.self_attn.v_proj,
            layer.self_attn.o_proj,
            layer.mlp.gate_proj,
            layer.mlp.up_proj,
            layer.mlp.down_proj,
        ]
    )
    # bitsandbytes: int8 holds one byte per linear weight, NF4 half a byte (scales are state).
    assert sizes["int8"] == base - 2 * linear + linear
    assert sizes["nf4"] == base - 2 * linear + linear // 2
    if "hqq_3bit" in sizes:
        assert sizes["hqq_3bit"] < sizes["hqq_4bit"] < base
    if "torchao_int8wo" in sizes:  # int8 data plus a scale and zero point per row
        assert sizes["int8"] < sizes["torchao_int8wo"] < sizes["int8"] + 8 * linear // 64


def test_hqq_keeps_scales_and_zeros_as_counted_state(variant: Callable[[str], Any]) -> None:
    loaded = variant("hqq_4bit")
    groups = sum(p.meta["shape"][0] * p.meta["shape"][1] // 64 for p in loaded.model.modules() if hasattr(p, "W_q"))
    assert loaded.quant_state_bytes == groups * 2 * 2  # a float16 scale and zero per group of 64
    layer = _projections(loaded.model)[0]
    assert layer.compute_dtype == torch.float32 and layer.meta["scale"].dtype == torch.float32  # upcast after


def test_nf4_variants_keep_their_own_settings(variant: Callable[[str], Any]) -> None:
    dq, bf16, fp4, nf4 = (variant(k) for k in ("nf4_dq", "nf4_bf16", "fp4", "nf4"))
    assert _projections(dq.model)[0].weight.quant_state.nested  # the block scales quantized again
    assert dq.quant_state_bytes != nf4.quant_state_bytes
    assert _projections(bf16.model)[0].compute_dtype == torch.bfloat16  # kept on the CPU too
    assert _projections(nf4.model)[0].compute_dtype == torch.float32
    assert _projections(fp4.model)[0].weight.quant_state.quant_type == "fp4"


def _outlier_batch(model: Any, tokens: torch.Tensor) -> float:
    """The first sequence, and the same beside a sequence whose first token's embedding has one
    huge dimension (an activation outlier above LLM.int8's threshold of 6 in every layer)."""
    outlier = tokens[1].clone()
    outlier[0] = 7
    embedding = model.model.embed_tokens.weight
    kept = embedding[7].clone()
    with torch.no_grad():
        embedding[7].zero_()
        embedding[7, 3] = 40.0
        alone = model(tokens[:1]).logits
        beside = model(torch.stack([tokens[0], outlier])).logits[:1]
        embedding[7] = kept  # the model is shared with the other tests of this module
    return float((alone - beside).abs().max())


@pytest.mark.parametrize("key", sorted(CPU_METHODS))
def test_batch_dependence_is_as_registered(key: str, variant: Callable[[str], Any], tokens: torch.Tensor) -> None:
    """A batch-invariant variant gives a sequence the same logits whatever its neighbours (a
    batch-dependent one would be scored one sequence per pass)."""
    moved = _outlier_batch(variant(key).model, tokens)
    if VARIANTS[key].batch_invariant:
        assert moved < 1e-4, f"{key} is registered batch-invariant but moved by {moved}"
    else:
        assert moved > 1e-3, f"{key} is registered batch-dependent but did not move"


def test_stock_llm_int8_depends_on_the_batch_and_the_loader_makes_it_per_sequence(
    variant: Callable[[str], Any], tokens: torch.Tensor
) -> None:
    """bitsandbytes' own LLM.int8 moves a sequence when its neighbour has an outlier (the control);
    the loader's per-sequence outlier columns (models/int8_per_sequence.py) give it back exactly."""
    from quant_fixtures.models.int8_per_sequence import install_per_sequence_int8, remove_per_sequence_int8

    loaded = variant("int8")
    assert loaded.per_sequence_int8_layers == remove_per_sequence_int8(loaded.model) > 0
    try:
        stock = _outlier_batch(loaded.model, tokens)
    finally:
        install_per_sequence_int8(loaded.model)
    assert stock > 1e-3
    assert _outlier_batch(loaded.model, tokens) == 0.0


@pytest.mark.parametrize("key", ["torchao_int4wo", "quanto_int4"])
def test_cuda_only_method_is_refused_on_the_cpu_with_the_reason(key: str, tiny_llama: Path, digest_cache: Path) -> None:
    from quant_fixtures.config import ModelSpec
    from quant_fixtures.models.sources import resolve_model

    if VARIANTS[key].missing_packages():
        reason = VARIANTS[key].unavailable_reason("cpu")
        assert reason is not None  # a missing package is a reason
        pytest.skip(reason)
    spec = ModelSpec(key="tiny", path=str(tiny_llama))
    with pytest.raises(VariantUnavailableError, match=f"{key} runs on CUDA only, not cpu"):
        load_model(spec, resolve_model(spec, digest_cache), VARIANTS[key], CPU_OPTIONS)
