"""The plugin (quant_fixtures.plugin) is a pytest11 entry point of the installed package
(pyproject.toml), so its options work from any directory. This file only keeps `pytest -m gpu`'s
start-up short in this repository, and keeps that shortcut safe."""

from __future__ import annotations

from pathlib import Path

import pytest

GPU_TEST_FOLDERS = ("gpu", "harm")  # the folders of tests/ that hold every `gpu` test


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    """`pytest -m gpu` with no paths does not import the other folders of tests/: collecting them for
    nothing took 10.7 of a GPU run's start-up seconds on an H100 host (17.7 s collecting every test,
    7.0 s these folders; 2026-12-07). Paths given on the command line are collected as asked."""
    if config.option.markexpr != "gpu" or config.args_source != pytest.Config.ArgsSource.TESTPATHS:
        return None
    if collection_path.parent == config.rootpath / "tests" and collection_path.is_dir():
        return collection_path.name not in GPU_TEST_FOLDERS or None
    return None


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Every collection that sees a `gpu` test outside GPU_TEST_FOLDERS fails (plain `pytest`, CI's
    run, collects them all before deselecting), so the shortcut above never drops one silently."""
    tests = config.rootpath / "tests"
    misplaced = [
        item.nodeid
        for item in items
        if item.get_closest_marker("gpu")
        and item.path.is_relative_to(tests)
        and item.path.relative_to(tests).parts[0] not in GPU_TEST_FOLDERS
    ]
    if misplaced:
        raise pytest.UsageError(
            f"{len(misplaced)} test(s) marked gpu outside tests/{{{','.join(GPU_TEST_FOLDERS)}}}, which "
            f"`pytest -m gpu` does not collect (conftest.py): {', '.join(misplaced[:5])}. Move them there."
        )
