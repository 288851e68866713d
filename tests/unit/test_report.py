"""Unit tests for quant_fixtures.report: atomic JSON writes, file names, the comparison document."""

from __future__ import annotations

import json
import math
import os
import stat
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import torch
from documents_for_tests import gate_record, typed

from quant_fixtures.json_types import JsonObject, JsonValue
from quant_fixtures.report.comparison import comparison_document, comparison_path, evaluation_path
from quant_fixtures.report.schema import (
    SCHEMA_VERSION,
    EvaluationDocument,
    now_utc,
    to_json_object,
    write_document,
)
from quant_fixtures.store.atomic import atomic_path, save_tensors, write_json_atomic

# -- write_json_atomic ------------------------------------------------------------------------------


def test_write_and_read_back(tmp_path: Path) -> None:
    path = tmp_path / "out.json"
    document = {"b": 1, "a": [1.5, None, "x"], "nested": {"z": True}}
    write_json_atomic(path, document)
    text = path.read_text(encoding="utf-8")
    assert json.loads(text) == document
    assert text.endswith("\n")
    assert list(json.loads(text)) == ["b", "a", "nested"]  # key order kept
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]


def test_write_creates_parent_directories(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "c.json"
    write_json_atomic(path, [1, 2])
    assert json.loads(path.read_text()) == [1, 2]


def test_write_replaces_existing(tmp_path: Path) -> None:
    path = tmp_path / "out.json"
    write_json_atomic(path, {"v": 1})
    write_json_atomic(path, {"v": 2})
    assert json.loads(path.read_text()) == {"v": 2}
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]


@pytest.fixture
def umask() -> Iterator[Callable[[int], int]]:
    """Sets the process's umask for one test and restores it afterwards."""
    before = os.umask(0o022)
    try:
        yield os.umask
    finally:
        os.umask(before)


