"""After a run whose release verdict has a KL or ΔPPL gate shown beyond its limit: the per-layer
attribution and checked recommendation of that (model, variant) (quant_fixtures.attribute), when
it fits ``--attribute-budget`` seconds and memory holds the 16-bit and the quantized model at once.
A pair it does not fit gets a line saying why and the command that does it."""

from __future__ import annotations

import os
import traceback
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest

from quant_fixtures.config import DEFAULT_CONFIG_PATH, SuiteConfig
from quant_fixtures.metrics.decision import JointVerdict
from quant_fixtures.report.schema import EvaluationDocument
from quant_fixtures.variants import QUANTIZATION_METHODS

# The gates whose harm attribution explains: KL and ΔPPL, over prompts, the corpus and long context.
ATTRIBUTED_METRICS = frozenset(
    {"kl_mean", "kl_p99", "corpus_kl_mean", "delta_ppl_pct", "long_kl_mean", "long_delta_ppl_pct"}
)
WINDOWS, CTX = 4, 256  # the attribution budget: the command's defaults
DEFAULT_BUDGET_S = 120.0
LINES_KEY = pytest.StashKey[list[str]]()


def add_attribution_option(group: pytest.OptionGroup) -> None:
    group.addoption(
        "--attribute-budget",
        type=float,
        default=DEFAULT_BUDGET_S,
        metavar="SECONDS",
        help="after a KL or ΔPPL gate is shown beyond its limit, attribute that variant's harm to its layers "
        "(python -m quant_fixtures.attribute) when estimated within this many seconds and memory holds both "
        f"models (default {DEFAULT_BUDGET_S:g}; 0: never)",
    )


def attribute_after_failed_gates(
    config: pytest.Config, documents: Mapping[str, Mapping[str, EvaluationDocument]], verdict: JointVerdict
) -> None:
    """The controller's step after the verdict and before REPORT.md: attribute what fits, and keep a
    line per failed pair for the terminal summary (LINES_KEY)."""
    from quant_fixtures.plugin.cli import settings_of, suite_of
    from quant_fixtures.plugin.state import session_of
    from quant_fixtures.plugin.workers import run_id

    pairs = failed_pairs(verdict, documents)
    if not pairs:
        return
    settings, session = settings_of(config), session_of(config)
    layers = {m: session.models.model_config(m).get_text_config().num_hidden_layers for m, _ in pairs}
    free = free_bytes(settings.load.device, settings.load.max_gpu_memory)
    plans = plan(pairs, documents, layers, config.getoption("--attribute-budget"), free)
    config.stash[LINES_KEY] = attribute_failed(
        suite_of(config),
        plans,
        results_dir=settings.paths.results_dir,
        cache_dir=settings.paths.cache_dir,
        device=settings.load.device,
        run_id=run_id(config),
    )


MEMORY_MARGIN = 1.2  # activations and the allocator's slack beside the two models' weights


@dataclass(frozen=True)
class Plan:
    model: str
    variant: str
    gates: list[str]  # the failed gates that asked for it
    seconds: float  # estimated
    run: bool
    why_not: str | None = None

    def command(self, config: SuiteConfig, device: str) -> str:
        """The command that does it by hand: this run's suite config and device where not the defaults."""
        extra = "" if config.path == DEFAULT_CONFIG_PATH else f" --suite-config {config.path}"
        extra += "" if device == "cpu" else f" --device {device}"
        return f"python -m quant_fixtures.attribute --model {self.model} --variant {self.variant}{extra}"


def failed_pairs(
    verdict: JointVerdict, documents: Mapping[str, Mapping[str, EvaluationDocument]]
) -> dict[tuple[str, str], list[str]]:
    """(model, variant) -> the KL and ΔPPL gates of that pair the verdict shows beyond their limits,
    for variants that are registered quantization methods (what the attribution can load)."""
    beyond = set(verdict.beyond)
    found: dict[tuple[str, str], list[str]] = {}
    for model, by_variant in documents.items():
        for key, document in by_variant.items():
            if key not in QUANTIZATION_METHODS:
                continue
            gates = [g.metric for g in document.gates if g.metric in ATTRIBUTED_METRICS]
            failed = [g for g in gates if f"{model} {key} {g}" in beyond]
            if failed:
                found[model, key] = failed
    return found


