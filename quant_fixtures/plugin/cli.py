"""The command line of the suite: where the config and outputs are, what is selected, and the
checks every option gets before anything loads (a problem is a usage error, exit 4, one line)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from quant_fixtures.config import DEFAULT_CONFIG_PATH, SuiteConfig
from quant_fixtures.variants import VARIANTS

CONFIG_KEY = pytest.StashKey[SuiteConfig]()


def split_keys(value: str | None, valid: list[str], what: str) -> list[str] | None:
    if value is None:
        return None
    keys = [v.strip() for v in value.split(",") if v.strip()]
    unknown = [k for k in keys if k not in valid]
    if unknown or not keys:
        raise pytest.UsageError(f"unknown {what} {', '.join(unknown) or repr(value)}; valid: {', '.join(valid)}")
    return keys


def suite_config_path(config: pytest.Config) -> Path | None:
    """--suite-config (from the invocation directory), else quant_suite.toml in the rootdir, else
    the repository's; None when there is none (the package is installed for another project: its
    pytest runs must not break)."""
    given = config.getoption("--suite-config")
    if given:
        return Path(config.invocation_params.dir) / Path(given).expanduser()
    for candidate in (config.rootpath / "quant_suite.toml", DEFAULT_CONFIG_PATH):
        if candidate.is_file():
            return candidate
    return None


def suite_of(config: pytest.Config) -> SuiteConfig:
    """The loaded suite config; a usage error where a test needs it and there is none."""
    if CONFIG_KEY not in config.stash:
        raise pytest.UsageError("no suite configuration: pass --suite-config PATH or put quant_suite.toml in the "
                                f"rootdir ({config.rootpath})")
    return config.stash[CONFIG_KEY]


def check_options(config: pytest.Config) -> None:
    """Every option, limit and output location, before anything loads (exit 4, one line)."""
    from quant_fixtures.session.preflight import PreflightError, check_limits, check_output_dirs

    suite = suite_of(config)
    split_keys(config.getoption("--models"), list(suite.models), "model")
    split_keys(config.getoption("--variants"), list(VARIANTS), "variant")
    prompt_suite_options(config)
    budget = config.getoption("--ppl-max-tokens")
    if budget is not None and budget != "all" and not (budget.isdigit() and int(budget) > 0):
        raise pytest.UsageError(f"--ppl-max-tokens: expected a positive integer or 'all', got {budget!r}")
    for name in ("--ctx", "--ppl-stride", "--batch-size", "--max-new-tokens", "--top-k", "--gen-batch-size"):
        value = config.getoption(name)
        if value is not None and value < 1:
            raise pytest.UsageError(f"{name}: expected a positive integer, got {value}")
    if config.getoption("--exact-kl-max-mb") < 0:
        raise pytest.UsageError(f"--exact-kl-max-mb: expected 0 or more, got {config.getoption('--exact-kl-max-mb')}")
    try:  # budgets against each model's window: in preflight_models, once its config is read
        check_limits(suite, selected_pairs(config))
        check_output_dirs(output_dirs(config))
    except PreflightError as exc:
        raise pytest.UsageError(str(exc)) from None


def ppl_budget(config: pytest.Config) -> int | None:
    """The perplexity token budget: None for the whole split."""
    from quant_fixtures.plugin.xdist import device_for

    budget = config.getoption("--ppl-max-tokens")
    if budget is None:
        on_cuda = device_for(config).startswith("cuda")
        return None if on_cuda else suite_of(config).defaults.cpu_ppl_max_tokens
    return None if budget == "all" else int(budget)


def output_dirs(config: pytest.Config) -> dict[str, Path]:
    """Where results, baselines and caches go. Defaults live under the rootdir (the project's);
    a path the user gives is taken, like any command-line path, from the invocation directory.
    xdist workers receive the controller's resolved paths."""
    from quant_fixtures.plugin.xdist import PATHS_KEY, is_worker

    if is_worker(config):
        return {k: Path(v) for k, v in config.workerinput[PATHS_KEY].items()}
    here = Path(config.invocation_params.dir)

    def given(option: str, default: Path) -> Path:
        value = config.getoption(option)
        return default if value is None else here / Path(value).expanduser()

    cache = config.getoption("--cache-dir") or os.environ.get("QUANT_FIXTURES_CACHE")
    return {"--results-dir": given("--results-dir", config.rootpath / "results"),
            "--baselines-dir": given("--baselines-dir", config.rootpath / "baselines"),
            "--cache-dir": here / Path(cache).expanduser() if cache else Path("~/.cache/quant_fixtures").expanduser()}


def terminate_as_interrupt(config: pytest.Config) -> None:
    """SIGTERM (a CI job cancelled, a container stopped) ends the run like Ctrl-C: pytest reports
    it as interrupted (exit 2) and every writer removes its temporary file on the way out."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        return

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, interrupt)
    config.add_cleanup(lambda: signal.signal(signal.SIGTERM, previous))


def prompt_suite_options(config: pytest.Config) -> tuple[Path, tuple[str, ...] | None]:
    """The prompt file and category filter, validated up front so a bad file is a usage error."""
    from quant_fixtures.inputs.prompts import DEFAULT_SUITE, PromptSuiteError, load_prompt_suite

    given = config.getoption("--prompts")
    path = (Path(config.invocation_params.dir) / Path(given).expanduser() if given else DEFAULT_SUITE).resolve()
    raw = config.getoption("--categories")
    cats = [c.strip() for c in raw.split(",") if c.strip()] if raw is not None else None
    if cats is not None and not cats:
        raise pytest.UsageError(f"--categories: no category given in {raw!r}")
    try:
        load_prompt_suite(path, cats)  # a filter naming a category the file lacks is an error there
    except PromptSuiteError as exc:
        raise pytest.UsageError(str(exc)) from None
    return path, tuple(cats) if cats else None


def selected_pairs(config: pytest.Config) -> list[tuple[str, str]]:
    suite = suite_of(config)
    models = split_keys(config.getoption("--models"), list(suite.models), "model") or list(suite.models)
    variants = split_keys(config.getoption("--variants"), list(VARIANTS), "variant") or list(VARIANTS)
    variants = [v for v in VARIANTS if v in variants]  # registry order: the baseline first
    return [(m, v) for m in models for v in variants]
