"""The syrupy extension of the harm snapshot: JSON stored exactly, compared with tolerances."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from syrupy.extensions.json import JSONSnapshotExtension

from quant_fixtures.report.snapshot import within_tolerance


def tolerant_json_extension(
    tolerances: dict[str, dict[str, float]], owned_stems: Iterable[str] | None = None
) -> type[JSONSnapshotExtension]:
    """A JSON snapshot extension class bound to these tolerances (syrupy instantiates the class).

    With ``owned_stems``, the extension claims only those snapshot files: snapshots made with
    other settings, models or variants are invisible to this run, so `--snapshot-update` never
    deletes them as unused."""
    owned = None if owned_stems is None else set(owned_stems)

    class TolerantJSONExtension(JSONSnapshotExtension):
        def matches(self, *, serialized_data: Any, snapshot_data: Any) -> bool:
            try:
                return within_tolerance(json.loads(serialized_data), json.loads(snapshot_data), tolerances)
            except (TypeError, ValueError):  # no snapshot yet, or not JSON
                return False

        def owns_snapshot_collection(self, *, filepath: str, test_location: Any) -> bool:
            if owned is not None and Path(filepath).name.removesuffix(".json") not in owned:
                return False
            return super().owns_snapshot_collection(filepath=filepath, test_location=test_location)

    return TolerantJSONExtension
