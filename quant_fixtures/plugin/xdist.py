"""pytest-xdist support: one run id shared by all workers, a device per worker, file locks.

Each worker evaluates whole (model, variant) groups (`--dist loadgroup`) and writes its own
evaluation documents; the controller assembles the comparison files and the report from every
document carrying this run's id.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

import pytest

from quant_fixtures.plugin.workers import NO_GPU_OUTPUT, PATHS_KEY, RUN_ID_KEY, run_id

if TYPE_CHECKING:
    from quant_fixtures.config import ModelSpec
    from quant_fixtures.plugin.scheduling import Pair, PairAwareScheduling


class ConfiguredNode(Protocol):
    """What the controller sets on xdist's WorkerController before it starts (xdist ships no type
    information): the dict the worker finds as ``config.workerinput``."""

    workerinput: dict[str, object]


def local_weight_bytes(spec: ModelSpec) -> int:
    """Bytes of a local model's weight files (0 for Hub and packaged models, or a directory without
    weights: their order is the config's)."""
    if not spec.path:
        return 0
    from pathlib import Path

    from quant_fixtures.models.sources import ModelUnavailableError, weight_bytes

    try:
        return weight_bytes(Path(spec.path).expanduser(), spec.allow_pickle, f"model {spec.key!r}")
    except ModelUnavailableError:
        return 0


class XdistHooks:
    """Registered only when pytest-xdist is active: hands the run id and output directories to
    every worker, and runs the up-front model checks on the controller."""

    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        self.checked = False

    def pytest_configure_node(self, node: ConfiguredNode) -> None:
        from quant_fixtures.plugin.cli import path_options, settings_of

        node.workerinput[RUN_ID_KEY] = run_id(self.config)
        node.workerinput[PATHS_KEY] = {k: str(v) for k, v in path_options(settings_of(self.config).paths).items()}

    @pytest.hookimpl(tryfirst=True)
    def pytest_xdist_make_scheduler(self, config: pytest.Config, log: object) -> PairAwareScheduling | None:
        """`--dist loadgroup` in a suite run: the pair-aware order of plugin/scheduling.py."""
        if config.getvalue("dist") != "loadgroup":
            return None
        from quant_fixtures.plugin.cli import CONFIG_KEY
        from quant_fixtures.plugin.scheduling import PairAwareScheduling, pair_of_group
        from quant_fixtures.variants import BASELINE_VARIANT

        suite = config.stash[CONFIG_KEY]
        models, variant_keys = list(suite.models), suite.variant_keys()
        sizes = {m: local_weight_bytes(suite.models[m]) for m in models}

        def pair(group: str) -> Pair | None:
            return pair_of_group(group, models, variant_keys)

        def size(group: str) -> float:
            p = pair(group)
            return float(sizes.get(p[0], 0)) if p else 0.0

        return PairAwareScheduling(
            config, log, pair=pair, baseline=BASELINE_VARIANT, size=size, models=frozenset(models)
        )

    def pytest_testnodedown(self, node: object, error: object) -> None:
        """A worker that deselected everything for want of a GPU says why (plugin/hooks.py)."""
        from quant_fixtures.plugin.cli import NO_GPU_KEY

        output = getattr(node, "workeroutput", None)
        if isinstance(output, dict) and isinstance(output.get(NO_GPU_OUTPUT), str):
            self.config.stash[NO_GPU_KEY] = output[NO_GPU_OUTPUT]

    def pytest_xdist_node_collection_finished(self, node: object, ids: list[str]) -> None:
        """The controller's up-front model checks, once, for the models the workers collected."""
        from quant_fixtures.plugin.cli import CONFIG_KEY, selected_pairs
        from quant_fixtures.plugin.state import preflight_models

        if self.checked:
            return
        self.checked = True
        import torch

        suite = self.config.stash[CONFIG_KEY]
        models = {
            m
            for m, _ in selected_pairs(self.config)
            if any(f"[{m}-" in i or f"[{m}]" in i for i in ids)
            and (torch.cuda.is_available() or not suite.models[m].requires_gpu)
        }
        from quant_fixtures.plugin.collection_checks import check_snapshot_files

        check_snapshot_files({self.config.rootpath / i.split("::")[0] for i in ids})
        preflight_models(self.config, models)
