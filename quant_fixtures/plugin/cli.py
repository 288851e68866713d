"""The command line of the suite: where the config and outputs are, what is selected, and the
checks every option gets before anything loads (a problem is a usage error, exit 4, one line)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from quant_fixtures.config import DEFAULT_CONFIG_PATH, SuiteConfig
from quant_fixtures.settings import (
    GatePolicy,
    LoadSettings,
    Paths,
    PerplexityProtocol,
    PromptProtocol,
    RunSettings,
    device_defaults,
)

CONFIG_KEY = pytest.StashKey[SuiteConfig]()
SETTINGS_KEY = pytest.StashKey[RunSettings]()
PROMPTS_KEY = pytest.StashKey[list]()  # the prompt suite as validated at start-up (parsed once)
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
        return Path(config.invocation_params.dir) / Path(given).expanduser()
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


PATH_OPTIONS = ("--suite-config", "--results-dir", "--baselines-dir", "--cache-dir", "--prompts", "--model")


def check_rootdir_not_taken_from_an_option(config: pytest.Config) -> None:
    """pytest picks the rootdir (and with it the ini file: testpaths, addopts such as -m 'not gpu',
    markers) before it loads plugins, so in `--results-dir /x` it takes the existing path after the
    space for a test path. When that moved the rootdir, a command-line run starts again with the
    option written `--results-dir=/x` (nothing has run yet); a run pytest cannot restart (in-process,
    or the restart did not help) stops with the remedy instead of using another project's settings."""
    args = [str(a) for a in config.invocation_params.args]
    spaced = [
        name
        for name, value in zip(args, args[1:])
        if name in PATH_OPTIONS and (Path(config.invocation_params.dir) / Path(value).expanduser()).exists()
    ]
    if not spaced:
        return
    expected = _rootdir_from_test_paths(config)
    if expected is None or Path(expected).resolve() == config.rootpath.resolve():
        return
    if _restartable(args):
        _restart_with_joined_options(config, args)
    raise pytest.UsageError(
        f"{spaced[0]} <path>: pytest took the path for a test path and chose the rootdir {config.rootpath} "
        f"instead of {expected} (it decides the rootdir before plugins load); write {spaced[0]}=<path>"
    )


RESTARTED_ENV = "QUANT_FIXTURES_JOINED_OPTIONS"  # set in the restarted run: never restart twice


def _rootdir_from_test_paths(config: pytest.Config) -> Path | None:
    """Where the rootdir would be from the test paths alone (pytest's own function); None where
    this pytest lacks it (the check cannot tell, so it stays quiet)."""
    try:
        import inspect

        from _pytest.config.findpaths import determine_setup

        given = {
            "inifile": config.option.inifilename,
            "override_ini": config.option.override_ini,
            "args": [str(a) for a in config.option.file_or_dir or []],
            "rootdir_cmd_arg": config.option.rootdir or None,
            "invocation_dir": config.invocation_params.dir,
        }
        accepted = inspect.signature(determine_setup).parameters
        return Path(determine_setup(**{k: v for k, v in given.items() if k in accepted})[0])
    except Exception:
        return None


def joined_path_options(args: list[str]) -> list[str]:
    """``args`` with every path option and its value joined by '=' (``--results-dir /x`` ->
    ``--results-dir=/x``); everything else as given."""
    joined: list[str] = []
    i = 0
    while i < len(args):
        if args[i] in PATH_OPTIONS and i + 1 < len(args):
            joined.append(f"{args[i]}={args[i + 1]}")
            i += 2
        else:
            joined.append(args[i])
            i += 1
    return joined


def _restartable(args: list[str]) -> bool:
    """A run started from the command line (``pytest ...`` or ``python -m pytest ...``) that has
    not been restarted already; an in-process pytest.main() is not ours to replace."""
    import sys

    return not os.environ.get(RESTARTED_ENV) and sys.argv[1:] == args


