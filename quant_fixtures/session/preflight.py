"""Checks that run before any model loads: options, output locations, limits, stored references.

Every problem is one line naming the option, file or location and what is wrong; the plugin turns
it into a usage error (exit 4), so a typo never costs a whole evaluation.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Collection, Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from quant_fixtures.config import DEFAULT_CONFIG_PATH

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from quant_fixtures.config import SuiteConfig
    from quant_fixtures.inputs.prompts import Prompt
    from quant_fixtures.models.sources import UnusableModelError
    from quant_fixtures.session.orchestrator import EvaluationSession
    from quant_fixtures.settings import PromptProtocol


class PreflightError(ValueError):
    """A run that cannot give a valid result; the message is one line."""


def output_dir_problem(path: Path) -> str | None:
    """Why results/baselines/cache cannot go to ``path``, or None. The directory (or its nearest
    existing parent, where it would be created) must be a directory that really takes a new
    directory and file: os.access says yes to root whatever the file system says (a read-only
    mount, /proc), so a probe is made there and removed; the path itself is not created."""
    if path.exists() and not path.is_dir():
        return "exists and is not a directory"
    existing = path
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        return f"cannot be created: {existing} is a file"
    problem = _write_problem(existing, path.relative_to(existing))
    if problem is None:
        return None
    return f"is not writable ({problem})" if path == existing else f"cannot be created in {existing} ({problem})"


def _write_problem(existing: Path, missing: Path) -> str | None:
    """Why a new directory named ``missing`` (the part of the path still to create) with a file in
    it cannot be made in ``existing``, or None. Made under a probe directory of a unique name, so
    concurrent runs (xdist workers) never see each other's, and removed whole."""
    try:
        probe = Path(tempfile.mkdtemp(prefix=".quant-fixtures-probe-", dir=existing))
    except OSError as exc:
        return exc.strerror or str(exc)
    try:
        target = probe / missing
        target.mkdir(parents=True, exist_ok=True)
        (target / "probe").write_bytes(b"")
    except OSError as exc:
        return exc.strerror or str(exc)
    finally:
        shutil.rmtree(probe, ignore_errors=True)
    return None


def check_output_dirs(dirs: dict[str, Path]) -> None:
    for option, path in dirs.items():
        problem = output_dir_problem(path)
        if problem:
            raise PreflightError(f"{option} {path}: {problem}")


def check_budgets(
    ctx: int, ppl_max_tokens: int | None, stride: int | None, model: str = "", requested_ctx: int | None = None
) -> None:
    """The perplexity pass must score at least one window, and a stride must not skip tokens.
    ``ctx`` is the window a model gets: --ctx, capped at the model's maximum."""
    window = (
        f"--ctx {ctx}"
        if requested_ctx in (None, ctx)
        else (f"{ctx} tokens (--ctx {requested_ctx}, capped at {model}'s maximum)")
    )
    if ppl_max_tokens is not None and ppl_max_tokens < ctx:
        raise PreflightError(
            f"--ppl-max-tokens {ppl_max_tokens} is less than one window of {window}: the "
            f"perplexity pass would score nothing; give at least {ctx} or a smaller --ctx"
        )
    if stride is not None and stride > ctx:
        raise PreflightError(
            f"--ppl-stride {stride} is larger than the window of {window}: tokens between windows would never be scored"
        )


def check_limits(suite: SuiteConfig, pairs: Iterable[tuple[str, str]]) -> None:
    """Every selected quantized (model, variant key) has each limit configured or explicitly opted out."""
    for model, variant_key in pairs:
        if suite.variant(model, variant_key).is_baseline:
            continue
        message = suite.missing_limits_message(model, variant_key)
        if message:
            raise PreflightError(message)


def check_flip_gates(
    suite: SuiteConfig, pairs: Iterable[tuple[str, str]], prompts: list[Prompt], protocol: PromptProtocol
) -> None:
    """A flip-rate gate needs prompts with a checkable answer: without one it has no flip to count
    and can never be decided. Refused here rather than run to an UNDECIDED that no budget could
    decide, and that ``undecided = "pass"`` would let pass."""
    from quant_fixtures.metrics.registry import METRICS

    limit = METRICS["flip_rate"].limit_name
    if protocol.skip or any(p.answer is not None for p in prompts):
        return
    gated = [f"{model} {key}" for model, key in pairs if limit in suite.gates_for(model, key)]
    if not gated:
        return
    which = f" in categories {', '.join(protocol.categories)}" if protocol.categories else ""
    raise PreflightError(
        f"{limit} ({', '.join(gated)}) cannot be decided: no prompt of {protocol.path}{which} has an 'answer', "
        "so no answer can flip; select categories that have answers (--categories), give prompts an "
        f"'answer', or remove {limit} from those gates in {suite.path}"
    )


