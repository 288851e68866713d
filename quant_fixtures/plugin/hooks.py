"""pytest plugin: options, markers, (model, variant) parametrization, the session fixture, summary.

Hooks only; the work happens in :class:`quant_fixtures.session.EvaluationSession`, kept in
``config.stash``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from quant_fixtures.plugin.cli import (CONFIG_KEY, check_options, output_dirs, ppl_budget, prompt_suite_options, selected_pairs,
                  suite_config_path, suite_of, terminate_as_interrupt)
from quant_fixtures.config import ConfigError, load_config
from quant_fixtures.inputs.wikitext import SOURCES
from quant_fixtures.variants import DTYPE_NAMES, VARIANTS

SESSION_KEY = pytest.StashKey["Any"]()
REPORT_KEY = pytest.StashKey[Path]()
GATE_MODES = ("enforce", "report")


def pytest_addoption(parser: pytest.Parser) -> None:
    g = parser.getgroup("quant", "quantization-harm suite")
    g.addoption("--suite-config", default=None,
                help="suite TOML (default: quant_suite.toml in the rootdir, else the repository's)")
    g.addoption("--models", default=None, help="comma-separated model keys (default: every configured model)")
    g.addoption("--variants", default=None, help=f"comma-separated variants (default: {','.join(VARIANTS)})")
    g.addoption("--ctx", type=int, default=None, help="perplexity window in tokens (default from config: 2048)")
    g.addoption("--ppl-max-tokens", default=None,
                help="token budget of the perplexity pass: an integer or 'all' (default: all on CUDA, "
                     "[defaults].cpu_ppl_max_tokens on CPU)")
    g.addoption("--ppl-stride", type=int, default=None, help="use the HF guide's strided method with this stride")
    g.addoption("--batch-size", type=int, default=None, help="perplexity windows per forward pass")
    g.addoption("--results-dir", default=None,
                help="where JSON reports go (default: results/ under the rootdir; a relative path is taken "
                     "from the current directory)")
    g.addoption("--baselines-dir", default=None, help="stored FP16 baselines (default: baselines/ under the rootdir)")
    g.addoption("--cache-dir", default=None,
                help="converted models and digests (default: $QUANT_FIXTURES_CACHE or ~/.cache/quant_fixtures)")
    g.addoption("--weight-dtype", default="float16", choices=("float16", "bfloat16"),
                help="16-bit dtype of the baseline and of unquantized weights")
    g.addoption("--nf4-compute-dtype", default=None, choices=DTYPE_NAMES, help="NF4 compute dtype")
    g.addoption("--nf4-double-quant", action="store_true", help="NF4 with double quantization of the scales")
    g.addoption("--dataset-source", default="auto", choices=SOURCES, help="WikiText-2 from the Hub or vendored copy")
    g.addoption("--frozen-baselines", action="store_true", help="error instead of recomputing a stale FP16 baseline")
    g.addoption("--prompts", default=None, help="prompt suite JSONL (default: prompts/suite.jsonl)")
    g.addoption("--categories", default=None, help="comma-separated prompt categories to run")
    g.addoption("--no-chat-template", action="store_true", help="feed prompts as plain text")
    g.addoption("--max-new-tokens", type=int, default=None,
                help="cap on generated tokens per prompt (default: each prompt's own on CUDA, "
                     "[defaults].cpu_max_new_tokens on CPU)")
    g.addoption("--top-k", type=int, default=None, help="FP16 log-probs kept per response position (default 256)")
    g.addoption("--exact-kl-max-mb", type=int, default=1024,
                help="also compute exact full-vocabulary KL when the FP16 distributions fit this many MiB "
                     "(default 1024; 0 turns it off)")
    g.addoption("--gen-batch-size", type=int, default=None, help="prompts generated per batch")
    g.addoption("--skip-prompts", action="store_true", help="perplexity and memory only: no prompt KL stage")
    g.addoption("--gate-on", default="point", choices=("point", "upper"),
                help="gate ΔPPL%% and mean KL on the point estimate or on the 95%% CI's upper bound")
    g.addoption("--gate-mode", default="enforce", choices=GATE_MODES,
                help="enforce: a failed gate fails its test; report: record verdicts, mark failures xfail")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "gpu: needs CUDA; skipped (never passed) without it")
    config.addinivalue_line("markers", "slow: takes minutes")
    config.addinivalue_line("markers", "xdist_group(name): tests of one (model, variant) share an xdist worker")
    path = suite_config_path(config)
    if path is None:  # not a quantization-harm project: the plugin stays out of the way
        return
    try:
        config.stash[CONFIG_KEY] = load_config(path)
    except ConfigError as exc:
        raise pytest.UsageError(str(exc)) from None
    if config.pluginmanager.hasplugin("xdist"):
        from quant_fixtures.plugin.xdist import XdistHooks

        config.pluginmanager.register(XdistHooks(config), "quant_fixtures_xdist")
    check_options(config)
    terminate_as_interrupt(config)


def pytest_report_header(config: pytest.Config) -> list[str] | None:
    """The budgets this run uses, printed before anything runs (CPU defaults are smaller)."""
    if CONFIG_KEY not in config.stash:
        return None
    from quant_fixtures.plugin.xdist import device_for

    suite, on_cuda = config.stash[CONFIG_KEY], device_for(config).startswith("cuda")
    budget = config.getoption("--ppl-max-tokens") or ("all" if on_cuda else suite.defaults.cpu_ppl_max_tokens)
    cap = config.getoption("--max-new-tokens") or (None if on_cuda else suite.defaults.cpu_max_new_tokens)
    return [f"quant-fixtures: device {device_for(config)}; WikiText-2 tokens: {budget}; ctx "
            f"{config.getoption('--ctx') or suite.defaults.ctx}; max_new_tokens: "
            f"{'per prompt' if cap is None else f'<= {cap}'}"]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if not {"model_documents", "variant_eval"} & set(metafunc.fixturenames):
        return
    suite = suite_of(metafunc.config)
    if "model_documents" in metafunc.fixturenames:
        models = list(dict.fromkeys(m for m, _ in selected_pairs(metafunc.config)))
        metafunc.parametrize("model_documents", [
            pytest.param(m, id=m, marks=[pytest.mark.gpu] if suite.models[m].requires_gpu else [])
            for m in models], indirect=True, scope="session")
    if "variant_eval" not in metafunc.fixturenames:
        return
    wants = getattr(metafunc.function, "quant_variants", None)  # e.g. only quantized variants
    params = []
    for model, variant in selected_pairs(metafunc.config):
        if wants is not None and variant not in wants:
            continue
        # One xdist group per pair: with --dist loadgroup a worker loads each model once.
        marks = [pytest.mark.xdist_group(f"{model}-{variant}")]
        if suite.models[model].requires_gpu:
            marks.append(pytest.mark.gpu)
        params.append(pytest.param((model, variant), id=f"{model}-{variant}", marks=marks))
    metafunc.parametrize("variant_eval", params, indirect=True, scope="session")


def quantized_only(func: Any) -> Any:
    """Parametrize a test over quantized variants only (the baseline has no gates)."""
    func.quant_variants = [k for k, v in VARIANTS.items() if not v.is_baseline]
    return func


@pytest.hookimpl(trylast=True)  # after -m/-k deselection: only what will run is checked
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    gpu_items = [i for i in items if i.get_closest_marker("gpu")]
    if gpu_items:
        import torch

        if not torch.cuda.is_available():
            skip = pytest.mark.skip(reason="needs CUDA: no GPU visible to torch")
            for item in gpu_items:
                item.add_marker(skip)
    from quant_fixtures.plugin.xdist import is_worker

    if CONFIG_KEY in config.stash and not is_worker(config) and not config.option.collectonly:
        # (xdist: the controller checks, in parallel.py)
        preflight_models(config, models_in(items))


def models_in(items: list[pytest.Item]) -> set[str]:
    """Models whose tests will run (not skipped for want of CUDA)."""
    models = set()
    for item in items:
        callspec = getattr(item, "callspec", None)
        if callspec is None or item.get_closest_marker("skip"):
            continue
        for name in ("variant_eval", "model_documents", "bench_model"):
            value = callspec.params.get(name)
            if value is not None:
                models.add(value[0] if isinstance(value, tuple) else value)
    return models


def preflight_models(config: pytest.Config, models: set[str]) -> None:
    """Checks that need a model's config or its stored references, before any model loads."""
    from quant_fixtures.session.preflight import PreflightError, check_models

    if not models:
        return
    try:
        check_models(session_of(config), sorted(models))
    except PreflightError as exc:
        raise pytest.UsageError(str(exc)) from None


