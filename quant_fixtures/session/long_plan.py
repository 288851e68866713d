"""What the long-context stage reads for a model: its stretch length, the long WikiText-2 stretches
and the retrieval probes, as one token sequence with a window per stretch and per probe.

A stretch is ``length`` consecutive tokens of the joined WikiText-2 test split (articles one after
the other, as the non-overlapping perplexity protocol reads them), from the start of the split,
stretch after stretch; its first token is replaced by BOS where the tokenizer puts BOS first by
default, and every later token is scored. ``length`` is --long-ctx capped at the model's maximum
context. A probe's window scores only its answer tokens.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from quant_fixtures.inputs.corpus_protocols import adds_bos
from quant_fixtures.inputs.retrieval_probe import Probe, build_probes
from quant_fixtures.metrics.perplexity import Window
from quant_fixtures.session.corpus_plans import CorpusPlans
from quant_fixtures.session.model_facts import ModelUnderTest
from quant_fixtures.settings import LongContextProtocol, default_probe_lengths

if TYPE_CHECKING:
    import torch

PROBE_SEED = 0  # the probes' keys and filler orders (inputs/retrieval_probe.py); fixed so runs compare


@dataclass(frozen=True)
class LongShape:
    """The model's stretch length and probe lengths (what the FP16 reference's key records)."""

    length: int
    probe_lengths: tuple[int, ...]
    dropped_probe_lengths: tuple[int, ...]  # asked for, longer than the model's length


def long_shape(protocol: LongContextProtocol, model_max: int | None) -> LongShape:
    length = min(protocol.max_length, model_max) if model_max else protocol.max_length
    asked = protocol.probe_lengths or default_probe_lengths(length)
    return LongShape(
        length=length,
        probe_lengths=tuple(n for n in asked if n <= length) or (length,),
        dropped_probe_lengths=tuple(n for n in asked if n > length),
    )


@dataclass
class LongPlan:
    shape: LongShape
    ids: torch.Tensor  # 1-D: the stretches, then the probes
    stretch_windows: list[Window]
    probe_windows: list[Window]
    probes: list[Probe]

    @property
    def stretch_positions(self) -> int:
        return sum(w.scored for w in self.stretch_windows)

    @property
    def probe_positions(self) -> int:
        return sum(w.scored for w in self.probe_windows)


def long_plan(protocol: LongContextProtocol, model: ModelUnderTest, plans: CorpusPlans) -> LongPlan:
    """The stretches and probes of ``model`` (ValueError naming the model when the test split holds
    no whole stretch)."""
    import torch

    shape = long_shape(protocol, model.max_length)
    tokenizer = model.tokenizer
    corpus = plans.joined_ids(model)
    length = shape.length
    stretches = min(protocol.stretches, corpus.numel() // length)
    if stretches < 1:
        raise ValueError(
            f"{model.key}: the joined WikiText-2 test split is {corpus.numel()} tokens, shorter than one "
            f"long-context stretch of {length} (--long-ctx)"
        )
    bos = adds_bos(tokenizer)
    stretch_windows = [Window(i * length, (i + 1) * length, i * length + 1, first_input=bos) for i in range(stretches)]
    probes = build_probes(tokenizer, shape.probe_lengths, protocol.probe_depths, protocol.probe_keys, PROBE_SEED)
    probe_windows, start = [], stretches * length
    for probe in probes:
        probe_windows.append(Window(start, start + probe.length, start + probe.answer_start))
        start += probe.length
    probe_ids = torch.tensor([t for p in probes for t in p.ids], dtype=torch.long)
    ids = torch.cat([corpus[: stretches * length].to(torch.long), probe_ids])
    return LongPlan(shape, ids, stretch_windows, probe_windows, probes)
