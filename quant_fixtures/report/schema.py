"""The typed JSON documents the suite writes, and the one place they are serialised and read back.

``{variant}_quantized_{model}_evaluation.json`` is an :class:`EvaluationDocument`;
``{model}_quantization_comparison.json`` a :class:`ComparisonDocument`. Field order is the JSON's
key order. The prompt and corpus sections (``kl_divergence``, ``flips``, ``corpus_kl``) are built
where their numbers are made (metrics/prompt_summary.py, metrics/corpus_stats.py) and imported here.
Per-prompt records, per-category statistics and the corpus tables stay plain JSON objects with fixed
keys (TypedDicts, report/sections.py); the environment and a row of the comparison are opaque JSON
(environment.py, report/comparison.variant_row). Reading is strict (report/json_reader.py): a file
whose schema version, keys or value types do not match, down to the records' fields, is not this schema.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from quant_fixtures.json_types import OMIT_IF_NONE, JsonObject, JsonValue
from quant_fixtures.metrics.corpus_stats import CorpusKL
from quant_fixtures.metrics.decision import JointVerdict
from quant_fixtures.metrics.position_buckets import LongContextComparison, LongContextFp16, VariantBucket
from quant_fixtures.metrics.prompt_summary import BatchSensitivity as BatchSensitivity  # re-exported: flips' part
from quant_fixtures.metrics.prompt_summary import Flips, PromptKL
from quant_fixtures.metrics.retrieval import Fp16RetrievalSummary, RetrievalSummary
from quant_fixtures.report.gates import GateResult
from quant_fixtures.report.json_reader import D, SchemaError, from_json_object  # the reader, re-exported
from quant_fixtures.report.sections import (
    AffectedCategory,
    PrefillReads,
    ProtocolSummary,
    WorstPrompt,
)
from quant_fixtures.store.atomic import write_json_atomic

# Versions: 2 batching and stage times; 3 exact KL everywhere, corpus_kl with llama.cpp's tables; 5 long
# context; 6 gate verdicts (interval, p-values, the sample that would decide), long-context prefill reads
SCHEMA_VERSION = 6
LongContextBuckets = LongContextComparison | LongContextFp16
RetrievalCounts = RetrievalSummary | Fp16RetrievalSummary


@dataclass
class ModelInfo:
    key: str
    source: str
    weights_identity: str
    note: str | None


@dataclass
class VariantInfo:
    key: str
    method: str
    description: str
    quantization_config: JsonObject | None
    weight_dtype: str
    compute_dtype: str
    # A model's own variant (pre-quantized checkpoint, GGUF file): where its weights came from.
    source: str | None = None
    weights_identity: str | None = None


@dataclass
class Batching:
    """Batch sizes that ran (the largest of each stage), what was asked for, and why they differ."""

    perplexity_windows_per_pass: int
    prompt_scoring_per_pass: int
    generation_batch: int
    batch_invariant: bool
    requested: dict[str, int] = field(default_factory=dict)
    memory_limit_gb: float | None = None  # what the process could hold on its GPU (the cap, else the card)
    notes: list[str] = field(default_factory=list)  # every size memory lowered, every out-of-memory retry
    generation_method: str | None = None  # how decode steps ran: "cuda graph", "eager", or generate()


@dataclass
class Perplexity:
    ppl: float
    fp16_ppl: float
    delta_ppl_pct: float
    delta_ppl_pct_ci95: list[float] | None
    tokens: int
    windows: int
    ctx: int
    stride: int | None
    method: str
    max_tokens: int | None
    batch_size: int
    dataset: str
    dataset_source: str
    dataset_sha256: str
    protocol: str
    # the text the scored tokens stand for, and the tokenizer-independent figures over it
    scored_bytes: int
    scored_words: int
    documents: int | None
    text_units: str
    bits_per_byte: float | None
    byte_perplexity: float | None
    word_perplexity: float | None
    fp16_bits_per_byte: float | None
    bits_per_byte_delta: float | None
    fp16_word_perplexity: float | None
    ci_method: str
    window_nll: list[float]
    fp16_window_nll: list[float]  # the FP16 reference's, window for window (the units of ΔPPL's interval)
    window_tokens: list[int]


@dataclass
class Memory:
    footprint_gb: float
    fp16_footprint_gb: float
    reduction_pct: float
    compression_ratio: float
    peak_gb: float | None
    quant_state_gb: float
    resident_gb: float
    footprint_method: str


@dataclass
class Timing:
    load_s: float
    ppl_s: float
    ppl_tokens_per_s: float | None
    prompts_s: float | None
    # Seconds per row of the stage table (session/context.STAGE_ROWS); start-up only in the first
    # document a process evaluates, and an FP16 pass a variant triggered is in the FP16 document.
    stages: dict[str, float] = field(default_factory=dict)


@dataclass
class NoiseFloor:
    """Prompt KL of FP16 against itself scored with another batch composition."""

    mean: float
    max: float
    p99: float
    ci95: list[float]


@dataclass
class LongContext:
    """Harm far into the context (session/long_context_stage.py): by position bucket over long
    WikiText-2 stretches, and the retrieval probes. ``deepest`` is the last bucket's record (the
    gated one); ``growth`` and ``deepest`` are None in the FP16 document."""

    length: int  # tokens per stretch, the model's maximum context or --long-ctx
    stretches: int
    chunk_tokens: int
    bucket_edges: list[int]
    text: str
    method: str
    probe_protocol: str
    retrieval_method: str
    buckets: LongContextBuckets
    deepest: VariantBucket | None  # the last bucket of a variant's comparison (None for FP16)
    retrieval: RetrievalCounts
    prefill_reads: PrefillReads
    seconds: float
    peak_gb: float | None  # the most the process held on its GPU during the stage (None on the CPU)


@dataclass
class EvaluationDocument:
    schema_version: int
    generated_at: str
    run_id: str
    model: ModelInfo
    variant: VariantInfo
    environment: JsonObject  # environment.fingerprint
    reference_keys: dict[str, str | None]
    batching: Batching
    perplexity: Perplexity
    memory: Memory
    timing: Timing
    kl_divergence: PromptKL | None
    corpus_kl: CorpusKL | None
    flips: Flips | None
    noise_floor: NoiseFloor | None
    gate_family: int  # sampled gates the run decided together: each FAILs at alpha / this (report/gates.py)
    gates: list[GateResult]
    ungated: dict[str, str]  # metric -> why it has no gate
    long_context: LongContext | None = field(default=None, metadata=OMIT_IF_NONE)


@dataclass
class BestTradeoff:
    variant: str
    reason: str
    footprint_gb: float
    reduction_pct: float
    delta_ppl_pct: float
    kl_mean: float | None


@dataclass
class Findings:
    worst_prompts: dict[str, list[WorstPrompt]]
    most_affected_categories: dict[str, list[AffectedCategory]]
    best_tradeoff: BestTradeoff | None
    speed_vs_fp16: dict[str, float | None]
    failed_gates: list[str]
    assessment: list[str]


@dataclass
class ComparisonDocument:
    schema_version: int
    generated_at: str
    run_id: str | None
    model: ModelInfo
    fp16_ppl: float
    perplexity_protocol: ProtocolSummary
    kl_method: str | None
    noise_floor: NoiseFloor | None
    variants: dict[str, JsonObject]  # variant key -> its row (report/comparison.variant_row)
    failed_gates: list[str]
    findings: Findings
    release_verdict: JointVerdict | None = field(default=None, metadata=OMIT_IF_NONE)  # the run's (report/release.py)


def now_utc() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


# -- the one serialiser and reader ------------------------------------------------------------------


def to_json_object(value: object) -> JsonValue:
    """Dataclasses as JSON objects in field order (None fields marked OMIT_IF_NONE left out)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {
            f.name: to_json_object(getattr(value, f.name))
            for f in dataclasses.fields(value)
            if not (f.metadata.get("omit_if_none") and getattr(value, f.name) is None)
        }
    if isinstance(value, dict):
        return {k: to_json_object(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_json_object(v) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"{type(value).__name__} is not JSON")


def write_document(path: Path, document: object) -> None:
    """Atomically, indented, NaN refused."""
    write_json_atomic(path, to_json_object(document))


def read_document(cls: type[D], path: Path) -> D:
    """A stored document of type ``cls``; SchemaError (naming the file) when it is not one."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise SchemaError(str(path), f"unreadable ({type(exc).__name__}: {exc})") from None
    if not isinstance(data, dict) or data.get("schema_version") != SCHEMA_VERSION:
        version = data.get("schema_version") if isinstance(data, dict) else None
        raise SchemaError(str(path), f"schema version {version!r}, this suite reads {SCHEMA_VERSION}")
    return from_json_object(cls, data, str(path))
