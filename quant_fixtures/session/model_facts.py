"""What is known about each model of the suite, each fact found once per run: where its weights are
(and a variant's own checkpoint), its transformers config, its tokenizer and the tokenizer's digest,
its maximum context and the perplexity window it gets.

The up-front checks ask for single facts (:class:`ModelFacts`), so that a local model is not hashed
before it is needed; an evaluation resolves the model once into a :class:`ModelUnderTest`, which
every stage of its passes receives.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from quant_fixtures.config import ModelSpec, SuiteConfig
from quant_fixtures.inputs.corpus_protocols import LLAMA_CPP_DEFAULT_CTX, lm_eval_max_length
from quant_fixtures.models.sources import (
    ResolvedModel,
    UnusableModelError,
    check_config_json,
    resolve_checkpoint,
    resolve_model,
    weight_files,
)
from quant_fixtures.models.tokenizer_match import check_same_tokenizer
from quant_fixtures.settings import PerplexityProtocol
from quant_fixtures.variants import Variant

if TYPE_CHECKING:
    from transformers import PretrainedConfig, PreTrainedTokenizerBase


def max_length(model_config: PretrainedConfig) -> int | None:
    """The model's maximum context (max_position_embeddings), or None where its config has none."""
    limit = getattr(model_config, "max_position_embeddings", None)
    return int(limit) if limit else None


def window_length(
    protocol: PerplexityProtocol, model_config: PretrainedConfig, tokenizer: Callable[[], PreTrainedTokenizerBase]
) -> int:
    """The perplexity window a model gets: --ctx or the protocol's default (llama.cpp 512, lm-eval
    the model's maximum length as lm-eval finds it), capped at the model's maximum. ``tokenizer`` is
    asked for only by lm-eval's default."""
    requested = protocol.ctx
    if requested is None:
        requested = (
            LLAMA_CPP_DEFAULT_CTX if protocol.protocol == "llama.cpp" else lm_eval_max_length(model_config, tokenizer())
        )
    limit = max_length(model_config)
    return min(requested, limit) if limit else requested


@dataclass(frozen=True)
class ModelUnderTest:
    """One model as an evaluation measures it, resolved once: what the stages of a pass read."""

    key: str  # the model's key in the suite config
    spec: ModelSpec
    resolved: ResolvedModel  # its directory and the identity of its weights
    config: PretrainedConfig
    tokenizer: PreTrainedTokenizerBase
    tokenizer_sha256: str  # how the tokenizer turns text into ids (store/prompt_reference.tokenizer_sha256)
    max_length: int | None  # max_position_embeddings; None where the config has none
    ctx: int  # the perplexity window it gets (:func:`window_length`)


