"""The fixtures the plugin provides: the session, finished documents per (model, variant) or per
model, one gated metric per test, the tolerant snapshot, and a loaded pair for benchmarks."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import pytest

from quant_fixtures.metrics.registry import MetricSpec
from quant_fixtures.plugin.cli import runnable_pairs
from quant_fixtures.plugin.state import session_of
from quant_fixtures.report.schema import EvaluationDocument

if TYPE_CHECKING:
    from quant_fixtures.models.loading import LoadedModel
    from quant_fixtures.plugin.snapshot_extension import HarmSnapshot
    from quant_fixtures.session.orchestrator import EvaluationSession


def _evaluate(session: EvaluationSession, pairs: list[tuple[str, str]]) -> dict[str, EvaluationDocument]:
    """{variant key: document}; a pair that cannot be evaluated fails the test with one line."""
    from quant_fixtures.models.gguf import GGUFSourceError
    from quant_fixtures.models.sources import ModelUnavailableError
    from quant_fixtures.models.tokenizer_match import TokenizerMismatchError
    from quant_fixtures.session.orchestrator import EvaluationFailed

    try:
        return {variant_key: session.evaluate(model, variant_key) for model, variant_key in pairs}
    except (ModelUnavailableError, EvaluationFailed, GGUFSourceError, TokenizerMismatchError) as exc:
        message = str(exc)
    pytest.fail(message, pytrace=False)  # outside the except: one line, no chained exception


@pytest.fixture(scope="session")
def quant_session(pytestconfig: pytest.Config) -> EvaluationSession:
    session: EvaluationSession = session_of(pytestconfig)
    return session


@pytest.fixture(scope="session")
def variant_eval(request: pytest.FixtureRequest, quant_session: EvaluationSession) -> EvaluationDocument:
    """The finished evaluation document of one (model, variant); the model is loaded and released
    inside, so at most one model is resident at a time."""
    model, variant_key = request.param
    return _evaluate(quant_session, [(model, variant_key)])[variant_key]


@pytest.fixture(scope="session")
def quantized_eval(request: pytest.FixtureRequest, quant_session: EvaluationSession) -> EvaluationDocument:
    """As ``variant_eval``, over quantized variants only."""
    model, variant_key = request.param
    return _evaluate(quant_session, [(model, variant_key)])[variant_key]


@dataclass(frozen=True)
class GatedMetric:
    document: EvaluationDocument
    metric: MetricSpec


@pytest.fixture(scope="session")
def gated_metric(request: pytest.FixtureRequest, quant_session: EvaluationSession) -> GatedMetric:
    """One (model, quantized variant, gateable metric): the document and the metric's spec."""
    from quant_fixtures.metrics.registry import METRICS

    model, variant_key, metric = request.param
    return GatedMetric(_evaluate(quant_session, [(model, variant_key)])[variant_key], METRICS[metric])


@pytest.fixture(scope="session")
def model_documents(request: pytest.FixtureRequest, quant_session: EvaluationSession) -> dict[str, EvaluationDocument]:
    """{variant key: evaluation document} of one model, every selected variant (reused when this run
    already evaluated it, in this process or another xdist worker)."""
    return _evaluate(quant_session, [(m, v) for m, v in runnable_pairs(request.config) if m == request.param])


@pytest.fixture(scope="session")
def bench_model(
    request: pytest.FixtureRequest, quant_session: EvaluationSession
) -> Iterator[tuple[str, str, LoadedModel]]:
    """One (model, variant key, loaded model) for the whole session; pytest releases it before the next."""
    from quant_fixtures.models.loading import load_model, release

    model, variant_key = request.param
    variant = quant_session.suite.variant(model, variant_key)
    loaded = load_model(
        quant_session.models.spec(model),
        quant_session.models.weights(model, variant),
        variant,
        quant_session.settings.load,
    )
    yield model, variant_key, loaded
    release(loaded)


@pytest.fixture
def harm_snapshot(quant_session: EvaluationSession, request: pytest.FixtureRequest) -> HarmSnapshot:
    """The harm snapshots of this test and run settings, one per hardware kind, with per-metric
    tolerances (plugin/snapshot_extension.py; plugin/assertions.assert_harm_snapshot compares).

    Built here rather than from syrupy's ``snapshot`` fixture: that one registers the default
    (amber) extension, whose discovery walks all of __snapshots__/ and reports every other
    settings' JSON snapshot as an unknown collection, so ``--snapshot-update`` would delete it.
    This extension claims only the file it compares with.
    """
    from quant_fixtures.plugin.snapshot_extension import HarmSnapshot
    from quant_fixtures.report.snapshot import settings_tag

    return HarmSnapshot(request, quant_session.suite.snapshot_tolerances, settings_tag(quant_session.settings))
