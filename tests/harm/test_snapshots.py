"""Release diffing: each model's harm summary against its committed snapshot, within tolerances.

One snapshot per run settings and hardware kind (tests/harm/__snapshots__/, `<settings>@<kind>`).
A machine of a kind with no snapshot compares with the other kinds' snapshots at the tolerance
measured across kinds, never skips. The tolerances come from the reproduction noise measured for
these settings (tests/harm/reproduction/, made by benchmarks/snapshot_noise.py) and the configured
[snapshot_tolerances]; the snapshot records both. Accept a deliberate change with
`pytest --snapshot-update` and commit the snapshot file.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from quant_fixtures.plugin.assertions import assert_harm_snapshot
from quant_fixtures.report.reproduction import read_record
from quant_fixtures.report.snapshot import harm_summary, settings_tag

if TYPE_CHECKING:
    from quant_fixtures.plugin.snapshot_extension import HarmSnapshot
    from quant_fixtures.report.schema import EvaluationDocument
    from quant_fixtures.session.orchestrator import EvaluationSession

REPRODUCTION = Path(__file__).parent / "reproduction"


def test_harm_summary_matches_snapshot(
    model_documents: dict[str, EvaluationDocument],
    harm_snapshot: HarmSnapshot,
    quant_session: EvaluationSession,
    pytestconfig: pytest.Config,
) -> None:
    model = next(iter(model_documents.values())).model.key
    record = read_record(REPRODUCTION, model, settings_tag(quant_session.settings))
    floors = quant_session.suite.snapshot_tolerances
    assert_harm_snapshot(harm_summary(model_documents, floors, record), harm_snapshot, pytestconfig)
