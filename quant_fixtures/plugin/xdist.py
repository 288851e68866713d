"""pytest-xdist support: one run id shared by all workers, a device per worker, file locks.

Each worker evaluates whole (model, variant) groups (`--dist loadgroup`) and writes its own
evaluation documents; the controller assembles the comparison files and the report from every
document carrying this run's id.
"""

from __future__ import annotations

from typing import Any

from quant_fixtures.plugin.workers import PATHS_KEY, RUN_ID_KEY, run_id


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
