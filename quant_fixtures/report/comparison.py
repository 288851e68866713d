"""The comparison file of one model (every variant side by side) and how this run's documents are
found again in the results directory."""

from __future__ import annotations

from pathlib import Path

from quant_fixtures.json_types import JsonObject
from quant_fixtures.metrics.registry import METRICS
from quant_fixtures.names import file_in
from quant_fixtures.report.gates import failed_gate_lines
from quant_fixtures.report.schema import (
    SCHEMA_VERSION,
    ComparisonDocument,
    EvaluationDocument,
    SchemaError,
    now_utc,
    read_document,
    to_json_object,
)

Documents = dict[str, EvaluationDocument]  # variant key -> evaluation document, registry order


def evaluation_path(results_dir: Path | str, model: str, variant_key: str) -> Path:
    return file_in(Path(results_dir), f"{variant_key}_quantized_{model}_evaluation.json")


def comparison_path(results_dir: Path | str, model: str) -> Path:
    return file_in(Path(results_dir), f"{model}_quantization_comparison.json")


def _documents(results_dir: Path) -> list[EvaluationDocument]:
    """Every evaluation document of this schema in ``results_dir`` (others are left out)."""
    docs = []
    for path in sorted(Path(results_dir).glob("*_quantized_*_evaluation.json")):
        try:
            docs.append(read_document(EvaluationDocument, path))
        except SchemaError:
            continue
    return docs


def variant_order(key: str) -> tuple[int, str]:
    """Sort key of variants in reports: registry order (the baseline first), then a model's own
    variants by name (a merge of CI jobs has no config to take another order from)."""
    from quant_fixtures.variants import VARIANTS

    order = list(VARIANTS)
    return (order.index(key), "") if key in order else (len(order), key)


def _by_model(docs: list[EvaluationDocument]) -> dict[str, Documents]:
    """{model: {variant key: document}}, variants in :func:`variant_order`."""
    found: dict[str, Documents] = {}
    for doc in docs:
        found.setdefault(doc.model.key, {})[doc.variant.key] = doc
    return {m: dict(sorted(v.items(), key=lambda kv: variant_order(kv[0]))) for m, v in found.items()}


def collect_run_documents(results_dir: Path, run_id: str) -> dict[str, Documents]:
    """Every evaluation document of this run in ``results_dir`` (from all xdist workers), as
    {model: {variant key: document}} with variants in registry order."""
    return _by_model([d for d in _documents(results_dir) if d.run_id == run_id])


def collect_comparable_documents(results_dir: Path, run_id: str) -> dict[str, Documents]:
    """This run's documents plus, per model, those other runs left in ``results_dir`` that were
    measured against the same FP16 references (same reference keys: weights, tokenizer, data,
    protocol, prompts, environment). Two runs into one directory (``--variants int8`` and
    ``--variants nf4``) so give one comparison with every variant; a stale document is left out."""
    docs = _documents(results_dir)
    this_run = _by_model([d for d in docs if d.run_id == run_id])
    for model, by_variant in this_run.items():
        keys = next(iter(by_variant.values())).reference_keys
        for doc in docs:
            if keys and doc.model.key == model and doc.reference_keys == keys and doc.variant.key not in by_variant:
                by_variant[doc.variant.key] = doc
        this_run[model] = _by_model(list(by_variant.values()))[model]
    return this_run


def variant_row(doc: EvaluationDocument) -> JsonObject:
    """One variant's headline numbers (the comparison file's row), then every registered metric."""
    p, m = doc.perplexity, doc.memory
    kl, flips, corpus = doc.kl_divergence, doc.flips, doc.corpus_kl
    row: dict[str, object] = {
        "method": doc.variant.method,
        "ppl": p.ppl,
        "delta_ppl_pct": p.delta_ppl_pct,
        "delta_ppl_pct_ci95": p.delta_ppl_pct_ci95,
        "kl_mean": kl and kl.mean,
        "kl_ci95": kl and kl.ci95,
        "kl_median": kl and kl.median,
        "kl_p99": kl and kl.p99,
        "kl_max": kl and kl.max,
        "top1_agreement": kl and kl.top1_agreement,
        "top1_agreement_ci95": kl and kl.top1_agreement_ci95,
        "flips": flips and flips.flips,
        "checkable_prompts": flips and flips.checkable_prompts,
        "exact_match_rate": flips and flips.exact_match_rate,
        "corpus_kl_mean": corpus and corpus.mean,
        "corpus_kl_p99": corpus and corpus.p99,
        "corpus_same_top1_rate": corpus and corpus.same_top1_rate,
        "footprint_gb": m.footprint_gb,
        "reduction_pct": m.reduction_pct,
        "compression_ratio": m.compression_ratio,
        "peak_gb": m.peak_gb,
        "tokens_per_s": doc.timing.ppl_tokens_per_s,
        "gates_passed": all(g.passed for g in doc.gates),  # every gate PASS (FAIL or UNDECIDED: false)
        "gates": doc.gates,
    }
    for name, spec in METRICS.items():  # every registered metric under its registry name (a new one appears here)
        row.setdefault(name, spec.value(doc))
    return {name: to_json_object(value) for name, value in row.items()}


def comparison_document(evaluations: Documents) -> ComparisonDocument:
    """All evaluated variants of one model side by side, with findings, from their documents."""
    from quant_fixtures.report.findings import findings

    first = next(iter(evaluations.values()))
    p = first.perplexity
    return ComparisonDocument(
        schema_version=SCHEMA_VERSION,
        generated_at=now_utc(),
        run_id=first.run_id,
        model=first.model,
        fp16_ppl=p.fp16_ppl,
        perplexity_protocol={
            "method": p.method,
            "ctx": p.ctx,
            "stride": p.stride,
            "tokens": p.tokens,
            "windows": p.windows,
            "dataset_sha256": p.dataset_sha256,
            "protocol": p.protocol,
        },
        kl_method=first.kl_divergence.method if first.kl_divergence else None,
        noise_floor=first.noise_floor,
        variants={key: variant_row(doc) for key, doc in evaluations.items()},
        failed_gates=failed_gate_lines(evaluations),
        findings=findings(evaluations),
    )
