"""Merging the results directories of several jobs (a CI matrix) into one comparison and report."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from quant_fixtures.report.merge import MergeError, main, merge, merge_documents

GOLDEN = Path(__file__).parent / "golden"


def _job(root: Path, name: str, variants: list[str], edit: Callable[[dict[str, Any]], object] | None = None) -> Path:
    """A job's results directory holding the golden documents of ``variants`` (model 'tiny')."""
    directory = root / name
    directory.mkdir()
    for variant in variants:
        data = json.loads((GOLDEN / f"{variant}_evaluation.json").read_text())
        data["generated_at"] = "2026-11-28T00:00:00+00:00"
        data["timing"] = {
            "load_s": 1.0,
            "ppl_s": 2.0,
            "ppl_tokens_per_s": 100.0,
            "prompts_s": 3.0,
            "stages": {"load": 1.0},
        }
        if edit:
            edit(data)
        (directory / f"{variant}_quantized_tiny_evaluation.json").write_text(json.dumps(data))
    return directory


def test_jobs_split_by_variant_merge_into_one_comparison(tmp_path: Path) -> None:
    a = _job(tmp_path, "a", ["fp16", "int8"])
    b = _job(tmp_path, "b", ["fp16", "nf4"])  # every job measured FP16 first
    documents, verdict = merge([a, b], tmp_path / "out")
    assert list(documents["tiny"]) == ["fp16", "int8", "nf4"]
    comparison = json.loads((tmp_path / "out" / "tiny_quantization_comparison.json").read_text())
    # one verdict over both jobs' gates: the golden nf4's ΔPPL is beyond its limit
    assert verdict.verdict == "FAIL" and comparison["release_verdict"]["beyond"] == ["tiny nf4 delta_ppl_pct"]
    assert "release verdict: FAIL" in (tmp_path / "out" / "REPORT.md").read_text()
    assert list(comparison["variants"]) == ["fp16", "int8", "nf4"]
    assert comparison["failed_gates"] == [line for line in comparison["findings"]["failed_gates"]]
    assert (
        comparison["variants"]["nf4"]["ppl"]
        == json.loads((b / "nf4_quantized_tiny_evaluation.json").read_text())["perplexity"]["ppl"]
    )
    report = (tmp_path / "out" / "REPORT.md").read_text()
    assert all(f"| {v} |" in report for v in ("fp16", "int8", "nf4"))
    assert sorted(p.name for p in (tmp_path / "out").glob("*_evaluation.json")) == [
        "fp16_quantized_tiny_evaluation.json",
        "int8_quantized_tiny_evaluation.json",
        "nf4_quantized_tiny_evaluation.json",
    ]


def test_jobs_measured_against_other_fp16_references_are_refused(tmp_path: Path) -> None:
    a = _job(tmp_path, "a", ["fp16", "int8"])
    b = _job(tmp_path, "b", ["fp16", "nf4"], edit=lambda d: d["reference_keys"].update(baseline_sha256="c" * 64))
    with pytest.raises(MergeError, match="model tiny: .* different FP16 references \\(baseline_sha256\\)"):
        merge_documents([a, b])


def test_a_broken_or_missing_result_stops_the_merge(tmp_path: Path) -> None:
    a = _job(tmp_path, "a", ["fp16", "int8"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(MergeError, match="no \\*_quantized_\\*_evaluation.json"):
        merge_documents([a, tmp_path / "empty"])
    broken = _job(tmp_path, "broken", ["nf4"])
    (broken / "nf4_quantized_tiny_evaluation.json").write_text("{ half")
    with pytest.raises(MergeError, match="nf4_quantized_tiny_evaluation.json: unreadable"):
        merge_documents([a, broken])


def test_command_exit_codes(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    a = _job(tmp_path, "a", ["fp16", "int8"])
    assert main(["--into", str(tmp_path / "o1"), str(a)]) == 0  # int8's gates passed
    b = _job(tmp_path, "b", ["fp16", "nf4"])  # the golden nf4: ΔPPL beyond its limit, KL undecided
    assert main(["--into", str(tmp_path / "o2"), str(a), str(b)]) == 1
    out = capsys.readouterr().out
    assert "release verdict: FAIL" in out and "  beyond: tiny nf4 delta_ppl_pct" in out and "merged 3 documents" in out
    shutil.rmtree(b)
    assert main(["--into", str(tmp_path / "o3"), str(a), str(b)]) == 2
    assert "not a directory" in capsys.readouterr().err


def test_a_document_whose_key_would_leave_the_merged_directory_is_refused(tmp_path: Path) -> None:
    def escape(data: dict) -> None:
        data["model"]["key"] = "../../escaped"

    job = _job(tmp_path, "a", ["fp16"], edit=escape)
    with pytest.raises(MergeError, match="fp16_quantized_tiny_evaluation.json: model key '../../escaped' breaks"):
        merge([job], tmp_path / "out" / "merged")
    assert not (tmp_path / "out").exists() and not (tmp_path / "escaped").exists()  # nothing written


def test_models_that_differ_only_in_case_are_refused(tmp_path: Path) -> None:
    a = _job(tmp_path, "a", ["fp16"])
    b = _job(tmp_path, "b", ["fp16"], edit=lambda d: d["model"].update(key="Tiny"))
    with pytest.raises(MergeError, match="models 'tiny' and 'Tiny' differ only in case"):
        merge_documents([a, b])
