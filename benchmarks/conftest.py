"""Throughput benchmarks (pytest-benchmark), kept apart from the release gates.

    pytest benchmarks --benchmark-json=results/benchmarks.json          # CPU: embedded model, tiny budget
    pytest benchmarks -m gpu --benchmark-json=results/benchmarks.json   # CUDA: the seed models
    pytest benchmarks --benchmark-compare                               # against the last saved run
"""

from __future__ import annotations

from typing import Any

import pytest

from quant_fixtures.plugin.cli import CONFIG_KEY, selected_pairs


def pytest_addoption(parser: pytest.Parser) -> None:
    g = parser.getgroup("quant-bench", "quantization-harm benchmarks")
    g.addoption("--bench-windows", type=int, default=None, help="perplexity windows per round (CUDA 8, CPU 1)")
    g.addoption("--bench-ctx", type=int, default=None, help="window length (CUDA 2048, CPU 512)")
    g.addoption("--bench-prompts", type=int, default=None, help="prompts per generation batch (CUDA 96, CPU 8)")
    g.addoption("--bench-new-tokens", type=int, default=None, help="tokens generated per prompt (CUDA 64, CPU 8)")
    g.addoption("--bench-rounds", type=int, default=None, help="timed rounds (CUDA 5, CPU 2)")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "bench_model" not in metafunc.fixturenames:
        return
    suite = metafunc.config.stash[CONFIG_KEY]
    only = getattr(metafunc.function, "bench_variants", None)
    params = []
    for model, variant in selected_pairs(metafunc.config):
        if only is None or variant in only:
            marks = [pytest.mark.gpu] if suite.models[model].requires_gpu else []
            params.append(pytest.param((model, variant), id=f"{model}-{variant}", marks=marks))
    metafunc.parametrize("bench_model", params, indirect=True, scope="session")


@pytest.fixture(scope="session")
def bench_settings(pytestconfig: pytest.Config, quant_session: Any) -> dict[str, int]:
    on_cuda = quant_session.options.device.startswith("cuda")

    def pick(name: str, cuda: int, cpu: int) -> int:
        return pytestconfig.getoption(name) or (cuda if on_cuda else cpu)

    return {"windows": pick("--bench-windows", 8, 1), "ctx": pick("--bench-ctx", 2048, 512),
            "prompts": pick("--bench-prompts", 96, 8), "new_tokens": pick("--bench-new-tokens", 64, 8),
            "rounds": pick("--bench-rounds", 5, 2)}


@pytest.fixture(scope="session")
def bench_model(request: pytest.FixtureRequest, quant_session: Any) -> Any:
    """One (model, variant) loaded for the whole session; pytest releases it before the next."""
    from quant_fixtures.models.loading import load_model, release
    from quant_fixtures.variants import VARIANTS

    model, variant = request.param
    spec = quant_session.config.models[model]
    loaded = load_model(spec, quant_session.resolved(model), VARIANTS[variant],
                        quant_session.options.variant_options(), quant_session.options.device)
    yield model, variant, loaded
    release(loaded)


def pytest_benchmark_update_json(config: pytest.Config, benchmarks: list, output_json: dict) -> None:
    """Add tokens/s and speed ratios (vs FP16, and batched pass vs the HF guide loop) to the JSON."""
    from quant_fixtures.report.bench_summary import throughput_summary

    output_json["quant_fixtures"] = throughput_summary(output_json.get("benchmarks", []))
