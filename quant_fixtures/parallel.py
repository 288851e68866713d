"""pytest-xdist support: one run id shared by all workers, a device per worker, file locks.

Each worker evaluates whole (model, variant) groups (`--dist loadgroup`) and writes its own
evaluation documents; the controller assembles the comparison files and the report from every
document carrying this run's id.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

RUN_ID_KEY = "quant_fixtures_run_id"


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


def file_lock(path: Path, timeout: float = -1) -> Any:
    """An inter-process lock file (filelock); waits until the holder releases it."""
    from filelock import FileLock

    path.parent.mkdir(parents=True, exist_ok=True)
    return FileLock(str(path), timeout=timeout)


class XdistHooks:
    """Registered only when pytest-xdist is active: hands the run id to every worker."""

    def __init__(self, config: Any) -> None:
        self.config = config

    def pytest_configure_node(self, node: Any) -> None:
        node.workerinput[RUN_ID_KEY] = run_id(self.config)
