"""The command line of the suite: where the config and outputs are, what is selected, and the
checks every option gets before anything loads (a problem is a usage error, exit 4, one line)."""

from __future__ import annotations

import os
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING

import pytest

from quant_fixtures.config import DEFAULT_CONFIG_PATH, SuiteConfig
from quant_fixtures.plugin.long_context_options import long_context_settings
from quant_fixtures.settings import (
    GatePolicy,
    LoadSettings,
    Paths,
    PerplexityProtocol,
    PromptProtocol,
    RunSettings,
    device_defaults,
)

if TYPE_CHECKING:
    from quant_fixtures.inputs.prompts import Prompt

CONFIG_KEY = pytest.StashKey[SuiteConfig]()
SETTINGS_KEY = pytest.StashKey[RunSettings]()
PROMPTS_KEY: pytest.StashKey[list[Prompt]] = pytest.StashKey()  # the prompt suite as validated at start-up
PAIRS_KEY: pytest.StashKey[list[tuple[str, str]]] = pytest.StashKey()  # what --models and --variants select
NO_GPU_KEY: pytest.StashKey[str] = pytest.StashKey()  # xdist controller: why the workers ran nothing
SHIPPED = "default"  # --suite-config default: the configuration shipped in the package


def split_keys(value: str | None, valid: list[str], what: str) -> list[str] | None:
    if value is None:
        return None
    keys = [v.strip() for v in value.split(",") if v.strip()]
    unknown = [k for k in keys if k not in valid]
    if unknown or not keys:
        raise pytest.UsageError(f"unknown {what} {', '.join(unknown) or repr(value)}; valid: {', '.join(valid)}")
    return keys


def suite_config_path(config: pytest.Config) -> Path | None:
    """--suite-config (a path from the invocation directory, or ``default`` for the configuration
    shipped in the package), else quant_suite.toml in the rootdir, else the shipped one when --model
    is given; None otherwise (the package is installed for another project: its pytest runs must not
    change)."""
    given = config.getoption("--suite-config")
    if given == SHIPPED:
        return DEFAULT_CONFIG_PATH
    if given:
        path = Path(config.invocation_params.dir) / Path(given).expanduser()
        if path.is_dir():
            inside = " (it holds quant_suite.toml: give that)" if (path / "quant_suite.toml").is_file() else ""
            raise pytest.UsageError(f"--suite-config {given}: {path} is a directory, not a suite TOML file{inside}")
        return path
    candidate = config.rootpath / "quant_suite.toml"
    if candidate.is_file():
        return candidate
    # --model asks for the suite by name: without a config of the project's, the shipped defaults and gates
    return DEFAULT_CONFIG_PATH if config.getoption("--model") else None


def suite_of(config: pytest.Config) -> SuiteConfig:
    """The loaded suite config; a usage error where a test needs it and there is none."""
    if CONFIG_KEY not in config.stash:
        raise pytest.UsageError(
            "no suite configuration: pass --suite-config PATH (or --suite-config default for the "
            "one shipped with quant_fixtures) or put quant_suite.toml in the rootdir "
            f"({config.rootpath}), or give --model org/name"
        )
    return config.stash[CONFIG_KEY]


def ppl_protocol(config: pytest.Config, stride: int | None) -> str:
    """--ppl-protocol, checked against --ppl-stride (``stride``, as parsed): a stride means the
    strided protocol and needs it."""
    from quant_fixtures.inputs.corpus_protocols import PROTOCOLS

    name: str | None = config.getoption("--ppl-protocol")
    if name is None:
        return "strided" if stride else "nonoverlapping"
    if name not in PROTOCOLS:
        raise pytest.UsageError(f"--ppl-protocol: unknown protocol {name!r}; valid: {', '.join(PROTOCOLS)}")
    if name == "strided" and not stride:
        raise pytest.UsageError("--ppl-protocol strided needs --ppl-stride N (the tokens between window starts)")
    if name != "strided" and stride:
        raise pytest.UsageError(f"--ppl-stride belongs to the strided protocol, not --ppl-protocol {name}")
    return name


