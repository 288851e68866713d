"""The run's evaluation session, kept in ``config.stash``, and the checks that need it before any
model loads."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from quant_fixtures.plugin.cli import CONFIG_KEY, PROMPTS_KEY, settings_of

if TYPE_CHECKING:
    from quant_fixtures.session.orchestrator import EvaluationSession

SESSION_KEY = pytest.StashKey["EvaluationSession"]()


def session_of(config: pytest.Config) -> EvaluationSession:
    """The run's evaluation session, built on first use and kept in config.stash."""
    if SESSION_KEY not in config.stash:
        from quant_fixtures.plugin.progress import terminal_progress
        from quant_fixtures.session.orchestrator import EvaluationSession

        session = EvaluationSession(config.stash[CONFIG_KEY], settings_of(config), terminal_progress(config))
        session.prompt_suite.use(config.stash.get(PROMPTS_KEY, None))  # validated at start-up: not parsed again
        config.stash[SESSION_KEY] = session
    return config.stash[SESSION_KEY]


def preflight_models(config: pytest.Config, models: set[str]) -> None:
    """Checks that need a model's config or its stored references, or the corpus from the Hub,
    before any model loads."""
    from quant_fixtures.plugin.model_option import given_models
    from quant_fixtures.session.preflight import PreflightError, check_corpus_source, check_models

    if not models:
        return
    from_command_line = {g.key for g in given_models(config) if not g.configured}
    try:
        check_corpus_source(session_of(config))
        check_models(session_of(config), sorted(models), from_command_line)
    except PreflightError as exc:
        raise pytest.UsageError(str(exc)) from None
