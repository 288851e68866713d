"""The evaluation session: evaluates each (model, variant) once, in order, and writes its reports.

Data flows one way: settings -> the model resolved once (a ModelUnderTest) and what every pass shares
(corpus plans, text, prompts, references: SessionServices) -> loaded variant -> FP16 or variant pass ->
measurements -> document (with gates) -> JSON files. Tests read finished documents from here. A
quantized variant needs the model's FP16 references; when they are missing or stale, the FP16 pass
runs first.
"""

from __future__ import annotations

import logging
import re
import time
import traceback
from contextlib import nullcontext

from quant_fixtures.compute.memory import GiB, MemoryBudget, is_out_of_memory, require_executor, strict_executor
from quant_fixtures.config import SuiteConfig
from quant_fixtures.environment import process_age
from quant_fixtures.metrics.registry import GATEABLE
from quant_fixtures.models.loading import load_model, release
from quant_fixtures.names import file_in
from quant_fixtures.report.build import evaluation_document
from quant_fixtures.report.comparison import (
    collect_comparable_documents,
    comparison_document,
    comparison_path,
    evaluation_path,
)
from quant_fixtures.report.schema import EvaluationDocument, SchemaError, read_document, write_document
from quant_fixtures.session.context import PassContext, SessionServices
from quant_fixtures.session.corpus_plans import CorpusPlans
from quant_fixtures.session.inputs import CorpusText, PromptSuite, RunEnvironment
from quant_fixtures.session.model_facts import ModelFacts, ModelUnderTest
from quant_fixtures.session.passes import fp16_pass, variant_pass
from quant_fixtures.session.progress import ProgressSink, StageProgress
from quant_fixtures.session.references import References, ReferenceStore
from quant_fixtures.settings import RunSettings
from quant_fixtures.store.atomic import file_lock
from quant_fixtures.store.baseline import StaleBaselineError
from quant_fixtures.variants import BASELINE_VARIANT

log = logging.getLogger("quant_fixtures")


class EvaluationFailed(RuntimeError):
    """One (model, variant) could not be evaluated; the message is one line."""


def out_of_memory_line(model: str, variant_key: str, stage: str, exc: BaseException, budget: MemoryBudget) -> str:
    """One line: the pair, the stage, what the failed allocation asked for and what the process had."""
    text = " ".join(str(exc).split())
    asked = re.search(r"[Tt]ried to allocate ([0-9.]+ ?[KMGT]?i?B)", text)
    need = f"needed {asked.group(1)} more" if asked else (text[:160] or type(exc).__name__)
    held, limit = budget.held(), budget.limit()
    had = (
        f"; {held / GiB:.2f} GiB held of the {limit / GiB:.2f} GiB this process may use"
        if held is not None and limit is not None
        else ""
    )
    return f"{model} {variant_key}: out of memory in stage {stage}: {need}{had}"


