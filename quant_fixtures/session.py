"""The evaluation session: loads each (model, variant) once, evaluates it, writes its reports.

Data flows one way: config -> resolved model -> loaded variant -> perplexity windows -> metrics
-> report + gates. Tests read finished evaluation documents from here; they never recompute.
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .baseline import Baseline, BaselineKey, StaleBaselineError, load_baseline, store_baseline
from .config import SuiteConfig
from .data import EvalText, load_wikitext2_test, tokenize_text
from .evaluation import check_output_head, score_windows
from .gates import evaluate_gates
from .metrics.divergence import METRICS_VERSION
from .metrics.perplexity import nonoverlapping_windows, strided_windows
from .metrics.stats import delta_pct
from .models import ResolvedModel, load_model, release, resolve_model
from .report import (SCHEMA_VERSION, comparison_document, comparison_path, environment, evaluation_path, now_utc,
                     write_json_atomic)
from .variants import BASELINE_VARIANT, VARIANTS, VariantOptions

log = logging.getLogger("quant_fixtures")
GB = 1e9


@dataclass(frozen=True)
class RunOptions:
    """The run's choices, parsed once from the command line."""

    models: list[str]
    variants: list[str]
    ctx: int
    ppl_max_tokens: int | None  # None: whole test split; resolved per device by the plugin
    ppl_stride: int | None
    results_dir: Path
    baselines_dir: Path
    cache_dir: Path
    batch_size: int
    device: str
    weight_dtype: str = "float16"
    nf4_compute_dtype: str | None = None
    nf4_double_quant: bool = False
    dataset_source: str = "auto"
    frozen_baselines: bool = False
    gate_mode: str = "enforce"  # "enforce" fails gate tests; "report" records verdicts only

    @property
    def compute_dtype(self) -> str:
        return self.weight_dtype if self.device.startswith("cuda") else "float32"

    def variant_options(self) -> VariantOptions:
        return VariantOptions(weight_dtype=self.weight_dtype, compute_dtype=self.compute_dtype,
                              nf4_compute_dtype=self.nf4_compute_dtype, nf4_double_quant=self.nf4_double_quant)


