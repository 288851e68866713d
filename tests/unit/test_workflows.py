"""The GitHub workflows run only trusted code on self-hosted runners (read with PyYAML, which
transformers depends on).

A self-hosted runner runs whatever code triggered the workflow: a workflow that such a runner
picks up must not start on pull requests (forks included), unless each of its self-hosted jobs
waits for a label a maintainer sets. Every workflow limits its job token to reading the repository.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

WORKFLOWS = sorted((Path(__file__).resolve().parents[2] / ".github" / "workflows").glob("*.y*ml"))
PULL_REQUEST_EVENTS = ("pull_request", "pull_request_target")


def triggers(workflow: dict[Any, Any]) -> dict[str, Any]:
    """The ``on:`` events, as {event: its settings}. YAML 1.1 reads the bare key ``on`` as True."""
    events = workflow.get("on", workflow.get(True))
    if isinstance(events, str):
        return {events: None}
    if isinstance(events, list):
        return dict.fromkeys(events)
    return dict(events or {})


def self_hosted(job: dict[str, Any]) -> bool:
    """Whether the job may run on a self-hosted runner. An expression (``${{ ... }}``) may resolve
    to one, so it counts as self-hosted: the check fails closed."""
    runs_on = job.get("runs-on", "")
    if isinstance(runs_on, dict):  # {group: ..., labels: ...}: runner groups are self-hosted or larger runners
        return True
    labels = [runs_on] if isinstance(runs_on, str) else list(runs_on)
    return any("self-hosted" in str(label) or "${{" in str(label) for label in labels)


def label_gated(settings: Any, jobs: list[dict[str, Any]]) -> bool:
    """A pull-request trigger a maintainer controls: it fires only when a label is added, and every
    self-hosted job checks which label (``if: github.event.label.name == '...'``)."""
    types = (settings or {}).get("types") if isinstance(settings, dict) else None
    return types == ["labeled"] and all("github.event.label.name" in str(job.get("if", "")) for job in jobs)


def violations(workflow: dict[Any, Any]) -> list[str]:
    found = []
    permissions = workflow.get("permissions")
    if not isinstance(permissions, dict) or permissions.get("contents") != "read":
        found.append("no top-level `permissions: contents: read`")
    jobs = [job for job in (workflow.get("jobs") or {}).values() if self_hosted(job)]
    if jobs:
        for event, settings in triggers(workflow).items():
            if event in PULL_REQUEST_EVENTS and not label_gated(settings, jobs):
                found.append(f"self-hosted jobs triggered by {event} without a label condition")
    return found


def test_the_workflows_are_found() -> None:
    assert {p.name for p in WORKFLOWS} >= {"release-gate.yml", "release-matrix.yml"}


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_workflow_runs_only_trusted_code_with_a_read_only_token(path: Path) -> None:
    assert violations(yaml.safe_load(path.read_text(encoding="utf-8"))) == []


SELF_HOSTED_JOB = "jobs:\n  gate:\n    runs-on: [self-hosted, gpu]\n    steps: [{run: make test}]\n"
READ_ONLY = "permissions:\n  contents: read\n"


@pytest.mark.parametrize(
    "text, expected",
    [
        (
            "on: [push, pull_request]\n" + READ_ONLY + SELF_HOSTED_JOB,
            ["self-hosted jobs triggered by pull_request without a label condition"],
        ),
        (
            "on:\n  pull_request_target:\n    types: [labeled]\n" + READ_ONLY + SELF_HOSTED_JOB,
            ["self-hosted jobs triggered by pull_request_target without a label condition"],
        ),  # no `if:` on the job
        (
            "on: pull_request\n" + READ_ONLY + "jobs:\n  x:\n    runs-on: ${{ matrix.runner }}\n",
            ["self-hosted jobs triggered by pull_request without a label condition"],
        ),
        ("on:\n  workflow_dispatch:\n" + SELF_HOSTED_JOB, ["no top-level `permissions: contents: read`"]),
        (
            "on: pull_request\npermissions: write-all\njobs:\n  x:\n    runs-on: ubuntu-latest\n",
            ["no top-level `permissions: contents: read`"],
        ),
        # Allowed: pull requests on GitHub's own runners, and a label a maintainer sets.
        ("on: pull_request\n" + READ_ONLY + "jobs:\n  x:\n    runs-on: ubuntu-latest\n", []),
        (
            "on:\n  pull_request:\n    types: [labeled]\n"
            + READ_ONLY
            + SELF_HOSTED_JOB
            + "    if: github.event.label.name == 'run-gpu'\n",
            [],
        ),
    ],
)
def test_the_check_sees_a_violation(text: str, expected: list[str]) -> None:
    workflow = yaml.safe_load(text)
    assert True in workflow  # the bare key `on` as PyYAML reads it
    assert violations(workflow) == expected
