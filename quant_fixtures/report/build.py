"""Build a variant's evaluation document from its finished measurements."""

from __future__ import annotations

import math
from dataclasses import dataclass

from quant_fixtures.compute.scoring import WindowScores
from quant_fixtures.json_types import JsonObject
from quant_fixtures.metrics.decision import family_alpha
from quant_fixtures.metrics.registry import GATEABLE
from quant_fixtures.metrics.stats import delta_pct, paired_bootstrap_delta_ppl_ci
from quant_fixtures.models.loading import LoadedModel
from quant_fixtures.report.gates import evaluate_gates
from quant_fixtures.report.schema import (
    SCHEMA_VERSION,
    Batching,
    CorpusKL,
    EvaluationDocument,
    Flips,
    LongContext,
    Memory,
    ModelInfo,
    NoiseFloor,
    Perplexity,
    PromptKL,
    Timing,
    VariantInfo,
    now_utc,
)
from quant_fixtures.settings import GatePolicy, PerplexityProtocol
from quant_fixtures.store.baseline import Baseline
from quant_fixtures.variants import Variant

GB = 1e9


@dataclass
class Measurements:
    """Everything measured for one (model, variant), before it is written down."""

    model: str
    variant: Variant
    loaded: LoadedModel
    source: str
    note: str | None
    weights_identity: str
    ctx: int
    windows: int
    scored_bytes: int  # text the scored tokens stand for (inputs/corpus_protocols.py)
    scored_words: int
    documents: int | None
    text_units: str
    scores: WindowScores
    baseline: Baseline
    peak_gb: float | None
    dataset_source: str
    dataset_sha256: str
    corpus_kl: CorpusKL | None
    kl: PromptKL | None
    flips: Flips | None
    noise_floor: NoiseFloor | None
    prompt_seconds: float | None
    batching: Batching
    environment: JsonObject
    keys: dict[str, str | None]  # digests of the FP16 references compared against
    variant_identity: str | None = None  # a model's own variant: the identity of its weights
    long_context: LongContext | None = None  # None with --skip-long-context


def protocol_text(method: str, ctx: int, stride: int | None) -> str:
    common = (
        "WikiText-2 raw test rows joined with '\\n\\n', tokenized once with the model's tokenizer "
        "(default special tokens); "
    )
    tail = (
        "PPL = exp(sum of token NLL / scored tokens), natural log; log-softmax in float32 over the "
        "full vocabulary, sums in float64. word_perplexity = exp(NLL / words), byte_perplexity = "
        "exp(NLL / bytes), bits_per_byte = NLL / (bytes ln 2), over the text the scored tokens stand for."
    )
    if method == "strided":
        return (
            common
            + (
                f"windows of up to {ctx} tokens starting every {stride} tokens (Hugging Face "
                "perplexity guide); each scores only tokens no earlier window scored; "
            )
            + tail
        )
    if method == "llama.cpp":
        return (
            common
            + (
                f"llama-perplexity's protocol: consecutive chunks of {ctx} tokens, incomplete tail "
                "dropped, the first token of each chunk read as BOS when the tokenizer adds one; each "
                f"chunk scores its tokens {ctx // 2 + 2}..{ctx} (the second half); "
            )
            + tail
        )
    if method == "lm-eval":
        return (
            "lm-evaluation-harness's wikitext protocol: WikiText-2 test as its 62 documents "
            "(EleutherAI/wikitext_document_level), each detokenized as lm-eval does and tokenized with the "
            "tokenizer's default special tokens after a prefix token (BOS, else EOS), as lm-eval 0.4.13 does; "
            "every token of a document is scored with "
            f"rolling windows of {ctx} tokens (the first from the prefix, each later one reading the {ctx} "
            "tokens before its last target); words and bytes are lm-eval's, counted on the original page. "
        ) + tail
    return (
        common
        + (
            f"consecutive non-overlapping windows of {ctx} tokens from the start, incomplete tail "
            f"dropped; each window scores its tokens 2..{ctx} from the tokens before them in the "
            "window; "
        )
        + tail
    )


def text_units(nll: float, scored_bytes: int, scored_words: int) -> dict[str, float | None]:
    """Bits per byte, byte and word perplexity of a total NLL (nats) over the scored text."""
    return {
        "bits_per_byte": nll / (scored_bytes * math.log(2)) if scored_bytes else None,
        "byte_perplexity": math.exp(nll / scored_bytes) if scored_bytes else None,
        "word_perplexity": math.exp(nll / scored_words) if scored_words else None,
    }


