"""Per-layer harm attribution: which decoder layers make a quantized model differ from FP16.

With a 16-bit model and a quantized model of the same architecture both loaded, each decoder layer
is swapped between them in place: the two layer modules change owners, nothing is reloaded or
copied. After the swap of layer ``i`` one pass of each model gives both measurements:

* **quantized alone**: the 16-bit model with only layer ``i`` quantized (how much harm layer ``i``
  does by itself);
* **restored alone**: the quantized model with only layer ``i`` back in 16 bits (how much harm
  keeping layer ``i`` in 16 bits removes).

Every configuration reads the same windows and is compared with the FP16 model's final hidden
states and head exactly over the whole vocabulary (compute/corpus_kl.KLAgainstReference):
KL(FP16 || configuration) at each scored position, its mean and a 95 % CI with blocks of
consecutive positions of one window as the independent units (metrics/blocks.py). The sum of the
layers' quantized-alone KLs against the whole variant's KL says how additive the harm is.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field

import numpy as np
import torch
from transformers import PreTrainedModel

from quant_fixtures.compute.corpus_kl import HiddenRecorder, KLAgainstReference
from quant_fixtures.compute.memory import BatchLog, MemoryBudget
from quant_fixtures.compute.scoring import score_windows
from quant_fixtures.metrics.blocks import block_ids, block_mean_ci
from quant_fixtures.metrics.perplexity import Window
from quant_fixtures.models.footprint import model_footprint


@dataclass(frozen=True)
class MeanKL:
    """KL(FP16 || configuration) over the scored positions: mean and its 95 % CI (None: too few blocks)."""

    mean: float
    ci: tuple[float, float] | None


@dataclass(frozen=True)
class LayerHarm:
    layer: int
    quantized_alone: MeanKL  # the 16-bit model with only this layer quantized
    restored_alone: MeanKL  # the quantized model with only this layer in 16 bits


@dataclass(frozen=True)
class Attribution:
    whole: MeanKL  # the quantized model as loaded
    layers: list[LayerHarm]
    positions: int
    fp16_ppl: float = float("nan")  # perplexity of the 16-bit model over the same windows
    # the FP16 pass's hidden states and head the KLs were measured against (for recommend)
    reference: dict[str, torch.Tensor] = field(repr=False, compare=False, default_factory=dict)

    def ranked(self) -> list[LayerHarm]:
        """Layers by the harm they do alone, largest first (ties: the lower index first)."""
        return sorted(self.layers, key=lambda h: (-h.quantized_alone.mean, h.layer))

    def additivity(self) -> float | None:
        """Sum of the layers' quantized-alone KLs over the whole variant's KL (1: the harm adds up)."""
        if self.whole.mean <= 0:
            return None
        return sum(h.quantized_alone.mean for h in self.layers) / self.whole.mean


def decoder_layers(model: PreTrainedModel) -> torch.nn.ModuleList:
    """The model's decoder layers (``model.model.layers`` for Llama, Mistral and Qwen2 alike)."""
    layers = getattr(model.base_model, "layers", None)
    if not isinstance(layers, torch.nn.ModuleList):
        raise ValueError(
            f"{type(model).__name__}: no decoder layer list at base_model.layers; per-layer attribution "
            "supports decoder-only models laid out as Llama, Mistral and Qwen2 are"
        )
    return layers


@contextmanager
def swapped_layer(first: PreTrainedModel, second: PreTrainedModel, index: int) -> Iterator[None]:
    """Layer ``index`` of each model lent to the other while active (swapped back on exit, error or not)."""
    a, b = decoder_layers(first), decoder_layers(second)
    a[index], b[index] = b[index], a[index]
    try:
        yield
    finally:
        a[index], b[index] = b[index], a[index]


def _check_pair(fp16: PreTrainedModel, quantized: PreTrainedModel) -> int:
    n, m = len(decoder_layers(fp16)), len(decoder_layers(quantized))
    if n != m:
        raise ValueError(f"the 16-bit model has {n} decoder layers and the quantized one {m}: not the same model")
    return n