def check_ctx(ctx: int | None, protocol: str) -> None:
    """--ctx against the smallest window the protocol can score with (before any model loads)."""
    from quant_fixtures.inputs.corpus_protocols import MIN_CTX

    if ctx is not None and ctx < MIN_CTX[protocol]:
        raise pytest.UsageError(
            f"--ctx {ctx}: the {protocol} protocol needs at least {MIN_CTX[protocol]} tokens "
            "per window (one of context before the first scored token"
            + (", and llama.cpp scores only a chunk's second half)" if protocol == "llama.cpp" else ")")
        )


def positive_int(config: pytest.Config, name: str) -> int | None:
    """An integer option (argparse made it an int), None when not given; a usage error below 1."""
    value: int | None = config.getoption(name)
    if value is not None and value < 1:
        raise pytest.UsageError(f"{name}: expected a positive integer, got {value}")
    return value


def ppl_max_tokens(config: pytest.Config, default: int | None) -> int | None:
    """--ppl-max-tokens: a positive integer, 'all' (None: the whole split), or ``default`` when not given."""
    budget: str | None = config.getoption("--ppl-max-tokens")
    if budget is None:
        return default
    if budget == "all":
        return None
    if not (budget.isdigit() and int(budget) > 0):
        raise pytest.UsageError(f"--ppl-max-tokens: expected a positive integer or 'all', got {budget!r}")
    return int(budget)


def check_options(config: pytest.Config) -> None:
    """Every option, limit and output location, before anything loads (exit 4, one line). The
    options are parsed, each once, into the run's settings (build_settings); what needs the
    configuration or the file system besides is checked here."""
    from quant_fixtures.session.preflight import PreflightError, check_flip_gates, check_limits, check_output_dirs

    settings = settings_of(config)
    try:  # budgets and prompt lengths against each model: in preflight_models, once its config is read
        check_limits(suite_of(config), selected_pairs(config))
        check_flip_gates(suite_of(config), selected_pairs(config), config.stash[PROMPTS_KEY], settings.prompts)
        check_output_dirs(path_options(settings.paths))
    except PreflightError as exc:
        raise pytest.UsageError(str(exc)) from None


MAX_GPU_MEMORY_ENV = "QUANT_MAX_GPU_MEMORY"


def max_gpu_memory(config: pytest.Config) -> int | None:
    """Bytes from --max-gpu-memory, else from $QUANT_MAX_GPU_MEMORY; a usage error naming the
    source when it is not a size (an unreadable cap must not silently mean "no cap")."""
    from quant_fixtures.compute.memory import parse_size

    given: str | None = config.getoption("--max-gpu-memory")
    source = "--max-gpu-memory"
    if given is None and os.environ.get(MAX_GPU_MEMORY_ENV) is not None:
        given, source = os.environ[MAX_GPU_MEMORY_ENV], f"${MAX_GPU_MEMORY_ENV}"
    if given is None:
        return None
    try:
        return parse_size(given, source)
    except ValueError as exc:
        raise pytest.UsageError(str(exc)) from None


def path_options(paths: Paths) -> dict[str, Path]:
    """The output directories by the option that sets each (as messages and xdist workers name them)."""
    return {"--results-dir": paths.results_dir, "--baselines-dir": paths.baselines_dir, "--cache-dir": paths.cache_dir}


