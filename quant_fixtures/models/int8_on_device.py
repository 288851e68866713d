"""LLM.int8 quantization on the GPU while loading, without the host round trip.

transformers 5's loader quantizes each linear weight with ``Int8Params(value.to("cpu")).to(device)``:
a weight already on the GPU is copied to the host and back before bitsandbytes quantizes it there
(bitsandbytes quantizes only on a move from the CPU). For Mistral-7B that is 224 synchronous copies
each way, about 10 s of a 15 s load on the H200 host (measured with cProfile: 11.2 s in
``Tensor.to``). Here the weight is quantized where it is, with the same bitsandbytes call
(``Int8Params._quantize``: the same int8 rows and scales, checked by a GPU test).

The replacement is installed only around a CUDA int8 load and only over the converter it was
written against (its source still does the round trip); anything else keeps transformers' own.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel
    from transformers.integrations.bitsandbytes import Bnb8bitQuantize

Convert = Callable[..., "dict[str, torch.Tensor]"]  # the converter's ``convert`` method


def _round_trip_converter() -> type[Bnb8bitQuantize] | None:
    """transformers' int8 converter class if it is the one with the host round trip, else None."""
    try:
        from transformers.integrations import bitsandbytes as hf_bnb
    except ImportError:
        return None
    converter = getattr(hf_bnb, "Bnb8bitQuantize", None)
    try:
        source = inspect.getsource(converter.convert) if converter is not None else ""
    except (OSError, TypeError):
        return None
    return converter if 'value.to("cpu")' in source and "get_module_from_name" in source else None


def _convert_in_place(
    self: object,
    input_dict: dict[str, list[torch.Tensor] | torch.Tensor],
    model: PreTrainedModel | None = None,
    full_layer_name: str | None = None,
    **kwargs: object,
) -> dict[str, torch.Tensor]:
    """``Bnb8bitQuantize.convert`` (same parameters) without the host round trip."""
    import bitsandbytes as bnb
    from transformers.integrations import bitsandbytes as hf_bnb

    if model is None:
        raise ValueError("LLM.int8 conversion needs the model its weights belong to")
    result: dict[str, torch.Tensor] = {}
    for name, value in input_dict.items():
        value = value[0] if isinstance(value, list) else value
        module, _ = hf_bnb.get_module_from_name(model, name)
        if issubclass(module.source_cls, hf_bnb.Conv1D):  # stored transposed (GPT-2 style)
            value = value.T
        options = dict(model.get_parameter_or_buffer(name).__dict__)
        options.pop("SCB", None)
        param = bnb.nn.Int8Params(value, requires_grad=False, **options)
        if value.device.type != "cpu":
            result[name] = param._quantize(value.device)
        else:  # bitsandbytes types Int8Params.to's self by a TypeVar bound to nn.Module (it is a Tensor)
            result[name] = param.to(value.device)  # type: ignore[misc]
    return result


def _set_convert(converter: type[Bnb8bitQuantize], convert: Convert) -> None:
    """Replace (or restore) the converter's method: a deliberate patch of transformers' class, which
    mypy refuses as an assignment to a method."""
    setattr(converter, "convert", convert)  # noqa: B010


@contextmanager
def int8_quantized_on_device(device: str) -> Iterator[bool]:
    """While active (CUDA only), int8 weights are quantized on the device they were loaded to.
    Yields whether the replacement is in place."""
    converter = _round_trip_converter() if device.startswith("cuda") else None
    if converter is None:
        yield False
        return
    original = converter.convert
    _set_convert(converter, _convert_in_place)
    try:
        yield True
    finally:
        _set_convert(converter, original)
