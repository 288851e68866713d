"""``--model org/name``: a model for the run without writing TOML (quant_fixtures.model_ids does the
work; here it meets pytest: the option's values, the usage error, the run's selection)."""

from __future__ import annotations

from pathlib import Path

import pytest

from quant_fixtures.config import ConfigError, SuiteConfig
from quant_fixtures.model_ids import GivenModel, add_given_models

GIVEN_KEY = pytest.StashKey[list]()


def model_values(config: pytest.Config) -> list[str]:
    return config.getoption("--model") or []


def with_given_models(config: pytest.Config, suite: SuiteConfig) -> SuiteConfig:
    """The suite with each --model added (or its configured entry selected); kept for the selection."""
    try:
        suite, given = add_given_models(suite, model_values(config), Path(config.invocation_params.dir))
    except ConfigError as exc:
        raise pytest.UsageError(str(exc)) from None
    config.stash[GIVEN_KEY] = given
    return suite


def given_models(config: pytest.Config) -> list[GivenModel]:
    return config.stash.get(GIVEN_KEY, [])


def given_keys(config: pytest.Config) -> list[str]:
    """The model keys --model selected, in the order given (empty without --model)."""
    return [g.key for g in given_models(config)]