def _units(m: Measurements) -> dict[str, float | None]:
    ours = text_units(math.fsum(m.scores.window_nll), m.scored_bytes, m.scored_words)
    fp16 = text_units(math.fsum(m.baseline.window_nll), m.scored_bytes, m.scored_words)
    delta = (
        ours["bits_per_byte"] - fp16["bits_per_byte"]
        if ours["bits_per_byte"] is not None and fp16["bits_per_byte"] is not None
        else None
    )
    return {
        **ours,
        "fp16_bits_per_byte": fp16["bits_per_byte"],
        "bits_per_byte_delta": delta,
        "fp16_word_perplexity": fp16["word_perplexity"],
    }


def evaluation_document(
    m: Measurements,
    protocol: PerplexityProtocol,
    policy: GatePolicy,
    run_id: str,
    limits: dict[str, float],
    ungated: dict[str, str] | None = None,
    gate_family: int = 0,
) -> EvaluationDocument:
    """The `{variant}_quantized_{model}_evaluation.json` document, gates included: each decided at
    ``policy.alpha`` (PASS) and ``alpha / gate_family`` (FAIL; ``gate_family``: the sampled gates of
    the whole run, at least this document's)."""
    s, b = m.scores, m.baseline
    footprint, fp16_footprint = m.loaded.footprint_bytes / GB, b.footprint_bytes / GB
    delta = delta_pct(s.ppl, b.ppl)
    delta_ci = (
        list(paired_bootstrap_delta_ppl_ci(b.window_nll, b.window_tokens, s.window_nll, s.window_tokens))
        if len(s.window_nll) > 1
        else None
    )
    quant_state_gb = m.loaded.quant_state_bytes / GB
    document = EvaluationDocument(
        schema_version=SCHEMA_VERSION,
        generated_at=now_utc(),
        run_id=run_id,
        model=ModelInfo(key=m.model, source=m.source, weights_identity=m.weights_identity, note=m.note),
        variant=VariantInfo(
            key=m.variant.key,
            method=m.variant.method,
            description=m.variant.description,
            quantization_config=m.loaded.quantization_config,
            weight_dtype=m.loaded.weight_dtype,
            compute_dtype=m.loaded.compute_dtype,
            source=m.variant.source.source if m.variant.source else None,
            weights_identity=m.variant_identity,
        ),
        environment=m.environment,
        reference_keys=m.keys,
        batching=m.batching,
        perplexity=Perplexity(
            ppl=s.ppl,
            fp16_ppl=b.ppl,
            delta_ppl_pct=delta,
            delta_ppl_pct_ci95=delta_ci,
            tokens=s.tokens,
            windows=m.windows,
            ctx=m.ctx,
            stride=protocol.stride,
            method=protocol.protocol,
            max_tokens=protocol.max_tokens,
            batch_size=m.batching.perplexity_windows_per_pass,
            dataset="wikitext-2-raw-v1 test",
            dataset_source=m.dataset_source,
            dataset_sha256=m.dataset_sha256,
            protocol=protocol_text(protocol.protocol, m.ctx, protocol.stride),
            scored_bytes=m.scored_bytes,
            scored_words=m.scored_words,
            documents=m.documents,
            text_units=m.text_units,
            **_units(m),
            ci_method="paired percentile bootstrap over perplexity windows (2000 resamples, seed 0)",
            window_nll=s.window_nll,
            fp16_window_nll=b.window_nll,
            window_tokens=s.window_tokens,
        ),
        memory=Memory(
            footprint_gb=footprint,
            fp16_footprint_gb=fp16_footprint,
            reduction_pct=100.0 * (1.0 - footprint / fp16_footprint),
            compression_ratio=fp16_footprint / footprint,
            peak_gb=m.peak_gb,
            quant_state_gb=quant_state_gb,
            resident_gb=footprint + quant_state_gb,
            footprint_method=f"footprint_gb: {m.loaded.footprint_method}; {FOOTPRINT_METHOD}",
        ),
        timing=Timing(
            load_s=m.loaded.load_seconds,
            ppl_s=s.seconds,
            ppl_tokens_per_s=s.tokens / s.seconds if s.seconds else None,
            prompts_s=m.prompt_seconds,
        ),
        kl_divergence=m.kl,
        corpus_kl=m.corpus_kl,
        flips=m.flips,
        noise_floor=m.noise_floor,
        gate_family=gate_family,
        gates=[],
        ungated={},
        long_context=m.long_context,
    )
    if not m.variant.is_baseline:
        family = max(gate_family, sum(GATEABLE[name].sampled for name in limits))
        document.gate_family = family
        document.gates = evaluate_gates(limits, document, policy.alpha, family_alpha(policy.alpha, family))
        document.ungated = dict(ungated or {})
    return document


FOOTPRINT_METHOD = (
    "quant_state_gb: scales kept beside the weights (bitsandbytes int8 row scales and NF4/FP4 "
    "block absmax, HQQ scales and zeros), resident_gb = footprint + quant state; reduction and "
    "ratio use footprint_gb; peak_gb: torch.cuda.max_memory_allocated over the pair's whole "
    "evaluation (CUDA only)"
)