def output_dirs(config: pytest.Config) -> Paths:
    """Where results, baselines and caches go. Defaults live under the rootdir (the project's);
    a path the user gives is taken, like any command-line path, from the invocation directory.
    xdist workers receive the controller's resolved paths (path_options)."""
    from quant_fixtures.plugin.workers import PATHS_KEY, worker_input

    handed = worker_input(config)
    if handed is not None:
        dirs = handed[PATHS_KEY]
        if not isinstance(dirs, dict):
            raise TypeError(f"xdist workerinput {PATHS_KEY}: expected the controller's paths, got {dirs!r}")
        return Paths(
            results_dir=Path(dirs["--results-dir"]),
            baselines_dir=Path(dirs["--baselines-dir"]),
            cache_dir=Path(dirs["--cache-dir"]),
        )
    here = Path(config.invocation_params.dir)

    def given(option: str, default: Path) -> Path:
        value: str | None = config.getoption(option)
        return default if value is None else here / Path(value).expanduser()

    cache: str | None = config.getoption("--cache-dir") or os.environ.get("QUANT_FIXTURES_CACHE")
    return Paths(
        results_dir=given("--results-dir", config.rootpath / "results"),
        baselines_dir=given("--baselines-dir", config.rootpath / "baselines"),
        cache_dir=here / Path(cache).expanduser() if cache else Path("~/.cache/quant_fixtures").expanduser(),
    )


def terminate_as_interrupt(config: pytest.Config) -> None:
    """SIGTERM (a CI job cancelled, a container stopped) ends the run like Ctrl-C: pytest reports
    it as interrupted (exit 2) and every writer removes its temporary file on the way out."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        return

    def interrupt(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, interrupt)

    def restore() -> None:
        signal.signal(signal.SIGTERM, previous)

    config.add_cleanup(restore)


def prompt_suite_options(config: pytest.Config) -> tuple[Path, tuple[str, ...] | None]:
    """The prompt file and category filter, validated up front so a bad file is a usage error."""
    from quant_fixtures.inputs.prompts import DEFAULT_SUITE, PromptSuiteError, load_prompt_suite

    given: str | None = config.getoption("--prompts")
    path = (Path(config.invocation_params.dir) / Path(given).expanduser() if given else DEFAULT_SUITE).resolve()
    raw: str | None = config.getoption("--categories")
    categories = [c.strip() for c in raw.split(",") if c.strip()] if raw is not None else None
    if categories is not None and not categories:
        raise pytest.UsageError(f"--categories: no category given in {raw!r}")
    try:  # a filter naming a category the file lacks is an error there
        if PROMPTS_KEY not in config.stash:
            config.stash[PROMPTS_KEY] = load_prompt_suite(path, categories)
    except PromptSuiteError as exc:
        raise pytest.UsageError(str(exc)) from None
    return path, tuple(categories) if categories else None


def selected_models(config: pytest.Config) -> list[str]:
    """--model's models then those --models names; without --model, --models or every configured one."""
    from quant_fixtures.plugin.model_option import given_keys

    suite = suite_of(config)
    named = split_keys(config.getoption("--models"), list(suite.models), "model") or []
    given = given_keys(config)
    if given:
        return list(dict.fromkeys([*given, *named]))
    return named or list(suite.models)


def selected_pairs(config: pytest.Config) -> list[tuple[str, str]]:
    """(model, variant key) pairs of this run, registry order (the baseline first). Without
    --variants each model gets its default variants; with it, each selected model that has the
    variant. --models and --variants are parsed once; the pairs are kept in config.stash."""
    if PAIRS_KEY not in config.stash:
        config.stash[PAIRS_KEY] = _pairs(config)
    pairs = config.stash[PAIRS_KEY]
    return list(pairs)  # a copy: callers may filter theirs


def _pairs(config: pytest.Config) -> list[tuple[str, str]]:
    suite = suite_of(config)
    models = selected_models(config)
    asked = split_keys(config.getoption("--variants"), suite.variant_keys(), "variant")
    if asked is None:
        return [(m, v) for m in models for v in suite.default_variant_keys(m)]
    for key in asked:
        if not any(key in suite.variant_keys(m) for m in models):
            owners = [m for m in suite.models if key in suite.variant_keys(m)]
            raise pytest.UsageError(
                f"--variants {key}: a variant of {', '.join(owners)} only, and --models selects {', '.join(models)}"
            )
    return [(m, v) for m in models for v in suite.variant_keys(m) if v in asked]


