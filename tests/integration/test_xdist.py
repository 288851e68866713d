"""pytest-xdist: `-n 2 --dist loadgroup` gives the same reports as a serial run.

Both runs start from empty baselines and caches, so the parallel one also exercises the FP16 file
lock (a worker whose quantized variant needs the FP16 references computes or waits for them).
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from integration_support import PASSING_GATES, make_project, run_suite

pytest_plugins = ["pytester"]

SAME_NUMBERS = [
    ("perplexity", "ppl"),
    ("perplexity", "fp16_ppl"),
    ("perplexity", "window_nll"),
    ("perplexity", "window_tokens"),
    ("memory", "footprint_gb"),
    ("memory", "fp16_footprint_gb"),
]


@pytest.fixture
def project(
    pytester: pytest.Pytester,
    tiny_models: dict[str, Path],
    tmp_path_factory: pytest.TempPathFactory,
    monkeypatch: pytest.MonkeyPatch,
) -> tuple[Path, SimpleNamespace]:
    root = tmp_path_factory.mktemp("xdist")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(root / "datasets"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    e2e = SimpleNamespace(model_dir=tiny_models["qwen2"], cache=root / "cache-serial")
    make_project(pytester, e2e, PASSING_GATES)
    return root, e2e


CONFTEST_COUNT_PASSES = """
import os
import quant_fixtures.session.orchestrator as orchestrator

def _counted(name, real):
    def run(ctx, model, var, *args):
        with open(os.environ["QUANT_TEST_PASS_LOG"], "a") as log:
            log.write(f"{model.key} {var.key}\\n")  # model: the ModelUnderTest
        return real(ctx, model, var, *args)
    return run

orchestrator.fp16_pass = _counted("fp16", orchestrator.fp16_pass)
orchestrator.variant_pass = _counted("variant", orchestrator.variant_pass)
"""


def _documents(results: Path) -> dict[str, Any]:
    return {p.name: json.loads(p.read_text()) for p in sorted(results.glob("*.json"))}


def test_parallel_run_matches_serial_run(
    pytester: pytest.Pytester, project: tuple[Path, SimpleNamespace], monkeypatch: pytest.MonkeyPatch
) -> None:
    root, e2e = project
    pytester.makeconftest(CONFTEST_COUNT_PASSES)
    passes = root / "passes.log"
    monkeypatch.setenv("QUANT_TEST_PASS_LOG", str(passes))
    serial = run_suite(pytester, e2e, root / "R1", root / "B1")
    assert serial.ret == 0, serial.outlines[-30:]
    e2e.cache = root / "cache-parallel"
    parallel = run_suite(pytester, e2e, root / "R2", root / "B2", "-n", "2", "--dist", "loadgroup")
    assert parallel.ret == 0, parallel.outlines[-30:]
    assert "2 workers" in parallel.stdout.str() or "gw1" in parallel.stdout.str()
    # Stage progress: shown by a serial run; xdist workers stay quiet (their terminal is not the user's).
    assert "quant-fixtures: tiny int8 perplexity: 4/4 windows in " in serial.stdout.str()
    assert "quant-fixtures: tiny" not in parallel.stdout.str()
    # every pair evaluated once in each run: no worker repeats an FP16 pass another has run for
    # its variant, and the whole-model tests wait for documents instead of evaluating again
    runs = passes.read_text().splitlines()
    assert sorted(runs) == sorted(["tiny fp16", "tiny int8", "tiny nf4"] * 2), runs

    one, two = _documents(root / "R1"), _documents(root / "R2")
    assert sorted(one) == sorted(two)
    for name in one:
        if name.endswith("_evaluation.json"):
            for section, key in SAME_NUMBERS:
                assert one[name][section][key] == pytest.approx(two[name][section][key], rel=1e-9), (name, key)
            kl1, kl2 = one[name]["kl_divergence"], two[name]["kl_divergence"]
            assert [r["kl_mean"] for r in kl1["per_prompt"]] == pytest.approx(
                [r["kl_mean"] for r in kl2["per_prompt"]], rel=1e-6, abs=1e-12
            )
            assert [r["response"] for r in kl1["per_prompt"]] == [r["response"] for r in kl2["per_prompt"]]
            assert [g["verdict"] for g in one[name]["gates"]] == [g["verdict"] for g in two[name]["gates"]]
    # The comparison file is assembled from both workers' documents.
    comparison = two["tiny_quantization_comparison.json"]
    assert list(comparison["variants"]) == ["fp16", "int8", "nf4"]
    assert (root / "R2" / "REPORT.md").is_file()
    # One terminal table, printed by the controller, with every variant.
    text = parallel.stdout.str()
    assert text.count("quantization harm") == 1 and all(f"\n{v} " in text for v in ("fp16", "int8", "nf4"))
