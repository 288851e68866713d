"""Golden test: the JSON the suite writes, byte for byte, for a fixed set of measurements.

The measurements are hand-made (three variants of one model, every section filled: prompt KL with
exact and top-k bases, flips with batch sensitivity, corpus KL, the noise floor, gates passed,
failed and opted out). The evaluation documents, the comparison document and the harm summary are
built by the suite's own code and compared with files in ``golden/`` after masking what changes
from run to run (``generated_at`` and the ``timing`` section). Regenerate deliberately with
``QUANT_GOLDEN_UPDATE=1 pytest tests/unit/test_document_golden.py`` and review the diff.

The files were recorded before the redesign of issue 8 (commit 83a5199). The evaluation documents
came through it byte for byte; the intended changes since: the comparison file's failed-gate lines
use the one gate format, its rows gained registry columns (memory_reduction_pct, flip_rate), and the
harm summary's reduction_pct is memory_reduction_pct (one name per metric). Schema version 2 (issue 9)
adds to ``batching`` what was asked for, the memory limit, the notes on what memory changed and how
generation ran, and to ``timing`` the stage table. Schema version 3 (issue 10): KL is exact everywhere
(no per-record basis), records carry the reverse KL, and ``corpus_kl`` is built by the suite's own
corpus_comparison from fixed per-position values (reverse KL, top-K agreement, KL by FP16
confidence, llama.cpp's tables). Schema version 4 (issue 11): ``variant`` gains ``source`` and
``weights_identity`` (null for registered methods), and ``memory.footprint_method`` describes the one
footprint rule every method is counted by.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
from golden_measurements import golden_documents

GOLDEN = Path(__file__).parent / "golden"
MASKED = "<masked>"


def _masked(document: dict[str, Any]) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(json.dumps(document))
    if "generated_at" in doc:
        doc["generated_at"] = MASKED
    if isinstance(doc.get("timing"), dict):
        doc["timing"] = {k: MASKED for k in doc["timing"]}
    return doc


def _text(document: dict[str, Any]) -> str:
    return json.dumps(_masked(document), indent=2, allow_nan=False) + "\n"


CASES = ["fp16_evaluation", "int8_evaluation", "nf4_evaluation", "comparison", "harm_summary"]


@pytest.fixture(scope="module")
def built() -> dict[str, dict]:
    return golden_documents()


@pytest.mark.parametrize("name", CASES)
def test_json_matches_golden(built: dict[str, dict], name: str) -> None:
    path = GOLDEN / f"{name}.json"
    text = _text(built[name])
    if os.environ.get("QUANT_GOLDEN_UPDATE"):
        path.parent.mkdir(exist_ok=True)
        path.write_text(text, encoding="utf-8")
    expected = path.read_text(encoding="utf-8")
    assert text == expected, f"{name}: the written JSON changed; diff it against {path}"


def test_masking_only_touches_run_dependent_fields(built: dict[str, dict]) -> None:
    """The mask must not hide a real change: only generated_at and timing values are replaced."""
    doc = built["int8_evaluation"]
    masked = _masked(doc)
    assert {k for k in doc if doc[k] != masked[k]} == {"generated_at", "timing"}
