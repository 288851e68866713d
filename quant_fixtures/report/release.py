"""The run's one release verdict: every gate of every (model, variant) of the run decided together
(metrics/decision.joint_verdict), written into the terminal summary, REPORT.md and each model's
comparison file, and what it does to the exit code."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from quant_fixtures.metrics.decision import ALPHA, JointVerdict, joint_verdict
from quant_fixtures.report.schema import ComparisonDocument, EvaluationDocument, read_document, write_document

Documents = Mapping[str, Mapping[str, EvaluationDocument]]  # model -> variant key -> document


def release_verdict(documents: Documents) -> JointVerdict:
    """The joint verdict over every gate of ``documents`` (the run's), at the gates' own alpha."""
    gates = [
        (model, key, g) for model, by_variant in documents.items() for key, d in by_variant.items() for g in d.gates
    ]
    alpha = gates[0][2].alpha if gates else ALPHA
    return joint_verdict([g.outcome(model, key) for model, key, g in gates], alpha)


def fails_the_run(verdict: JointVerdict, undecided: str) -> bool:
    """Whether the verdict fails the run (exit code 1): FAIL always, UNDECIDED under ``undecided = "fail"``."""
    return verdict.verdict == "FAIL" or (verdict.verdict == "UNDECIDED" and undecided == "fail")


def release_lines(verdict: JointVerdict, undecided: str | None = None) -> list[str]:
    """One line with the verdict and its error rates, then the gates that made it what it is."""
    a = f"{100 * verdict.alpha:g} %"
    if verdict.verdict == "NONE":
        return ["release verdict: NONE (no gates in this run)"]
    gates = f"{verdict.gates} gates ({verdict.statistical_gates} sampled)"
    why = {
        "PASS": f"every one of {gates} within its limit with {100 - 100 * verdict.alpha:g} % confidence; "
        f"a release with a gate beyond its limit passes this way at most {a} of the time",
        "FAIL": f"{len(verdict.beyond)} of {gates} beyond their limits; false FAIL rate of the run at most {a} (Holm)",
        "UNDECIDED": f"{len(verdict.undecided)} of {gates} undecided, none shown beyond its limit",
    }[verdict.verdict]
    effect = {"fail": "fails the run", "warn": "warns", "pass": "passes"}
    tail = f"; undecided = {undecided!r}: {effect[undecided]}" if undecided and verdict.verdict == "UNDECIDED" else ""
    lines = [f"release verdict: {verdict.verdict} ({why}){tail}"]
    lines += [f"  beyond: {name}" for name in verdict.beyond]
    lines += [f"  undecided: {name}" for name in verdict.undecided]
    return lines


def record_in_comparisons(results_dir: Path, models: list[str], verdict: JointVerdict) -> None:
    """Write the run's verdict into each of its models' comparison files (atomically)."""
    from quant_fixtures.report.comparison import comparison_path

    for model in models:
        path = comparison_path(results_dir, model)
        if path.exists():
            document = read_document(ComparisonDocument, path)
            document.release_verdict = verdict
            write_document(path, document)
