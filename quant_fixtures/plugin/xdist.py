"""pytest-xdist support: one run id shared by all workers, a device per worker, file locks.

Each worker evaluates whole (model, variant) groups (`--dist loadgroup`) and writes its own
evaluation documents; the controller assembles the comparison files and the report from every
document carrying this run's id.
"""

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


class XdistHooks:
    """Registered only when pytest-xdist is active: hands the run id and output directories to
    every worker, and runs the up-front model checks on the controller."""

    def __init__(self, config: Any) -> None:
        self.config = config
        self.checked = False

    def pytest_configure_node(self, node: Any) -> None:
        from quant_fixtures.plugin.cli import output_dirs

        node.workerinput[RUN_ID_KEY] = run_id(self.config)
        node.workerinput[PATHS_KEY] = {k: str(v) for k, v in output_dirs(self.config).items()}

    def pytest_xdist_node_collection_finished(self, node: Any, ids: list[str]) -> None:
        """The controller's up-front model checks, once, for the models the workers collected."""
        from quant_fixtures.plugin.cli import CONFIG_KEY, selected_pairs
        from quant_fixtures.plugin.state import preflight_models

        if self.checked:
            return
        self.checked = True
        import torch

        suite = self.config.stash[CONFIG_KEY]
        models = {m for m, _ in selected_pairs(self.config)
                  if any(f"[{m}-" in i or f"[{m}]" in i for i in ids)
                  and (torch.cuda.is_available() or not suite.models[m].requires_gpu)}
        preflight_models(self.config, models)