def estimate_seconds(layers: int, variant: EvaluationDocument, fp16: EvaluationDocument | None) -> float:
    """Two loads and 2 + 2 x layers reads of WINDOWS x CTX tokens (plus two for the recommendation),
    each at the slower of the two models' measured perplexity throughput."""
    rates = [d.timing.ppl_tokens_per_s for d in (variant, fp16) if d is not None and d.timing.ppl_tokens_per_s]
    if not rates:
        return float("inf")
    reads = 2 + 2 * layers + 2
    loads = variant.timing.load_s + (fp16.timing.load_s if fp16 is not None else variant.timing.load_s)
    return loads + reads * WINDOWS * CTX / min(rates)


def free_bytes(device: str, cap_bytes: int | None) -> int | None:
    """What a new allocation may use: the GPU's limit less what is held, or the host's available
    memory (None where it cannot be read)."""
    if device.startswith("cuda"):
        from quant_fixtures.compute.memory import MemoryBudget

        return MemoryBudget(device, cap_bytes).free()
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError):
        return None


def plan(
    pairs: Mapping[tuple[str, str], list[str]],
    documents: Mapping[str, Mapping[str, EvaluationDocument]],
    layers_of: Mapping[str, int],
    budget_s: float,
    free: int | None,
) -> list[Plan]:
    """Which failed pairs to attribute now: estimated within ``budget_s`` seconds (0: none), and the
    16-bit and quantized weights (with MEMORY_MARGIN) within ``free`` bytes."""
    plans = []
    for (model, key), gates in pairs.items():
        document, fp16 = documents[model][key], documents[model].get("fp16")
        seconds = estimate_seconds(layers_of[model], document, fp16)
        need = MEMORY_MARGIN * (document.memory.footprint_gb + document.memory.fp16_footprint_gb) * 1e9
        why = None
        if budget_s <= 0:
            why = f"--attribute-budget {budget_s:g}"
        elif seconds > budget_s:
            why = f"estimated {seconds:.0f} s > --attribute-budget {budget_s:g} s"
        elif free is not None and need > free:
            why = f"the 16-bit and quantized models need about {need / 2**30:.1f} GiB, {free / 2**30:.1f} GiB free"
        plans.append(Plan(model, key, gates, seconds, why is None, why))
    return plans


def attribute_failed(
    config: SuiteConfig,
    plans: list[Plan],
    *,
    results_dir: Path,
    cache_dir: Path,
    device: str,
    run_id: str,
) -> list[str]:
    """Run the planned attributions; one terminal line per failed pair (what was written, or why not)."""
    from quant_fixtures.attribute import attribute_variant

    lines = []
    for p in plans:
        which = f"per-layer harm of {p.model} {p.variant} ({', '.join(p.gates)} beyond)"
        if not p.run:
            lines.append(f"{which}: not run, {p.why_not}: {p.command(config, device)}")
            continue
        try:
            written = attribute_variant(
                config,
                p.model,
                p.variant,
                windows=WINDOWS,
                ctx=CTX,
                results_dir=results_dir,
                cache_dir=cache_dir,
                device=device,
                run_id=run_id,
            )
        except Exception as exc:  # an explanation that fails must not cost the run its verdict or REPORT.md
            traceback.clear_frames(exc.__traceback__)  # its frames hold both models
            if device.startswith("cuda"):
                import torch

                torch.cuda.empty_cache()
            reason = (str(exc).splitlines() or [""])[0][:300]
            lines.append(f"{which}: failed ({type(exc).__name__}: {reason}): {p.command(config, device)}")
            continue
        ranked = written.document["ranked"]
        top = ranked[:3] if isinstance(ranked, list) else []
        lines.append(f"{which}: layers {top} first; {written.stem}.md")
    return lines
