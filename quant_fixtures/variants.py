"""The registry of quantization methods: one entry per method, nothing else to touch to add one.

A variant turns the run's load settings (settings.LoadSettings: device, weight and compute dtypes,
NF4 options) into the keyword arguments of ``from_pretrained`` (usually a ``quantization_config``),
or quantizes the loaded model itself (HQQ, whose transformers integration does not load in
transformers 5). Methods outside the core dependencies name their optional dependency group
(``pip install -e '.[torchao]'``); whether it is installed is checked with ``find_spec``, never by
importing, so collection stays fast and a missing package is a skip with the install command, not
an import error. Imports of transformers and the methods happen inside the builders.

Variants a model entry lists itself (pre-quantized checkpoints, GGUF files) are read from the
config as :class:`CheckpointSpec` and made variants with :func:`checkpoint_variant`.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeAlias, TypedDict

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel

    from quant_fixtures.settings import LoadSettings

DTYPE_NAMES = ("float16", "bfloat16", "float32")

# Keyword arguments for transformers' from_pretrained (a quantization_config; the loader adds
# max_memory). Any: they are splatted into from_pretrained, whose typed keywords and untyped
# **kwargs (transformers) take them.
FromPretrainedKwargs: TypeAlias = "dict[str, Any]"
QuantizeLoaded: TypeAlias = "Callable[[PreTrainedModel, LoadSettings], None]"


def torch_dtype(name: str) -> torch.dtype:
    """The torch dtype for one of DTYPE_NAMES (torch is imported only here, lazily)."""
    import torch

    if name not in DTYPE_NAMES:
        raise ValueError(f"unknown dtype {name!r}; valid: {', '.join(DTYPE_NAMES)}")
    return {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}[name]


@dataclass(frozen=True)
class CheckpointSpec:
    """A variant a model entry lists itself: weights quantized elsewhere, compared with the entry's
    FP16 weights. Exactly one source: ``hub_id`` (+ ``revision``) or ``path`` (a pre-quantized
    checkpoint: GPTQ, AWQ, compressed-tensors, bitsandbytes...), ``gguf_file`` (a GGUF file of the
    same model, dequantized by transformers), or ``gguf_type`` (the base GGUF re-quantized to that
    type by the suite with the gguf package). Parsed and checked in config.py."""

    key: str
    model: str
    hub_id: str | None = None
    revision: str | None = None
    path: str | None = None
    gguf_file: str | None = None
    gguf_type: str | None = None
    description: str = ""
    default: bool = True  # in the matrix when --variants is not given
    batch_invariant: bool = True  # false for a method that quantizes activations over the batch
    packages: tuple[str, ...] = ()  # modules transformers needs to load it (e.g. gptqmodel)
    trust_remote_code: bool = False
    allow_pickle: bool = False
    # A registered bitsandbytes method applied to the entry's own 16-bit weights with these modules
    # kept in 16 bits (BitsAndBytesConfig(llm_int8_skip_modules=...)): what the attribution command
    # recommends, pasted into the config (see derived_variant).
    quantize: str | None = None
    keep_16bit: tuple[str, ...] = ()

    @property
    def source_kind(self) -> str:
        return next(k for k in ("hub_id", "path", "gguf_file", "gguf_type", "quantize") if getattr(self, k))

    @property
    def source(self) -> str:
        if self.hub_id:
            return f"{self.hub_id}@{self.revision or 'main'}"
        if self.gguf_type:
            return f"{self.model}'s GGUF re-quantized to {self.gguf_type} (gguf package)"
        if self.quantize:
            return f"{self.model}'s 16-bit weights, {self.quantize} with {len(self.keep_16bit)} modules kept in 16 bits"
        return self.path or self.gguf_file or ""

    @property
    def method(self) -> str:
        if self.quantize:
            return VARIANTS[self.quantize].method
        if self.gguf_type:
            return f"gguf-{self.gguf_type}"
        return "gguf" if self.gguf_file else "pre-quantized"


@dataclass(frozen=True)
class Variant:
    key: str
    method: str
    description: str
    load_kwargs: Callable[[LoadSettings], FromPretrainedKwargs]
    is_baseline: bool = False
    # False when a sequence's numbers depend on what else is in the batch: such a variant is scored
    # one sequence per pass. (bitsandbytes' LLM.int8 picks outlier columns over the whole batch; the
    # loader makes it pick them per sequence, models/int8_per_sequence.py, so int8 is invariant.)
    batch_invariant: bool = True
    # Share of the 16-bit weight bytes the variant holds once loaded, to place it before loading
    # (measured int8 / nf4: Mistral-7B 0.52 / 0.28, Qwen2.5-0.5B 0.64 / 0.46, whose large tied
    # embedding stays 16-bit); the larger is used, to be safe.
    weight_share: float = 1.0
    default: bool = False  # in the matrix when --variants is not given
    extra: str | None = None  # optional dependency group of this package that installs the method
    packages: tuple[str, ...] = ()  # modules the method imports (checked with find_spec)
    devices: tuple[str, ...] = ("cpu", "cuda")
    # Quantizes the model after a 16-bit load (HQQ); None: from_pretrained does it.
    quantize_loaded: QuantizeLoaded | None = None
    weight_dtype: str | None = None  # a 16-bit dtype the method needs (torchao int4: bfloat16)
    # Quantized weights are tensor subclasses whose dtype cannot change after loading (torchao,
    # quanto): on the CPU such a variant loads in float32 to compute in float32 like the others.
    fixed_dtype_weights: bool = False
    bnb_4bit_compute: str | None = None  # a 4-bit compute dtype kept on the CPU too (nf4_bf16)
    source: CheckpointSpec | None = None  # a model's own variant (pre-quantized or GGUF)

    def missing_packages(self) -> list[str]:
        """The method's modules that are not installed (nothing is imported)."""
        return [p for p in self.packages if not _installed(p)]

    def install_hint(self) -> str:
        if self.extra:
            return f"pip install -e '.[{self.extra}]'"
        return "pip install " + " ".join(dict.fromkeys(p.split(".")[0] for p in self.packages))  # top-level names

    def unavailable_reason(self, device_type: str) -> str | None:
        """Why this variant cannot run here (a skip reason naming the remedy), or None."""
        missing = self.missing_packages()
        if missing:
            return f"variant {self.key} needs {', '.join(missing)}: {self.install_hint()}"
        if device_type not in self.devices:
            return f"variant {self.key} runs on {' or '.join(d.upper() for d in self.devices)} only, not {device_type}"
        return None

    def load_settings(self, options: LoadSettings) -> LoadSettings:
        """The run's load settings with what this method requires (its 16-bit dtype)."""
        from dataclasses import replace

        return replace(options, weight_dtype=self.weight_dtype) if self.weight_dtype else options

    def load_dtype(self, options: LoadSettings) -> str:
        """The dtype ``from_pretrained`` loads in."""
        if self.fixed_dtype_weights and options.device_type == "cpu":
            return options.compute_dtype
        return options.weight_dtype


