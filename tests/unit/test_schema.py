"""The typed documents: written in one place, read back into the same types, strictly."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from quant_fixtures.report.schema import (
    SCHEMA_VERSION,
    EvaluationDocument,
    Flips,
    SchemaError,
    from_json_object,
    read_document,
    to_json_object,
    write_document,
)

GOLDEN = Path(__file__).parent / "golden"


def _golden(name: str) -> dict:
    return json.loads((GOLDEN / f"{name}.json").read_text(encoding="utf-8"))


@pytest.mark.parametrize("variant", ["fp16", "int8", "nf4"])
def test_a_written_document_reads_back_into_the_same_types_and_bytes(tmp_path: Path, variant: str) -> None:
    data = _golden(f"{variant}_evaluation")
    doc = from_json_object(EvaluationDocument, data)
    assert doc.perplexity.ppl == data["perplexity"]["ppl"] and doc.model.key == "tiny"
    assert all(type(g).__name__ == "GateResult" for g in doc.gates)
    path = tmp_path / "doc.json"
    write_document(path, doc)
    again = read_document(EvaluationDocument, path)
    assert again == doc
    assert json.loads(path.read_text()) == data  # nothing added, dropped or reordered in value


def test_an_optional_section_left_out_when_empty_and_read_back_as_none() -> None:
    fp16, int8 = _golden("fp16_evaluation"), _golden("int8_evaluation")
    assert "batch_sensitivity" not in fp16["flips"] and "batch_sensitivity" in int8["flips"]
    assert from_json_object(EvaluationDocument, fp16).flips.batch_sensitivity is None
    assert from_json_object(Flips, int8["flips"]).batch_sensitivity.shift == 24


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda d: d["perplexity"].pop("ppl"), "missing key 'ppl' of Perplexity"),
        (lambda d: d["memory"].update(typo_gb=1.0), "unknown keys ['typo_gb'] for Memory"),
        (lambda d: d.update(gates={"metric": "x"}), "expected a list"),
        (lambda d: d.update(model=[1, 2]), "expected an object for ModelInfo"),
    ],
)
def test_a_document_of_another_shape_is_refused_naming_where(change, message) -> None:
    data = _golden("int8_evaluation")
    change(data)
    with pytest.raises(SchemaError, match=message.replace("[", r"\[").replace("]", r"\]")):
        from_json_object(EvaluationDocument, data)


def test_another_schema_version_or_broken_json_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "doc.json"
    path.write_text(json.dumps({**_golden("int8_evaluation"), "schema_version": SCHEMA_VERSION + 1}))
    with pytest.raises(SchemaError, match="schema version"):
        read_document(EvaluationDocument, path)
    path.write_text("{ half")
    with pytest.raises(SchemaError, match="unreadable"):
        read_document(EvaluationDocument, path)


def test_serialiser_refuses_nan(tmp_path: Path) -> None:
    doc = from_json_object(EvaluationDocument, _golden("int8_evaluation"))
    doc.perplexity.ppl = float("nan")
    with pytest.raises(ValueError):
        write_document(tmp_path / "x.json", doc)
    assert not list(tmp_path.iterdir())
    assert to_json_object(doc)["perplexity"]["ppl"] != to_json_object(doc)["perplexity"]["ppl"]  # NaN kept in memory
