"""The evaluation session: loads each (model, variant) once, evaluates it, writes its reports.

Data flows one way: config -> resolved model -> loaded variant -> perplexity windows and prompt
scores -> metrics -> report + gates. Tests read finished evaluation documents from here.
The FP16 pass of a model produces three stored references: the perplexity baseline (small JSON in
baselines/), the corpus top-k log-probs and the prompt reference (both safetensors in the cache).
A quantized variant needs all three; if one is missing or stale the FP16 pass runs first.
"""

from __future__ import annotations

import json
import logging
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any, Iterator

from quant_fixtures.store.atomic import file_lock, write_json_atomic
from quant_fixtures.store.baseline import Baseline, BaselineKey, StaleBaselineError, load_baseline, store_baseline
from quant_fixtures.config import LIMITS, SuiteConfig
from quant_fixtures.compute.corpus_kl import (CORPUS_TOP_K, KLAgainstReference, TopkRecorder, corpus_reference_path,
                        load_corpus_reference, store_corpus_reference)
from quant_fixtures.inputs.wikitext import EvalText, load_wikitext2_test, tokenize_text
from quant_fixtures.report.build import Measurements, evaluation_document
from quant_fixtures.compute.scoring import check_output_head, score_windows
from quant_fixtures.metrics.divergence import METRICS_VERSION
from quant_fixtures.metrics.perplexity import nonoverlapping_windows, strided_windows
from quant_fixtures.models.loading import ResolvedModel, load_model, release, resolve_model
from quant_fixtures.session.prompt_stage import PROMPT_SUMMARY_SCHEMA, close_bar, progress_bar, prompt_stage, prompt_summary_path
from quant_fixtures.inputs.prompts import Prompt, load_prompt_suite, suite_sha256
from quant_fixtures.store.records import read_record
from quant_fixtures.store.prompt_reference import PromptReference, ReferenceKey, load_reference, tokenizer_sha256
from quant_fixtures.report.comparison import collect_comparable_documents, comparison_document, comparison_path, evaluation_path
from quant_fixtures.settings import RunOptions
from quant_fixtures.variants import BASELINE_VARIANT, VARIANTS

log = logging.getLogger("quant_fixtures")
GB = 1e9


@dataclass
class References:
    baseline: Baseline
    corpus: dict[str, Any] | None
    prompts: PromptReference | None
    noise_floor: dict[str, Any] | None


