"""`python -m quant_fixtures.attribute`: which decoder layers of a quantized model do its harm, and
which to keep in 16 bits to bring it within a KL limit (issue 32; compute/attribution.py).

    python -m quant_fixtures.attribute --model smollm2-135m --variant nf4 [--limit KL | --footprint-mb MB]
        [--windows 4] [--ctx 256] [--suite-config quant_suite.toml] [--results-dir results]
        [--cache-dir DIR] [--device cpu|cuda:0]

Loads the model once in 16 bits and once quantized, reads ``--windows`` WikiText-2 windows of
``--ctx`` tokens (2 + 2 x layers reads), and writes ``attribution_<model>_<variant>.json``,
``.md`` and ``.png`` into ``--results-dir``. ``--limit`` defaults to the variant's ``max_kl_mean``
gate for the model in the suite config; without one, no recommendation is made. ``--footprint-mb``
asks instead for the layers that lower KL most within that footprint.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from quant_fixtures.config import DEFAULT_CONFIG_PATH, ConfigError, SuiteConfig, load_config
from quant_fixtures.json_types import JsonObject
from quant_fixtures.names import file_in
from quant_fixtures.store.atomic import write_json_atomic, write_text_atomic

USAGE_ERROR = 4  # as the pytest plugin's usage errors


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m quant_fixtures.attribute", description=__doc__.split("\n")[0])
    parser.add_argument("--model", required=True, help="a model key of the suite config")
    parser.add_argument("--variant", required=True, help="a registered quantization method, e.g. int8 or nf4")
    parser.add_argument("--limit", type=float, help="KL(FP16 || variant) to reach (default: its max_kl_mean gate)")
    parser.add_argument(
        "--footprint-mb", type=float, help="instead of a KL limit: the best layers to keep within this footprint (MB)"
    )
    parser.add_argument("--windows", type=int, default=4)
    parser.add_argument("--ctx", type=int, default=256)
    parser.add_argument("--suite-config", type=Path, default=DEFAULT_CONFIG_PATH)
    parser.add_argument("--results-dir", type=Path, default=Path("results"))
    parser.add_argument("--cache-dir", type=Path, default=Path("~/.cache/quant_fixtures").expanduser())
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    try:
        config = load_config(args.suite_config)
    except (ConfigError, OSError) as exc:
        print(f"quant_fixtures.attribute: --suite-config {args.suite_config}: {exc}", file=sys.stderr)
        return USAGE_ERROR
    from quant_fixtures.variants import QUANTIZATION_METHODS

    problems = []
    if args.model not in config.models:
        problems.append(f"--model {args.model!r}: not in {args.suite_config} (models: {', '.join(config.models)})")
    if args.variant not in QUANTIZATION_METHODS:
        methods = ", ".join(QUANTIZATION_METHODS)
        problems.append(f"--variant {args.variant!r}: not a registered quantization method ({methods})")
    if args.windows < 1 or args.ctx < 2:
        problems.append(f"--windows {args.windows} --ctx {args.ctx}: need at least 1 window of at least 2 tokens")
    if args.limit is not None and args.limit < 0:
        problems.append(f"--limit {args.limit}: a KL limit is >= 0")
    if args.limit is not None and args.footprint_mb is not None:
        problems.append("--limit and --footprint-mb: give one (a KL to reach, or the memory to spend)")
    if problems:
        for problem in problems:
            print(f"quant_fixtures.attribute: {problem}", file=sys.stderr)
        return USAGE_ERROR
    return _run(args, config)


def _run(args: argparse.Namespace, config: SuiteConfig) -> int:
    def progress(step: str) -> None:
        print(f"quant_fixtures.attribute: {args.model} {args.variant}: {step}", file=sys.stderr, flush=True)

    written = attribute_variant(
        config,
        args.model,
        args.variant,
        windows=args.windows,
        ctx=args.ctx,
        results_dir=args.results_dir,
        cache_dir=args.cache_dir,
        device=args.device,
        limit=args.limit,
        footprint_mb=args.footprint_mb,
        progress=progress,
    )
    print(written.markdown)
    print(f"wrote {written.stem}.json, .md and .png")
    return 0


@dataclass(frozen=True)
class Written:
    stem: Path  # results_dir / attribution_<model>_<variant>, without a suffix
    markdown: str
    document: JsonObject


def attribute_variant(
    config: SuiteConfig,
    model: str,
    variant: str,
    *,
    windows: int,
    ctx: int,
    results_dir: Path,
    cache_dir: Path,
    device: str,
    limit: float | None = None,
    footprint_mb: float | None = None,
    progress: Callable[[str], None] | None = None,
    run_id: str | None = None,
) -> Written:
    """Attribution of ``variant`` of ``model`` and a checked recommendation (for ``limit``, default the
    variant's ``max_kl_mean`` gate, or for ``footprint_mb``), written as JSON, Markdown and a chart.
    ``run_id``: the pytest run that asked for it (after a failed gate), kept in the JSON."""
    from quant_fixtures.compute.attribution import attribute_layers, recommend, recommend_for_memory
    from quant_fixtures.inputs.wikitext import load_wikitext2_test, tokenize_text
    from quant_fixtures.metrics.perplexity import nonoverlapping_windows
    from quant_fixtures.models.loading import load_model
    from quant_fixtures.models.sources import resolve_model
    from quant_fixtures.report.attribution_report import (
        attribution_chart,
        attribution_document,
        attribution_markdown,
    )
    from quant_fixtures.settings import LoadSettings
    from quant_fixtures.variants import VARIANTS

    say = progress or (lambda step: None)
    spec = config.models[model]
    resolved = resolve_model(spec, cache_dir)
    options = LoadSettings(device)
    fp16 = load_model(spec, resolved, VARIANTS["fp16"], options)
    quantized = load_model(spec, resolved, VARIANTS[variant], options).model
    ids = tokenize_text(fp16.tokenizer, load_wikitext2_test("vendored").text)
    read = nonoverlapping_windows(ids.numel(), ctx, windows * ctx)
    attribution = attribute_layers(fp16.model, quantized, ids, read, len(read), progress=say)
    gates = config.gates_for(model, variant)
    limit = limit if limit is not None else gates.get("max_kl_mean")
    max_delta_ppl = gates.get("max_delta_ppl_pct")  # within its gates: ΔPPL's too
    advice = None
    if footprint_mb is not None:
        say(f"recommendation for a footprint of {footprint_mb} MB")
        advice = recommend_for_memory(attribution, int(footprint_mb * 1e6), fp16.model, quantized, ids, read, len(read))
    elif limit is not None:
        ppl = f" and ΔPPL <= {max_delta_ppl} %" if max_delta_ppl is not None else ""
        say(f"recommendation for KL <= {limit}{ppl}")
        advice = recommend(attribution, limit, fp16.model, quantized, ids, read, len(read), max_delta_ppl)
    document = attribution_document(model, variant, len(read), ctx, attribution, advice)
    document["run_id"] = run_id
    stem = results_dir / f"attribution_{model}_{variant}"
    results_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(file_in(results_dir, f"{stem.name}.json"), document)
    markdown = attribution_markdown(model, variant, attribution, advice)
    write_text_atomic(file_in(results_dir, f"{stem.name}.md"), markdown)
    attribution_chart(model, variant, attribution, file_in(results_dir, f"{stem.name}.png"))
    return Written(stem, markdown, document)


if __name__ == "__main__":
    sys.exit(main())
