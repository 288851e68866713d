"""The registry of quantization methods: one entry per method, nothing else to touch to add one.

A variant turns the run's load settings (settings.LoadSettings: device, weight and compute dtypes,
NF4 options) into the keyword arguments of ``from_pretrained`` (usually a ``quantization_config``). Imports of transformers happen inside the builders so that ``--help``
and collection stay fast.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:
    from quant_fixtures.settings import LoadSettings

DTYPE_NAMES = ("float16", "bfloat16", "float32")


def torch_dtype(name: str) -> Any:
    """The torch dtype for one of DTYPE_NAMES (torch is imported only here, lazily)."""
    import torch

    if name not in DTYPE_NAMES:
        raise ValueError(f"unknown dtype {name!r}; valid: {', '.join(DTYPE_NAMES)}")
    return getattr(torch, name)


@dataclass(frozen=True)
class Variant:
    key: str
    method: str
    description: str
    load_kwargs: Callable[[LoadSettings], dict[str, Any]]
    is_baseline: bool = False
    # False when a sequence's numbers depend on what else is in the batch (LLM.int8 picks its
    # outlier columns over the whole batch): such a variant is scored one sequence per pass.
    batch_invariant: bool = True
    # Share of the 16-bit weight bytes the variant holds once loaded, to place it before loading
    # (measured int8 / nf4: Mistral-7B 0.52 / 0.28, Qwen2.5-0.5B 0.64 / 0.46, whose large tied
    # embedding stays 16-bit); the larger is used, to be safe.
    weight_share: float = 1.0


def _baseline_kwargs(options: LoadSettings) -> dict[str, Any]:
    return {}


def _int8_kwargs(options: LoadSettings) -> dict[str, Any]:
    from transformers import BitsAndBytesConfig

    return {"quantization_config": BitsAndBytesConfig(load_in_8bit=True)}


def _nf4_kwargs(options: LoadSettings) -> dict[str, Any]:
    from transformers import BitsAndBytesConfig

    return {
        "quantization_config": BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_compute_dtype=torch_dtype(options.nf4_compute_dtype or options.compute_dtype),
            bnb_4bit_use_double_quant=options.nf4_double_quant,
        )
    }


VARIANTS: dict[str, Variant] = {
    v.key: v
    for v in (
        Variant("fp16", "none", "16-bit floating point reference (float16, or bfloat16 by option)",
                _baseline_kwargs, is_baseline=True),
        Variant("int8", "bitsandbytes-llm.int8", "bitsandbytes LLM.int8(): 8-bit absmax linear weights, "
                "fp16 outlier decomposition (threshold 6.0)", _int8_kwargs, batch_invariant=False,
                weight_share=0.64),
        Variant("nf4", "bitsandbytes-nf4", "bitsandbytes 4-bit NormalFloat linear weights, block size 64",
                _nf4_kwargs, weight_share=0.46),
    )
}

BASELINE_VARIANT = next(k for k, v in VARIANTS.items() if v.is_baseline)