@dataclass
class EvaluationSession:
    config: SuiteConfig
    options: RunOptions
    evaluations: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)
    _text: EvalText | None = None
    _prompts: list[Prompt] | None = None
    _resolved: dict[str, ResolvedModel] = field(default_factory=dict)
    _tokens: dict[str, Any] = field(default_factory=dict)
    _configs: dict[str, Any] = field(default_factory=dict)
    _reference_keys: dict[str, ReferenceKey] = field(default_factory=dict)
    _tokenizer_ids: dict[str, str] = field(default_factory=dict)
    _locks: dict[str, Any] = field(default_factory=dict)
    _environment: dict[str, Any] | None = None
    _failed: dict[tuple[str, str], str] = field(default_factory=dict)
    _stage: str = "start"

    def environment(self) -> dict[str, Any]:
        """This run's fingerprint (versions, device, CPU ISA), taken once."""
        if self._environment is None:
            from quant_fixtures.environment import fingerprint

            self._environment = fingerprint(self.options.device)
        return self._environment

    def numerics(self) -> dict[str, Any]:
        """The parts of the environment that change FP16 numbers: in every stored reference's key."""
        from quant_fixtures.environment import numerics_key

        return numerics_key(self.environment())

    def fp16_lock(self, model: str) -> Any:
        """Serialises FP16 passes across xdist workers: one computes, the others wait and read.
        One (reentrant) lock object per model and process."""
        if model not in self._locks:
            self._locks[model] = file_lock(self.options.cache_dir / "locks" / f"{model}.lock")
        return self._locks[model]

    # -- inputs -----------------------------------------------------------------------------------
    def text(self) -> EvalText:
        if self._text is None:
            self._text = load_wikitext2_test(self.options.dataset_source)
        return self._text

    def prompts(self) -> list[Prompt]:
        if self._prompts is None:
            self._prompts = load_prompt_suite(self.options.prompts_path, self.options.categories)
        return self._prompts

    def resolved(self, model: str) -> ResolvedModel:
        if model not in self._resolved:
            self._resolved[model] = resolve_model(self.config.models[model], self.options.cache_dir)
        return self._resolved[model]

    def model_config(self, model: str) -> Any:
        """The model's transformers config, read once per session."""
        if model not in self._configs:
            from transformers import AutoConfig

            spec = self.config.models[model]
            self._configs[model] = AutoConfig.from_pretrained(self.resolved(model).directory,
                                                              trust_remote_code=spec.trust_remote_code)
        return self._configs[model]

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

    def tokenizer_identity(self, model: str) -> str:
        """sha256 of how the model's tokenizer turns text into ids (read once per model)."""
        if model not in self._tokenizer_ids:
            from transformers import AutoTokenizer

            spec = self.config.models[model]
            tok = AutoTokenizer.from_pretrained(self.resolved(model).directory, trust_remote_code=spec.trust_remote_code)
            self._tokenizer_ids[model] = tokenizer_sha256(tok)
        return self._tokenizer_ids[model]

    def baseline_key(self, model: str, ctx: int) -> BaselineKey:
        o = self.options
        return BaselineKey(
            model=model, weights_identity=self.resolved(model).identity,
            tokenizer_sha256=self.tokenizer_identity(model), dataset_sha256=self.text().sha256,
            method="strided" if o.ppl_stride else "nonoverlapping", ctx=ctx, stride=o.ppl_stride,
            max_tokens=o.ppl_max_tokens, weight_dtype=o.weight_dtype, compute_dtype=o.compute_dtype,
            device_type=o.device.split(":")[0], metrics_version=METRICS_VERSION, environment=self.numerics())

    def reference_key(self, model: str) -> ReferenceKey:
        """The prompt reference's key, built once per model (it reads the tokenizer and hashes files)."""
        if model not in self._reference_keys:
            self._reference_keys[model] = self._make_reference_key(model)
        return self._reference_keys[model]

    def _make_reference_key(self, model: str) -> ReferenceKey:
        o = self.options
        return ReferenceKey(
            model=model, weights_identity=self.resolved(model).identity, tokenizer_sha256=self.tokenizer_identity(model),
            prompts_sha256=suite_sha256(o.prompts_path), categories=o.categories, use_chat_template=o.use_chat_template,
            max_new_tokens_cap=o.max_new_tokens_cap, top_k=o.top_k, full_logprobs=self._exact_kl_fits(model),
            weight_dtype=o.weight_dtype,
            compute_dtype=o.compute_dtype, device_type=o.device.split(":")[0], metrics_version=METRICS_VERSION,
            environment=self.numerics())

    def _exact_kl_fits(self, model: str) -> bool:
        """Whether the whole FP16 distribution at every response position (float32) fits the
        --exact-kl-max-mb budget, counted at each prompt's maximum response length."""
        vocab = self.model_config(model).vocab_size
        cap = self.options.max_new_tokens_cap
        positions = sum(min(p.max_new_tokens, cap or p.max_new_tokens) for p in self.prompts())
        return positions * vocab * 4 <= self.options.exact_kl_max_mb * 2**20

    # -- stored FP16 references --------------------------------------------------------------------
    def stored_references(self, model: str, ctx: int) -> tuple[References | None, str]:
        """All FP16 references for the current settings, or None and why they cannot be used."""
        key = self.baseline_key(model, ctx)
        baseline, reason = load_baseline(self.options.baselines_dir, key)
        if baseline is None:
            return None, reason
        corpus = load_corpus_reference(corpus_reference_path(self.options.cache_dir, key.digest(), CORPUS_TOP_K),
                                       key.digest(), baseline.tokens)
        if corpus is None and not self.options.ppl_stride:
            return None, "FP16 corpus top-k log-probs missing or stale in the cache"
        prompts, noise = None, None
        if not self.options.skip_prompts:
            rkey = self.reference_key(model)
            prompts, reason = load_reference(self.options.cache_dir, rkey)
            if prompts is None:
                return None, reason
            summary, reason = read_record(prompt_summary_path(self.options, rkey), PROMPT_SUMMARY_SCHEMA, asdict(rkey),
                                          ("noise_floor", "responses"), "FP16 prompt summary")
            if summary is None:  # corrupt or stale: the FP16 pass rebuilds it (the noise floor with it)
                return None, reason
            noise = summary["noise_floor"]
        return References(baseline, corpus, prompts, noise), "ok"

    def references(self, model: str, ctx: int) -> References:
        with self.fp16_lock(model):
            refs, reason = self.stored_references(model, ctx)
            if refs is not None:
                return refs
            if self.options.frozen_baselines:
                raise StaleBaselineError(f"--frozen-baselines: {model}: {reason}")
            log.warning("running the FP16 pass of %s first: %s", model, reason)
            try:
                self.evaluate(model, BASELINE_VARIANT)
            except EvaluationFailed as exc:
                raise EvaluationFailed(f"the FP16 pass this variant is compared with failed: {exc}") from None
            refs, reason = self.stored_references(model, ctx)
        if refs is None:
            raise RuntimeError(f"FP16 references of {model} were computed but cannot be read back: {reason}")
        return refs

    # -- evaluation -------------------------------------------------------------------------------
    def evaluate(self, model: str, variant: str) -> dict[str, Any]:
        """Evaluate one pair (once per session) and write its reports; returns the document.

        Running out of memory fails this pair only, with one line naming model, variant and stage;
        the model is released and the other pairs run. A failure is remembered for the session."""
        done = self.evaluations.get(model, {}).get(variant) or self._from_other_worker(model, variant)
        if done is not None:
            return done
        if (model, variant) in self._failed:
            raise EvaluationFailed(self._failed[model, variant])
        self._stage = "start"
        try:
            return self._evaluate(model, variant)
        except EvaluationFailed as exc:
            self._failed[model, variant] = str(exc)
            raise
        except Exception as exc:
            if not is_out_of_memory(exc):
                raise
            first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            self._failed[model, variant] = f"{model} {variant}: out of memory in stage {self._stage}: {first_line}"
            raise EvaluationFailed(self._failed[model, variant]) from None

    @contextmanager
    def in_stage(self, name: str) -> Iterator[None]:
        """Names the stage an error (out of memory) happened in."""
        self._stage = name
        yield

    def _evaluate(self, model: str, variant: str) -> dict[str, Any]:
        spec, var = self.config.models[model], VARIANTS[variant]
        refs = None
        if not var.is_baseline:
            refs = self.references(model, self.ctx_for(self.model_config(model)))  # may run the FP16 pass first
        with self.fp16_lock(model) if var.is_baseline else _no_lock():
            with self.in_stage("load"):
                loaded = load_model(spec, self.resolved(model), var, self.options.variant_options(),
                                    self.options.device)
            try:
                measured = self._measure(model, var, loaded, refs)
            finally:
                release(loaded)
        limits = self.config.gates_for(model, variant)
        ungated = {LIMITS[name].metric: f"opted out with ungated in {self.config.path}"
                   for name in self.config.ungated_for(model, variant)}
        if self.options.skip_prompts and limits.pop("max_mean_kl", None) is not None:
            ungated["kl_mean"] = "--skip-prompts: prompt KL was not measured"
        document = evaluation_document(measured, self.options, limits, ungated)
        self.evaluations.setdefault(model, {})[variant] = document
        results = self.options.results_dir
        write_json_atomic(evaluation_path(results, model, variant), document)
        with file_lock(results / f".{model}.lock"):  # workers each add their variants
            comparable = collect_comparable_documents(results, self.options.run_id).get(model, {})
            write_json_atomic(comparison_path(results, model), comparison_document(model, comparable))
        return document

    def _from_other_worker(self, model: str, variant: str) -> dict[str, Any] | None:
        """A document this run already wrote (another xdist worker evaluated the pair)."""
        try:
            doc = json.loads(evaluation_path(self.options.results_dir, model, variant).read_text())
        except (OSError, ValueError):
            return None
        if not isinstance(doc, dict) or doc.get("run_id") != self.options.run_id:
            return None
        self.evaluations.setdefault(model, {})[variant] = doc
        return doc

    def _measure(self, model: str, var: Any, loaded: Any, refs: References | None) -> Measurements:
        import torch

        o = self.options
        check_output_head(loaded.model)
        ids = self.token_ids(model, loaded.tokenizer)
        ctx = self.ctx_for(loaded.model.config)
        plan = self.windows(len(ids), ctx)
        on_cuda = o.device.startswith("cuda")
        if on_cuda:
            torch.cuda.reset_peak_memory_stats(o.device)
        hook: Any = None
        if not o.ppl_stride:
            hook = TopkRecorder(len(plan)) if refs is None else (
                KLAgainstReference(refs.corpus, refs.baseline.window_tokens) if refs.corpus is not None else None)
        bar = progress_bar(len(plan), f"{model} {var.key} perplexity", "win")
        with self.in_stage("perplexity"):
            scores = score_windows(loaded.model, ids, plan, self.batching(var)["perplexity_windows_per_pass"],
                                   hook=hook, progress=bar.update if bar else None)
        close_bar(bar)
        peak = torch.cuda.max_memory_allocated(o.device) / GB if on_cuda else None
        if refs is None:  # the FP16 pass: its results become the stored references
            key = self.baseline_key(model, ctx)
            baseline = Baseline(key=key, ppl=scores.ppl, window_nll=scores.window_nll,
                                window_tokens=scores.window_tokens, footprint_bytes=loaded.footprint_bytes)
            store_baseline(o.baselines_dir, baseline, self.environment())
            if isinstance(hook, TopkRecorder):
                store_corpus_reference(corpus_reference_path(o.cache_dir, key.digest(), CORPUS_TOP_K), hook.tensors(),
                                       key.digest())
            corpus_kl = None
        else:
            baseline = refs.baseline
            if baseline.window_tokens != scores.window_tokens:
                raise RuntimeError(f"{model} {var.key}: perplexity windows differ from the FP16 baseline's")
            corpus_kl = hook.acc.result() if isinstance(hook, KLAgainstReference) else None
            if corpus_kl is not None:
                corpus_kl["method"] = (f"KL(P_fp16 || Q_variant) in nats at every scored WikiText-2 position of the "
                                       f"perplexity pass, over the FP16 top-{CORPUS_TOP_K} tokens plus one bucket "
                                       "for the rest; same_top1_rate: argmax agreement")
        kl = flips = noise = None
        prompt_seconds = None
        if not o.skip_prompts:
            start = time.perf_counter()
            kl, flips, noise = prompt_stage(self, model, var, loaded, refs)
            prompt_seconds = time.perf_counter() - start
        return Measurements(
            model=model, variant=var, loaded=loaded, source=self.config.models[model].source,
            note=self.config.models[model].note,
            weights_identity=self.resolved(model).identity, ctx=ctx, windows=len(plan), scores=scores,
            baseline=baseline, peak_gb=peak, dataset_source=self.text().source, dataset_sha256=self.text().sha256,
            corpus_kl=corpus_kl, kl=kl, flips=flips, noise_floor=noise, prompt_seconds=prompt_seconds,
            batching=self.batching(var), environment=self.environment(),
            keys={"baseline_sha256": baseline.key.digest(),
                  "reference_sha256": None if o.skip_prompts else self.reference_key(model).digest()})

    def batching(self, var: Any) -> dict[str, Any]:
        """Sequences per forward pass. A variant whose kernels depend on the batch (LLM.int8 picks
        outlier columns over the whole batch) is scored one sequence per pass, so its numbers do
        not depend on the other windows, prompts or the batch size; its generation stays batched
        and how much it moves with the batch composition is measured (flips.batch_sensitivity)."""
        o = self.options
        alone = not var.batch_invariant
        return {"perplexity_windows_per_pass": 1 if alone else o.batch_size,
                "prompt_scoring_per_pass": 1 if alone else o.score_batch_size,
                "generation_batch": o.gen_batch_size, "batch_invariant": var.batch_invariant}

class EvaluationFailed(RuntimeError):
    """One (model, variant) could not be evaluated; the message is one line."""


def is_out_of_memory(exc: BaseException) -> bool:
    """CUDA's OutOfMemoryError, Python's MemoryError, or the CPU allocator's RuntimeError."""
    import torch

    if isinstance(exc, (torch.OutOfMemoryError, MemoryError)):
        return True
    return isinstance(exc, RuntimeError) and ("out of memory" in str(exc) or "can't allocate memory" in str(exc))


@contextmanager
def _no_lock() -> Iterator[None]:
    yield
