"""Assertion helpers for harm tests: a failed gate fails with one line naming everything."""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING

import pytest

from quant_fixtures.json_types import JsonValue
from quant_fixtures.report.gates import UNDECIDED
from quant_fixtures.report.schema import EvaluationDocument

if TYPE_CHECKING:
    from collections.abc import Mapping
    from pathlib import Path

    from quant_fixtures.plugin.snapshot_extension import HarmSnapshot


class UndecidedGateWarning(UserWarning):
    """A gate whose interval crosses its limit, under ``undecided = "warn"``."""


class SnapshotKindWarning(UserWarning):
    """The harm snapshot was compared with one made on another hardware kind (looser tolerance)."""


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


def assert_harm_snapshot(summary: Mapping[str, object], harm: HarmSnapshot, config: pytest.Config) -> None:
    """Compare with the committed snapshot of this machine's hardware kind or, where that kind has
    none, with those of other kinds at the tolerance measured across kinds (never a skip). A failure
    lists only what moved beyond tolerance and where each snapshot was made; a missing snapshot says
    in one line how to record it."""
    __tracebackhide__ = True
    import shlex

    from quant_fixtures.report.snapshot import ENVIRONMENT, hardware_kind

    kind = hardware_kind(summary.get(ENVIRONMENT))
    failures: list[str] = []
    for snapshot_kind, across_kinds in harm.targets(kind):
        if across_kinds:
            problem = _not_comparable_across_kinds(harm.path(snapshot_kind))
            if problem:
                failures.append(problem)
                continue
        assertion = harm.assertion(snapshot_kind, across_kinds)
        if summary == assertion:
            if across_kinds:
                warnings.warn(
                    SnapshotKindWarning(
                        f"no harm snapshot of this hardware kind ({kind}): compared with the one made on "
                        f"{snapshot_kind} at the tolerance measured across kinds; record one of this kind to "
                        "compare at the tight tolerance"
                    ),
                    stacklevel=1,
                )
            continue
        result = assertion.executions[assertion.num_executions - 1]
        if result.recalled_data is None:
            command = shlex.join(["pytest", *config.invocation_params.args, "--snapshot-update"])
            pytest.fail(
                f"no snapshot {result.snapshot_name} for these settings on any hardware kind yet: record it "
                f"with `{command}` and commit tests/harm/__snapshots__/",
                pytrace=False,
            )
        failures.append(_difference_message(summary, result.recalled_data, result.snapshot_name, harm, across_kinds))
    if failures:
        pytest.fail("\n".join(failures), pytrace=False)


def _not_comparable_across_kinds(path: Path) -> str | None:
    """Why a snapshot of another kind cannot be compared with (its record measured no spread across
    kinds), or None."""
    import json

    from quant_fixtures.report.snapshot import measured_across_kinds

    if measured_across_kinds(json.loads(path.read_text(encoding="utf-8"))):
        return None
    return (
        f"{path.name}: made on another hardware kind, and its reproduction record measured no spread across "
        "kinds, so it cannot be compared here: record a snapshot on this machine (--snapshot-update), or "
        "re-measure the record with benchmarks/snapshot_noise.py (make snapshot-noise) and re-record the snapshot"
    )


def _difference_message(
    summary: Mapping[str, object], recalled: object, name: str, harm: HarmSnapshot, across_kinds: bool
) -> str:
    import json

    from quant_fixtures.report.snapshot import ENVIRONMENT, environment_note, snapshot_differences

    old: JsonValue = json.loads(str(recalled))
    lines = snapshot_differences(summary, old, harm.tolerances, across_kinds)
    old_env = old.get(ENVIRONMENT) if isinstance(old, dict) else None
    how = " (made on another hardware kind: compared at the tolerance measured across kinds)" if across_kinds else ""
    return "\n".join(
        [
            f"harm summary differs from the snapshot {name}{how} in {len(lines)} place(s):",
            *[f"  {line}" for line in lines],
            environment_note(old_env, summary.get(ENVIRONMENT)),
            "If the change is intended, accept it with --snapshot-update and commit the snapshot.",
        ]
    )
