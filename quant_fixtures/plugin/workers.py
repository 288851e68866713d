"""Which process this is under pytest-xdist: the run id all workers share, each worker's index
and device, and the controller's resolved paths handed to workers."""

from __future__ import annotations

import uuid
from typing import Any

RUN_ID_KEY = "quant_fixtures_run_id"
PATHS_KEY = "quant_fixtures_paths"  # the controller's resolved output directories


def is_worker(config: Any) -> bool:
    return hasattr(config, "workerinput")


def run_id(config: Any) -> str:
    """The controller's run id; workers receive it through xdist's workerinput."""
    if is_worker(config):
        return config.workerinput[RUN_ID_KEY]
    if not hasattr(config, "_quant_run_id"):
        config._quant_run_id = uuid.uuid4().hex
    return config._quant_run_id


def worker_index(config: Any) -> int:
    """0 for a serial run or the controller, N for xdist worker gwN."""
    if not is_worker(config):
        return 0
    return int(config.workerinput.get("workerid", "gw0").lstrip("gw") or 0)


def device_for(config: Any) -> str:
    """CUDA when present (worker i uses GPU i mod count), else the CPU."""
    import torch

    if not torch.cuda.is_available():
        return "cpu"
    return f"cuda:{worker_index(config) % torch.cuda.device_count()}"
