"""Throughput benchmarks (pytest-benchmark), kept apart from the release gates.

    pytest benchmarks --benchmark-json=results/benchmarks.json          # CPU: embedded model, tiny budget
    pytest benchmarks -m gpu --benchmark-json=results/benchmarks.json   # CUDA: the seed models
    pytest benchmarks --benchmark-compare                               # against the last saved run

The plugin parametrizes ``bench_model`` (one loaded (model, variant) per session); a test limited
to some variants says so with ``@pytest.mark.quant_variants(...)``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from quant_fixtures.settings import BENCH_DEFAULTS, BenchSettings
from quant_fixtures.settings import bench_settings as resolve_bench_settings

if TYPE_CHECKING:
    from quant_fixtures.session.orchestrator import EvaluationSession


def pytest_addoption(parser: pytest.Parser) -> None:
    g = parser.getgroup("quant-bench", "quantization-harm benchmarks")
    for name, (cuda, cpu) in BENCH_DEFAULTS.items():
        g.addoption(
            f"--bench-{name.replace('_', '-')}",
            type=int,
            default=None,
            help=f"{name.replace('_', ' ')} (CUDA {cuda}, CPU {cpu})",
        )


@pytest.fixture(scope="session")
def bench_settings(pytestconfig: pytest.Config, quant_session: EvaluationSession) -> BenchSettings:
    given = {name: pytestconfig.getoption(f"--bench-{name.replace('_', '-')}") for name in BENCH_DEFAULTS}
    return resolve_bench_settings(quant_session.settings.load.device, given)


def pytest_benchmark_update_json(config: pytest.Config, benchmarks: list, output_json: dict) -> None:
    """Add tokens/s and speed ratios (vs FP16, and batched pass vs the HF guide loop) to the JSON."""
    from quant_fixtures.report.bench_summary import throughput_summary

    output_json["quant_fixtures"] = throughput_summary(output_json.get("benchmarks", []))
