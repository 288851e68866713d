"""Load one (model, variant) pair: quantize on load, measure the footprint, release it after."""

from __future__ import annotations

import gc
import json
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from quant_fixtures.config import ModelSpec
from quant_fixtures.json_types import JsonObject
from quant_fixtures.models.footprint import model_footprint, quantization_state_bytes
from quant_fixtures.models.int8_on_device import int8_quantized_on_device
from quant_fixtures.models.int8_per_sequence import install_per_sequence_int8
from quant_fixtures.models.placement import gpu_limits, placement
from quant_fixtures.models.sources import ResolvedModel, weight_bytes
from quant_fixtures.settings import LoadSettings
from quant_fixtures.variants import Variant, torch_dtype

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase


@dataclass
class LoadedModel:
    model: PreTrainedModel  # deleted by :func:`release`
    tokenizer: PreTrainedTokenizerBase
    footprint_bytes: int
    weight_dtype: str
    compute_dtype: str
    device: str
    load_seconds: float
    quantization_config: JsonObject | None
    weights_identity: str  # the identity of the weights it was loaded from (ResolvedModel.identity)
    quant_state_bytes: int = 0  # scales kept outside parameters and buffers (bitsandbytes, HQQ): not in the footprint
    placement_note: str | None = None  # set when the model is spread over several GPUs
    footprint_method: str = ""  # how footprint_bytes was counted (models/footprint.py)
    per_sequence_int8_layers: int = 0  # LLM.int8 layers that pick outlier columns per sequence


def _set(module: torch.nn.Module, name: str, value: object) -> None:
    """Set a plain attribute of a quantized layer (torch types Module.__setattr__ for tensors and
    modules only)."""
    setattr(module, name, value)


def upcast_unquantized(
    model: torch.nn.Module, dtype: torch.dtype, keep_4bit_compute: torch.dtype | None = None
) -> None:
    """Cast float parameters and buffers that are not quantized storage to ``dtype``.

    Used on CPU after the footprint is taken: weights stay as stored (16-bit or quantized) for
    the footprint, activations run in float32 for speed and accuracy. ``model.to(dtype)`` cannot
    be used because transformers forbids it on quantized models. ``keep_4bit_compute``: a
    bitsandbytes 4-bit compute dtype the variant asks for (nf4_bf16), kept instead of ``dtype``.
    """
    import torch

    quantized_types: tuple[type, ...] = ()
    try:
        import bitsandbytes as bnb

        quantized_types = (bnb.nn.Int8Params, bnb.nn.Params4bit)
    except ImportError:
        pass
    for module in model.modules():
        for param in module.parameters(recurse=False):
            # Tensor subclasses (torchao, quanto) are quantized storage whose dtype cannot change.
            plain = type(param.data) is torch.Tensor
            if plain and param.is_floating_point() and param.dtype != dtype and not isinstance(param, quantized_types):
                param.data = param.data.to(dtype)
        for name, buffer in module.named_buffers(recurse=False):
            # Rotary inverse frequencies are kept in float32 by the models themselves.
            if buffer.is_floating_point() and buffer.dtype not in (dtype, torch.float32):
                module.register_buffer(
                    name, buffer.to(dtype), persistent=name not in module._non_persistent_buffers_set
                )
        meta = getattr(module, "meta", None)
        if hasattr(module, "W_q") and isinstance(meta, dict):  # hqq HQQLinear
            _set(module, "compute_dtype", dtype)
            meta["compute_dtype"] = dtype
            for key in ("scale", "zero"):
                if isinstance(meta.get(key), torch.Tensor):
                    meta[key] = meta[key].to(dtype)
        elif getattr(module, "compute_dtype", None) is not None:  # bnb Linear4bit
            _set(module, "compute_dtype", keep_4bit_compute or dtype)
            # On CPUs with AVX512-BF16, bitsandbytes repacks NF4 weights on the first call and then
            # computes in bfloat16 whatever compute_dtype says; keep the float32 path we report.
            if hasattr(module, "support_avx512bf16_for_cpu"):
                _set(module, "support_avx512bf16_for_cpu", False)


FOOTPRINT_METHOD = (
    "parameters and buffers as held: tensor-subclass weights by their inner tensors, unquantized "
    "floating-point parameters at the 16-bit weight dtype (equals model.get_memory_footprint() "
    "for 16-bit and bitsandbytes models); scales kept beside the weights are quant_state_gb"
)
GGUF_FOOTPRINT_METHOD = (
    "the GGUF file's tensor data as stored (quantized blocks, what llama.cpp holds); "
    "transformers runs the weights dequantized to the 16-bit dtype"
)


class VariantUnavailableError(RuntimeError):
    """The variant's method is not installed, or does not run on this device."""