class EvaluationSession:
    def __init__(self, suite: SuiteConfig, settings: RunSettings, progress: ProgressSink | None = None) -> None:
        self.suite, self.settings, self.progress = suite, settings, progress  # progress: None shows none
        # What the passes read, each found once per run.
        self.models = ModelFacts(suite, settings.paths.cache_dir, settings.perplexity)
        self.corpus_text = CorpusText(settings.perplexity.dataset_source)
        self.plans = CorpusPlans(settings.perplexity, settings.paths.cache_dir, self.corpus_text)
        self.prompt_suite = PromptSuite(settings.prompts)
        self.environment = RunEnvironment(settings.load.device)
        self.references = ReferenceStore(settings, self.corpus_text, self.prompt_suite, self.environment)
        self.evaluations: dict[str, dict[str, EvaluationDocument]] = {}
        self._failed: dict[tuple[str, str], str] = {}
        # Enforced at the first evaluation, not here: an xdist controller builds a session for its
        # up-front checks and must not open a CUDA context on a worker's GPU.
        self.budget = MemoryBudget(settings.load.device, settings.load.max_gpu_memory)
        self.shared = SessionServices(
            settings=settings,
            corpus_text=self.corpus_text,
            plans=self.plans,
            prompt_suite=self.prompt_suite,
            environment=self.environment,
            references=self.references,
            budget=self.budget,
            progress=progress,
        )
        self._budget_enforced = False
        self._startup_s: float | None = process_age()  # reported once, by the first evaluation
        self._nested_s = 0.0  # wall time of FP16 passes that a variant's evaluation ran first
        self._gate_pairs: list[tuple[str, str]] | None = None  # the run's pairs (the plugin's collection)

    def use_gate_pairs(self, pairs: list[tuple[str, str]]) -> None:
        """The (model, variant) pairs whose gates this run decides together (what the selected tests
        evaluate): their number of sampled gates sets the level of FAIL (:meth:`gate_family`)."""
        self._gate_pairs = list(pairs)

    def gate_family(self) -> int:
        """How many sampled gates the run decides: a gate FAILs at alpha / this, so that the run's
        chance of a false FAIL is at most alpha (metrics/decision.family_alpha)."""
        pairs = self._gate_pairs
        if pairs is None:  # used without the plugin: every selected model with every selected variant
            pairs = [
                (m, v) for m in self.settings.models for v in self.settings.variants if v in self.suite.variant_keys(m)
            ]
        quantized = [(m, v) for m, v in pairs if not self.suite.variant(m, v).is_baseline]
        return sum(GATEABLE[name].sampled for m, v in quantized for name in self._gates(m, v)[0])

    def evaluate(self, model: str, variant_key: str) -> EvaluationDocument:
        """Evaluate one pair (once per session) and write its reports; returns the document.

        Running out of memory fails this pair only, with one line naming model, variant and stage;
        the model is released and the other pairs run. A failure is remembered for the session."""
        done = self.evaluations.get(model, {}).get(variant_key) or self._from_other_worker(model, variant_key)
        if done is not None:
            return done
        if (model, variant_key) in self._failed:
            raise EvaluationFailed(self._failed[model, variant_key])
        if self.suite.variant(model, variant_key).is_baseline:  # one FP16 pass per model and run, under its lock
            with self.references.lock(model):  # (a variant's worker may have run it first, for its references)
                return self._from_other_worker(model, variant_key) or self._evaluate_here(model, variant_key)
        # One worker evaluates a quantized pair; another that needs it (a whole-model test) waits
        # for its document instead of evaluating it again.
        with file_lock(file_in(self.settings.paths.results_dir, f".{model}-{variant_key}.evaluating.lock")):
            return self._from_other_worker(model, variant_key) or self._evaluate_here(model, variant_key)

    def _evaluate_here(self, model: str, variant_key: str) -> EvaluationDocument:
        if not self._budget_enforced:
            self.budget.enforce()
            self._budget_enforced = True
        pair = f"{model} {variant_key}"
        run = PassContext(shared=self.shared, pair=pair)
        if self._startup_s is not None:
            run.seconds["start-up"], self._startup_s = self._startup_s, None
        started, nested_before = time.perf_counter(), self._nested_s
        failure = None
        try:
            with StageProgress(self.progress, pair, "evaluation"):
                document = self._evaluate(run, model, variant_key)
        except EvaluationFailed as exc:
            self._failed[model, variant_key] = str(exc)
            raise
        except Exception as exc:
            if not is_out_of_memory(exc):
                # The traceback's frames hold the model's tensors: clear them, so a failed pair does
                # not keep its memory from the next one (its lines are still reported).
                traceback.clear_frames(exc.__traceback__)
                self.budget.release_cached()
                raise
            failure = out_of_memory_line(model, variant_key, run.failed_stage or run.current_stage, exc, self.budget)
        if failure is not None:  # raised here, once the exception and the tensors it holds are gone
            self.budget.release_cached()
            self._failed[model, variant_key] = failure
            raise EvaluationFailed(failure)
        wall = time.perf_counter() - started - (self._nested_s - nested_before)
        document.timing.stages = run.stage_table(wall + run.seconds["start-up"])
        self._write(model, variant_key, document)  # milliseconds; after the table is sealed
        return document

    def fp16_references(self, model: ModelUnderTest) -> References:
        """The stored FP16 references, after running the FP16 pass if they are missing or stale."""
        with self.references.lock(model.key):
            refs, reason = self.references.load(model)
            if refs is not None:
                return refs
            if self.settings.gates.frozen_baselines:
                raise StaleBaselineError(f"--frozen-baselines: {model.key}: {reason}")
            log.warning("running the FP16 pass of %s first: %s", model.key, reason)
            self.references.say_why_recomputed(model.key)
            started = time.perf_counter()
            try:
                self.evaluate(model.key, BASELINE_VARIANT)
            except EvaluationFailed as exc:
                raise EvaluationFailed(f"the FP16 pass this variant is compared with failed: {exc}") from None
            finally:
                self._nested_s += time.perf_counter() - started
            refs, reason = self.references.load(model)
        if refs is None:
            raise RuntimeError(f"FP16 references of {model.key} were computed but cannot be read back: {reason}")
        return refs

    def _evaluate(self, run: PassContext, model_key: str, variant_key: str) -> EvaluationDocument:
        variant = self.suite.variant(model_key, variant_key)
        with run.stage("resolve model", "load"):  # once per model and run: weights hashed, tokenizer read
            model = self.models.under_test(model_key)
        refs = None
        if not variant.is_baseline:
            with run.stage("FP16 references", "references", shown=True):  # may run the FP16 pass first (timed apart)
                nested_before = self._nested_s
                refs = self.fp16_references(model)
            run.seconds["references"] -= self._nested_s - nested_before
        with run.stage("tokenize (start)", "tokenize"):  # tokenized (or read from the cache) while the model loads
            self.plans.prefetch(model)
        with self.references.lock(model.key) if variant.is_baseline else nullcontext():
            self.budget.start_peak()
            with run.stage("load", "load", shown=True):
                loaded = load_model(
                    model.spec,
                    self.models.weights(model_key, variant),
                    variant,
                    self.settings.load,
                    tokenizer_from=model.resolved.directory if variant.source else None,
                )
                if strict_executor():  # the tests: a forward pass outside the memory executor is an error
                    loaded.model.base_model.register_forward_pre_hook(require_executor)
            try:
                measured = (
                    fp16_pass(run, model, variant, loaded)
                    if refs is None
                    else variant_pass(run, model, variant, loaded, refs)
                )
            finally:
                with run.stage("release", "load"):
                    release(loaded)
        with run.stage("report", "report"):
            limits, ungated = self._gates(model_key, variant_key)
            return evaluation_document(
                measured,
                self.settings.perplexity,
                self.settings.gates,
                self.settings.run_id,
                limits,
                ungated,
                self.gate_family(),
            )

    def _gates(self, model: str, variant_key: str) -> tuple[dict[str, float], dict[str, str]]:
        """The pair's limits, and why each registered metric that is not gated has no gate."""
        limits = self.suite.gates_for(model, variant_key)
        ungated = {
            GATEABLE[name].name: f"opted out with ungated in {self.suite.path}"
            for name in self.suite.ungated_for(model, variant_key)
        }
        if self.settings.prompts.skip:
            for name in [n for n in limits if GATEABLE[n].path[0] in ("kl_divergence", "flips")]:
                del limits[name]
                ungated[GATEABLE[name].name] = "--skip-prompts: prompt KL was not measured"
        if self.settings.long_context.skip:
            for name in [n for n in limits if GATEABLE[n].path[0] == "long_context"]:
                del limits[name]
                ungated[GATEABLE[name].name] = "--skip-long-context: long context was not measured"
        return limits, ungated

    def _write(self, model: str, variant_key: str, document: EvaluationDocument) -> None:
        self.evaluations.setdefault(model, {})[variant_key] = document
        results = self.settings.paths.results_dir
        write_document(evaluation_path(results, model, variant_key), document)
        with file_lock(file_in(results, f".{model}.lock")):  # workers each add their variants
            comparable = collect_comparable_documents(results, self.settings.run_id).get(model, {})
            write_document(comparison_path(results, model), comparison_document(comparable))

    def _from_other_worker(self, model: str, variant_key: str) -> EvaluationDocument | None:
        """A document this run already wrote (another xdist worker evaluated the pair)."""
        path = evaluation_path(self.settings.paths.results_dir, model, variant_key)
        try:
            doc = read_document(EvaluationDocument, path)
        except SchemaError:
            return None
        if doc.run_id != self.settings.run_id:
            return None
        self.evaluations.setdefault(model, {})[variant_key] = doc
        return doc
