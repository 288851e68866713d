"""README's `make eval` sample output: it shows what make eval runs (the Makefile's variants, a
long-context line for each quantized one, the release verdict in report mode), and
benchmarks/readme_sample.py, which checks it against a real run's reports, finds a line the run did
not print and can write the run's lines in."""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path
from types import ModuleType

import pytest

REPO = Path(__file__).resolve().parents[2]
GOLDEN = Path(__file__).parent / "golden"


def _script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("readme_sample", REPO / "benchmarks" / "readme_sample.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


readme_sample = _script()


def _eval_variants() -> list[str]:
    found = re.search(r"^EVAL_VARIANTS \?= (\S+)$", (REPO / "Makefile").read_text(encoding="utf-8"), re.M)
    assert found, "the Makefile sets no EVAL_VARIANTS"
    return found.group(1).split(",")


def test_the_sample_shows_every_variant_make_eval_runs_with_its_long_context_line_and_the_verdict() -> None:
    lines = readme_sample.sample_lines((REPO / "README.md").read_text(encoding="utf-8"))
    variants = _eval_variants()
    header = next(i for i, line in enumerate(lines) if line.startswith("variant "))
    table = [line for line in lines[header + 1 :] if " long context (" not in line]
    rows = [line.split()[0] for line in table if line.split()[0] in variants]
    assert sorted(rows) == sorted(variants)
    long_lines = [line.split()[0] for line in lines if " long context (" in line]
    assert sorted(long_lines) == sorted(v for v in variants if v != "fp16")
    verdict = [line for line in lines if line.startswith("release verdict: ")]
    assert len(verdict) == 1 and verdict[0].endswith(readme_sample.REPORT_MODE_TAIL)


@pytest.fixture
def results(tmp_path: Path) -> Path:
    """A results directory holding the golden documents under the names a run gives them (with
    timings in place of the golden files' masks)."""
    directory = tmp_path / "results"
    directory.mkdir()
    for variant in ("fp16", "int8", "nf4"):
        document = json.loads((GOLDEN / f"{variant}_evaluation.json").read_text(encoding="utf-8"))
        document["timing"] = {"load_s": 1.0, "ppl_s": 2.0, "ppl_tokens_per_s": 300.0, "prompts_s": 3.0, "stages": {}}
        (directory / f"{variant}_quantized_tiny_evaluation.json").write_text(json.dumps(document), encoding="utf-8")
    return directory


def test_a_sample_made_from_the_run_passes_and_a_changed_line_is_named(results: Path, tmp_path: Path) -> None:
    printed = readme_sample.run_lines(results)
    assert printed[0].startswith("device ") and any(line.startswith("release verdict: ") for line in printed)
    readme = tmp_path / "README.md"
    readme.write_text("# x\n\n```\ndevice stale\n```\n\ntext after\n", encoding="utf-8")
    assert readme_sample.main([str(results), "--readme", str(readme)]) == 1
    assert readme_sample.main([str(results), "--readme", str(readme), "--write"]) == 0
    text = readme.read_text(encoding="utf-8")
    assert readme_sample.sample_lines(text) == printed and text.endswith("```\n\ntext after\n")
    assert readme_sample.main([str(results), "--readme", str(readme)]) == 0

    row = next(i for i, line in enumerate(printed) if line.startswith("int8 "))
    changed = printed[:row] + [printed[row].replace("int8 ", "int8+", 1)] + printed[row + 1 :]
    found = readme_sample.differences(changed, printed)
    assert len(found) == 1 and found[0].startswith(f"line {row + 1}:") and "int8+" in found[0]
    assert readme_sample.differences(printed[:-1], printed) == [f"only in the run: {printed[-1]}"]