def attribute_layers(
    fp16: PreTrainedModel,
    quantized: PreTrainedModel,
    token_ids: torch.Tensor,
    windows: Sequence[Window],
    batch_size: int = 1,
    budget: MemoryBudget | None = None,
    log: BatchLog | None = None,
    progress: Callable[[str], None] | None = None,
) -> Attribution:
    """Every decoder layer's quantized-alone and restored-alone KL against FP16 over ``windows``
    (see the module docstring): one FP16 pass for the reference, one pass of the quantized model,
    then two passes per layer (one per model)."""
    n_layers = _check_pair(fp16, quantized)
    tokens = [w.scored for w in windows]
    reference, fp16_ppl = _reference(fp16, token_ids, windows, batch_size, budget, log)

    def mean_kl(model: PreTrainedModel) -> MeanKL:
        return read_against(model, reference, token_ids, windows, batch_size, budget, log)[0]

    whole = mean_kl(quantized)
    layers = []
    for index in range(n_layers):
        if progress is not None:
            progress(f"layer {index + 1}/{n_layers}")
        with swapped_layer(fp16, quantized, index):
            layers.append(LayerHarm(index, quantized_alone=mean_kl(fp16), restored_alone=mean_kl(quantized)))
    return Attribution(whole, layers, int(sum(tokens)), fp16_ppl, reference)


@dataclass(frozen=True)
class Recommendation:
    """Layers to keep in 16 bits (for a KL limit or a footprint budget), the configuration measured."""

    keep: list[int]  # decoder layer indices, in the order they were added
    # their linear modules' names and the output head's, which bitsandbytes keeps in 16 bits by
    # default and a given list replaces: BitsAndBytesConfig(llm_int8_skip_modules=modules)
    modules: list[str]
    predicted: float  # the whole KL minus each kept layer's restored-alone gain (at least 0)
    measured: MeanKL  # the quantized model with exactly these layers in 16 bits, read for real
    limit: float | None  # the KL asked for (None: a footprint budget was)
    delta_ppl_pct: float  # that configuration's perplexity against the 16-bit model's, same windows
    footprint_bytes: int  # that configuration's parameters and buffers as held (16-bit weights at 2 bytes)
    quantized_footprint_bytes: int  # the variant as loaded
    footprint_budget: int | None = None  # the bytes asked for (None: a KL limit was)
    delta_ppl_limit: float | None = None  # a ΔPPL % asked for beside the KL limit (the variant's gate)

    @property
    def within(self) -> bool:
        """Whether the measured configuration meets what was asked: the KL limit (and the ΔPPL limit,
        where one was given) or the footprint budget."""
        if self.limit is not None:
            ppl_ok = self.delta_ppl_limit is None or self.delta_ppl_pct <= self.delta_ppl_limit
            return self.measured.mean <= self.limit and ppl_ok
        return self.footprint_budget is None or self.footprint_bytes <= self.footprint_budget


def linear_module_names(model: PreTrainedModel, layer: int) -> list[str]:
    """The names of layer ``layer``'s linear modules in ``model`` (bitsandbytes' skip list entries:
    full names, so ``layers.1.`` never matches ``layers.11.``)."""
    target = decoder_layers(model)[layer]
    prefix = next(name for name, module in model.named_modules() if module is target)
    return [f"{prefix}.{name}" for name, module in target.named_modules() if isinstance(module, torch.nn.Linear)]


def output_head_name(model: PreTrainedModel) -> str:
    head = model.get_output_embeddings()
    name: str = next(name for name, module in model.named_modules() if module is head)
    return name


@contextmanager
def restored_layers(fp16: PreTrainedModel, quantized: PreTrainedModel, layers: Sequence[int]) -> Iterator[None]:
    """The quantized model with ``layers`` in 16 bits (lent by ``fp16``) while active."""
    with ExitStack() as stack:
        for layer in layers:
            stack.enter_context(swapped_layer(fp16, quantized, layer))
        yield


def _gain(attribution: Attribution, harm: LayerHarm) -> float:
    """The KL that keeping ``harm``'s layer in 16 bits removes alone."""
    return attribution.whole.mean - harm.restored_alone.mean


def recommend(
    attribution: Attribution,
    limit: float,
    fp16: PreTrainedModel,
    quantized: PreTrainedModel,
    token_ids: torch.Tensor,
    windows: Sequence[Window],
    batch_size: int = 1,
    max_delta_ppl_pct: float | None = None,
) -> Recommendation:
    """The fewest layers, by restored-alone gain, whose 16-bit copies bring the predicted KL within
    ``limit``; the configuration is then read for real, and while it is still beyond the limit (or
    beyond ``max_delta_ppl_pct``, where given: a ΔPPL gate) the next layer by gain is added and read
    again (every returned number is measured, not predicted). ``within`` is False only when every
    layer is kept and it is still beyond."""
    if limit < 0:
        raise ValueError(f"limit must be >= 0, got {limit}")
    order = sorted(attribution.layers, key=lambda h: (-_gain(attribution, h), h.layer))
    keep: list[int] = []
    predicted = attribution.whole.mean
    for harm in order:
        if predicted <= limit:
            break
        keep.append(harm.layer)
        predicted = max(0.0, predicted - _gain(attribution, harm))
    while True:
        advice = _configuration(
            attribution,
            keep,
            predicted,
            fp16,
            quantized,
            token_ids,
            windows,
            batch_size,
            limit,
            None,
            max_delta_ppl_pct,
        )
        if advice.within or len(keep) == len(order):
            return advice
        harm = order[len(keep)]
        keep.append(harm.layer)
        predicted = max(0.0, predicted - _gain(attribution, harm))


