"""The FP16 references a variant is compared with: their keys, reading them back validated, and
writing them once the FP16 pass has measured them.

Three stored pieces per model: the perplexity baseline (small JSON in baselines/), the corpus
reference (FP16 hidden states and output head) and the prompt reference (safetensors in the cache),
plus the prompt summary (responses and noise floor, beside the baseline). A quantized variant needs
all of them; if one is missing or stale, the FP16 pass runs first.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, TypedDict

from quant_fixtures.inputs.retrieval_probe import PROBE_VERSION
from quant_fixtures.json_types import JsonObject
from quant_fixtures.metrics.divergence import METRICS_VERSION
from quant_fixtures.names import file_in
from quant_fixtures.report.schema import NoiseFloor, SchemaError, from_json_object
from quant_fixtures.session.inputs import CorpusText, PromptSuite, RunEnvironment
from quant_fixtures.session.long_plan import long_shape
from quant_fixtures.session.model_facts import ModelUnderTest
from quant_fixtures.settings import RunSettings
from quant_fixtures.store.atomic import file_lock
from quant_fixtures.store.baseline import Baseline, BaselineKey, baseline_path, load_baseline, store_baseline
from quant_fixtures.store.corpus_reference import corpus_reference_path, load_corpus_reference, store_corpus_reference
from quant_fixtures.store.long_reference import (
    LongReferenceKey,
    load_long_reference,
    long_reference_path,
    store_long_reference,
)
from quant_fixtures.store.prompt_reference import (
    PromptReference,
    ReferenceKey,
    load_reference,
    reference_path,
    store_reference,
)
from quant_fixtures.store.prompt_summary import load_prompt_summary, prompt_summary_path, store_prompt_summary
from quant_fixtures.store.stale import warn_recomputed

if TYPE_CHECKING:
    import torch
    from filelock import BaseFileLock


@dataclass
class References:
    baseline: Baseline
    corpus: dict[str, torch.Tensor]  # store/corpus_reference.py
    prompts: PromptReference | None  # None with --skip-prompts
    noise_floor: NoiseFloor | None
    long: dict[str, torch.Tensor] | None = None  # store/long_reference.py; None with --skip-long-context


class SharedKeyFields(TypedDict):
    """The fields every reference key shares (store/keys.ReferenceKeyBase), as this run sets them."""

    model: str
    weights_identity: str
    tokenizer_sha256: str
    weight_dtype: str
    compute_dtype: str
    device_type: str
    metrics_version: int
    environment: JsonObject


class ReferenceStore:
    def __init__(
        self, settings: RunSettings, corpus_text: CorpusText, prompt_suite: PromptSuite, environment: RunEnvironment
    ) -> None:
        self.settings, self.corpus_text = settings, corpus_text
        self.prompt_suite, self.environment = prompt_suite, environment
        self._prompt_keys: dict[str, ReferenceKey] = {}
        self._locks: dict[str, BaseFileLock] = {}
        self._loaded: dict[str, References] = {}  # read and verified once (preflight, then every variant)
        self._unusable_file: dict[str, tuple[Path, str]] = {}  # model -> the stored file the last read refused
        self._warned: set[tuple[Path, str]] = set()

    def lock(self, model: str) -> BaseFileLock:
        """Serialises FP16 passes across xdist workers: one computes, the others wait and read.
        One (reentrant) lock object per model and process."""
        if model not in self._locks:
            self._locks[model] = file_lock(file_in(self.settings.paths.cache_dir / "locks", f"{model}.lock"))
        return self._locks[model]

    # -- keys -------------------------------------------------------------------------------------
    def _shared_fields(self, model: ModelUnderTest) -> SharedKeyFields:
        load = self.settings.load
        return SharedKeyFields(
            model=model.key,
            weights_identity=model.resolved.identity,
            tokenizer_sha256=model.tokenizer_sha256,
            weight_dtype=load.weight_dtype,
            compute_dtype=load.compute_dtype,
            device_type=load.device_type,
            metrics_version=METRICS_VERSION,
            environment=self.environment.numerics(),
        )

    def baseline_key(self, model: ModelUnderTest) -> BaselineKey:
        p = self.settings.perplexity
        return BaselineKey(
            **self._shared_fields(model),
            dataset_sha256=self.corpus_text.text().sha256,
            method=p.protocol,
            ctx=model.ctx,
            stride=p.stride,
            max_tokens=p.max_tokens,
        )

    def prompt_key(self, model: ModelUnderTest) -> ReferenceKey:
        """Built once per model (it hashes the prompt suite)."""
        if model.key not in self._prompt_keys:
            q = self.settings.prompts
            self._prompt_keys[model.key] = ReferenceKey(
                **self._shared_fields(model),
                prompts_sha256=self.prompt_suite.sha256(),
                categories=q.categories,
                use_chat_template=q.use_chat_template,
                max_new_tokens_cap=q.max_new_tokens_cap,
                top_k=q.top_k,
            )
        return self._prompt_keys[model.key]

    def long_key(self, model: ModelUnderTest) -> LongReferenceKey:
        protocol = self.settings.long_context
        shape = long_shape(protocol, model.max_length)
        return LongReferenceKey(
            **self._shared_fields(model),
            dataset_sha256=self.corpus_text.text().sha256,
            length=shape.length,
            stretches=protocol.stretches,
            chunk_tokens=protocol.chunk_tokens,
            probe_lengths=shape.probe_lengths,
            probe_depths=protocol.probe_depths,
            probe_keys=protocol.probe_keys,
            probe_version=PROBE_VERSION,
        )

    def keys_of(self, model: ModelUnderTest, baseline: Baseline) -> dict[str, str | None]:
        """Digests of the references a document was measured against (comparable documents share them)."""
        keys = {
            "baseline_sha256": baseline.key.digest(),
            "reference_sha256": None if self.settings.prompts.skip else self.prompt_key(model).digest(),
        }
        if not self.settings.long_context.skip:
            keys["long_reference_sha256"] = self.long_key(model).digest()
        return keys

    # -- reading ----------------------------------------------------------------------------------
    def load(self, model: ModelUnderTest) -> tuple[References | None, str]:
        """All FP16 references for the current settings, or None and why they cannot be used."""
        if model.key not in self._loaded:
            refs, reason = self._read(model)
            if refs is None:
                return None, reason
            self._loaded[model.key] = refs
        return self._loaded[model.key], "ok"

    def _read(self, model: ModelUnderTest) -> tuple[References | None, str]:
        paths = self.settings.paths
        key = self.baseline_key(model)
        baseline, reason = load_baseline(paths.baselines_dir, key)
        if baseline is None:
            return self._unusable(model, baseline_path(paths.baselines_dir, key), reason)
        corpus_path = corpus_reference_path(paths.cache_dir, key.digest())
        corpus, reason = load_corpus_reference(corpus_path, key.digest(), baseline.tokens)
        if corpus is None:
            return self._unusable(model, corpus_path, reason)
        prompts, noise = None, None
        if not self.settings.prompts.skip:
            pkey = self.prompt_key(model)
            prompts, reason = load_reference(paths.cache_dir, pkey)
            if prompts is None:
                return self._unusable(model, reference_path(paths.cache_dir, pkey), reason)
            summary_path = prompt_summary_path(paths.baselines_dir, pkey)
            summary, reason = load_prompt_summary(paths.baselines_dir, pkey)
            if summary is None:  # corrupt or stale: the FP16 pass rebuilds it (the noise floor with it)
                return self._unusable(model, summary_path, reason)
            try:
                noise = from_json_object(NoiseFloor, summary["noise_floor"], "noise_floor")
            except SchemaError as exc:  # likewise
                return self._unusable(model, summary_path, f"FP16 prompt summary of {model.key}: {exc}")
        long = None
        if not self.settings.long_context.skip:
            long_key = self.long_key(model)
            long, reason = load_long_reference(paths.cache_dir, long_key)
            if long is None:
                return self._unusable(model, long_reference_path(paths.cache_dir, long_key), reason)
        return References(baseline, corpus, prompts, noise, long), "ok"

    def _unusable(self, model: ModelUnderTest, path: Path, reason: str) -> tuple[None, str]:
        """Notes which stored file kept the references from being read (say_why_recomputed tells it)."""
        self._unusable_file[model.key] = (path, reason)
        return None, reason

    def say_why_recomputed(self, model: str) -> None:
        """Before the FP16 pass replaces the file that could not be used: which, and why (nothing
        when the file was just not there yet)."""
        if model in self._unusable_file:
            self._warn_once(*self._unusable_file.pop(model))

    def _warn_once(self, path: Path, reason: str) -> None:
        if (path, reason) not in self._warned:  # the prompt stage may find the same file again
            self._warned.add((path, reason))
            warn_recomputed(path, reason)

    def cached_prompt_reference(self, model: ModelUnderTest) -> tuple[PromptReference | None, str]:
        """The FP16 pass's cached prompt reference, or None and why (said when the file is there:
        the pass generates it again)."""
        key = self.prompt_key(model)
        reference, reason = load_reference(self.settings.paths.cache_dir, key)
        if reference is None:
            self._warn_once(reference_path(self.settings.paths.cache_dir, key), reason)
        return reference, reason

    # -- writing (the FP16 pass) ------------------------------------------------------------------
    def save_perplexity(self, baseline: Baseline, corpus: dict[str, torch.Tensor]) -> None:
        self._loaded.pop(baseline.key.model, None)
        paths = self.settings.paths
        store_baseline(paths.baselines_dir, baseline, self.environment.fingerprint())
        digest = baseline.key.digest()
        store_corpus_reference(corpus_reference_path(paths.cache_dir, digest), corpus, digest)

    def save_long(self, model: ModelUnderTest, tensors: dict[str, torch.Tensor]) -> None:
        self._loaded.pop(model.key, None)
        store_long_reference(self.settings.paths.cache_dir, self.long_key(model), tensors)

    def save_prompt_reference(self, reference: PromptReference) -> None:
        self._loaded.pop(reference.key.model, None)
        store_reference(self.settings.paths.cache_dir, reference)

    def save_prompt_summary(self, model: ModelUnderTest, responses: dict[str, str], noise_floor: NoiseFloor) -> None:
        self._loaded.pop(model.key, None)
        store_prompt_summary(
            self.settings.paths.baselines_dir,
            self.prompt_key(model),
            responses,
            asdict(noise_floor),
            self.environment.fingerprint(),
        )
