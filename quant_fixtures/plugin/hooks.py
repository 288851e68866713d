"""pytest plugin: options, markers, parametrization, the report at the end. Hooks only; the fixtures
are in fixtures.py, the command line in cli.py, the work in
:class:`quant_fixtures.session.orchestrator.EvaluationSession`, kept in ``config.stash``.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from quant_fixtures import cpu_kernels
from quant_fixtures.config import UNDECIDED_POLICIES, ConfigError, load_config
from quant_fixtures.inputs.wikitext import DEFAULT_SOURCE, SOURCES
from quant_fixtures.metrics.decision import JointVerdict
from quant_fixtures.plugin.auto_attribution import LINES_KEY, add_attribution_option, attribute_after_failed_gates
from quant_fixtures.plugin.cli import (
    CONFIG_KEY,
    NO_GPU_KEY,
    SHIPPED,
    check_options,
    selected_pairs,
    settings_of,
    suite_config_path,
    suite_of,
    terminate_as_interrupt,
    unavailable_reason,
)
from quant_fixtures.plugin.collection_checks import check_snapshot_files, handle_gpu_items_without_gpu
from quant_fixtures.plugin.ctx_option import ctx_help
from quant_fixtures.plugin.long_context_options import add_long_context_options
from quant_fixtures.plugin.model_option import given_models, model_values, with_given_models
from quant_fixtures.plugin.rootdir import check_rootdir_not_taken_from_an_option
from quant_fixtures.plugin.state import preflight_models
from quant_fixtures.variants import DEFAULT_VARIANTS, DTYPE_NAMES, VARIANTS

REPORT_KEY = pytest.StashKey[Path]()
VERDICT_KEY = pytest.StashKey[JointVerdict]()
GATE_MODES = ("enforce", "report")
PAIR_FIXTURES = ("variant_eval", "quantized_eval", "bench_model")  # parametrized over (model, variant)


def pytest_addoption(parser: pytest.Parser) -> None:
    g = parser.getgroup("quant", "quantization-harm suite")
    g.addoption(
        "--suite-config",
        default=None,
        help=f"suite TOML, or '{SHIPPED}' for the one shipped with quant_fixtures (default: quant_suite.toml "
        "in the rootdir, else with --model the shipped one; with none of them, the plugin stays "
        "inactive)",
    )
    g.addoption("--models", default=None, help="comma-separated model keys (default: every configured model)")
    g.addoption(
        "--model",
        action="append",
        default=None,
        metavar="ORG/NAME",
        help="a model by Hugging Face Hub id (org/name[@revision]) or checkpoint directory, without "
        "TOML: a new entry with the default variants and the config's [gates] (the shipped config "
        "when the project has none), or the configured entry of that source; KEY=ORG/NAME names "
        "its key; repeatable; the run covers these models (and any --models)",
    )
    g.addoption(
        "--variants",
        default=None,
        help=f"comma-separated variants: registered methods ({','.join(VARIANTS)}) or a model's own "
        f"[models.KEY.variants] (default: {','.join(DEFAULT_VARIANTS)} and the models' own)",
    )
    g.addoption(
        "--ctx",
        type=int,
        default=None,
        help=ctx_help(),
    )
    g.addoption(
        "--ppl-max-tokens",
        default=None,
        help="token budget of the perplexity pass: an integer or 'all' (default: all on CUDA, "
        "[defaults].cpu_ppl_max_tokens on CPU)",
    )
    g.addoption("--ppl-stride", type=int, default=None, help="use the HF guide's strided method with this stride")
    g.addoption(
        "--ppl-protocol",
        default=None,
        help="perplexity protocol: nonoverlapping (default; the GPTQ papers'), strided (HF guide, with "
        "--ppl-stride), llama.cpp (llama-perplexity: chunks of --ctx, default 512, second half "
        "scored), lm-eval (lm-evaluation-harness wikitext: documents, rolling windows of --ctx, "
        "default the model's maximum length); --ctx says what the window is under each",
    )
    g.addoption("--batch-size", type=int, default=None, help="perplexity windows per forward pass")
    g.addoption(
        "--results-dir",
        default=None,
        help="where JSON reports go (default: results/ under the rootdir; a relative path is taken "
        "from the current directory)",
    )
    g.addoption("--baselines-dir", default=None, help="stored FP16 baselines (default: baselines/ under the rootdir)")
    g.addoption(
        "--cache-dir",
        default=None,
        help="converted models and digests (default: $QUANT_FIXTURES_CACHE or ~/.cache/quant_fixtures)",
    )
    g.addoption(
        "--weight-dtype",
        default="float16",
        choices=("float16", "bfloat16"),
        help="16-bit dtype of the baseline and of unquantized weights",
    )
    g.addoption("--nf4-compute-dtype", default=None, choices=DTYPE_NAMES, help="NF4 compute dtype")
    g.addoption("--nf4-double-quant", action="store_true", help="NF4 with double quantization of the scales")
    g.addoption(
        "--dataset-source",
        default=DEFAULT_SOURCE,
        choices=SOURCES,
        help="WikiText-2 from the copy shipped in the package (vendored, the default; auto is the same) "
        "or downloaded from the Hub (hub); the same text, sha256-checked",
    )
    g.addoption("--frozen-baselines", action="store_true", help="error instead of recomputing a stale FP16 baseline")
    g.addoption(
        "--prompts", default=None, help="prompt suite JSONL (default: the 96-prompt suite shipped with quant_fixtures)"
    )
    g.addoption("--categories", default=None, help="comma-separated prompt categories to run")
    g.addoption("--no-chat-template", action="store_true", help="feed prompts as plain text")
    g.addoption(
        "--max-new-tokens",
        type=int,
        default=None,
        help="cap on generated tokens per prompt (default: each prompt's own on CUDA, "
        "[defaults].cpu_max_new_tokens on CPU)",
    )
    g.addoption(
        "--top-k",
        type=int,
        default=None,
        help="k of the FP16 top-k + tail-bucket KL bound reported beside the exact KL (default 256)",
    )
    g.addoption("--gen-batch-size", type=int, default=None, help="prompts generated per batch")
    g.addoption(
        "--max-gpu-memory",
        default=None,
        help="cap on the GPU memory each process may use, e.g. 15GiB or 16GB (env QUANT_MAX_GPU_MEMORY); "
        "batch sizes are chosen to fit it and it is enforced for the whole run",
    )
    g.addoption("--skip-prompts", action="store_true", help="perplexity and memory only: no prompt KL stage")
    add_long_context_options(g)
    add_attribution_option(g)
    g.addoption(
        "--undecided",
        default=None,
        choices=UNDECIDED_POLICIES,
        help="what an UNDECIDED gate (its interval crosses the limit) does: fail, warn or pass ([gates] undecided)",
    )
    g.addoption(
        "--allow-no-gpu",
        action="store_true",
        help="skip the selected GPU tests when no GPU is visible (without it such a run fails: it would check nothing)",
    )
    g.addoption(
        "--gate-mode",
        default="enforce",
        choices=GATE_MODES,
        help="enforce: a failed gate fails its test; report: record verdicts, mark failures xfail",
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "gpu: needs CUDA; without a GPU the run fails up front, or with --allow-no-gpu skips them"
    )
    config.addinivalue_line("markers", "slow: takes minutes")
    config.addinivalue_line("markers", "xdist_group(name): tests of one (model, variant) share an xdist worker")
    config.addinivalue_line("markers", "quant_variants(*keys): run this test for these variants only")
    check_rootdir_not_taken_from_an_option(config)  # before the rootdir is used to find the config
    try:
        cpu_kernels.mode()
    except cpu_kernels.CpuKernelsError as exc:
        raise pytest.UsageError(str(exc)) from None
    path = suite_config_path(config)
    if path is None:  # not a quantization-harm project: the plugin stays out of the way
        return
    try:
        suite = load_config(path, require_models=not model_values(config))
    except ConfigError as exc:
        raise pytest.UsageError(str(exc)) from None
    config.stash[CONFIG_KEY] = with_given_models(config, suite)
    from quant_fixtures.plugin import fixtures

    config.pluginmanager.register(fixtures, "quant_fixtures.fixtures")  # only in a configured project
    if config.pluginmanager.hasplugin("xdist"):
        from quant_fixtures.plugin.xdist import XdistHooks

        config.pluginmanager.register(XdistHooks(config), "quant_fixtures_xdist")
    check_options(config)
    terminate_as_interrupt(config)


def pytest_report_header(config: pytest.Config) -> list[str] | None:
    """The budgets this run uses, printed before anything runs (CPU defaults are smaller)."""
    if CONFIG_KEY not in config.stash:
        return None
    s = settings_of(config)
    cap = s.prompts.max_new_tokens_cap
    p = s.perplexity
    kernels = cpu_kernels.problem() if s.load.device_type == "cpu" else None
    return [
        f"quant-fixtures: device {s.load.device}; perplexity protocol {p.protocol}; WikiText-2 tokens: "
        f"{p.max_tokens or 'all'}; ctx {p.ctx or 'the protocol default'}; max_new_tokens: "
        f"{'per prompt' if cap is None else f'<= {cap}'}",
        *([f"quant-fixtures: WARNING: {kernels}"] if kernels else []),
        *(f"quant-fixtures: {g.describe(suite_of(config))}" for g in given_models(config)),
    ]


def _pair_marks(config: pytest.Config, model: str, variant_key: str) -> list[pytest.MarkDecorator]:
    # One xdist group per pair: with --dist loadgroup a worker loads each model once.
    marks = [pytest.mark.xdist_group(f"{model}-{variant_key}")]
    if suite_of(config).models[model].requires_gpu:
        marks.append(pytest.mark.gpu)
    reason = unavailable_reason(config, model, variant_key)
    if reason:
        marks.append(pytest.mark.skip(reason=reason))
    return marks


def _gate_metrics(config: pytest.Config, model: str, variant_key: str) -> list[str]:
    """The registered metrics one pair is gated on: every required gate (configured, or opted out
    explicitly, which skips saying so) and every optional one that has a limit."""
    from quant_fixtures.metrics.registry import GATEABLE, REQUIRED_LIMITS

    names = set(REQUIRED_LIMITS) | set(suite_of(config).gates_for(model, variant_key))
    return [spec.name for limit, spec in GATEABLE.items() if limit in names]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    names = set(metafunc.fixturenames)
    if not names & {"model_documents", "gated_metric", *PAIR_FIXTURES}:
        return
    config, pairs = metafunc.config, selected_pairs(metafunc.config)
    wanted = metafunc.definition.get_closest_marker("quant_variants")
    if wanted is not None:
        pairs = [(m, v) for m, v in pairs if v in wanted.args]
    quantized = [(m, v) for m, v in pairs if not suite_of(config).variant(m, v).is_baseline]
    if "model_documents" in names:
        models = list(dict.fromkeys(m for m, _ in pairs))
        metafunc.parametrize(
            "model_documents",
            [
                pytest.param(
                    m,
                    id=m,
                    marks=[pytest.mark.xdist_group(m)]
                    + ([pytest.mark.gpu] if suite_of(config).models[m].requires_gpu else []),
                )
                for m in models
            ],
            indirect=True,
            scope="session",
        )
    for fixture in PAIR_FIXTURES:
        if fixture in names:
            chosen = quantized if fixture == "quantized_eval" else pairs
            metafunc.parametrize(
                fixture,
                [pytest.param((m, v), id=f"{m}-{v}", marks=_pair_marks(config, m, v)) for m, v in chosen],
                indirect=True,
                scope="session",
            )
    if "gated_metric" in names:
        metafunc.parametrize(
            "gated_metric",
            [
                pytest.param((m, v, metric), id=f"{m}-{v}-{metric}", marks=_pair_marks(config, m, v))
                for m, v in quantized
                for metric in _gate_metrics(config, m, v)
            ],
            indirect=True,
            scope="session",
        )


@pytest.hookimpl(trylast=True)  # after -m/-k deselection: only what will run is checked
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    from quant_fixtures.plugin.workers import is_worker

    if not handle_gpu_items_without_gpu(config, items, CONFIG_KEY in config.stash):
        return
    if CONFIG_KEY not in config.stash:
        return
    from quant_fixtures.plugin.state import session_of

    pairs = pairs_in(config, items)
    session_of(config).use_gate_pairs(pairs)  # the gates this run decides together (each worker too)
    if not is_worker(config) and not config.option.collectonly:  # (xdist: the controller checks, in xdist.py)
        check_snapshot_files({item.path for item in items})
        preflight_models(config, {model for model, _ in pairs})


def pairs_in(config: pytest.Config, items: list[pytest.Item]) -> list[tuple[str, str]]:
    """(model, variant) pairs that the selected tests evaluate (not skipped, e.g. for want of CUDA):
    a whole-model test evaluates every runnable variant of its model."""
    from quant_fixtures.plugin.cli import runnable_pairs

    pairs: dict[tuple[str, str], None] = {}
    for item in items:
        callspec = getattr(item, "callspec", None)
        if callspec is None or item.get_closest_marker("skip"):
            continue
        for name in ("gated_metric", *PAIR_FIXTURES):
            value = callspec.params.get(name)
            if value is not None:
                pairs[(value[0], value[1])] = None
        model = callspec.params.get("model_documents")
        if model is not None:
            pairs.update({pair: None for pair in runnable_pairs(config) if pair[0] == model})
    return list(pairs)


def results_dir(config: pytest.Config) -> Path:
    return settings_of(config).paths.results_dir


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Controller only: the run's release verdict over every gate of this run's documents (into
    each model's comparison file, and the exit code: 1 when it fails the run and nothing else did),
    then REPORT.md and plots from every document of this run, and from other runs into the same
    directory that were measured against the same FP16 references. An interrupt here leaves the
    previous REPORT.md as it was (atomic writes) and ends the run as interrupted."""
    from quant_fixtures.plugin.workers import is_worker, run_id
    from quant_fixtures.report.comparison import collect_comparable_documents, collect_run_documents
    from quant_fixtures.report.release import fails_the_run, record_in_comparisons, release_verdict

    config = session.config
    if is_worker(config) or CONFIG_KEY not in config.stash:
        return
    no_gpu = config.stash.get(NO_GPU_KEY, None)
    if no_gpu:  # xdist: the workers deselected everything for want of a GPU
        session.exitstatus = pytest.ExitCode.USAGE_ERROR
        config.get_terminal_writer().line(f"ERROR: {no_gpu}", red=True)
        return
    try:
        ours = collect_run_documents(results_dir(config), run_id(config))
        verdict = release_verdict(ours) if ours else None
        if verdict is not None:
            config.stash[VERDICT_KEY] = verdict
            record_in_comparisons(results_dir(config), list(ours), verdict)
            gates = settings_of(config).gates
            if gates.mode == "enforce" and fails_the_run(verdict, gates.undecided) and session.exitstatus == 0:
                session.exitstatus = pytest.ExitCode.TESTS_FAILED  # a gate deselected or skipped still counts
            attribute_after_failed_gates(config, ours, verdict)  # before REPORT.md, which shows it
        documents = collect_comparable_documents(results_dir(config), run_id(config))
        if documents:
            from quant_fixtures.report.markdown import write_report

            config.stash[REPORT_KEY] = write_report(results_dir(config), documents, verdict)
    except KeyboardInterrupt:
        session.exitstatus = pytest.ExitCode.INTERRUPTED
        config.get_terminal_writer().line("interrupted while writing REPORT.md: not written", red=True)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter, exitstatus: int, config: pytest.Config) -> None:
    """The harm table of this run, assembled from every worker's evaluation documents."""
    from quant_fixtures.plugin.workers import is_worker, run_id
    from quant_fixtures.report.comparison import collect_run_documents
    from quant_fixtures.report.terminal import summary_lines

    if is_worker(config) or CONFIG_KEY not in config.stash:
        return
    documents = collect_run_documents(results_dir(config), run_id(config))
    if not documents:
        return
    terminalreporter.section("quantization harm")
    for line in summary_lines(documents):
        terminalreporter.write_line(line)
    verdict = config.stash.get(VERDICT_KEY, None)
    if verdict is not None:
        from quant_fixtures.report.release import release_lines

        gates = settings_of(config).gates
        lines = release_lines(verdict, gates.undecided if gates.mode == "enforce" else None)
        if gates.mode == "report":
            lines[0] += "; --gate-mode report: the exit code does not follow it"
        colour = {"PASS": "green", "FAIL": "red"}.get(verdict.verdict, "yellow")
        terminalreporter.write_line(lines[0], **{colour: True, "bold": True})
        for line in lines[1:]:
            terminalreporter.write_line(line)
    for given in given_models(config):  # the key a --model got names its report files
        terminalreporter.write_line(f"--model {given.given}: model {given.key!r}")
    for line in config.stash.get(LINES_KEY, []):
        terminalreporter.write_line(line)
    report = config.stash.get(REPORT_KEY, None)
    terminalreporter.write_line(f"reports: {results_dir(config)}" + (f" (read {report})" if report else ""))