@dataclass
class EvaluationSession:
    config: SuiteConfig
    options: RunOptions
    evaluations: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)
    _text: EvalText | None = None
    _resolved: dict[str, ResolvedModel] = field(default_factory=dict)
    _tokens: dict[str, Any] = field(default_factory=dict)

    # -- inputs ------------------------------------------------------------------------------
    def text(self) -> EvalText:
        if self._text is None:
            self._text = load_wikitext2_test(self.options.dataset_source)
        return self._text

    def resolved(self, model: str) -> ResolvedModel:
        if model not in self._resolved:
            self._resolved[model] = resolve_model(self.config.models[model], self.options.cache_dir)
        return self._resolved[model]

    def token_ids(self, model: str, tokenizer: Any) -> Any:
        """The corpus tokenized once per model (all variants share the tokenizer)."""
        if model not in self._tokens:
            self._tokens[model] = tokenize_text(tokenizer, self.text().text)
        return self._tokens[model]

    def ctx_for(self, model_config: Any) -> int:
        limit = getattr(model_config, "max_position_embeddings", None)
        return min(self.options.ctx, limit) if limit else self.options.ctx

    def windows(self, n_tokens: int, ctx: int) -> list:
        o = self.options
        if o.ppl_stride:
            return strided_windows(n_tokens, ctx, o.ppl_stride, o.ppl_max_tokens)
        return nonoverlapping_windows(n_tokens, ctx, o.ppl_max_tokens)

    def baseline_key(self, model: str, ctx: int) -> BaselineKey:
        o = self.options
        return BaselineKey(
            model=model, weights_identity=self.resolved(model).identity, dataset_sha256=self.text().sha256,
            method="strided" if o.ppl_stride else "nonoverlapping", ctx=ctx, stride=o.ppl_stride,
            max_tokens=o.ppl_max_tokens, weight_dtype=o.weight_dtype, compute_dtype=o.compute_dtype,
            device_type=o.device.split(":")[0], metrics_version=METRICS_VERSION)

    # -- evaluation ------------------------------------------------------------------------------
    def baseline(self, model: str, ctx: int) -> Baseline:
        """The stored FP16 evaluation for the current settings, computed first if needed."""
        key = self.baseline_key(model, ctx)
        stored, reason = load_baseline(self.options.baselines_dir, key)
        if stored is not None:
            return stored
        if self.options.frozen_baselines:
            raise StaleBaselineError(f"--frozen-baselines: {reason}")
        log.warning("computing the FP16 baseline of %s: %s", model, reason)
        self.evaluate(model, BASELINE_VARIANT)
        stored, reason = load_baseline(self.options.baselines_dir, key)
        if stored is None:
            raise RuntimeError(f"FP16 baseline of {model} was computed but cannot be read back: {reason}")
        return stored

    def evaluate(self, model: str, variant: str) -> dict[str, Any]:
        """Evaluate one pair (once per session) and write its report; returns the document."""
        done = self.evaluations.get(model, {}).get(variant)
        if done is not None:
            return done
        spec, spec_variant = self.config.models[model], VARIANTS[variant]
        resolved = self.resolved(model)
        baseline: Baseline | None = None
        if not spec_variant.is_baseline:
            # Needs a loaded config for ctx; the FP16 pass (if any) runs before this variant loads.
            from transformers import AutoConfig

            ctx = self.ctx_for(AutoConfig.from_pretrained(resolved.directory, trust_remote_code=spec.trust_remote_code))
            baseline = self.baseline(model, ctx)
        loaded = load_model(spec, resolved, spec_variant, self.options.variant_options(), self.options.device)
        try:
            document = self._measure(model, variant, loaded, baseline)
        finally:
            release(loaded)
        self.evaluations.setdefault(model, {})[variant] = document
        write_json_atomic(evaluation_path(self.options.results_dir, model, variant), document)
        write_json_atomic(comparison_path(self.options.results_dir, model),
                          comparison_document(model, self.evaluations[model]))
        return document

    def _measure(self, model: str, variant: str, loaded: Any, baseline: Baseline | None) -> dict[str, Any]:
        import torch

        o = self.options
        check_output_head(loaded.model)
        ids = self.token_ids(model, loaded.tokenizer)
        ctx = self.ctx_for(loaded.model.config)
        plan = self.windows(len(ids), ctx)
        on_cuda = o.device.startswith("cuda")
        if on_cuda:
            torch.cuda.reset_peak_memory_stats(o.device)
        bar = _progress(len(plan), f"{model} {variant} perplexity")
        try:
            scores = score_windows(loaded.model, ids, plan, o.batch_size, progress=bar.update if bar else None)
        finally:
            if bar:
                bar.close()
        peak = torch.cuda.max_memory_allocated(o.device) / GB if on_cuda else None
        if baseline is None:  # this is the FP16 pass: it becomes the stored baseline
            baseline = Baseline(key=self.baseline_key(model, ctx), ppl=scores.ppl, window_nll=scores.window_nll,
                                window_tokens=scores.window_tokens, footprint_bytes=loaded.footprint_bytes)
            store_baseline(o.baselines_dir, baseline)
        if baseline.window_tokens != scores.window_tokens:
            raise RuntimeError(f"{model} {variant}: perplexity windows differ from the FP16 baseline's")
        return self._document(model, variant, loaded, ctx, plan, scores, baseline, peak)

    def _document(self, model, variant, loaded, ctx, plan, scores, baseline, peak) -> dict[str, Any]:
        o, text = self.options, self.text()
        footprint, fp16_footprint = loaded.footprint_bytes / GB, baseline.footprint_bytes / GB
        ppl = scores.ppl
        metrics = {"delta_ppl_pct": delta_pct(ppl, baseline.ppl),
                   "memory_reduction_pct": 100.0 * (1.0 - footprint / fp16_footprint)}
        gates = [] if VARIANTS[variant].is_baseline else evaluate_gates(self.config.gates_for(model, variant), metrics)
        method = "strided" if o.ppl_stride else "nonoverlapping"
        return {
            "schema_version": SCHEMA_VERSION,
            "generated_at": now_utc(),
            "model": {"key": model, "source": self.config.models[model].source,
                      "weights_identity": self.resolved(model).identity},
            "variant": {"key": variant, "method": VARIANTS[variant].method,
                        "description": VARIANTS[variant].description,
                        "quantization_config": loaded.quantization_config,
                        "weight_dtype": loaded.weight_dtype, "compute_dtype": loaded.compute_dtype},
            "environment": environment(o.device),
            "perplexity": {
                "ppl": ppl, "fp16_ppl": baseline.ppl, "delta_ppl_pct": metrics["delta_ppl_pct"],
                "tokens": scores.tokens, "windows": len(plan), "ctx": ctx, "stride": o.ppl_stride,
                "method": method, "max_tokens": o.ppl_max_tokens, "batch_size": o.batch_size,
                "dataset": "wikitext-2-raw-v1 test", "dataset_source": text.source,
                "dataset_sha256": text.sha256, "protocol": _protocol_text(method, ctx, o.ppl_stride),
                "window_nll": scores.window_nll, "window_tokens": scores.window_tokens,
            },
            "memory": {"footprint_gb": footprint, "fp16_footprint_gb": fp16_footprint,
                       "reduction_pct": metrics["memory_reduction_pct"],
                       "compression_ratio": fp16_footprint / footprint, "peak_gb": peak,
                       "footprint_method": "model.get_memory_footprint() as loaded, before any CPU upcast"},
            "timing": {"load_s": loaded.load_seconds, "ppl_s": scores.seconds,
                       "ppl_tokens_per_s": scores.tokens / scores.seconds if scores.seconds else None},
            "gates": [g.to_dict() for g in gates],
        }


def _protocol_text(method: str, ctx: int, stride: int | None) -> str:
    common = ("WikiText-2 raw test rows joined with '\\n\\n', tokenized once with the model's tokenizer "
              "(default special tokens); ")
    tail = ("PPL = exp(sum of token NLL / scored tokens), natural log; log-softmax in float32 over the "
            "full vocabulary, sums in float64.")
    if method == "strided":
        return common + (f"windows of up to {ctx} tokens starting every {stride} tokens (Hugging Face "
                         "perplexity guide); each scores only tokens no earlier window scored; ") + tail
    return common + (f"consecutive non-overlapping windows of {ctx} tokens from the start, incomplete tail "
                     f"dropped; each window scores its tokens 2..{ctx} from the tokens before them in the "
                     "window; ") + tail


def _progress(total: int, desc: str) -> Any:
    """A tqdm bar on an interactive terminal, nothing otherwise."""
    if not sys.stderr.isatty():
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="win", leave=False)
