"""What is known about each model of the suite, each fact found once per run: where its weights are
(and a variant's own checkpoint), its transformers config, its tokenizer and the tokenizer's digest."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from quant_fixtures.config import ModelSpec, SuiteConfig
from quant_fixtures.models.sources import (
    ResolvedModel,
    UnusableModelError,
    check_config_json,
    resolve_checkpoint,
    resolve_model,
    weight_files,
)
from quant_fixtures.models.tokenizer_match import check_same_tokenizer
from quant_fixtures.variants import Variant

if TYPE_CHECKING:
    from transformers import PretrainedConfig, PreTrainedTokenizerBase


class ModelFacts:
    def __init__(self, suite: SuiteConfig, cache_dir: Path) -> None:
        self.suite, self.cache_dir = suite, cache_dir
        self._resolved: dict[str, ResolvedModel] = {}
        self._checkpoints: dict[tuple[str, str], ResolvedModel] = {}  # (model, variant key) -> its own weights
        self._configs: dict[str, PretrainedConfig] = {}
        self._tokenizers: dict[str, PreTrainedTokenizerBase] = {}
        self._tokenizer_ids: dict[str, str] = {}

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
