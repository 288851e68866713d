"""The long-context stage of an evaluation: harm by position over long WikiText-2 stretches and the
retrieval probes, each sequence read alone in chunks with a KV cache (compute/long_context.py).

The FP16 pass records, at every scored position, the final hidden state (from which the exact FP16
distribution is rebuilt with the stored head) and at every probe answer position whether FP16's
argmax was the key's token; it stores them (store/long_reference.py) and reports FP16's perplexity
by position bucket and its retrievals. A variant's pass compares its full-vocabulary distribution
with FP16's at every position (compute/corpus_kl.KLAgainstReference) and reports, per bucket,
perplexity, ΔPPL %, KL(FP16 || variant) and top-1 agreement, the growth of harm over position, and
the probes whose retrieval verdict flipped.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from quant_fixtures.compute.corpus_kl import HiddenRecorder, KLAgainstReference
from quant_fixtures.compute.long_context import score_in_chunks
from quant_fixtures.compute.scoring import LogprobHook, ScoredChunk
from quant_fixtures.inputs.retrieval_probe import describe as probe_protocol
from quant_fixtures.metrics.position_buckets import (
    LongContextComparison,
    LongContextFp16,
    VariantBucket,
    long_context_comparison,
    long_context_fp16,
)
from quant_fixtures.metrics.reference_head import ReferenceHead
from quant_fixtures.metrics.retrieval import (
    RETRIEVAL_METHOD,
    Fp16RetrievalSummary,
    RetrievalSummary,
    fp16_retrieval_summary,
    retrieval_summary,
)
from quant_fixtures.models.loading import LoadedModel
from quant_fixtures.report.schema import LongContext
from quant_fixtures.report.sections import PrefillReads
from quant_fixtures.session.context import PassContext
from quant_fixtures.session.long_plan import LongPlan, long_plan
from quant_fixtures.session.model_facts import ModelUnderTest

if TYPE_CHECKING:
    import torch

GB = 1e9
STAGE = "long context"


class TargetRecorder:
    """Hook: per window, the log-probability of each scored target and whether it was the argmax."""

    def __init__(self, n_windows: int) -> None:
        self.logp: list[list[np.ndarray]] = [[] for _ in range(n_windows)]
        self.hits: list[list[np.ndarray]] = [[] for _ in range(n_windows)]

    def reset(self, batch: Sequence[int]) -> None:
        for w in batch:
            self.logp[w], self.hits[w] = [], []

    def __call__(self, chunk: ScoredChunk) -> None:
        for row, w in enumerate(chunk.windows):
            mask, logp, targets = chunk.mask[row], chunk.logp[row], chunk.targets[row]
            target_logp = logp.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
            self.logp[w].append(target_logp[mask].double().cpu().numpy())
            self.hits[w].append((logp.argmax(-1) == targets)[mask].cpu().numpy())

    def window_hits(self) -> list[np.ndarray]:
        return [np.concatenate(parts) if parts else np.zeros(0, dtype=bool) for parts in self.hits]

    def all_logp(self) -> np.ndarray:
        return np.concatenate([np.concatenate(parts) for parts in self.logp if parts])


class BothHooks:
    """Two hooks as one (each told of every chunk and every reset)."""

    def __init__(self, first: LogprobHook, second: LogprobHook) -> None:
        self.hooks = (first, second)

    def reset(self, batch: Sequence[int]) -> None:
        for hook in self.hooks:
            reset = getattr(hook, "reset", None)
            if reset is not None:
                reset(batch)

    def __call__(self, chunk: ScoredChunk) -> None:
        for hook in self.hooks:
            hook(chunk)


def _positions_of(plan: LongPlan) -> tuple[np.ndarray, np.ndarray]:
    """(tokens of context before each scored stretch position, its stretch), in scoring order."""
    per = [np.arange(1, w.length, dtype=np.int64) for w in plan.stretch_windows]
    return np.concatenate(per), np.repeat(np.arange(len(per)), [p.size for p in per])


@dataclass(frozen=True)
class Reads:
    """How the stage read its sequences: the seconds, and per sequence (stretches, then probes) how
    many reads its prefill took, whether an LLM.int8 one was read in chunks and whether its outlier
    columns settled."""

    seconds: float
    reads: list[int]
    settled: list[bool]
    chunked: list[bool]
    prefill_chunk: list[int]
    sequences_per_pass: int

    def record(self) -> PrefillReads:
        return {
            "sequences_per_pass": self.sequences_per_pass,
            "max_reads": max(self.reads, default=0),
            "chunked_sequences": [i for i, c in enumerate(self.chunked) if c],
            "chunked_prefill_chunks": [n for n, c in zip(self.prefill_chunk, self.chunked) if c],
            "unsettled_sequences": [i for i, ok in enumerate(self.settled) if not ok],
        }


def _score(
    run: PassContext,
    loaded: LoadedModel,
    plan: LongPlan,
    hooks: tuple[LogprobHook, LogprobHook],
    sequences_per_pass: int,
) -> Reads:
    """Score the stretches with hooks[0] and the probes with hooks[1] (their answers one token per
    forward pass, as greedy decoding reads them), at most ``sequences_per_pass`` of one length and
    prefill per pass."""
    chunk, started = run.shared.settings.long_context.chunk_tokens, time.perf_counter()
    total = len(plan.stretch_windows) + len(plan.probe_windows)
    answers = [w.first_target - w.begin for w in plan.probe_windows]
    reads: list[int] = []
    settled: list[bool] = []
    chunked: list[bool] = []
    prefill_chunk: list[int] = []
    with run.stage(STAGE, STAGE, shown=True, total=total, unit="sequences") as advance:
        for windows, hook, decode_from in zip((plan.stretch_windows, plan.probe_windows), hooks, (None, answers)):
            scores = score_in_chunks(
                loaded.model,
                plan.ids,
                windows,
                chunk,
                STAGE,
                hook,
                advance,
                budget=run.shared.budget,
                log=run.batches,
                decode_from=decode_from,
                batch_size=sequences_per_pass,
            )
            reads += scores.reads
            settled += scores.settled
            chunked += scores.chunked
            prefill_chunk += scores.prefill_chunk
    used = run.batches.used.get(STAGE, 1)
    return Reads(time.perf_counter() - started, reads, settled, chunked, prefill_chunk, used)


def _section(
    run: PassContext,
    plan: LongPlan,
    reads: Reads,
    peak: int | None,
    buckets: LongContextComparison | LongContextFp16,
    deepest: VariantBucket | None,
    retrieval: RetrievalSummary | Fp16RetrievalSummary,
) -> LongContext:
    shape, protocol = plan.shape, run.shared.settings.long_context
    dropped = (
        f"; probe lengths longer than the model's {shape.length} left out: {list(shape.dropped_probe_lengths)}"
        if shape.dropped_probe_lengths
        else ""
    )
    return LongContext(
        length=shape.length,
        stretches=len(plan.stretch_windows),
        chunk_tokens=protocol.chunk_tokens,
        bucket_edges=list(protocol.bucket_edges),
        text=f"the joined WikiText-2 test split (articles one after another, as the non-overlapping perplexity "
        f"protocol reads it) cut into consecutive stretches of {shape.length} tokens from its start; each "
        "stretch read as a sequence of its own from its first token (replaced by BOS where the tokenizer puts "
        "BOS first), every later token scored",
        method=f"each sequence read as one of its own (sequences of one length and prefill share a pass, up to "
        "the perplexity stage's windows per pass and as many as memory allows: prefill_reads.sequences_per_pass), "
        f"its prefill in chunks of {protocol.chunk_tokens} positions with a KV cache (sliding-window layers keep "
        "only their window; halved when one sequence runs out of memory: batching.notes) and a probe's answer one "
        "token per forward pass, as greedy decoding reads it; LLM.int8 outlier columns chosen per sequence over "
        "its whole prefill, as a read at once chooses them: a prefill read at once where memory allows, else in "
        "chunks as long as fit (prefill_reads.chunked_prefill_chunks) read again until the columns settle "
        "(compute/long_context.py); log-softmax in float32 of "
        "the model's head; KL(FP16 || variant) exact over the whole vocabulary from the FP16 final hidden states "
        "and head, in float64; 95 % CIs over blocks of 128 consecutive positions (metrics/position_buckets.py)"
        + dropped,
        prefill_reads=reads.record(),
        probe_protocol=probe_protocol(),
        retrieval_method=RETRIEVAL_METHOD,
        buckets=buckets,
        deepest=deepest,
        retrieval=retrieval,
        seconds=round(reads.seconds, 3),
        peak_gb=peak / GB if peak is not None else None,
    )


def fp16_long_stage(
    run: PassContext, model: ModelUnderTest, loaded: LoadedModel, sequences_per_pass: int
) -> LongContext:
    """FP16's perplexity by position and its retrievals; stores what variants are compared with."""
    import torch

    plan = long_plan(run.shared.settings.long_context, model, run.shared.plans)
    stretch_hidden, stretch_targets = (
        HiddenRecorder(len(plan.stretch_windows)),
        TargetRecorder(len(plan.stretch_windows)),
    )
    probe_hidden, probe_targets = HiddenRecorder(len(plan.probe_windows)), TargetRecorder(len(plan.probe_windows))
    run.shared.budget.start_stage_peak()
    reads = _score(
        run,
        loaded,
        plan,
        (BothHooks(stretch_hidden, stretch_targets), BothHooks(probe_hidden, probe_targets)),
        sequences_per_pass,
    )
    peak = run.shared.budget.stage_peak_bytes()
    hits = probe_targets.window_hits()
    with run.stage("FP16 long-context references (store)", "references"):
        run.shared.references.save_long(
            model,
            {
                "stretch_hidden": stretch_hidden.hidden_states(),
                "probe_hidden": probe_hidden.hidden_states(),
                "probe_hits": torch.from_numpy(np.concatenate(hits)),
                **ReferenceHead.of(loaded.model).to_tensors(),
            },
        )
    context, stretch = _positions_of(plan)
    buckets = long_context_fp16(
        context, stretch, stretch_targets.all_logp(), run.shared.settings.long_context.bucket_edges
    )
    lengths, depths = [p.length for p in plan.probes], [p.depth for p in plan.probes]
    return _section(run, plan, reads, peak, buckets, None, fp16_retrieval_summary(lengths, depths, hits))


