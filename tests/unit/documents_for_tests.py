"""Typed evaluation documents for report tests: the golden INT8 document (a complete one) with the
sections a test cares about replaced, read back through the schema like a stored report."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from quant_fixtures.report.schema import EvaluationDocument, from_json_object

GOLDEN = Path(__file__).parent / "golden"


def golden_document(name: str) -> dict[str, Any]:
    """A golden evaluation document as JSON, with what the golden test masks (the time it was made,
    the timing section: "<masked>" strings) given values of the schema's types."""
    doc: dict[str, Any] = json.loads((GOLDEN / f"{name}.json").read_text(encoding="utf-8"))
    doc["generated_at"] = "2026-11-27T00:00:00+00:00"
    doc["timing"] = {"load_s": 1.0, "ppl_s": 2.0, "ppl_tokens_per_s": 100.0, "prompts_s": 3.0, "stages": {"load": 1.0}}
    return doc


_BASE = golden_document("int8_evaluation")


def typed(partial: dict[str, Any]) -> EvaluationDocument:
    """The base document with each given section updated key by key (a None or non-object value
    replaces the section), parsed strictly into the schema. The per-prompt and per-category records
    a test gives are completed the same way from the base document's first record."""
    doc = json.loads(json.dumps(_BASE))
    for section, value in partial.items():
        if isinstance(value, dict) and isinstance(doc.get(section), dict) and section != "environment":
            doc[section] = {**doc[section], **value}
        else:
            doc[section] = value
    if isinstance(doc["kl_divergence"], dict):
        _complete_records(doc["kl_divergence"], _BASE["kl_divergence"])
    return from_json_object(EvaluationDocument, doc)


def _complete_records(section: dict[str, Any], base: dict[str, Any]) -> None:
    prompt, category = base["per_prompt"][0], next(iter(base["per_category"].values()))
    section["per_prompt"] = [{**prompt, **record} for record in section["per_prompt"]]
    section["per_category"] = {name: {**category, **stats} for name, stats in section["per_category"].items()}


def gate_record(metric: str, value: float | None, limit: float, op: str, verdict: str) -> dict[str, Any]:
    """A gate's JSON record with this verdict, decided without sampling error (as a memory gate is)."""
    return {
        "metric": metric,
        "value": value,
        "limit": limit,
        "op": op,
        "verdict": verdict,
        "interval": None if value is None else [value, value],
        "p_within": None if value is None else float(verdict != "PASS"),
        "p_beyond": None if value is None else float(verdict == "PASS"),
        "alpha": 0.05,
        "alpha_beyond": 0.05,
        "units": None,
        "unit": None,
        "more_units": None,
        "exact": True,
        "method": "deterministic: no sampling error",
    }
