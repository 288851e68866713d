"""Checks on what a run collected, before anything runs: selected GPU tests on a machine without a
GPU, and the JSON snapshots of the collected test modules."""

from __future__ import annotations

from pathlib import Path

import pytest


def handle_gpu_items_without_gpu(config: pytest.Config, items: list[pytest.Item], suite_project: bool) -> bool:
    """Selected GPU tests where torch sees no GPU: skipped with --allow-no-gpu (or outside a suite
    project, whose `gpu` marker is not ours to enforce); otherwise the run fails up front, since
    it would check nothing. An xdist worker cannot end the run: it deselects everything and hands
    the reason to the controller (plugin/xdist.py). False when nothing is left to run."""
    runnable = [i for i in items if i.get_closest_marker("gpu") and not i.get_closest_marker("skip")]
    if not runnable or config.option.collectonly:  # listing GPU tests checks nothing either way
        return True
    import torch

    if torch.cuda.is_available():
        return True
    if not suite_project or config.getoption("--allow-no-gpu"):
        skip = pytest.mark.skip(reason="needs CUDA: no GPU visible to torch (--allow-no-gpu)")
        for item in runnable:
            item.add_marker(skip)
        return True
    from quant_fixtures.plugin.workers import NO_GPU_OUTPUT, hand_to_controller, is_worker

    message = no_gpu_message(runnable, torch.__version__, torch.version.cuda)
    if not is_worker(config):
        raise pytest.UsageError(message)
    hand_to_controller(config, NO_GPU_OUTPUT, message)
    config.hook.pytest_deselected(items=list(items))
    items[:] = []
    return False


def no_gpu_message(items: list[pytest.Item], torch_version: str, cuda: str | None) -> str:
    """One line: how many selected tests need a GPU, which modules, and what to do."""
    modules = sorted({i.nodeid.split("::")[0] for i in items})
    build = "a CPU-only build" if cuda is None else f"built for CUDA {cuda}"
    return (
        f"{len(items)} selected test(s) need a GPU ({', '.join(modules[:3])}{', ...' if len(modules) > 3 else ''}) "
        f"but torch {torch_version} ({build}) sees none (torch.cuda.is_available() is False): this run would "
        "check nothing. Run it where a GPU is visible (check CUDA_VISIBLE_DEVICES and the driver), or pass "
        "--allow-no-gpu to skip them"
    )


def check_snapshot_files(test_modules: set[Path]) -> None:
    from quant_fixtures.plugin.snapshot_extension import unreadable_snapshot

    problem = unreadable_snapshot(test_modules)
    if problem:
        raise pytest.UsageError(problem)
