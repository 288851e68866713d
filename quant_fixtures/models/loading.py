"""Load one (model, variant) pair: quantize on load, measure the footprint, release it after."""

from __future__ import annotations

import gc
import json
import time
from dataclasses import dataclass
from typing import Any

from quant_fixtures.config import ModelSpec
from quant_fixtures.models.int8_on_device import int8_quantized_on_device
from quant_fixtures.models.placement import gpu_limits, placement
from quant_fixtures.models.sources import ResolvedModel, weight_bytes
from quant_fixtures.settings import LoadSettings
from quant_fixtures.variants import Variant, torch_dtype


@dataclass
class LoadedModel:
    model: Any
    tokenizer: Any
    footprint_bytes: int
    weight_dtype: str
    compute_dtype: str
    device: str
    load_seconds: float
    quantization_config: dict[str, Any] | None
    quant_state_bytes: int = 0  # bitsandbytes scales kept outside the parameters (not in the footprint)
    placement_note: str | None = None  # set when the model is spread over several GPUs


def upcast_unquantized(model: Any, dtype: Any) -> None:
    """Cast float parameters and buffers that are not quantized storage to ``dtype``.

    Used on CPU after the footprint is taken: weights stay as stored (16-bit or quantized) for
    the footprint, activations run in float32 for speed and accuracy. ``model.to(dtype)`` cannot
    be used because transformers forbids it on quantized models.
    """
    import torch

    quantized_types: tuple[type, ...] = ()
    try:
        import bitsandbytes as bnb

        quantized_types = (bnb.nn.Int8Params, bnb.nn.Params4bit)
    except ImportError:
        pass
    for module in model.modules():
        for name, param in module.named_parameters(recurse=False):
            if param.is_floating_point() and param.dtype != dtype and not isinstance(param, quantized_types):
                param.data = param.data.to(dtype)
        for name, buffer in module.named_buffers(recurse=False):
            # Rotary inverse frequencies are kept in float32 by the models themselves.
            if buffer.is_floating_point() and buffer.dtype not in (dtype, torch.float32):
                module.register_buffer(name, buffer.to(dtype), persistent=name not in module._non_persistent_buffers_set)
        if hasattr(module, "compute_dtype") and module.compute_dtype is not None:  # bnb Linear4bit
            module.compute_dtype = dtype
            # On CPUs with AVX512-BF16, bitsandbytes repacks NF4 weights on the first call and then
            # computes in bfloat16 whatever compute_dtype says; keep the float32 path we report.
            if hasattr(module, "support_avx512bf16_for_cpu"):
                module.support_avx512bf16_for_cpu = False


def quantization_state_bytes(model: Any) -> int:
    """Bytes of quantization state that ``get_memory_footprint`` does not count, because bitsandbytes
    keeps it as attributes of the weights: LLM.int8 row scales (SCB) and the NF4 block absmax and
    code book (with double quantization, the second-level state too)."""
    total = 0
    for param in model.parameters():
        scb = getattr(param, "SCB", None)
        if scb is not None:
            total += scb.numel() * scb.element_size()
        state = getattr(param, "quant_state", None)
        while state is not None:
            total += sum(t.numel() * t.element_size() for t in (state.absmax, state.code) if t is not None)
            state = getattr(state, "state2", None)
    return total


def load_model(spec: ModelSpec, resolved: ResolvedModel, variant: Variant, options: LoadSettings) -> LoadedModel:
    """Load the pair on ``options.device`` ("cuda:N" or "cpu"), quantizing on load when the variant says so."""
    import sys

    device = options.device

    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    if not sys.stderr.isatty():  # loading bars only on an interactive terminal (not CI, not xdist workers)
        hf_logging.disable_progress_bar()
    start = time.perf_counter()
    kwargs = variant.load_kwargs(options)
    where = placement(device, weight_bytes(resolved.directory, spec.allow_pickle, spec.key), variant.weight_share,
                      gpu_limits(options.max_gpu_memory) if device.startswith("cuda") else [], options.may_spread)
    if where.max_memory is not None:
        kwargs["max_memory"] = where.max_memory
    tokenizer = AutoTokenizer.from_pretrained(resolved.directory, trust_remote_code=spec.trust_remote_code)
    with int8_quantized_on_device(device):  # no host round trip per weight (models/int8_on_device.py)
        model = AutoModelForCausalLM.from_pretrained(
            resolved.directory,
            dtype=torch_dtype(options.weight_dtype),
            device_map=where.device_map,
            trust_remote_code=spec.trust_remote_code,
            use_safetensors=None if spec.allow_pickle else True,  # never unpickle weights without the opt-in
            **kwargs,
        )
    model.eval()
    footprint = int(model.get_memory_footprint())
    state_bytes = quantization_state_bytes(model)
    if options.compute_dtype != options.weight_dtype:
        upcast_unquantized(model, torch_dtype(options.compute_dtype))
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize(device)
    qconfig = kwargs.get("quantization_config")
    return LoadedModel(
        model=model,
        tokenizer=tokenizer,
        footprint_bytes=footprint,
        weight_dtype=options.weight_dtype,
        compute_dtype=options.compute_dtype,
        device=device,
        load_seconds=time.perf_counter() - start,
        # use_diff=False: every effective setting, not only those that differ from the defaults
        quantization_config=json.loads(qconfig.to_json_string(use_diff=False)) if qconfig is not None else None,
        quant_state_bytes=state_bytes,
        placement_note=where.note,
    )


def release(loaded: LoadedModel | None) -> None:
    """Drop the model and return its memory before the next one loads."""
    if loaded is None:
        return
    device = loaded.device
    loaded.model = None
    gc.collect()
    if device.startswith("cuda"):
        import torch

        torch.cuda.empty_cache()
