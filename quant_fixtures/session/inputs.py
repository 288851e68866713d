"""What the passes read, each computed once per run: the corpus, the prompt suite, each model's
resolved weights, config, tokenizer digest, corpus plan (token ids and windows of the perplexity
protocol) and the environment."""

from __future__ import annotations

from typing import Any

from quant_fixtures.config import SuiteConfig
from quant_fixtures.inputs.corpus_protocols import (
    LLAMA_CPP_DEFAULT_CTX,
    CorpusPlan,
    adds_bos,
    document_tokens,
    documents_plan,
    joined_plan,
    joined_tokens,
    lm_eval_max_length,
    prefix_token,
)
from quant_fixtures.inputs.prompts import Prompt, load_prompt_suite, suite_sha256
from quant_fixtures.inputs.wikitext import EvalText, load_wikitext2_test
from quant_fixtures.inputs.wikitext_documents import detokenize, wikitext_pages
from quant_fixtures.models.sources import ResolvedModel, resolve_checkpoint, resolve_model
from quant_fixtures.models.tokenizer_match import check_same_tokenizer
from quant_fixtures.settings import RunSettings


class RunInputs:
    def __init__(self, config: SuiteConfig, settings: RunSettings) -> None:
        self.config, self.settings = config, settings
        self._text: EvalText | None = None
        self._prompts: list[Prompt] | None = None
        self._prompts_sha256: str | None = None
        self._environment: dict[str, Any] | None = None
        self._resolved: dict[str, ResolvedModel] = {}
        self._checkpoints: dict[tuple[str, str], ResolvedModel] = {}  # (model, variant) -> its own weights
        self._configs: dict[str, Any] = {}
        self._tokenizers: dict[str, Any] = {}
        self._tokenizer_ids: dict[str, str] = {}
        self._corpus_tokens: dict[str, Any] = {}  # model -> Future of its corpus tokens
        self._tokens_by_tokenizer: dict[tuple[str, str], dict[str, Any]] = {}
        self._plans: dict[str, CorpusPlan] = {}
        self._pages: list[str] | None = None
        self._pool: Any = None

    # -- run-wide ---------------------------------------------------------------------------------
    def text(self) -> EvalText:
        if self._text is None:
            self._text = load_wikitext2_test(self.settings.perplexity.dataset_source)
        return self._text

    def use_prompts(self, prompts: list[Prompt] | None) -> None:
        """The suite as the command line validated it (so it is parsed once)."""
        if prompts is not None:
            self._prompts = prompts

    def prompts(self) -> list[Prompt]:
        if self._prompts is None:
            p = self.settings.prompts
            self._prompts = load_prompt_suite(p.path, p.categories)
        return self._prompts

    def prompts_sha256(self) -> str:
        if self._prompts_sha256 is None:
            self._prompts_sha256 = suite_sha256(self.settings.prompts.path)
        return self._prompts_sha256

    def environment(self) -> dict[str, Any]:
        """This run's fingerprint (versions, device, CPU ISA), taken once."""
        if self._environment is None:
            from quant_fixtures.environment import fingerprint

            self._environment = fingerprint(self.settings.load.device)
        return self._environment

    def numerics(self) -> dict[str, Any]:
        """The parts of the environment that change FP16 numbers: in every stored reference's key."""
        from quant_fixtures.environment import numerics_key

        return numerics_key(self.environment())

    # -- per model --------------------------------------------------------------------------------
    def resolved(self, model: str) -> ResolvedModel:
        if model not in self._resolved:
            self._resolved[model] = resolve_model(self.config.models[model], self.settings.paths.cache_dir)
        return self._resolved[model]

    def weights(self, model: str, variant: Any) -> ResolvedModel:
        """Where a variant's weights come from: the model's own (a registered method quantizes them
        on load), or the variant's own checkpoint, checked once to read the base's token ids."""
        if variant.source is None:
            return self.resolved(model)
        if (model, variant.key) not in self._checkpoints:
            spec = self.config.models[model]
            resolved = resolve_checkpoint(variant.source, spec, self.settings.paths.cache_dir)
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

    def _directory(self, model: str) -> Any:
        """The model's directory. A local one is not resolved for it: resolving hashes every weight
        file (its identity), which the up-front checks do not need and which would hold up every
        xdist worker while the controller hashed."""
        spec = self.config.models[model]
        if model not in self._resolved and spec.source_kind == "local":
            from pathlib import Path

            directory = Path(spec.path).expanduser()
            if (directory / "config.json").is_file():
                return directory
        return self.resolved(model).directory

    def model_config(self, model: str) -> Any:
        """The model's transformers config."""
        if model not in self._configs:
            from transformers import AutoConfig

            spec = self.config.models[model]
            self._configs[model] = AutoConfig.from_pretrained(
                self._directory(model), trust_remote_code=spec.trust_remote_code
            )
        return self._configs[model]

    def tokenizer(self, model: str) -> Any:
        """The model's tokenizer, loaded once (for its digest and for the corpus)."""
        if model not in self._tokenizers:
            from transformers import AutoTokenizer

            spec = self.config.models[model]
            self._tokenizers[model] = AutoTokenizer.from_pretrained(
                self._directory(model), trust_remote_code=spec.trust_remote_code
            )
        return self._tokenizers[model]

    def tokenizer_sha256(self, model: str) -> str:
        """sha256 of how the model's tokenizer turns text into ids."""
        if model not in self._tokenizer_ids:
            from quant_fixtures.store.prompt_reference import tokenizer_sha256

            self._tokenizer_ids[model] = tokenizer_sha256(self.tokenizer(model))
        return self._tokenizer_ids[model]

    def prefetch_corpus(self, model: str) -> None:
        """Start tokenizing the model's corpus in a background thread (while the model loads;
        tokenizers run in Rust without the GIL)."""
        if model not in self._corpus_tokens:
            from concurrent.futures import ThreadPoolExecutor

            if self._pool is None:
                self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="quant-tokenize")
            digest, text = self.tokenizer_sha256(model), self.text()  # here: memoised once, not raced
            if self._by_document():
                self.pages()  # likewise
            self._corpus_tokens[model] = self._pool.submit(self._tokenized_corpus, model, digest, text)

    def _by_document(self) -> bool:
        """lm-eval's protocol reads WikiText-2 as documents; the others read the joined text."""
        return self.settings.perplexity.protocol == "lm-eval"

    def pages(self) -> list[str]:
        """The document-level pages of the split (lm-eval's protocol), rebuilt once."""
        if self._pages is None:
            self._pages = wikitext_pages(self.text().rows)
        return self._pages

    def _tokenized_corpus(self, model: str, digest: str, text: EvalText) -> dict[str, Any]:
        """The tokens the protocol needs, once per tokenizer, cached on disk."""
        import torch

        from quant_fixtures.store.corpus_tokens import load_corpus_tokens, save_corpus_tokens

        kind, names = ("documents-v2", ("ids", "lengths")) if self._by_document() else ("joined-v2", ("ids", "ends"))
        if (digest, kind) not in self._tokens_by_tokenizer:
            cache = self.settings.paths.cache_dir
            tensors, _ = load_corpus_tokens(cache, digest, text.sha256, kind, names)
            if tensors is None:  # the tokenizer was loaded (for the digest) before this job was submitted
                tokenizer = self.tokenizer(model)
                if self._by_document():
                    docs = document_tokens(tokenizer, [detokenize(p) for p in self.pages()])
                    tensors = {
                        "ids": torch.tensor([t for d in docs for t in d], dtype=torch.long),
                        "lengths": torch.tensor([len(d) for d in docs], dtype=torch.long),
                    }
                else:
                    ids, ends = joined_tokens(tokenizer, text.text)
                    tensors = {"ids": ids, "ends": ends}
                save_corpus_tokens(cache, digest, text.sha256, kind, tensors)
            self._tokens_by_tokenizer[(digest, kind)] = tensors
        return self._tokens_by_tokenizer[(digest, kind)]

    def corpus_plan(self, model: str) -> CorpusPlan:
        """The token sequence and windows the protocol scores, with the bytes and words they stand for."""
        if model not in self._plans:
            self.prefetch_corpus(model)
            tensors, p, ctx = self._corpus_tokens[model].result(), self.settings.perplexity, self.ctx(model)
            tokenizer, text = self.tokenizer(model), self.text()
            if self._by_document():
                docs = list(tensors["ids"].split(tensors["lengths"].tolist()))
                self._plans[model] = documents_plan(
                    [d.tolist() for d in docs], self.pages(), prefix_token(tokenizer), ctx, p.max_tokens
                )
            else:
                self._plans[model] = joined_plan(
                    p.protocol,
                    tensors["ids"],
                    tensors["ends"],
                    text.text,
                    ctx,
                    p.stride,
                    p.max_tokens,
                    adds_bos(tokenizer),
                )
        return self._plans[model]

    def ctx(self, model: str) -> int:
        """The window this model gets: --ctx or the protocol's default (llama.cpp 512, lm-eval the
        model's maximum length as lm-eval finds it), capped at the model's maximum."""
        p, config = self.settings.perplexity, self.model_config(model)
        requested = p.ctx
        if requested is None:
            requested = (
                LLAMA_CPP_DEFAULT_CTX
                if p.protocol == "llama.cpp"
                else lm_eval_max_length(config, self.tokenizer(model))
            )
        limit = getattr(config, "max_position_embeddings", None)
        return min(requested, limit) if limit else requested