def _installed(module: str) -> bool:
    """Whether ``module`` can be imported. find_spec of a dotted name imports its parents and raises
    ModuleNotFoundError when one is missing ("optimum.quanto" without optimum): that is "not installed"."""
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        return False


def baseline_kwargs(options: LoadSettings) -> FromPretrainedKwargs:
    return {}


def _bnb_int8(threshold: float) -> Callable[[LoadSettings], FromPretrainedKwargs]:
    def kwargs(options: LoadSettings) -> FromPretrainedKwargs:
        from transformers import BitsAndBytesConfig

        return {"quantization_config": BitsAndBytesConfig(load_in_8bit=True, llm_int8_threshold=threshold)}

    return kwargs


def _bnb_4bit(
    quant_type: str, double_quant: bool | None = None, compute: str | None = None
) -> Callable[[LoadSettings], FromPretrainedKwargs]:
    """None: the run's options (--nf4-double-quant, --nf4-compute-dtype) decide."""

    def kwargs(options: LoadSettings) -> FromPretrainedKwargs:
        from transformers import BitsAndBytesConfig

        return {
            "quantization_config": BitsAndBytesConfig(
                load_in_4bit=True,
                bnb_4bit_quant_type=quant_type,
                bnb_4bit_compute_dtype=torch_dtype(compute or options.nf4_compute_dtype or options.compute_dtype),
                bnb_4bit_use_double_quant=options.nf4_double_quant if double_quant is None else double_quant,
            )
        }

    return kwargs