def unavailable_reason(config: pytest.Config, model: str, variant_key: str) -> str | None:
    """Why a selected pair cannot run on this machine (its method's package is not installed, or it
    needs another device): the skip reason, naming the install command. Nothing is imported."""
    device_type = settings_of(config).load.device_type
    return suite_of(config).variant(model, variant_key).unavailable_reason(device_type)


def runnable_pairs(config: pytest.Config) -> list[tuple[str, str]]:
    return [(m, v) for m, v in selected_pairs(config) if unavailable_reason(config, m, v) is None]


# The protocols whose window defaults to the config's [defaults].ctx; llama.cpp and lm-eval have
# their own defaults, applied per model (session/corpus_plans.py CorpusPlans.ctx). The --ctx help
# says so (plugin/ctx_option.py).
CONFIG_CTX_PROTOCOLS = ("nonoverlapping", "strided")


def build_settings(config: pytest.Config) -> RunSettings:
    """Every command-line choice, with the config's device-dependent defaults, in one frozen object.
    Each option is parsed here once, in the order below, and a bad value is a usage error naming
    the option and the value."""
    from quant_fixtures.plugin.workers import device_for, is_worker, run_id

    suite, device = suite_of(config), device_for(config)
    defaults = device_defaults(suite.defaults, device)
    option = config.getoption
    pairs = selected_pairs(config)
    prompts_path, categories = prompt_suite_options(config)
    max_tokens = ppl_max_tokens(config, defaults.ppl_max_tokens)
    ctx = positive_int(config, "--ctx")
    stride = positive_int(config, "--ppl-stride")
    batch_size = positive_int(config, "--batch-size")
    max_new_tokens = positive_int(config, "--max-new-tokens")
    top_k = positive_int(config, "--top-k")
    gen_batch_size = positive_int(config, "--gen-batch-size")
    gpu_memory = max_gpu_memory(config)
    long_context = long_context_settings(config, defaults)
    protocol = ppl_protocol(config, stride)
    check_ctx(ctx, protocol)
    return RunSettings(
        models=tuple(sorted({m for m, _ in pairs})),
        variants=tuple(sorted({v for _, v in pairs})),
        paths=output_dirs(config),
        perplexity=PerplexityProtocol(
            protocol=protocol,
            ctx=ctx or (suite.defaults.ctx if protocol in CONFIG_CTX_PROTOCOLS else None),
            max_tokens=max_tokens,
            stride=stride,
            batch_size=batch_size or defaults.batch_size,
            dataset_source=option("--dataset-source"),
        ),
        prompts=PromptProtocol(
            path=prompts_path,
            categories=categories,
            use_chat_template=not option("--no-chat-template"),
            max_new_tokens_cap=max_new_tokens or defaults.max_new_tokens_cap,
            top_k=top_k or suite.defaults.top_k,
            gen_batch_size=gen_batch_size or defaults.gen_batch_size,
            skip=option("--skip-prompts"),
        ),
        load=LoadSettings(
            device=device,
            weight_dtype=option("--weight-dtype"),
            nf4_compute_dtype=option("--nf4-compute-dtype"),
            nf4_double_quant=option("--nf4-double-quant"),
            max_gpu_memory=gpu_memory,
            may_spread=not is_worker(config),
        ),
        gates=GatePolicy(
            mode=option("--gate-mode"),
            undecided=option("--undecided") or suite.undecided,
            frozen_baselines=option("--frozen-baselines"),
        ),
        long_context=long_context,
        run_id=run_id(config),
    )


def settings_of(config: pytest.Config) -> RunSettings:
    """The run's settings, built once (check_options, at start-up) and kept in config.stash."""
    if SETTINGS_KEY not in config.stash:
        config.stash[SETTINGS_KEY] = build_settings(config)
    return config.stash[SETTINGS_KEY]
