"""Which process this is under pytest-xdist: the run id all workers share, each worker's index
and device, and the controller's resolved paths handed to workers."""

from __future__ import annotations

import uuid

import pytest

RUN_ID_KEY = "quant_fixtures_run_id"
PATHS_KEY = "quant_fixtures_paths"  # the controller's resolved output directories
NO_GPU_OUTPUT = "quant_fixtures_no_gpu"  # workeroutput: why a worker ran nothing (plugin/hooks.py)
_RUN_ID = pytest.StashKey[str]()  # the controller's (or a serial run's) run id


def worker_input(config: pytest.Config) -> dict[str, object] | None:
    """What the xdist controller handed this worker (``workerinput``, an attribute xdist sets on a
    worker's config; pytest.Config does not declare it); None on the controller or in a serial run."""
    given: object = getattr(config, "workerinput", None)
    return given if isinstance(given, dict) else None


def is_worker(config: pytest.Config) -> bool:
    return worker_input(config) is not None


def run_id(config: pytest.Config) -> str:
    """The controller's run id; workers receive it through xdist's workerinput."""
    given = worker_input(config)
    if given is not None:
        return str(given[RUN_ID_KEY])
    if _RUN_ID not in config.stash:
        config.stash[_RUN_ID] = uuid.uuid4().hex
    return config.stash[_RUN_ID]


def worker_index(config: pytest.Config) -> int:
    """0 for a serial run or the controller, N for xdist worker gwN."""
    given = worker_input(config)
    if given is None:
        return 0
    return int(str(given.get("workerid", "gw0")).lstrip("gw") or 0)


def device_for(config: pytest.Config) -> str:
    """CUDA when present (worker i uses GPU i mod count), else the CPU."""
    import torch

    if not torch.cuda.is_available():
        return "cpu"
    return f"cuda:{worker_index(config) % torch.cuda.device_count()}"


def hand_to_controller(config: pytest.Config, key: str, value: str) -> None:
    """Leave ``value`` for the xdist controller, which reads it from the node's ``workeroutput``
    when the worker goes down (plugin/xdist.py)."""
    output = getattr(config, "workeroutput", None)
    if isinstance(output, dict):
        output[key] = value
