"""The attribution a run starts after a failed KL or ΔPPL gate (plugin/auto_attribution.py): which
pairs, whether they fit the time and memory budget, and that a failing attribution costs the run
only a line."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import pytest

from quant_fixtures.config import DEFAULT_CONFIG_PATH, SuiteConfig
from quant_fixtures.metrics.decision import JointVerdict
from quant_fixtures.plugin import auto_attribution
from quant_fixtures.plugin.auto_attribution import Plan, attribute_failed, estimate_seconds, failed_pairs, plan


def _document(metrics: list[str], tokens_per_s: float = 1024.0, load_s: float = 1.0, gb: float = 1.0) -> Any:
    return SimpleNamespace(
        gates=[SimpleNamespace(metric=m) for m in metrics],
        timing=SimpleNamespace(ppl_tokens_per_s=tokens_per_s, load_s=load_s),
        memory=SimpleNamespace(footprint_gb=gb, fp16_footprint_gb=2 * gb),
    )


def _verdict(beyond: list[str]) -> JointVerdict:
    return JointVerdict("FAIL", 0.05, 4, 4, beyond, [], "Holm")


DOCUMENTS = {
    "m": {
        "fp16": _document([]),
        "nf4": _document(["kl_mean", "memory_reduction_pct", "delta_ppl_pct"]),
        "int8": _document(["kl_mean"]),
    }
}


def test_only_kl_and_delta_ppl_gates_shown_beyond_ask_for_it() -> None:
    verdict = _verdict(["m nf4 kl_mean", "m nf4 memory_reduction_pct", "m int8 kl_p99"])
    assert failed_pairs(verdict, DOCUMENTS) == {("m", "nf4"): ["kl_mean"]}
    assert failed_pairs(_verdict(["m nf4 memory_reduction_pct"]), DOCUMENTS) == {}


def test_the_estimate_is_two_loads_and_the_reads_at_the_slower_throughput() -> None:
    variant, fp16 = _document([], tokens_per_s=2048.0, load_s=3.0), _document([], tokens_per_s=1024.0, load_s=5.0)
    # 2 + 2 x 10 + 2 reads of 4 x 256 tokens at 1,024 tokens/s, after 3 + 5 s of loading
    assert estimate_seconds(10, variant, fp16) == pytest.approx(8.0 + 24.0)
    assert estimate_seconds(10, variant, None) == pytest.approx(6.0 + 12.0)


@pytest.mark.parametrize(
    ("budget", "free", "why"),
    [
        (0.0, None, "--attribute-budget 0"),
        (10.0, None, "estimated 22 s > --attribute-budget 10 s"),
        (60.0, 2**30, "the 16-bit and quantized models need about 3.4 GiB, 1.0 GiB free"),
        (60.0, 2**33, None),
        (60.0, None, None),
    ],
)
def test_a_pair_runs_only_within_the_time_and_memory_budget(budget: float, free: int | None, why: str | None) -> None:
    (planned,) = plan({("m", "nf4"): ["kl_mean"]}, DOCUMENTS, {"m": 8}, budget, free)
    assert planned.seconds == pytest.approx(2.0 + 20.0)  # 2 + 2 x 8 + 2 reads of 1,024 tokens at 1,024 tokens/s
    assert planned.why_not == why and planned.run == (why is None)


def test_a_failing_attribution_is_a_line_not_a_lost_run(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import quant_fixtures.attribute

    def boom(*args: object, **kwargs: object) -> None:
        raise RuntimeError("the model would not load\nmore")

    monkeypatch.setattr(quant_fixtures.attribute, "attribute_variant", boom)
    config = cast(SuiteConfig, SimpleNamespace(path=tmp_path / "suite.toml"))
    plans = [Plan("m", "nf4", ["kl_mean"], 5.0, True), Plan("m", "int8", ["kl_mean"], 500.0, False, "too long")]
    lines = attribute_failed(config, plans, results_dir=tmp_path, cache_dir=tmp_path, device="cpu", run_id="r")
    command = f"python -m quant_fixtures.attribute --model m --variant nf4 --suite-config {tmp_path / 'suite.toml'}"
    assert (
        lines[0]
        == f"per-layer harm of m nf4 (kl_mean beyond): failed (RuntimeError: the model would not load): {command}"
    )
    assert lines[1].startswith("per-layer harm of m int8 (kl_mean beyond): not run, too long: python -m")


def test_the_command_names_the_runs_config_and_device_where_not_the_defaults() -> None:
    shipped = cast(SuiteConfig, SimpleNamespace(path=DEFAULT_CONFIG_PATH))
    p = Plan("m", "nf4", [], 1.0, True)
    assert p.command(shipped, "cpu") == "python -m quant_fixtures.attribute --model m --variant nf4"
    assert p.command(shipped, "cuda:1").endswith("--variant nf4 --device cuda:1")
    assert auto_attribution.DEFAULT_BUDGET_S > 0  # on by default: a failed gate gets its explanation