def _restart_with_joined_options(config: pytest.Config, args: list[str]) -> None:
    """Replace this process with the same pytest run, path options joined (so the rootdir is the
    one the test paths give). Output capture is stopped first: it redirects the file descriptors
    the new process inherits."""
    import sys

    capture = config.pluginmanager.getplugin("capturemanager")
    if capture is not None:
        capture.stop_global_capturing()
    os.environ[RESTARTED_ENV] = "1"
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, [sys.executable, "-m", "pytest", *joined_path_options(args)])


def ppl_protocol(config: pytest.Config) -> str:
    """--ppl-protocol, checked against --ppl-stride: a stride means the strided protocol and needs it."""
    from quant_fixtures.inputs.corpus_protocols import PROTOCOLS

    name, stride = config.getoption("--ppl-protocol"), config.getoption("--ppl-stride")
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


def check_options(config: pytest.Config) -> None:
    """Every option, limit and output location, before anything loads (exit 4, one line)."""
    from quant_fixtures.session.preflight import PreflightError, check_limits, check_output_dirs

    suite = suite_of(config)
    split_keys(config.getoption("--models"), list(suite.models), "model")
    selected_pairs(config)  # unknown keys, and variants that belong to no selected model
    prompt_suite_options(config)
    budget = config.getoption("--ppl-max-tokens")
    if budget is not None and budget != "all" and not (budget.isdigit() and int(budget) > 0):
        raise pytest.UsageError(f"--ppl-max-tokens: expected a positive integer or 'all', got {budget!r}")
    for name in ("--ctx", "--ppl-stride", "--batch-size", "--max-new-tokens", "--top-k", "--gen-batch-size"):
        value = config.getoption(name)
        if value is not None and value < 1:
            raise pytest.UsageError(f"{name}: expected a positive integer, got {value}")
    max_gpu_memory(config)
    check_ctx(config.getoption("--ctx"), ppl_protocol(config))
    try:  # budgets against each model's window: in preflight_models, once its config is read
        check_limits(suite, selected_pairs(config))
        check_output_dirs(output_dirs(config))
    except PreflightError as exc:
        raise pytest.UsageError(str(exc)) from None


MAX_GPU_MEMORY_ENV = "QUANT_MAX_GPU_MEMORY"


def max_gpu_memory(config: pytest.Config) -> int | None:
    """Bytes from --max-gpu-memory, else from $QUANT_MAX_GPU_MEMORY; a usage error naming the
    source when it is not a size (an unreadable cap must not silently mean "no cap")."""
    from quant_fixtures.compute.memory import parse_size

    given, source = config.getoption("--max-gpu-memory"), "--max-gpu-memory"
    if given is None and os.environ.get(MAX_GPU_MEMORY_ENV) is not None:
        given, source = os.environ[MAX_GPU_MEMORY_ENV], f"${MAX_GPU_MEMORY_ENV}"
    if given is None:
        return None
    try:
        return parse_size(given, source)
    except ValueError as exc:
        raise pytest.UsageError(str(exc)) from None


def output_dirs(config: pytest.Config) -> dict[str, Path]:
    """Where results, baselines and caches go. Defaults live under the rootdir (the project's);
    a path the user gives is taken, like any command-line path, from the invocation directory.
    xdist workers receive the controller's resolved paths."""
    from quant_fixtures.plugin.workers import PATHS_KEY, is_worker

    if is_worker(config):
        return {k: Path(v) for k, v in config.workerinput[PATHS_KEY].items()}
    here = Path(config.invocation_params.dir)

    def given(option: str, default: Path) -> Path:
        value = config.getoption(option)
        return default if value is None else here / Path(value).expanduser()

    cache = config.getoption("--cache-dir") or os.environ.get("QUANT_FIXTURES_CACHE")
    return {
        "--results-dir": given("--results-dir", config.rootpath / "results"),
        "--baselines-dir": given("--baselines-dir", config.rootpath / "baselines"),
        "--cache-dir": here / Path(cache).expanduser() if cache else Path("~/.cache/quant_fixtures").expanduser(),
    }


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
    try:  # a filter naming a category the file lacks is an error there
        if PROMPTS_KEY not in config.stash:
            config.stash[PROMPTS_KEY] = load_prompt_suite(path, cats)
    except PromptSuiteError as exc:
        raise pytest.UsageError(str(exc)) from None
    return path, tuple(cats) if cats else None


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
    """(model, variant) pairs of this run, registry order (the baseline first). Without --variants
    each model gets its default variants; with it, each selected model that has the variant."""
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


