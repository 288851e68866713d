"""Assertion helpers for harm tests: a failed gate fails with one line naming everything."""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING

import pytest

from quant_fixtures.json_types import JsonObject, JsonValue
from quant_fixtures.report.gates import UNDECIDED
from quant_fixtures.report.schema import EvaluationDocument

if TYPE_CHECKING:
    from syrupy.assertion import SnapshotAssertion


class UndecidedGateWarning(UserWarning):
    """A gate whose interval crosses its limit, under ``undecided = "warn"``."""


def assert_gate(document: EvaluationDocument, metric: str, mode: str = "enforce", undecided: str = "fail") -> None:
    """FAIL fails (with ``mode == "report"``, xfails); UNDECIDED fails, warns or passes as
    ``undecided`` says (report mode: xfails unless "pass"); PASS passes."""
    __tracebackhide__ = True
    model, variant_key = document.model.key, document.variant.key
    gates = [g for g in document.gates if g.metric == metric]
    if not gates:
        # Only an explicit opt-out skips; a limit that is simply missing fails (a typo must not
        # silently remove a release gate).
        reason = document.ungated.get(metric)
        if reason:
            pytest.skip(f"{model} {variant_key}: {metric} not gated: {reason}")
        pytest.fail(f"{model} {variant_key}: no limit configured for {metric} and no explicit opt-out", pytrace=False)
    for gate in gates:
        line = gate.describe(model, variant_key)
        if gate.failed:
            if mode == "report":
                pytest.xfail(f"gate FAIL (report mode): {line}")
            pytest.fail(f"gate FAIL: {line}", pytrace=False)
        if gate.verdict == UNDECIDED and undecided != "pass":
            if mode == "report":
                pytest.xfail(f"gate UNDECIDED (report mode): {line}")
            if undecided == "warn":
                warnings.warn(UndecidedGateWarning(f"gate UNDECIDED: {line}"), stacklevel=1)
            else:
                pytest.fail(f"gate UNDECIDED (undecided = 'fail'): {line}", pytrace=False)


def assert_harm_snapshot(
    summary: JsonObject, snapshot: SnapshotAssertion, tolerances: dict[str, dict[str, float]], config: pytest.Config
) -> None:
    """Compare with the committed snapshot; a failure lists only what moved beyond tolerance (and
    where each snapshot was made), a missing snapshot says in one line how to record it."""
    __tracebackhide__ = True
    import json
    import shlex

    from quant_fixtures.report.snapshot import (
        ENVIRONMENT,
        environment_note,
        hardware_differences,
        snapshot_differences,
    )

    if summary == snapshot:
        return
    result = snapshot.executions[snapshot.num_executions - 1]
    if result.recalled_data is None:
        command = shlex.join(["pytest", *config.invocation_params.args, "--snapshot-update"])
        pytest.fail(
            f"no snapshot {result.snapshot_name} for these settings yet: record it with `{command}` "
            "and commit tests/harm/__snapshots__/",
            pytrace=False,
        )
    old: JsonValue = json.loads(result.recalled_data)
    lines = snapshot_differences(summary, old, tolerances)
    old_env = old.get(ENVIRONMENT) if isinstance(old, dict) else None
    other_hardware = hardware_differences(old_env, summary.get(ENVIRONMENT))
    if other_hardware:
        # Numbers from another kind of processor are not a regression signal (report/snapshot.py,
        # HARDWARE_KEYS): say so loudly instead of failing on the hardware or passing on it.
        pytest.skip(
            f"snapshot {result.snapshot_name} was made on other hardware ({', '.join(other_hardware)} differ: "
            f"{environment_note(old_env, summary.get(ENVIRONMENT))}); its {len(lines)} difference(s) are not "
            "compared here. Record a snapshot on this machine's kind to diff releases on it."
        )
    pytest.fail(
        "\n".join(
            [
                f"harm summary differs from the snapshot {result.snapshot_name} in {len(lines)} place(s):",
                *[f"  {line}" for line in lines],
                environment_note(old_env, summary.get(ENVIRONMENT)),
                "If the change is intended, accept it with --snapshot-update and commit the snapshot.",
            ]
        ),
        pytrace=False,
    )