def build_session(config: pytest.Config) -> Any:
    from quant_fixtures.plugin.xdist import device_for, run_id
    from quant_fixtures.settings import RunOptions
    from quant_fixtures.session.orchestrator import EvaluationSession

    suite = config.stash[CONFIG_KEY]
    device = device_for(config)
    on_cuda = device.startswith("cuda")
    max_tokens = ppl_budget(config)
    dirs = output_dirs(config)
    pairs = selected_pairs(config)
    prompts_path, categories = prompt_suite_options(config)
    d = suite.defaults
    cap = config.getoption("--max-new-tokens") or (None if on_cuda else d.cpu_max_new_tokens)
    options = RunOptions(
        models=sorted({m for m, _ in pairs}), variants=sorted({v for _, v in pairs}),
        ctx=config.getoption("--ctx") or suite.defaults.ctx, ppl_max_tokens=max_tokens,
        ppl_stride=config.getoption("--ppl-stride"),
        results_dir=dirs["--results-dir"], baselines_dir=dirs["--baselines-dir"], cache_dir=dirs["--cache-dir"],
        batch_size=config.getoption("--batch-size") or (suite.defaults.batch_size_cuda if on_cuda
                                                        else suite.defaults.batch_size_cpu),
        device=device, weight_dtype=config.getoption("--weight-dtype"),
        nf4_compute_dtype=config.getoption("--nf4-compute-dtype"),
        nf4_double_quant=config.getoption("--nf4-double-quant"),
        dataset_source=config.getoption("--dataset-source"),
        frozen_baselines=config.getoption("--frozen-baselines"), gate_mode=config.getoption("--gate-mode"),
        prompts_path=prompts_path, categories=categories, use_chat_template=not config.getoption("--no-chat-template"),
        max_new_tokens_cap=cap, top_k=config.getoption("--top-k") or d.top_k,
        gen_batch_size=config.getoption("--gen-batch-size") or (d.gen_batch_size_cuda if on_cuda
                                                                else d.gen_batch_size_cpu),
        skip_prompts=config.getoption("--skip-prompts"), gate_on=config.getoption("--gate-on"),
        run_id=run_id(config), exact_kl_max_mb=config.getoption("--exact-kl-max-mb"),
    )
    return EvaluationSession(config=suite, options=options)