def check_models(session: EvaluationSession, models: Iterable[str], given: Collection[str] = ()) -> None:
    """What needs each model's config or stored references, before any model loads: its config
    and weights usable, the budgets against the model's window, the top-k against the vocabulary,
    every prompt against the model's positions, and with --frozen-baselines, that every FP16
    reference is stored; each selected variant of the
    model's own (a checkpoint, a GGUF file) is resolved and its tokenizer checked against the base's.
    A model or checkpoint that cannot be resolved (offline Hub) is left to its tests, which name the
    remedy. ``given``: the models --model added (not a TOML entry), for the remedy of pickle weights."""
    from quant_fixtures.models.gguf import GGUFSourceError
    from quant_fixtures.models.sources import ModelUnavailableError, UnusableModelError
    from quant_fixtures.models.tokenizer_match import TokenizerMismatchError

    s = session.settings
    for model in models:
        try:
            model_config = session.models.model_config(model)
            session.models.check_weights(model)
        except UnusableModelError as exc:
            raise PreflightError(unusable_message(exc, session.suite, model, None, model in given)) from None
        except ModelUnavailableError:
            continue
        if s.perplexity.protocol != "lm-eval":  # whole documents: a budget smaller than a window is fine
            check_budgets(
                session.models.ctx(model), s.perplexity.max_tokens, s.perplexity.stride, model, s.perplexity.ctx
            )
        vocab = getattr(model_config, "vocab_size", None)
        if not s.prompts.skip and vocab and s.prompts.top_k > vocab:
            raise PreflightError(f"--top-k {s.prompts.top_k} is larger than the vocabulary of {model} ({vocab} tokens)")
        if s.gates.frozen_baselines:
            refs, reason = session.references.load(session.models.under_test(model))
            if refs is None:
                raise PreflightError(f"--frozen-baselines: {model}: {reason}")
        for key in [k for k in s.variants if k in session.suite.models[model].variants]:
            try:
                session.models.weights(model, session.suite.variant(model, key))
            except UnusableModelError as exc:
                raise PreflightError(unusable_message(exc, session.suite, model, key, False)) from None
            except ModelUnavailableError:
                continue
            except (GGUFSourceError, TokenizerMismatchError) as exc:
                raise PreflightError(str(exc)) from None
        if not s.prompts.skip:
            check_prompts_fit(session, model)
        if not s.long_context.skip:
            check_probes(session, model)


def _tokenizer(session: EvaluationSession, model: str) -> PreTrainedTokenizerBase:
    try:
        return session.models.tokenizer(model)
    except (OSError, ValueError) as exc:  # a folder without tokenizer files, or one transformers cannot read
        first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise PreflightError(f"model {model!r}: its tokenizer cannot be loaded: {first_line}") from None


def check_probes(session: EvaluationSession, model: str) -> None:
    """The long-context stage's retrieval probes, built here as the stage builds them: a probe length
    too short for the model's tokenizer is refused now, not after the FP16 pass."""
    from quant_fixtures.inputs.retrieval_probe import build_probes
    from quant_fixtures.session.long_plan import PROBE_SEED, long_shape

    protocol = session.settings.long_context
    shape = long_shape(protocol, session.models.max_length(model))
    tokenizer = _tokenizer(session, model)
    try:
        build_probes(tokenizer, shape.probe_lengths, protocol.probe_depths, protocol.probe_keys, PROBE_SEED)
    except ValueError as exc:
        raise PreflightError(f"--probe-lengths: model {model!r}: {exc}") from None


def check_prompts_fit(session: EvaluationSession, model: str) -> None:
    """Each selected prompt, as ``model`` reads it, plus its new tokens fits the model's positions
    (session/prompt_fit.py); a model whose config states no maximum is not checked."""
    from quant_fixtures.compute.generation import prompt_token_ids
    from quant_fixtures.session.prompt_fit import longest_token_chars, too_long, too_long_message

    limit = session.models.max_length(model)
    if limit is None:
        return
    q, tokenizer = session.settings.prompts, _tokenizer(session, model)
    found = too_long(
        session.prompt_suite.prompts(),
        limit,
        q.max_new_tokens_cap,
        lambda text: len(prompt_token_ids(tokenizer, text, q.use_chat_template)),
        lambda: longest_token_chars(tokenizer),
    )
    if found:
        templated = q.use_chat_template and bool(getattr(tokenizer, "chat_template", None))
        raise PreflightError(too_long_message(found, model, limit, str(q.path), templated))


def unusable_message(
    exc: UnusableModelError, suite: SuiteConfig, model: str, variant_key: str | None, from_command_line: bool
) -> str:
    """The error's line; for pickle weights, with the remedy of the route the model came by."""
    from quant_fixtures.models.sources import PickleWeightsRefused

    if not isinstance(exc, PickleWeightsRefused):
        return str(exc)
    if from_command_line:
        return f"{exc.problem}; {_command_line_pickle_remedy(suite, model)}"
    table = f"[models.{model}]" if variant_key is None else f"[models.{model}.variants.{variant_key}]"
    return (
        f"{exc.problem}; set allow_pickle = true in {table} of {suite.path} (only for a source you trust), "
        "or convert them to safetensors"
    )


def _command_line_pickle_remedy(suite: SuiteConfig, model: str) -> str:
    """--model has no allow_pickle: only a suite TOML's entry opts in (and --model of the same source
    selects that entry). The shipped config lives in the package: the user's own TOML, then."""
    spec = suite.models[model]
    source = f"hub_id = {json.dumps(spec.hub_id)}" if spec.hub_id else f"path = {json.dumps(spec.path)}"
    if spec.revision:
        source += f", revision = {json.dumps(spec.revision)}"
    toml = "a suite TOML of your own (--suite-config=FILE)" if suite.path == DEFAULT_CONFIG_PATH else suite.path
    return (
        "--model cannot allow them: convert them to safetensors, or (only for a source you trust) add "
        f"[models.{model}] with {source} and allow_pickle = true to {toml}"
    )


def check_corpus_source(session: EvaluationSession) -> None:
    """--dataset-source hub: the Hub is reachable (one short request, where `datasets` would retry
    for minutes) and the split is loaded now, so that a failure is one line before any model loads."""
    from quant_fixtures.inputs.wikitext import DatasetError, hub_problem

    if session.settings.perplexity.dataset_source != "hub":
        return
    problem = hub_problem()
    if problem:
        raise PreflightError(problem)
    try:
        session.corpus_text.text()  # kept by the session: the passes do not load it again
    except DatasetError as exc:
        raise PreflightError(str(exc)) from None
