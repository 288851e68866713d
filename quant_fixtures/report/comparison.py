"""JSON report documents: atomic writes, file names, environment, the comparison summary."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

SCHEMA_VERSION = 1


def evaluation_path(results_dir: Path, model: str, variant: str) -> Path:
    return Path(results_dir) / f"{variant}_quantized_{model}_evaluation.json"


def comparison_path(results_dir: Path, model: str) -> Path:
    return Path(results_dir) / f"{model}_quantization_comparison.json"


def now_utc() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _documents(results_dir: Path) -> list[dict[str, Any]]:
    """Every readable evaluation document in ``results_dir``."""
    docs = []
    for path in sorted(Path(results_dir).glob("*_quantized_*_evaluation.json")):
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(doc, dict) and isinstance(doc.get("model"), dict) and isinstance(doc.get("variant"), dict):
            docs.append(doc)
    return docs


def _by_model(docs: list[dict[str, Any]]) -> dict[str, dict[str, dict[str, Any]]]:
    """{model: {variant: document}}, variants in registry order."""
    from quant_fixtures.variants import VARIANTS

    found: dict[str, dict[str, dict[str, Any]]] = {}
    for doc in docs:
        found.setdefault(doc["model"]["key"], {})[doc["variant"]["key"]] = doc
    order = {k: i for i, k in enumerate(VARIANTS)}
    return {m: dict(sorted(v.items(), key=lambda kv: order.get(kv[0], len(order)))) for m, v in found.items()}


def collect_run_documents(results_dir: Path, run_id: str) -> dict[str, dict[str, dict[str, Any]]]:
    """Every evaluation document of this run in ``results_dir`` (from all xdist workers), as
    {model: {variant: document}} with variants in registry order."""
    return _by_model([d for d in _documents(results_dir) if d.get("run_id") == run_id])


def collect_comparable_documents(results_dir: Path, run_id: str) -> dict[str, dict[str, dict[str, Any]]]:
    """This run's documents plus, per model, those other runs left in ``results_dir`` that were
    measured against the same FP16 references (same reference keys: weights, tokenizer, data,
    protocol, prompts, environment). Two runs into one directory (``--variants int8`` and
    ``--variants nf4``) so give one comparison with every variant; a stale document is left out."""
    docs = _documents(results_dir)
    this_run = _by_model([d for d in docs if d.get("run_id") == run_id])
    for model, variants in this_run.items():
        keys = next(iter(variants.values())).get("reference_keys")
        for doc in docs:
            if (keys and doc["model"]["key"] == model and doc.get("reference_keys") == keys
                    and doc["variant"]["key"] not in variants):
                variants[doc["variant"]["key"]] = doc
        this_run[model] = _by_model(list(variants.values()))[model]
    return this_run


def variant_row(doc: dict[str, Any]) -> dict[str, Any]:
    """One variant's headline numbers (the comparison file's row)."""
    ppl, mem = doc["perplexity"], doc["memory"]
    kl, flips, corpus = doc.get("kl_divergence"), doc.get("flips"), doc.get("corpus_kl")
    return {
        "method": doc["variant"]["method"],
        "ppl": ppl["ppl"], "delta_ppl_pct": ppl["delta_ppl_pct"], "delta_ppl_pct_ci95": ppl.get("delta_ppl_pct_ci95"),
        "kl_mean": kl and kl["mean"], "kl_ci95": kl and kl["ci95"], "kl_median": kl and kl["median"],
        "kl_p99": kl and kl["p99"], "kl_max": kl and kl["max"],
        "top1_agreement": kl and kl["top1_agreement"], "top1_agreement_ci95": kl and kl["top1_agreement_ci95"],
        "flips": flips and flips["flips"], "checkable_prompts": flips and flips["checkable_prompts"],
        "exact_match_rate": flips and flips["exact_match_rate"],
        "corpus_kl_mean": corpus and corpus["mean"], "corpus_kl_p99": corpus and corpus["p99"],
        "corpus_same_top1_rate": corpus and corpus["same_top1_rate"],
        "footprint_gb": mem["footprint_gb"], "reduction_pct": mem["reduction_pct"],
        "compression_ratio": mem["compression_ratio"], "peak_gb": mem["peak_gb"],
        "tokens_per_s": doc["timing"]["ppl_tokens_per_s"],
        "gates_passed": all(g["passed"] for g in doc["gates"]),
        "gates": doc["gates"],
    }


def comparison_document(model: str, evaluations: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """All evaluated variants of one model side by side, with findings, from their documents."""
    from quant_fixtures.report.findings import findings

    first = next(iter(evaluations.values()))
    return {
        "schema_version": SCHEMA_VERSION,
        "generated_at": now_utc(),
        "run_id": first.get("run_id"),
        "model": first["model"],
        "fp16_ppl": first["perplexity"]["fp16_ppl"],
        "perplexity_protocol": {k: first["perplexity"][k] for k in
                                ("method", "ctx", "stride", "tokens", "windows", "dataset_sha256", "protocol")},
        "kl_method": (first.get("kl_divergence") or {}).get("method"),
        "noise_floor": first.get("noise_floor"),
        "variants": {v: variant_row(doc) for v, doc in evaluations.items()},
        "failed_gates": [f"{v}: {g['metric']} = {g['value']} (limit {g['op']} {g['limit']})"
                         for v, doc in evaluations.items() for g in doc["gates"] if not g["passed"]],
        "findings": findings(evaluations),
    }
