"""pytest-xdist: `-n 2 --dist loadgroup` gives the same reports as a serial run.

Both runs start from empty baselines and caches, so the parallel one also exercises the FP16 file
lock (a worker whose quantized variant needs the FP16 references computes or waits for them).
"""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from integration_support import PASSING_GATES, make_project, run_suite

pytest_plugins = ["pytester"]

SAME_NUMBERS = [("perplexity", "ppl"), ("perplexity", "fp16_ppl"), ("perplexity", "window_nll"),
                ("perplexity", "window_tokens"), ("memory", "footprint_gb"), ("memory", "fp16_footprint_gb")]


@pytest.fixture
def project(pytester, tiny_models, tmp_path_factory, monkeypatch):
    root = tmp_path_factory.mktemp("xdist")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(root / "datasets"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    e2e = SimpleNamespace(model_dir=tiny_models["qwen2"], cache=root / "cache-serial")
    make_project(pytester, e2e, PASSING_GATES)
    return root, e2e


def _documents(results):
    return {p.name: json.loads(p.read_text()) for p in sorted(results.glob("*.json"))}


def test_parallel_run_matches_serial_run(pytester, project):
    root, e2e = project
    serial = run_suite(pytester, e2e, root / "R1", root / "B1")
    assert serial.ret == 0, serial.outlines[-30:]
    e2e.cache = root / "cache-parallel"
    parallel = run_suite(pytester, e2e, root / "R2", root / "B2", "-n", "2", "--dist", "loadgroup")
    assert parallel.ret == 0, parallel.outlines[-30:]
    assert "2 workers" in parallel.stdout.str() or "gw1" in parallel.stdout.str()

    one, two = _documents(root / "R1"), _documents(root / "R2")
    assert sorted(one) == sorted(two)
    for name in one:
        if name.endswith("_evaluation.json"):
            for section, key in SAME_NUMBERS:
                assert one[name][section][key] == pytest.approx(two[name][section][key], rel=1e-9), (name, key)
            kl1, kl2 = one[name]["kl_divergence"], two[name]["kl_divergence"]
            assert [r["kl_mean"] for r in kl1["per_prompt"]] == pytest.approx(
                [r["kl_mean"] for r in kl2["per_prompt"]], rel=1e-6, abs=1e-12)
            assert [r["response"] for r in kl1["per_prompt"]] == [r["response"] for r in kl2["per_prompt"]]
            assert [g["passed"] for g in one[name]["gates"]] == [g["passed"] for g in two[name]["gates"]]
    # The comparison file is assembled from both workers' documents.
    comparison = two["tiny_quantization_comparison.json"]
    assert list(comparison["variants"]) == ["fp16", "int8", "nf4"]
    assert (root / "R2" / "REPORT.md").is_file()
    # One terminal table, printed by the controller, with every variant.
    text = parallel.stdout.str()
    assert text.count("quantization harm") == 1 and all(f"\n{v} " in text for v in ("fp16", "int8", "nf4"))
