"""Reproduction noise: how far a snapshot's numbers move when the same evaluation (same model,
text, prompts and FP16 responses) is measured again in another environment: other CPU kernels,
thread counts or batch sizes. That, not the sampling uncertainty over prompts, is what a snapshot
comparison must tolerate: it compares the same prompts and tokens measured twice.

A measurement is several result directories of one model and one settings tag
(``benchmarks/snapshot_noise.py`` makes them). Per variant and snapshot metric it records the
spread (largest minus smallest value over the runs) and, per prompt, the paired relative
difference of each prompt's KL between runs. A snapshot stores the record; its comparison allows
``MARGIN`` times the recorded spread, never less than the configured [snapshot_tolerances].
"""

from __future__ import annotations

import math
import statistics
from pathlib import Path
from typing import NotRequired, TypedDict

from quant_fixtures.json_types import JsonObject
from quant_fixtures.metrics.registry import SNAPSHOT_METRICS
from quant_fixtures.names import file_in
from quant_fixtures.report.schema import EvaluationDocument, read_document
from quant_fixtures.report.snapshot import MARGIN, HarmSummary, harm_summary
from quant_fixtures.store.atomic import write_json_atomic


class ReproductionError(ValueError):
    """Result directories that do not make one reproduction measurement."""


class PairedDifferences(TypedDict):
    """|b - a| / a of each prompt's KL between runs, over every prompt and pair of runs."""

    median: float
    p90: float
    max: float
    pairs: int


class ReproductionRun(TypedDict):
    label: str
    environment: str  # environment.describe
    settings: str


Spreads = dict[str, dict[str, float]]  # variant key -> metric -> largest minus smallest value


class AcrossKinds(TypedDict):
    """The spread over every run, those standing for other kinds of processor included."""

    runs: list[str]  # the labels of the runs that stand for another kind
    spread: Spreads
    how: str


class ReproductionRecord(TypedDict):
    model: str
    settings_tag: str
    margin: float
    runs: list[ReproductionRun]
    spread: Spreads  # over the runs on this kind of processor
    prompt_kl_paired_relative_difference: dict[str, PairedDifferences | None]
    how: str
    across_kinds: NotRequired[AcrossKinds]


def documents_of(directory: Path, model: str) -> dict[str, EvaluationDocument]:
    """The evaluation documents of ``model`` in one result directory, by variant."""
    paths = sorted(Path(directory).glob(f"*_quantized_{model}_evaluation.json"))
    if not paths:
        raise ReproductionError(f"{directory}: no *_quantized_{model}_evaluation.json in it")
    documents = [read_document(EvaluationDocument, p) for p in paths]
    return {d.variant.key: d for d in documents}


def _per_prompt_kl(document: EvaluationDocument) -> dict[str, float | None]:
    kl = document.kl_divergence
    return {} if kl is None else {p["id"]: p.get("kl_mean") for p in kl.per_prompt}


def _paired_prompt_differences(runs: list[EvaluationDocument]) -> PairedDifferences | None:
    """Each prompt's KL in every run against its KL in the first: |b - a| / a, paired per prompt."""
    first = _per_prompt_kl(runs[0])
    diffs = [
        abs(again - kl) / kl
        for doc in runs[1:]
        for other in [_per_prompt_kl(doc)]
        for pid, kl in first.items()
        for again in [other.get(pid)]
        if kl and again is not None
    ]
    if not diffs:
        return None
    ordered = sorted(diffs)
    return {
        "median": statistics.median(ordered),
        "p90": ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))],
        "max": ordered[-1],
        "pairs": len(ordered),
    }


def _spreads(summaries: list[HarmSummary]) -> Spreads:
    """Per variant and snapshot metric, largest minus smallest value over the summaries (a metric
    that is not a finite number in every one has none)."""
    spread: Spreads = {}
    for variant_key in summaries[0]["variants"]:
        spread[variant_key] = {}
        for metric in SNAPSHOT_METRICS:
            values = [s["variants"][variant_key][metric] for s in summaries]
            finite = [x for x in values if isinstance(x, (int, float)) and math.isfinite(x)]
            if len(finite) == len(values):
                spread[variant_key][metric] = max(finite) - min(finite)
    return spread


def measure(
    model: str,
    runs: dict[str, dict[str, EvaluationDocument]],
    settings_tag: str,
    descriptions: dict[str, str] | None = None,
    other_kinds: set[str] | frozenset[str] = frozenset(),
) -> ReproductionRecord:
    """The reproduction record of ``runs`` (label -> that run's documents by variant): every run
    must hold the same variants measured with the same settings, on the same text and prompts.
    The runs labelled in ``other_kinds`` stand for processors of another kind: they count in the
    spread across kinds only."""
    from quant_fixtures.environment import describe

    descriptions = descriptions or {}
    if len(runs) < 2:
        raise ReproductionError(f"{model}: a reproduction measurement needs at least two runs, got {len(runs)}")
    summaries = {label: harm_summary(docs) for label, docs in runs.items()}
    first_label, first = next(iter(summaries.items()))
    for label, summary in summaries.items():
        if summary["settings"] != first["settings"] or summary["variants"].keys() != first["variants"].keys():
            raise ReproductionError(
                f"{model}: run {label!r} was measured with other settings or variants than "
                f"{first_label!r}: {summary['settings']} vs {first['settings']}"
            )
    same_kind = [s for label, s in summaries.items() if label not in other_kinds]
    if len(same_kind) < 2:
        raise ReproductionError(f"{model}: a reproduction measurement needs two runs on one kind of processor")
    if not other_kinds <= summaries.keys():
        raise ReproductionError(f"{model}: no run labelled {sorted(other_kinds - summaries.keys())}")
    prompts = {
        variant_key: _paired_prompt_differences(
            [docs[variant_key] for label, docs in runs.items() if label not in other_kinds]
        )
        for variant_key in first["variants"]
    }
    record: ReproductionRecord = {
        "model": model,
        "settings_tag": settings_tag,
        "margin": MARGIN,
        "runs": [
            {
                "label": label,
                "environment": describe(docs[next(iter(docs))].environment),
                "settings": descriptions.get(label, ""),
            }
            for label, docs in runs.items()
        ],
        "spread": _spreads(same_kind),
        "prompt_kl_paired_relative_difference": prompts,
        "how": "spread = largest minus smallest value of each metric over the runs on this kind of processor "
        "(same text, prompts and FP16 responses); prompt KL differences are paired per prompt against the first run",
    }
    if other_kinds:
        record["across_kinds"] = {
            "runs": [label for label in runs if label in other_kinds],
            "spread": _spreads(list(summaries.values())),
            "how": "largest minus smallest value over every run, those standing for another kind of processor "
            "included: what a comparison with a snapshot made on another kind allows (MARGIN times it)",
        }
    return record


def record_path(directory: Path, model: str, settings_tag: str) -> Path:
    return file_in(Path(directory), f"{model}[{settings_tag}].json")


def write_record(directory: Path, record: ReproductionRecord) -> Path:
    path = record_path(directory, record["model"], record["settings_tag"])
    write_json_atomic(path, record)
    return path


def read_record(directory: Path, model: str, settings_tag: str) -> JsonObject | None:
    """The committed measurement for this model and settings, or None when there is none."""
    import json

    path = record_path(directory, model, settings_tag)
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise ReproductionError(f"{path}: not JSON ({exc})") from None
    if (
        not isinstance(record, dict)
        or record.get("model") != model
        or record.get("settings_tag") != settings_tag
        or not isinstance(record.get("spread"), dict)
    ):
        raise ReproductionError(f"{path}: not a reproduction record of {model} with these settings")
    return record