class ModelFacts:
    def __init__(self, suite: SuiteConfig, cache_dir: Path, protocol: PerplexityProtocol) -> None:
        self.suite, self.cache_dir, self.protocol = suite, cache_dir, protocol
        self._under_test: dict[str, ModelUnderTest] = {}
        self._resolved: dict[str, ResolvedModel] = {}
        self._checkpoints: dict[tuple[str, str], ResolvedModel] = {}  # (model, variant key) -> its own weights
        self._configs: dict[str, PretrainedConfig] = {}
        self._tokenizers: dict[str, PreTrainedTokenizerBase] = {}
        self._tokenizer_ids: dict[str, str] = {}

    def under_test(self, model: str) -> ModelUnderTest:
        """The model resolved once: weights found (a local directory's hashed), config, tokenizer
        and its digest read, its window chosen."""
        if model not in self._under_test:
            self._under_test[model] = ModelUnderTest(
                key=model,
                spec=self.spec(model),
                resolved=self.resolved(model),
                config=self.model_config(model),
                tokenizer=self.tokenizer(model),
                tokenizer_sha256=self.tokenizer_sha256(model),
                max_length=self.max_length(model),
                ctx=self.ctx(model),
            )
        return self._under_test[model]

    def spec(self, model: str) -> ModelSpec:
        """The model's entry in the suite config."""
        return self.suite.models[model]

    def resolved(self, model: str) -> ResolvedModel:
        if model not in self._resolved:
            self._resolved[model] = resolve_model(self.spec(model), self.cache_dir)
        return self._resolved[model]

    def weights(self, model: str, variant: Variant) -> ResolvedModel:
        """Where a variant's weights come from: the model's own (a registered method quantizes them
        on load), or the variant's own checkpoint, checked once to read the base's token ids."""
        if variant.source is None:
            return self.resolved(model)
        if (model, variant.key) not in self._checkpoints:
            spec = self.spec(model)
            resolved = resolve_checkpoint(variant.source, spec, self.cache_dir)
            base_size = getattr(self.model_config(model).get_text_config(), "vocab_size", None)
            check_same_tokenizer(
                self.tokenizer(model),
                base_size,
                resolved.directory,
                f"model {model!r} variant {variant.key!r}",
                spec.trust_remote_code or variant.source.trust_remote_code,
            )
            self._checkpoints[model, variant.key] = resolved
        return self._checkpoints[model, variant.key]

    def _directory(self, model: str) -> Path:
        """The model's directory. A local one is not resolved for it: resolving hashes every weight
        file (its identity), which the up-front checks do not need and which would hold up every
        xdist worker while the controller hashed."""
        spec = self.spec(model)
        if model not in self._resolved and spec.source_kind == "local" and spec.path is not None:
            directory = Path(spec.path).expanduser()
            if (directory / "config.json").is_file():
                return directory
        return self.resolved(model).directory

    def check_weights(self, model: str) -> None:
        """The model has weights the suite may load (safetensors, or pickles by opt-in): a local
        directory's are listed, not hashed (as in _directory); a Hub or GGUF source is resolved."""
        spec = self.spec(model)
        if model not in self._resolved and spec.source_kind == "local" and spec.path is not None:
            weight_files(Path(spec.path).expanduser(), spec.allow_pickle, f"model {model!r}")
        else:
            self.resolved(model)

    def model_config(self, model: str) -> PretrainedConfig:
        """The model's transformers config; one that cannot be read is an UnusableModelError."""
        if model not in self._configs:
            from transformers import AutoConfig

            directory = self._directory(model)
            check_config_json(directory, f"model {model!r}")
            try:
                self._configs[model] = AutoConfig.from_pretrained(
                    directory, trust_remote_code=self.spec(model).trust_remote_code
                )
            except (OSError, ValueError) as exc:  # e.g. a model_type this transformers does not know
                first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]  # one line, not pages
                raise UnusableModelError(
                    f"model {model!r}: transformers cannot read {directory / 'config.json'}: {first_line}"
                ) from None
        return self._configs[model]

    def tokenizer(self, model: str) -> PreTrainedTokenizerBase:
        """The model's tokenizer, loaded once (for its digest and for the corpus)."""
        if model not in self._tokenizers:
            from transformers import AutoTokenizer

            self._tokenizers[model] = AutoTokenizer.from_pretrained(
                self._directory(model), trust_remote_code=self.spec(model).trust_remote_code
            )
        return self._tokenizers[model]

    def tokenizer_sha256(self, model: str) -> str:
        """sha256 of how the model's tokenizer turns text into ids."""
        if model not in self._tokenizer_ids:
            from quant_fixtures.store.prompt_reference import tokenizer_sha256

            self._tokenizer_ids[model] = tokenizer_sha256(self.tokenizer(model))
        return self._tokenizer_ids[model]

    def max_length(self, model: str) -> int | None:
        return max_length(self.model_config(model))

    def ctx(self, model: str) -> int:
        """The perplexity window the model gets (:func:`window_length`)."""
        return window_length(self.protocol, self.model_config(model), lambda: self.tokenizer(model))