@pytest.mark.parametrize("mask", [0o022, 0o027, 0o002], ids=oct)
def test_written_files_get_the_mode_open_would_give(tmp_path: Path, umask: Callable[[int], int], mask: int) -> None:
    """Reports, plots and caches must be readable wherever a plain open() would make them so (a CI
    artifact, a shared results folder): 0666 less the umask, directories 0777 less it."""
    umask(mask)
    write_json_atomic(tmp_path / "report.json", {"v": 1})
    save_tensors(tmp_path / "hidden.safetensors", {"h": torch.zeros(2)}, {})  # safetensors writes its own file
    with atomic_path(tmp_path / "converted", directory=True) as tmp:
        (tmp / "config.json").write_text("{}")
    for name in ("report.json", "hidden.safetensors"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o666 & ~mask, name
    assert stat.S_IMODE((tmp_path / "converted").stat().st_mode) == 0o777 & ~mask


@pytest.mark.parametrize(
    "bad, error",
    [
        ({"ppl": float("nan")}, ValueError),
        ({"ppl": float("inf")}, ValueError),
        ({"ok": list(range(1000)), "then": object()}, TypeError),
        ({"path": Path("/x")}, TypeError),
        ({1.5j: "complex key"}, TypeError),
    ],
    ids=["nan", "inf", "object-after-content", "path", "bad-key"],
)
def test_failed_serialisation_keeps_old_file_and_leaves_no_temp(tmp_path: Path, bad: Any, error: type) -> None:
    path = tmp_path / "report.json"
    write_json_atomic(path, {"version": "old"})
    before = path.read_bytes()
    with pytest.raises(error):
        write_json_atomic(path, bad)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["report.json"]


def test_failed_serialisation_creates_no_file(tmp_path: Path) -> None:
    path = tmp_path / "new.json"
    with pytest.raises(ValueError):
        write_json_atomic(path, [float("-inf")])
    assert list(tmp_path.iterdir()) == []


# -- file names -----------------------------------------------------------------------------------


def test_evaluation_path(tmp_path: Path) -> None:
    assert evaluation_path(tmp_path, "mistral7b", "int8") == tmp_path / "int8_quantized_mistral7b_evaluation.json"
    assert evaluation_path(Path("results"), "qwen2.5-0.5b", "nf4").name == "nf4_quantized_qwen2.5-0.5b_evaluation.json"
    assert evaluation_path("results", "m", "fp16") == Path("results/fp16_quantized_m_evaluation.json")


def test_comparison_path(tmp_path: Path) -> None:
    assert comparison_path(tmp_path, "mistral7b") == tmp_path / "mistral7b_quantization_comparison.json"
    assert comparison_path("results", "smollm2-135m") == Path("results/smollm2-135m_quantization_comparison.json")


def test_now_utc_is_iso_seconds() -> None:
    stamp = now_utc()
    parsed = datetime.fromisoformat(stamp)
    offset = parsed.utcoffset()
    assert offset is not None and offset.total_seconds() == 0
    assert parsed.microsecond == 0


# -- comparison_document ----------------------------------------------------------------------


def gate(metric: str, value: float | None, limit: float, op: str, passed: bool) -> dict[str, Any]:
    return gate_record(metric, value, limit, op, "PASS" if passed else "FAIL")


def evaluation(
    variant: str, method: str, ppl: float, delta: float, footprint: float, reduction: float, gates: list[dict[str, Any]]
) -> EvaluationDocument:
    """An evaluation document whose numbers comparison_document reads are these, and no prompt KL."""
    return typed(
        {
            "model": {"key": "tiny", "source": "org/tiny@main", "weights_identity": "sha256:abc", "note": None},
            "variant": {"key": variant, "method": method},
            "perplexity": {
                "ppl": ppl,
                "fp16_ppl": 10.0,
                "delta_ppl_pct": delta,
                "method": "nonoverlapping",
                "ctx": 256,
                "stride": None,
                "tokens": 1020,
                "windows": 4,
                "dataset_sha256": "ab" * 32,
                "protocol": "text",
            },
            "memory": {
                "footprint_gb": footprint,
                "reduction_pct": reduction,
                "compression_ratio": 2.0 / footprint,
                "peak_gb": None,
            },
            "timing": {"ppl_tokens_per_s": 1234.5},
            "gates": gates,
            "kl_divergence": None,
            "flips": None,
            "corpus_kl": None,
        }
    )


FP16 = evaluation("fp16", "none", 10.0, 0.0, 2.0, 0.0, [])
INT8 = evaluation(
    "int8",
    "bitsandbytes-llm.int8",
    10.3,
    3.0,
    1.1,
    45.0,
    [
        gate("delta_ppl_pct", 3.0, 5.0, "<=", True),
        gate("memory_reduction_pct", 45.0, 45.0, ">=", True),
    ],
)
NF4 = evaluation(
    "nf4",
    "bitsandbytes-nf4",
    12.5,
    25.0,
    0.6,
    70.0,
    [
        gate("delta_ppl_pct", 25.0, 20.0, "<=", False),
        gate("memory_reduction_pct", 70.0, 70.0, ">=", True),
    ],
)


def _object(value: JsonValue) -> JsonObject:
    assert isinstance(value, dict), value
    return value


def test_comparison_lists_variants_in_order() -> None:
    doc = _object(to_json_object(comparison_document({"fp16": FP16, "int8": INT8, "nf4": NF4})))
    assert list(_object(doc["variants"])) == ["fp16", "int8", "nf4"]
    assert doc["schema_version"] == SCHEMA_VERSION
    assert doc["model"] == to_json_object(FP16.model)
    assert doc["fp16_ppl"] == 10.0
    assert doc["perplexity_protocol"] == {
        "method": "nonoverlapping",
        "ctx": 256,
        "stride": None,
        "tokens": 1020,
        "windows": 4,
        "dataset_sha256": "ab" * 32,
        "protocol": "text",
    }
    generated_at = doc["generated_at"]
    assert isinstance(generated_at, str)
    datetime.fromisoformat(generated_at)


def test_comparison_rows() -> None:
    doc = _object(to_json_object(comparison_document({"fp16": FP16, "int8": INT8, "nf4": NF4})))
    variants = _object(doc["variants"])
    int8 = _object(variants["int8"])
    expected = {
        "method": "bitsandbytes-llm.int8",
        "ppl": 10.3,
        "delta_ppl_pct": 3.0,
        "footprint_gb": 1.1,
        "reduction_pct": 45.0,
        "compression_ratio": 2.0 / 1.1,
        "peak_gb": None,
        "tokens_per_s": 1234.5,
        "gates_passed": True,
        "gates": to_json_object(INT8.gates),
        "memory_reduction_pct": 45.0,
    }
    assert {k: int8[k] for k in expected} == expected
    # These documents carry no prompt or corpus KL: those columns are empty, not invented.
    assert all(int8[k] is None for k in ("kl_mean", "kl_p99", "top1_agreement", "flips", "corpus_kl_mean"))
    assert _object(variants["fp16"])["gates_passed"] is True  # no gates: nothing failed
    assert _object(variants["nf4"])["gates_passed"] is False


def test_comparison_failed_gates() -> None:
    doc = comparison_document({"fp16": FP16, "int8": INT8, "nf4": NF4})
    # one format for a failed gate, here and in the findings
    assert doc.failed_gates == doc.findings.failed_gates == ["nf4: delta_ppl_pct = 25 (limit <= 20)"]


def test_comparison_failed_gates_several_and_missing_value() -> None:
    int8 = evaluation(
        "int8",
        "bitsandbytes-llm.int8",
        11.0,
        10.0,
        1.5,
        25.0,
        [
            gate("delta_ppl_pct", 10.0, 5.0, "<=", False),
            gate("memory_reduction_pct", None, 45.0, ">=", False),
        ],
    )
    doc = comparison_document({"int8": int8, "nf4": NF4})
    assert list(doc.variants) == ["int8", "nf4"]
    assert doc.failed_gates == [
        "int8: delta_ppl_pct = 10 (limit <= 5)",
        "int8: memory_reduction_pct = missing (limit >= 45)",
        "nf4: delta_ppl_pct = 25 (limit <= 20)",
    ]


def test_comparison_all_passed_has_no_failures() -> None:
    doc = comparison_document({"fp16": FP16, "int8": INT8})
    assert doc.failed_gates == []
    assert all(row["gates_passed"] for row in doc.variants.values())


def test_comparison_document_is_writable_json(tmp_path: Path) -> None:
    doc = comparison_document({"fp16": FP16, "int8": INT8, "nf4": NF4})
    path = comparison_path(tmp_path, "tiny")
    write_document(path, doc)
    back = json.loads(path.read_text())
    assert back["failed_gates"] == doc.failed_gates
    assert math.isclose(back["variants"]["int8"]["compression_ratio"], 2.0 / 1.1)