def _torchao(config_name: str, **config_args: object) -> Callable[[LoadSettings], FromPretrainedKwargs]:
    def kwargs(options: LoadSettings) -> FromPretrainedKwargs:
        import torchao.quantization as ao
        from transformers import TorchAoConfig

        return {"quantization_config": TorchAoConfig(getattr(ao, config_name)(**config_args))}

    return kwargs


def _quanto(weights: str) -> Callable[[LoadSettings], FromPretrainedKwargs]:
    def kwargs(options: LoadSettings) -> FromPretrainedKwargs:
        from transformers import QuantoConfig

        return {"quantization_config": QuantoConfig(weights=weights)}

    return kwargs


HQQ_GROUP_SIZE = 64


def _hqq(nbits: int) -> QuantizeLoaded:
    def quantize(model: PreTrainedModel, options: LoadSettings) -> None:
        from hqq.core.quantize import BaseQuantizeConfig
        from hqq.models.hf.base import AutoHQQHFModel

        # Scales in the 16-bit weight dtype on every device (the CPU upcasts them after the footprint).
        AutoHQQHFModel.quantize_model(
            model,
            quant_config=BaseQuantizeConfig(nbits=nbits, group_size=HQQ_GROUP_SIZE),
            compute_dtype=torch_dtype(options.weight_dtype),
            device=options.device,
        )

    return quantize


class _Family(TypedDict, total=False):
    """Keyword arguments of Variant that the variants of one optional method share."""

    extra: str
    packages: tuple[str, ...]
    fixed_dtype_weights: bool


_AO: _Family = {"extra": "torchao", "packages": ("torchao",), "fixed_dtype_weights": True}
_QUANTO: _Family = {"extra": "quanto", "packages": ("optimum.quanto",), "fixed_dtype_weights": True}
_HQQ: _Family = {"extra": "hqq", "packages": ("hqq",)}