def unavailable_reason(config: pytest.Config, model: str, variant: str) -> str | None:
    """Why a selected pair cannot run on this machine (its method's package is not installed, or it
    needs another device): the skip reason, naming the install command. Nothing is imported."""
    from quant_fixtures.plugin.workers import device_for

    return suite_of(config).variant(model, variant).unavailable_reason(device_for(config).split(":")[0])


def runnable_pairs(config: pytest.Config) -> list[tuple[str, str]]:
    return [(m, v) for m, v in selected_pairs(config) if unavailable_reason(config, m, v) is None]


def build_settings(config: pytest.Config) -> RunSettings:
    """Every command-line choice, with the config's device-dependent defaults, in one frozen object."""
    from quant_fixtures.plugin.workers import device_for, is_worker, run_id

    suite, device = suite_of(config), device_for(config)
    defaults = device_defaults(suite.defaults, device)
    option = config.getoption
    pairs = selected_pairs(config)
    dirs = output_dirs(config)
    prompts_path, categories = prompt_suite_options(config)
    budget = option("--ppl-max-tokens")
    return RunSettings(
        models=tuple(sorted({m for m, _ in pairs})),
        variants=tuple(sorted({v for _, v in pairs})),
        paths=Paths(
            results_dir=dirs["--results-dir"], baselines_dir=dirs["--baselines-dir"], cache_dir=dirs["--cache-dir"]
        ),
        perplexity=PerplexityProtocol(
            protocol=ppl_protocol(config),
            # the protocols of llama.cpp and lm-eval have their own default windows (inputs.ctx)
            ctx=option("--ctx")
            or (suite.defaults.ctx if ppl_protocol(config) in ("nonoverlapping", "strided") else None),
            max_tokens=defaults.ppl_max_tokens if budget is None else None if budget == "all" else int(budget),
            stride=option("--ppl-stride"),
            batch_size=option("--batch-size") or defaults.batch_size,
            dataset_source=option("--dataset-source"),
        ),
        prompts=PromptProtocol(
            path=prompts_path,
            categories=categories,
            use_chat_template=not option("--no-chat-template"),
            max_new_tokens_cap=option("--max-new-tokens") or defaults.max_new_tokens_cap,
            top_k=option("--top-k") or suite.defaults.top_k,
            gen_batch_size=option("--gen-batch-size") or defaults.gen_batch_size,
            skip=option("--skip-prompts"),
        ),
        load=LoadSettings(
            device=device,
            weight_dtype=option("--weight-dtype"),
            nf4_compute_dtype=option("--nf4-compute-dtype"),
            nf4_double_quant=option("--nf4-double-quant"),
            max_gpu_memory=max_gpu_memory(config),
            may_spread=not is_worker(config),
        ),
        gates=GatePolicy(
            mode=option("--gate-mode"), on=option("--gate-on"), frozen_baselines=option("--frozen-baselines")
        ),
        run_id=run_id(config),
    )


def settings_of(config: pytest.Config) -> RunSettings:
    """The run's settings, built once and kept in config.stash."""
    if SETTINGS_KEY not in config.stash:
        config.stash[SETTINGS_KEY] = build_settings(config)
    return config.stash[SETTINGS_KEY]