def session_of(config: pytest.Config) -> Any:
    """The run's evaluation session, built on first use and kept in config.stash."""
    if SESSION_KEY not in config.stash:
        config.stash[SESSION_KEY] = build_session(config)
    return config.stash[SESSION_KEY]


@pytest.fixture(scope="session")
def quant_session(pytestconfig: pytest.Config) -> Any:
    return session_of(pytestconfig)


@pytest.fixture(scope="session")
def variant_eval(request: pytest.FixtureRequest, quant_session: Any) -> dict[str, Any]:
    """The finished evaluation document of one (model, variant); the model is loaded and released
    inside, so at most one model is resident at a time."""
    from quant_fixtures.models.loading import ModelUnavailableError
    from quant_fixtures.session.orchestrator import EvaluationFailed

    model, variant = request.param
    try:
        return quant_session.evaluate(model, variant)
    except (ModelUnavailableError, EvaluationFailed) as exc:
        message = str(exc)
    pytest.fail(message, pytrace=False)  # outside the except: one line, no chained exception


def results_dir(config: pytest.Config) -> Path:
    return output_dirs(config)["--results-dir"]


@pytest.fixture(scope="session")
def model_documents(request: pytest.FixtureRequest, quant_session: Any) -> dict[str, dict[str, Any]]:
    """{variant: evaluation document} of one model, every selected variant (reused when this run
    already evaluated it, in this process or another xdist worker)."""
    from quant_fixtures.models.loading import ModelUnavailableError
    from quant_fixtures.session.orchestrator import EvaluationFailed

    model = request.param
    try:
        return {v: quant_session.evaluate(m, v) for m, v in selected_pairs(request.config) if m == model}
    except (ModelUnavailableError, EvaluationFailed) as exc:
        message = str(exc)
    pytest.fail(message, pytrace=False)


@pytest.fixture
def harm_snapshot(quant_session: Any, request: pytest.FixtureRequest) -> Any:
    """A syrupy snapshot assertion with per-metric tolerances, named after the run's settings.

    Built here rather than from syrupy's ``snapshot`` fixture: that one registers the default
    (amber) extension, whose discovery walks all of __snapshots__/ and would mark every other
    settings' JSON snapshot as unused, so ``--snapshot-update`` would delete it. This extension
    claims only the files of this run's own settings.
    """
    from syrupy.assertion import SnapshotAssertion
    from syrupy.extensions.json import JSONSnapshotExtension
    from syrupy.location import PyTestLocation

    from quant_fixtures.report.snapshot import settings_tag, tolerant_json_extension

    tag = settings_tag(quant_session.options)
    owned = {JSONSnapshotExtension._sanitize_filename(f"{request.node.originalname}[{m}][{tag}]")
             for m in quant_session.options.models}
    options = request.config.option
    assertion = SnapshotAssertion(
        update_snapshots=options.update_snapshots, update_new_snapshots_only=options.update_new_snapshots_only,
        extension_class=tolerant_json_extension(quant_session.config.snapshot_tolerances, owned),
        test_location=PyTestLocation(request.node), session=request.config._syrupy)  # as syrupy's own fixture
    return assertion(name=tag)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Controller only: REPORT.md and plots from every document of this run, and from other runs
    into the same directory that were measured against the same FP16 references. An interrupt
    here leaves the previous REPORT.md as it was (atomic writes) and ends the run as interrupted."""
    from quant_fixtures.plugin.xdist import is_worker, run_id
    from quant_fixtures.report.comparison import collect_comparable_documents

    config = session.config
    if is_worker(config) or CONFIG_KEY not in config.stash:
        return
    try:
        documents = collect_comparable_documents(results_dir(config), run_id(config))
        if documents:
            from quant_fixtures.report.markdown import write_report

            config.stash[REPORT_KEY] = write_report(results_dir(config), documents)
    except KeyboardInterrupt:
        session.exitstatus = pytest.ExitCode.INTERRUPTED
        config.get_terminal_writer().line("interrupted while writing REPORT.md: not written", red=True)


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    """The harm table of this run, assembled from every worker's evaluation documents."""
    from quant_fixtures.plugin.xdist import is_worker, run_id
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
    report = config.stash.get(REPORT_KEY, None)
    terminalreporter.write_line(f"reports: {results_dir(config)}" + (f" (read {report})" if report else ""))