def recommend_for_memory(
    attribution: Attribution,
    footprint_budget: int,
    fp16: PreTrainedModel,
    quantized: PreTrainedModel,
    token_ids: torch.Tensor,
    windows: Sequence[Window],
    batch_size: int = 1,
) -> Recommendation:
    """The layers to keep in 16 bits within ``footprint_budget`` bytes of the whole model: by
    restored-alone gain per extra byte, each taken while it fits (greedy), then read for real."""
    base = model_footprint(quantized, torch.float16)
    if footprint_budget < base:
        raise ValueError(f"a footprint budget of {footprint_budget} bytes is below the variant's own {base} bytes")
    extra = {
        h.layer: model_footprint(decoder_layers(fp16)[h.layer], torch.float16)
        - model_footprint(decoder_layers(quantized)[h.layer], torch.float16)
        for h in attribution.layers
    }
    room, keep, predicted = footprint_budget - base, [], attribution.whole.mean
    by_value = sorted(attribution.layers, key=lambda h: (-_gain(attribution, h) / max(extra[h.layer], 1), h.layer))
    for harm in by_value:
        if _gain(attribution, harm) > 0 and extra[harm.layer] <= room:
            keep.append(harm.layer)
            room -= extra[harm.layer]
            predicted = max(0.0, predicted - _gain(attribution, harm))
    return _configuration(
        attribution, keep, predicted, fp16, quantized, token_ids, windows, batch_size, footprint_budget=footprint_budget
    )


def _configuration(
    attribution: Attribution,
    keep: list[int],
    predicted: float,
    fp16: PreTrainedModel,
    quantized: PreTrainedModel,
    token_ids: torch.Tensor,
    windows: Sequence[Window],
    batch_size: int,
    limit: float | None = None,
    footprint_budget: int | None = None,
    delta_ppl_limit: float | None = None,
) -> Recommendation:
    """The quantized model with ``keep`` in 16 bits, read for real: KL, ΔPPL and footprint."""
    tokens = [w.scored for w in windows]
    if sum(tokens) != attribution.positions or not attribution.reference:
        raise ValueError("recommend: give it the windows its attribution was measured on")
    with restored_layers(fp16, quantized, keep):
        measured, ppl = read_against(quantized, attribution.reference, token_ids, windows, batch_size)
        footprint = model_footprint(quantized, torch.float16)
    modules = [name for layer in keep for name in linear_module_names(quantized, layer)] + [output_head_name(quantized)]
    return Recommendation(
        keep=list(keep),
        modules=modules,
        predicted=predicted,
        measured=measured,
        limit=limit,
        delta_ppl_pct=100 * (ppl / attribution.fp16_ppl - 1),
        footprint_bytes=footprint,
        quantized_footprint_bytes=model_footprint(quantized, torch.float16),
        footprint_budget=footprint_budget,
        delta_ppl_limit=delta_ppl_limit,
    )


def read_against(
    model: PreTrainedModel,
    reference: dict[str, torch.Tensor],
    token_ids: torch.Tensor,
    windows: Sequence[Window],
    batch_size: int,
    budget: MemoryBudget | None = None,
    log: BatchLog | None = None,
) -> tuple[MeanKL, float]:
    """One read of ``model`` over ``windows``: its KL against the FP16 reference (mean, block CI) and
    its perplexity."""
    tokens = [w.scored for w in windows]
    hook = KLAgainstReference(reference, tokens)
    ppl = score_windows(model, token_ids, windows, batch_size, hook, budget=budget, log=log).ppl
    blocks = block_ids(np.repeat(np.arange(len(windows)), tokens))
    return MeanKL(*block_mean_ci(hook.positions()["kl_pq"].astype(np.float64), blocks)), ppl


def _reference(
    fp16: PreTrainedModel,
    token_ids: torch.Tensor,
    windows: Sequence[Window],
    batch_size: int,
    budget: MemoryBudget | None = None,
    log: BatchLog | None = None,
) -> tuple[dict[str, torch.Tensor], float]:
    """The FP16 pass's final hidden states at every scored position and its head, and its perplexity."""
    recorder = HiddenRecorder(len(windows))
    scores = score_windows(fp16, token_ids, windows, batch_size, recorder, budget=budget, log=log)
    return recorder.tensors(fp16), scores.ppl
