"""The fixtures the plugin provides: the session, finished documents per (model, variant) or per
model, one gated metric per test, the tolerant snapshot, and a loaded pair for benchmarks."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from quant_fixtures.metrics.registry import MetricSpec
from quant_fixtures.plugin.cli import runnable_pairs
from quant_fixtures.plugin.state import session_of
from quant_fixtures.report.schema import EvaluationDocument


def _evaluate(session: Any, pairs: list[tuple[str, str]]) -> dict[str, EvaluationDocument]:
    """{variant: document}; a pair that cannot be evaluated fails the test with one line."""
    from quant_fixtures.models.gguf import GGUFSourceError
    from quant_fixtures.models.sources import ModelUnavailableError
    from quant_fixtures.models.tokenizer_match import TokenizerMismatchError
    from quant_fixtures.session.orchestrator import EvaluationFailed

    try:
        return {v: session.evaluate(m, v) for m, v in pairs}
    except (ModelUnavailableError, EvaluationFailed, GGUFSourceError, TokenizerMismatchError) as exc:
        message = str(exc)
    pytest.fail(message, pytrace=False)  # outside the except: one line, no chained exception


@pytest.fixture(scope="session")
def quant_session(pytestconfig: pytest.Config) -> Any:
    return session_of(pytestconfig)


@pytest.fixture(scope="session")
def variant_eval(request: pytest.FixtureRequest, quant_session: Any) -> EvaluationDocument:
    """The finished evaluation document of one (model, variant); the model is loaded and released
    inside, so at most one model is resident at a time."""
    model, variant = request.param
    return _evaluate(quant_session, [(model, variant)])[variant]


@pytest.fixture(scope="session")
def quantized_eval(request: pytest.FixtureRequest, quant_session: Any) -> EvaluationDocument:
    """As ``variant_eval``, over quantized variants only."""
    model, variant = request.param
    return _evaluate(quant_session, [(model, variant)])[variant]


@dataclass(frozen=True)
class GatedMetric:
    document: EvaluationDocument
    metric: MetricSpec


@pytest.fixture(scope="session")
def gated_metric(request: pytest.FixtureRequest, quant_session: Any) -> GatedMetric:
    """One (model, quantized variant, gateable metric): the document and the metric's spec."""
    from quant_fixtures.metrics.registry import METRICS

    model, variant, metric = request.param
    return GatedMetric(_evaluate(quant_session, [(model, variant)])[variant], METRICS[metric])


@pytest.fixture(scope="session")
def model_documents(request: pytest.FixtureRequest, quant_session: Any) -> dict[str, EvaluationDocument]:
    """{variant: evaluation document} of one model, every selected variant (reused when this run
    already evaluated it, in this process or another xdist worker)."""
    return _evaluate(quant_session, [(m, v) for m, v in runnable_pairs(request.config) if m == request.param])


@pytest.fixture(scope="session")
def bench_model(request: pytest.FixtureRequest, quant_session: Any) -> Iterator[tuple[str, str, Any]]:
    """One (model, variant) loaded for the whole session; pytest releases it before the next."""
    from quant_fixtures.models.loading import load_model, release

    model, variant = request.param
    settings = quant_session.settings
    var = quant_session.config.variant(model, variant)
    loaded = load_model(
        quant_session.config.models[model], quant_session.inputs.weights(model, var), var, settings.load
    )
    yield model, variant, loaded
    release(loaded)


@pytest.fixture
def harm_snapshot(quant_session: Any, request: pytest.FixtureRequest) -> Any:
    """A syrupy snapshot assertion with per-metric tolerances, named after the run's settings.

    Built here rather than from syrupy's ``snapshot`` fixture: that one registers the default
    (amber) extension, whose discovery walks all of __snapshots__/ and would mark every other
    settings' JSON snapshot as unused, so ``--snapshot-update`` would delete it. This extension
    claims only the files of this run's own settings.
    """
    from syrupy.assertion import SnapshotAssertion
    from syrupy.extensions.json import JSONSnapshotExtension
    from syrupy.location import PyTestLocation

    from quant_fixtures.plugin.snapshot_extension import tolerant_json_extension
    from quant_fixtures.report.snapshot import settings_tag

    tag = settings_tag(quant_session.settings)
    owned = {
        JSONSnapshotExtension._sanitize_filename(f"{request.node.originalname}[{m}][{tag}]")
        for m in quant_session.settings.models
    }
    options = request.config.option
    assertion = SnapshotAssertion(
        update_snapshots=options.update_snapshots,
        update_new_snapshots_only=options.update_new_snapshots_only,
        extension_class=tolerant_json_extension(quant_session.config.snapshot_tolerances, owned),
        test_location=PyTestLocation(request.node),
        session=request.config._syrupy,
    )  # as syrupy's own fixture
    return assertion(name=tag)