def _applied_config(model: PreTrainedModel, kwargs: Mapping[str, object]) -> JsonObject | None:
    """Every effective setting of the quantization that ran: the config given to from_pretrained, a
    pre-quantized checkpoint's own, or (HQQ) the settings its layers hold."""
    qconfig = kwargs.get("quantization_config") or getattr(model.config, "quantization_config", None)
    if qconfig is not None:
        # use_diff=False: every effective setting, not only those that differ from the defaults
        if hasattr(qconfig, "to_json_string"):
            settings: JsonObject = json.loads(qconfig.to_json_string(use_diff=False))
            return settings
        if isinstance(qconfig, Mapping):  # a plain dict of settings (a checkpoint's config.json)
            return dict(qconfig)
        raise TypeError(f"quantization_config {qconfig!r} is neither a transformers config nor a mapping")
    for module in model.modules():
        meta = getattr(module, "meta", None)
        if hasattr(module, "W_q") and isinstance(meta, dict):
            return {"quant_method": "hqq", **{k: meta[k] for k in ("nbits", "group_size", "axis", "packing")}}
    return None


def load_model(
    spec: ModelSpec,
    resolved: ResolvedModel,
    variant: Variant,
    options: LoadSettings,
    tokenizer_from: Path | None = None,
) -> LoadedModel:
    """Load the pair on ``options.device`` ("cuda:N" or "cpu"), quantizing on load when the variant
    says so. ``resolved``: the variant's weights (the model's own, or its checkpoint);
    ``tokenizer_from``: the base model's directory, whose tokenizer a checkpoint variant uses."""
    import sys

    reason = variant.unavailable_reason(options.device_type)
    if reason:
        raise VariantUnavailableError(reason)
    options = variant.load_settings(options)
    device = options.device

    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    if not sys.stderr.isatty():  # loading bars only on an interactive terminal (not CI, not xdist workers)
        hf_logging.disable_progress_bar()
    start = time.perf_counter()
    kwargs = variant.load_kwargs(options)
    own = variant.source
    allow_pickle = own.allow_pickle if own else spec.allow_pickle
    trust_code = spec.trust_remote_code or bool(own and own.trust_remote_code)
    where = placement(
        device,
        weight_bytes(resolved.directory, allow_pickle, f"model {spec.key!r}"),
        variant.weight_share,
        gpu_limits(options.max_gpu_memory) if device.startswith("cuda") else [],
        options.may_spread,
    )
    if where.max_memory is not None:
        kwargs["max_memory"] = where.max_memory
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_from or resolved.directory, trust_remote_code=trust_code)
    with int8_quantized_on_device(device):  # no host round trip per weight (models/int8_on_device.py)
        model = AutoModelForCausalLM.from_pretrained(
            resolved.directory,
            dtype=torch_dtype(variant.load_dtype(options)),
            device_map=where.device_map,
            trust_remote_code=trust_code,
            use_safetensors=None if allow_pickle else True,  # never unpickle weights without the opt-in
            **kwargs,
        )
    if variant.quantize_loaded is not None:
        variant.quantize_loaded(model, options)
    model.eval()
    per_sequence = install_per_sequence_int8(model)  # a sequence's numbers never hang on its batch
    footprint, method = model_footprint(model, torch_dtype(options.weight_dtype)), FOOTPRINT_METHOD
    if own is not None and resolved.gguf_tensor_bytes is not None:
        footprint, method = resolved.gguf_tensor_bytes, GGUF_FOOTPRINT_METHOD
    state_bytes = quantization_state_bytes(model)
    if options.compute_dtype != options.weight_dtype:
        upcast_unquantized(
            model,
            torch_dtype(options.compute_dtype),
            torch_dtype(variant.bnb_4bit_compute) if variant.bnb_4bit_compute else None,
        )
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize(device)
    return LoadedModel(
        model=model,
        tokenizer=tokenizer,
        footprint_bytes=footprint,
        weight_dtype=options.weight_dtype,
        compute_dtype=options.compute_dtype,
        device=device,
        load_seconds=time.perf_counter() - start,
        quantization_config=_applied_config(model, kwargs),
        weights_identity=resolved.identity,
        quant_state_bytes=state_bytes,
        placement_note=where.note,
        footprint_method=method,
        per_sequence_int8_layers=per_sequence,
    )


def release(loaded: LoadedModel | None) -> None:
    """Drop the model and return its memory before the next one loads."""
    if loaded is None:
        return
    device = loaded.device
    vars(loaded).pop("model", None)  # the one reference to the model goes (a second release finds none)
    gc.collect()
    if device.startswith("cuda"):
        import torch

        torch.cuda.empty_cache()
