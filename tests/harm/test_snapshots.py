"""Release diffing: each model's harm summary against its committed snapshot, within tolerances.

Accept a deliberate change with `pytest --snapshot-update` and commit the snapshot file.
"""

from quant_fixtures.plugin.assertions import assert_harm_snapshot
from quant_fixtures.report.snapshot import harm_summary


def test_harm_summary_matches_snapshot(model_documents, harm_snapshot, quant_session, pytestconfig):
    assert_harm_snapshot(harm_summary(model_documents), harm_snapshot, quant_session.config.snapshot_tolerances,
                         pytestconfig)