VARIANTS: dict[str, Variant] = {
    v.key: v
    for v in (
        Variant(
            "fp16",
            "none",
            "16-bit floating point reference (float16, or bfloat16 by option)",
            baseline_kwargs,
            is_baseline=True,
            default=True,
        ),
        Variant(
            "int8",
            "bitsandbytes-llm.int8",
            "bitsandbytes LLM.int8(): 8-bit absmax linear weights, "
            "fp16 outlier decomposition (threshold 6.0; outlier columns chosen per sequence)",
            _bnb_int8(6.0),
            weight_share=0.64,
            default=True,
        ),
        Variant(
            "nf4",
            "bitsandbytes-nf4",
            "bitsandbytes 4-bit NormalFloat linear weights, block size 64",
            _bnb_4bit("nf4"),
            weight_share=0.46,
            default=True,
        ),
        Variant(
            "fp4",
            "bitsandbytes-fp4",
            "bitsandbytes 4-bit float (e2m1) linear weights, block size 64",
            _bnb_4bit("fp4"),
            weight_share=0.46,
        ),
        Variant(
            "nf4_dq",
            "bitsandbytes-nf4",
            "bitsandbytes NF4 with double quantization (the block "
            "scales themselves quantized to 8 bits, blocks of 256)",
            _bnb_4bit("nf4", double_quant=True),
            weight_share=0.46,
        ),
        Variant(
            "nf4_bf16",
            "bitsandbytes-nf4",
            "bitsandbytes NF4 computing its matrix products in bfloat16 (on the CPU too)",
            _bnb_4bit("nf4", compute="bfloat16"),
            weight_share=0.46,
            bnb_4bit_compute="bfloat16",
        ),
        # threshold 0 turns the outlier decomposition off: every activation row is quantized to int8
        # by its own absmax, so a sequence no longer depends on its neighbours in the batch.
        Variant(
            "int8_threshold0",
            "bitsandbytes-llm.int8",
            "bitsandbytes LLM.int8() without outlier "
            "decomposition (threshold 0): int8 weights and per-token int8 activations",
            _bnb_int8(0.0),
            weight_share=0.64,
        ),
        Variant(
            "torchao_int8wo",
            "torchao-int8-weight-only",
            "torchao Int8WeightOnlyConfig: int8 linear weights, one scale per output row; activations stay 16-bit",
            _torchao("Int8WeightOnlyConfig"),
            weight_share=0.64,
            **_AO,
        ),
        Variant(
            "torchao_int8dq",
            "torchao-int8-dynamic",
            "torchao Int8DynamicActivationInt8WeightConfig: int8 "
            "linear weights (per row) and int8 activations quantized per token at run time",
            _torchao("Int8DynamicActivationInt8WeightConfig"),
            weight_share=0.64,
            **_AO,
        ),
        Variant(
            "torchao_int4wo",
            "torchao-int4-weight-only",
            "torchao Int4WeightOnlyConfig: 4-bit linear "
            "weights, groups of 128 (tinygemm tile packing), bfloat16 activations",
            _torchao("Int4WeightOnlyConfig", group_size=128, int4_packing_format="tile_packed_to_4d"),
            weight_share=0.46,
            devices=("cuda",),
            weight_dtype="bfloat16",
            **_AO,
        ),
        Variant(
            "hqq_4bit",
            "hqq",
            f"HQQ half-quadratic 4-bit linear weights, groups of {HQQ_GROUP_SIZE}, 16-bit scale and zero",
            baseline_kwargs,  # a 16-bit load; quantize_loaded quantizes it
            quantize_loaded=_hqq(4),
            **_HQQ,
        ),
        Variant(
            "hqq_3bit",
            "hqq",
            f"HQQ half-quadratic 3-bit linear weights, groups of {HQQ_GROUP_SIZE}, 16-bit scale and zero",
            baseline_kwargs,  # a 16-bit load; quantize_loaded quantizes it
            quantize_loaded=_hqq(3),
            **_HQQ,
        ),
        Variant(
            "quanto_int8",
            "optimum-quanto",
            "optimum-quanto int8 linear weights (per-row scale); activations stay 16-bit",
            _quanto("int8"),
            weight_share=0.64,
            **_QUANTO,
        ),
        Variant(
            "quanto_int4",
            "optimum-quanto",
            "optimum-quanto int4 linear weights, groups of 128 (fewer "
            "where 128 does not divide a row) with scale and shift; bfloat16 activations",
            _quanto("int4"),
            weight_share=0.46,
            # Its float16 CUDA kernel gave NaN on the full-size seed architectures (H200): bfloat16.
            # CUDA only: quanto 0.2.7's CPU int4 fallback fails under torch.inference_mode
            # ("Cannot set version_counter for inference tensor").
            weight_dtype="bfloat16",
            devices=("cuda",),
            **_QUANTO,
        ),
    )
}

BASELINE_VARIANT = next(k for k, v in VARIANTS.items() if v.is_baseline)
DEFAULT_VARIANTS = tuple(k for k, v in VARIANTS.items() if v.default)
QUANTIZATION_METHODS = tuple(k for k, v in VARIANTS.items() if not v.is_baseline)  # registered, not own checkpoints
