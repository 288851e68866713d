"""The typed documents: written in one place, read back into the same types, strictly."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from documents_for_tests import golden_document

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


@pytest.mark.parametrize("variant", ["fp16", "int8", "nf4"])
def test_a_written_document_reads_back_into_the_same_types_and_bytes(tmp_path: Path, variant: str) -> None:
    data = golden_document(f"{variant}_evaluation")
    doc = from_json_object(EvaluationDocument, data)
    assert doc.perplexity.ppl == data["perplexity"]["ppl"] and doc.model.key == "tiny"
    assert all(type(g).__name__ == "GateResult" for g in doc.gates)
    path = tmp_path / "doc.json"
    write_document(path, doc)
    again = read_document(EvaluationDocument, path)
    assert again == doc
    assert json.loads(path.read_text()) == data  # nothing added, dropped or reordered in value


def test_an_optional_section_left_out_when_empty_and_read_back_as_none() -> None:
    fp16, int8 = golden_document("fp16_evaluation"), golden_document("int8_evaluation")
    assert "batch_sensitivity" not in fp16["flips"] and "batch_sensitivity" in int8["flips"]
    fp16_flips = from_json_object(EvaluationDocument, fp16).flips
    assert fp16_flips is not None and fp16_flips.batch_sensitivity is None
    int8_sensitivity = from_json_object(Flips, int8["flips"]).batch_sensitivity
    assert int8_sensitivity is not None and int8_sensitivity.shift == 24


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda d: d["perplexity"].pop("ppl"), "missing key 'ppl' of Perplexity"),
        (lambda d: d["memory"].update(typo_gb=1.0), "unknown keys ['typo_gb'] for Memory"),
        (lambda d: d.update(gates={"metric": "x"}), "expected a list"),
        (lambda d: d.update(model=[1, 2]), "expected an object for ModelInfo"),
    ],
)
def test_a_document_of_another_shape_is_refused_naming_where(
    change: Callable[[dict[str, Any]], object], message: str
) -> None:
    data = golden_document("int8_evaluation")
    change(data)
    with pytest.raises(SchemaError, match=message.replace("[", r"\[").replace("]", r"\]")):
        from_json_object(EvaluationDocument, data)


def test_another_schema_version_or_broken_json_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "doc.json"
    path.write_text(json.dumps({**golden_document("int8_evaluation"), "schema_version": SCHEMA_VERSION + 1}))
    with pytest.raises(SchemaError, match="schema version"):
        read_document(EvaluationDocument, path)
    path.write_text("{ half")
    with pytest.raises(SchemaError, match="unreadable"):
        read_document(EvaluationDocument, path)


def test_serialiser_refuses_nan(tmp_path: Path) -> None:
    doc = from_json_object(EvaluationDocument, golden_document("int8_evaluation"))
    doc.perplexity.ppl = float("nan")
    with pytest.raises(ValueError):
        write_document(tmp_path / "x.json", doc)
    assert not list(tmp_path.iterdir())
    written = to_json_object(doc)
    assert isinstance(written, dict) and isinstance(written["perplexity"], dict)
    assert written["perplexity"]["ppl"] != written["perplexity"]["ppl"]  # NaN kept in memory


# -- values are checked against the annotations, down to the records inside the sections --------------


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda d: d["perplexity"].update(ppl="abc"), "document.perplexity.ppl: expected float, got str"),
        (lambda d: d["perplexity"].update(tokens=True), "document.perplexity.tokens: expected int, got bool"),
        (lambda d: d["perplexity"].update(tokens=12.5), "document.perplexity.tokens: expected int, got float"),
        (lambda d: d["perplexity"].update(ctx=None), "document.perplexity.ctx: null where int is expected"),
        (lambda d: d["perplexity"].update(window_nll=[1.0, "x"]), "document.perplexity.window_nll[1]: expected float"),
        (lambda d: d["batching"]["requested"].update(perplexity="8"), "document.batching.requested.perplexity"),
        (lambda d: d["reference_keys"].update(prompts=3), "document.reference_keys.prompts: expected str"),
        (
            lambda d: d["kl_divergence"]["per_prompt"][2].update(kl_mean="0.1"),
            "document.kl_divergence.per_prompt[2].kl_mean: expected float, got str",
        ),
        (
            lambda d: d["kl_divergence"]["per_prompt"][0].pop("response"),
            "document.kl_divergence.per_prompt[0]: missing key 'response' of PromptRecord",
        ),
        (
            lambda d: d["kl_divergence"]["per_category"]["code"].update(flips=[1]),
            "document.kl_divergence.per_category.code.flips: expected int, got list",
        ),
        (
            lambda d: d["corpus_kl"]["llama_cpp"]["kld"].update(p99_9="high"),
            "document.corpus_kl.llama_cpp.kld.p99_9: expected float, got str",
        ),
        (
            lambda d: d["corpus_kl"]["llama_cpp"]["kld"]["mean"].update(extra=1.0),
            "document.corpus_kl.llama_cpp.kld.mean: unknown keys ['extra'] for WithUncertainty",
        ),
        (lambda d: d["flips"]["batch_sensitivity"].update(shift="24"), "document.flips.batch_sensitivity.shift"),
        (lambda d: d["gates"][0].update(exact="yes"), "document.gates[0].exact: expected bool, got str"),
        (lambda d: d.update(kl_divergence=5), "document.kl_divergence: expected an object for PromptKL, got int"),
    ],
)
def test_a_value_of_the_wrong_type_is_refused_naming_its_path(
    change: Callable[[dict[str, Any]], object], message: str
) -> None:
    data = golden_document("int8_evaluation")
    change(data)
    with pytest.raises(SchemaError, match=re.escape(message)):
        from_json_object(EvaluationDocument, data)


def test_an_int_reads_where_a_float_is_annotated_and_null_where_none_is_allowed() -> None:
    data = golden_document("int8_evaluation")
    data["perplexity"].update(ppl=12, stride=None)
    doc = from_json_object(EvaluationDocument, data)
    assert doc.perplexity.ppl == 12 and doc.perplexity.stride is None


def test_a_union_of_records_reads_as_the_one_it_fits_and_names_the_field_that_fits_none() -> None:
    from quant_fixtures.report.json_reader import _read
    from quant_fixtures.report.schema import LongContextBuckets

    bucket = {"lo": 0, "hi": 8, "positions": 8, "stretches": 1, "mean_context": 4.0, "fp16_ppl": 9.5}
    fp16 = {"buckets": [bucket], "positions": 8, "unbucketed_positions": 0, "stretches": 1, "position_unit": "t"}
    assert _read(LongContextBuckets, fp16, "lc") == fp16
    # FP16's form but a bucket's field wrong: the error of the form whose keys fit, naming the field
    fp16["buckets"] = [{**bucket, "fp16_ppl": "high"}]
    with pytest.raises(SchemaError, match=re.escape("lc.buckets[0].fp16_ppl: expected float, got str")):
        _read(LongContextBuckets, fp16, "lc")
    with pytest.raises(SchemaError, match=re.escape("lc: expected LongContextComparison | LongContextFp16, got str")):
        _read(LongContextBuckets, "x", "lc")