def variant_long_stage(
    run: PassContext,
    model: ModelUnderTest,
    loaded: LoadedModel,
    reference: dict[str, torch.Tensor],
    sequences_per_pass: int,
) -> LongContext:
    """The variant's harm by position against FP16, and its retrieval flips."""
    plan = long_plan(run.shared.settings.long_context, model, run.shared.plans)
    head = ReferenceHead.from_tensors(reference)
    stretch_kl = KLAgainstReference(
        {"hidden": reference["stretch_hidden"]}, [w.scored for w in plan.stretch_windows], head
    )
    probe_kl = KLAgainstReference({"hidden": reference["probe_hidden"]}, [w.scored for w in plan.probe_windows], head)
    probe_targets = TargetRecorder(len(plan.probe_windows))
    run.shared.budget.start_stage_peak()
    reads = _score(run, loaded, plan, (stretch_kl, BothHooks(probe_kl, probe_targets)), sequences_per_pass)
    peak = run.shared.budget.stage_peak_bytes()
    with run.stage("statistics", "statistics"):
        at = stretch_kl.positions()
        context, stretch = _positions_of(plan)
        buckets = long_context_comparison(
            context,
            stretch,
            at["logp_target"],
            at["logq_target"],
            at["kl_pq"],
            at["same_top1"],
            run.shared.settings.long_context.bucket_edges,
        )
        answer = probe_kl.positions()
        ends = np.cumsum([w.scored for w in plan.probe_windows])[:-1]
        fp16_hits = np.split(reference["probe_hits"].numpy().astype(bool), ends)
        answer_kl = [float(np.mean(part)) for part in np.split(answer["kl_pq"], ends)]
        retrieval = retrieval_summary(
            [p.length for p in plan.probes],
            [p.depth for p in plan.probes],
            fp16_hits,
            probe_targets.window_hits(),
            answer_kl,
        )
    return _section(run, plan, reads, peak, buckets, buckets["buckets"][-1], retrieval)
